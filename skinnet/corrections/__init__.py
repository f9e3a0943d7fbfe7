"""The reviewers' corrections log: append-only CSV that training reads like meta.csv.

- ``schema``: what a row says (:class:`Review`, the columns, verdicts, validation), how a file of
  rows is read, and the first version's rows upgraded on reading;
- ``storage``: the log folder on disk (one shard per writer, merged by every reader; the lock,
  the rules kept under it, the in-memory index; :class:`CorrectionsLog`, :func:`read_corrections`);
- ``export``: current labels per case (rules ``latest``/``majority``), the meta.csv export,
  training cases from reviewed uploads, and ``python -m skinnet.corrections``.
"""
from .export import (EXPORT_COLUMNS, CaseLabels, current_labels, export_meta_csv,
                     latest_reviews, main)
from .schema import (BASE_COLUMNS, CHANGED, COLUMNS, CONFIRMED, EVENT_ID, FINE_COLUMNS, LABELLED_VERDICTS,
                     LEGACY_COLUMNS, MAX_FIELD, MAX_NOTE, MODEL_COLUMNS, NO_CHANGE, NOT_REVIEWED, RETRACT, REVEAL,
                     SOURCES, STATUS_COLUMNS, VERDICTS, CorrectionsError, Problem, Review, check_row, fine_choices,
                     from_legacy, is_answer, is_case_id, neutralise, new_event_id, one_line, restore, split_answer, standing_reviews,
                     task_labels, where)
from .storage import IMAGE_DIR, LEGACY_LOG, SHARDS, CorrectionsLog, log_files, log_folder, read_corrections, read_events

__all__ = ["BASE_COLUMNS", "CHANGED", "COLUMNS", "CONFIRMED", "EVENT_ID", "EXPORT_COLUMNS", "FINE_COLUMNS",
           "IMAGE_DIR", "LABELLED_VERDICTS", "LEGACY_COLUMNS", "LEGACY_LOG", "MAX_FIELD", "MAX_NOTE",
           "MODEL_COLUMNS", "NO_CHANGE", "NOT_REVIEWED", "RETRACT", "REVEAL", "SHARDS", "SOURCES",
           "STATUS_COLUMNS", "VERDICTS", "CaseLabels", "CorrectionsError", "CorrectionsLog", "Problem", "Review",
           "check_row", "current_labels", "export_meta_csv", "fine_choices", "from_legacy",
           "is_answer", "is_case_id", "latest_reviews", "log_files", "log_folder", "main", "neutralise", "new_event_id", "one_line",
           "read_corrections", "read_events", "restore", "split_answer", "standing_reviews", "task_labels", "where"]
