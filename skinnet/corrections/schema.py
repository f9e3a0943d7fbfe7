"""What a row of the corrections log says, and how a CSV file of rows is read.

One row per event, never edited in place. Per task a review row stores exactly what the
reviewer said: the task-level class (``DIAG = NEV``), its status (``confirmed`` the model's
class, ``changed`` it, or ``not reviewed``: a task left at "no change" under verdict
``correct``), and a fine Derm7pt value (``diagnosis = dermal nevus``) only when the reviewer
picked one. Nothing is filled in for the reviewer.

Two verdicts are events about other rows rather than reviews: ``retract`` withdraws one of the
same reviewer's rows (its event id in ``note``) and ``reveal`` records that the reviewer was
shown a case's reference labels (teaching; the review it followed in ``note``, its images in
the image columns). Readers of reviews leave both out (:func:`standing_reviews`).

Logs written before the per-task status existed (``LEGACY_COLUMNS``: a raw value per task,
invented from the class when the reviewer left it alone) are read as such (:func:`from_legacy`).
Cells that a spreadsheet would run as a formula are neutralised.
"""
from __future__ import annotations

import csv
import errno
import io
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from ..labels import LABEL_COLUMNS, TASK_NAMES, TASKS

VERDICTS = ("agree", "correct", "unsure", "skip")
LABELLED_VERDICTS = ("agree", "correct")
"""Verdicts whose row carries labels that training may use."""
RETRACT = "retract"
"""The verdict of a row that withdraws one of the same reviewer's earlier rows (its event id in
``note``): the log stays append-only, and every reader drops both."""
REVEAL = "reveal"
"""The verdict of a row that records a teaching reveal: the reviewer saw the reference labels of
the case (and its images); their later reviews of that case or those images are refused."""
EVENT_VERDICTS = VERDICTS + (RETRACT, REVEAL)
NO_CHANGE = "no change"
CONFIRMED, CHANGED, NOT_REVIEWED = "confirmed", "changed", "not reviewed"
STATUSES = (CONFIRMED, CHANGED, NOT_REVIEWED)
BASE_COLUMNS = ("event_id", "logged_at", "reviewer", "case_id", "source", "clinic", "clinic_sha256",
                "derm", "derm_sha256", "model_version", "checkpoint_sha256", "verdict", "seconds_spent",
                "confidence", "note")
MODEL_COLUMNS = tuple(f"model_{name}" for name in TASK_NAMES)
"""The model's task-level class shown to the reviewer (``model_DIAG = NEV``)."""
STATUS_COLUMNS = tuple(f"status_{name}" for name in TASK_NAMES)
FINE_COLUMNS = LABEL_COLUMNS
"""meta.csv's raw columns (``diagnosis``...): a fine value only where the reviewer gave one."""
COLUMNS = BASE_COLUMNS + MODEL_COLUMNS + TASK_NAMES + STATUS_COLUMNS + FINE_COLUMNS
LEGACY_COLUMNS = BASE_COLUMNS + tuple(f"model_{c}" for c in LABEL_COLUMNS) + LABEL_COLUMNS
"""The first version's header: ``model_<column>`` and ``<column>`` in meta.csv's raw vocabulary."""
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
SOURCES = ("derm7pt", "manifest", "upload")
MAX_NOTE = 2000
"""Characters in a note; the form says so too. Longer notes are refused, not cut."""
MAX_FIELD = 200
"""Characters in a reviewer name, case id or model version."""
EVENT_ID = re.compile(r"[0-9a-f]{32}")
REVIEW_CONTENT = ("verdict", "confidence", "note", *TASK_NAMES, *STATUS_COLUMNS, *FINE_COLUMNS)
"""The cells that make two reviews of a case the same answer (not when or how long it took)."""


class CorrectionsError(ValueError):
    """The corrections log or a review is not usable; the message says where and why."""


def new_event_id() -> str:
    """Made when a case is opened for review, so a double-clicked save logs once."""
    return uuid.uuid4().hex


def one_line(text: str) -> str:
    """``text`` as the log keeps it: one physical line per row (a row cut short by a crash can
    never swallow the next one), so each line break becomes a space. What a form sends is put
    through this before it is compared with, or saved over, what the log holds."""
    return " ".join(text.replace("\r", "\n").split("\n")) if ("\n" in text or "\r" in text) else text


def neutralise(value: object) -> str:
    """A CSV cell that no spreadsheet runs as a formula (OWASP: prefix a quote). A value that
    starts with a quote before a formula character or another quote gets one more, so that
    :func:`restore` gives back exactly ``one_line(value)`` (``'+ve`` stays ``'+ve``)."""
    text = one_line("" if value is None else str(value))
    quoted = text.startswith("'") and text[1:2] in QUOTED_AFTER
    return "'" + text if text.startswith(FORMULA_PREFIXES) or quoted else text


QUOTED_AFTER = (*FORMULA_PREFIXES, "'")
"""After a leading quote, the characters that make it :func:`neutralise`'s (logs written before
2026-12-07 did not add a quote before a quote, so a value of theirs that began with two quotes now
reads with one: none is known)."""


def restore(value: str) -> str:
    """Inverse of :func:`neutralise` for reading."""
    return value[1:] if value.startswith("'") and value[1:2] in QUOTED_AFTER else value


@dataclass
class Review:
    """One event to log (a review, a retraction or a reveal), before it becomes a CSV row.

    Attributes:
        predicted: task name -> the model's class name (shown in the form).
        corrected: task name -> the reviewer's class name, a fine Derm7pt value of the task
            (``"dermal nevus"``), or ``"no change"``.
    """

    event_id: str
    reviewer: str
    case_id: str
    source: str
    verdict: str
    predicted: dict[str, str]
    corrected: dict[str, str]
    model_version: str = ""
    checkpoint_sha256: str = ""
    seconds_spent: float = 0.0
    confidence: int | None = None
    note: str = ""

    def answers(self) -> dict[str, tuple[str, str, str]]:
        """Per task (class, status, fine value) as stored; all empty for verdicts without labels.

        ``agree`` confirms every task; under ``correct`` a task left at "no change" is
        ``not reviewed`` (no class is stored for it), one set to the model's class is
        ``confirmed`` and any other ``changed``.
        """
        if self.verdict not in LABELLED_VERDICTS:
            return {t.name: ("", "", "") for t in TASKS}
        if self.verdict == "agree":
            return {t.name: (self.predicted[t.name], CONFIRMED, "") for t in TASKS}
        answers = {}
        for task in TASKS:
            value = self.corrected.get(task.name, NO_CHANGE)
            if value == NO_CHANGE:
                answers[task.name] = ("", NOT_REVIEWED, "")
                continue
            coarse, fine = split_answer(task, value)
            answers[task.name] = (coarse, CONFIRMED if coarse == self.predicted[task.name] else CHANGED, fine)
        return answers

    def validate(self) -> None:
        """Every field checked on the server, whatever the browser was told to allow.

        Raises:
            CorrectionsError: the first field that is out of its vocabulary, range or length.
        """
        if not self.reviewer:
            raise CorrectionsError("a review needs a signed-in reviewer")
        if not isinstance(self.event_id, str) or not EVENT_ID.fullmatch(self.event_id):
            raise CorrectionsError("the review's event id is malformed")
        for name in ("reviewer", "case_id", "model_version", "checkpoint_sha256"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_FIELD:
                raise CorrectionsError(f"{name} must be text of at most {MAX_FIELD} characters")
        if not self.case_id.strip():
            raise CorrectionsError("a review needs a case id")
        if not is_case_id(self.case_id):
            raise CorrectionsError(f"case id {self.case_id[:40]!r} has a line break or another control character: "
                                   "the log keeps one line per row, so it would be saved as another id")
        if self.source not in SOURCES:
            raise CorrectionsError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.verdict not in EVENT_VERDICTS:
            raise CorrectionsError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict in (RETRACT, REVEAL) and not EVENT_ID.fullmatch(self.note):
            raise CorrectionsError(f"a {self.verdict} row names the event id it is about")
        if self.confidence is not None and (isinstance(self.confidence, bool) or self.confidence not in range(1, 6)):
            raise CorrectionsError(f"confidence must be a whole number from 1 to 5, got {self.confidence!r}")
        if not isinstance(self.note, str) or len(self.note) > MAX_NOTE:
            raise CorrectionsError(f"the note is longer than {MAX_NOTE} characters; shorten it and save again")
        if not isinstance(self.seconds_spent, (int, float)) or not 0 <= self.seconds_spent < 1e7:
            raise CorrectionsError("time spent is out of range")
        for task in TASKS:
            predicted = self.predicted.get(task.name)
            if predicted not in task.classes:
                raise CorrectionsError(f"{task.name} prediction {predicted!r} is not one of {list(task.classes)}")
            value = self.corrected.get(task.name, NO_CHANGE)
            if value != NO_CHANGE and not (isinstance(value, str) and is_answer(task, value)):
                raise CorrectionsError(f"{task.name} correction {value!r} is not one of "
                                       f"{[NO_CHANGE, *task.classes]} or a Derm7pt value of the task")

    def row(self, images: dict[str, tuple[str, str]], logged_at: datetime | None = None) -> dict[str, str]:
        """The row as read back (values not yet neutralised). ``images``: ``{"clinic": (path,
        sha256), "derm": (path, sha256)}`` of the stored de-identified images."""
        answers = self.answers()
        row = {
            "event_id": self.event_id,
            "logged_at": (logged_at or datetime.now(timezone.utc)).isoformat(timespec="microseconds"),
            "reviewer": self.reviewer, "case_id": self.case_id, "source": self.source,
            "clinic": images.get("clinic", ("", ""))[0], "clinic_sha256": images.get("clinic", ("", ""))[1],
            "derm": images.get("derm", ("", ""))[0], "derm_sha256": images.get("derm", ("", ""))[1],
            "model_version": self.model_version, "checkpoint_sha256": self.checkpoint_sha256,
            "verdict": self.verdict, "seconds_spent": f"{self.seconds_spent:.1f}",
            "confidence": "" if self.confidence is None else str(int(self.confidence)),
            "note": self.note,
        }
        for task in TASKS:
            row[f"model_{task.name}"] = self.predicted[task.name]
            row[task.name], row[f"status_{task.name}"], row[task.column] = answers[task.name]
        return row

    def same_answer(self, row: dict[str, str]) -> bool:
        """Whether logging this review would repeat ``row`` (verdict, labels, confidence, note)."""
        new = self.row({})
        return all(new[c] == row[c] for c in REVIEW_CONTENT)


def is_case_id(case_id: str) -> bool:
    """Whether ``case_id`` can name a case in the log as it is: at most :data:`MAX_FIELD`
    characters, none of them a control character (a line break would be written as a space, and
    the saved review would belong to another id)."""
    return 0 < len(case_id) <= MAX_FIELD and not any(unicodedata.category(c) == "Cc" for c in case_id)


def is_answer(task, value: str) -> bool:
    """A class name of the task, or one of its fine Derm7pt values (exact, lower case)."""
    return value in task.classes or any(value in values for values in task.raw_values)


def split_answer(task, value: str) -> tuple[str, str]:
    """(class, fine value or '') of an answer :func:`is_answer` accepts."""
    if value in task.classes:
        return value, ""
    index = task.class_index(value)
    # a class with one Derm7pt value says it all (the form offers no fine value for it)
    return task.classes[index], value if len(task.raw_values[index]) > 1 else ""


def fine_choices(task) -> list[tuple[str, str]]:
    """(label, value) of the fine Derm7pt values a reviewer may pick, for classes that group
    several (``NEV · dermal nevus``); none for one-value classes (the class says it all)."""
    return [(f"{cls} · {value}", value) for cls, values in zip(task.classes, task.raw_values)
            if len(values) > 1 for value in values]


def csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def parse_line(line: str) -> list[str] | None:
    try:
        parsed = list(csv.reader([line], strict=True))
    except csv.Error:
        return None
    return parsed[0] if parsed else []


def write_failure(err: OSError) -> str:
    """What a reviewer reads when the disk refused a write (nothing was recorded)."""
    reason = "the server's disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
        else "the server could not write to its log"
    return f"Not saved: {reason}. Nothing was recorded; please tell the administrator, then save again."


@dataclass
class Problem:
    line: int
    message: str
    file: str = ""
    """The file of the log the line is in (relative to the log folder), if there are several."""

    def __str__(self) -> str:
        return f"{self.file + ' ' if self.file else ''}line {self.line}: {self.message}"


@dataclass
class ParsedLines:
    """What a stretch of one log file says: its good rows (every event, in file order, restored
    and in the current columns, each with ``file`` and ``line``), the bad ones, and every event
    id seen (a bad row's too: a save with that id still logs once)."""

    rows: list[dict]
    problems: list[Problem]
    event_ids: set[str]


class Header:
    """A log file's header: the current columns or the first version's.

    Raises:
        CorrectionsError: the line is not a corrections header (says which file, never where
            the server keeps it).
    """

    def __init__(self, line: str, file: str, number: int):
        self.cells = parse_line(line) or []
        self.legacy = (all(c in self.cells for c in LEGACY_COLUMNS)
                       and not all(c in self.cells for c in COLUMNS))
        missing = [] if self.legacy else [c for c in COLUMNS if c not in self.cells]
        if missing:
            raise CorrectionsError(f"{file + ' ' if file else ''}line {number}: not a skinnet corrections header "
                                   f"(missing {missing[:4]}): "
                                   "it is not a corrections file, so nothing is read from or saved to it")


def parse_lines(lines: list[str], header: Header, first_number: int, file: str) -> ParsedLines:
    """Rows of complete lines (``first_number``: the line number of ``lines[0]``).

    A bad row (wrong number of cells, an unknown verdict or label, a status that contradicts
    its class) is left out and reported with its line number; good rows are never lost.
    """
    rows, problems, ids = [], [], set()
    for number, text in enumerate(lines, start=first_number):
        if not text.strip():
            continue
        ids.add(text.split(",", 1)[0].strip('"'))
        cells = parse_line(text)
        if cells is None or len(cells) != len(header.cells):
            found = "unreadable" if cells is None else f"{len(cells)} cells"
            problems.append(Problem(number, f"expected {len(header.cells)} cells, found {found}", file))
            continue
        row = {k: restore(v) for k, v in zip(header.cells, cells)}
        if row["verdict"] not in EVENT_VERDICTS:
            problems.append(Problem(number, f"unknown verdict {row['verdict']!r}", file))
            continue
        try:
            row = from_legacy(row) if header.legacy else {c: row[c] for c in COLUMNS}
            check_row(row)
        except ValueError as err:
            problems.append(Problem(number, str(err), file))
            continue
        row["file"], row["line"] = file, number
        rows.append(row)
    return ParsedLines(rows, problems, ids)


def parse_file(data: bytes, file: str) -> tuple[Header | None, ParsedLines]:
    """A whole log file: (its header, or None when it holds no line yet; its rows). Leading blank
    lines and a UTF-8 byte order mark (a spreadsheet's save) are skipped; a last line without its
    newline is a row a crash cut short: reported, never joined to anything.

    Raises:
        CorrectionsError: the first line is not a corrections header.
    """
    lines = data.decode("utf-8-sig", errors="replace").split("\n")
    complete = lines.pop() == ""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return None, ParsedLines([], [], set())
    header = Header(lines[first], file, first + 1)
    parsed = parse_lines(lines[first + 1:], header, first + 2, file)
    if not complete:
        parsed.problems.append(Problem(len(lines) + 1, "row cut short (the writer stopped mid-row); skipped", file))
    return header, parsed


def where(row: dict) -> str:
    """Where a row is in its log, for messages: ``shards/x.csv line 5``."""
    return f"{row['file']} line {row['line']}" if row.get("file") else f"line {row['line']}"


def from_legacy(row: dict[str, str]) -> dict[str, str]:
    """A first-version row in the current columns. Its raw values were written for every task,
    a task the reviewer left alone included, so the class is kept (status ``confirmed`` when
    it is the model's, else ``changed``) and the raw value is dropped: it was the class's first
    raw value, not something the reviewer picked.

    Raises:
        ValueError: a value belongs to no class of its task.
    """
    new = {c: row.get(c, "") for c in BASE_COLUMNS}
    for task in TASKS:
        model = task.classes[task.class_index(row[f"model_{task.column}"])]
        new[f"model_{task.name}"] = model
        label = row[task.column] if row["verdict"] in LABELLED_VERDICTS else ""
        cls = task.classes[task.class_index(label)] if label else ""
        new[task.name], new[task.column] = cls, ""
        new[f"status_{task.name}"] = (CONFIRMED if cls == model else CHANGED) if cls else ""
    return new


def check_row(row: dict[str, str]) -> None:
    """A row's per-task cells agree with each other and with the schema.

    Raises:
        ValueError: the first task whose cells do not.
    """
    for task in TASKS:
        model = row[f"model_{task.name}"]
        if model not in task.classes:
            raise ValueError(f"{task.name}: model class {model!r} is not one of {list(task.classes)}")
        if row["verdict"] not in LABELLED_VERDICTS:
            continue
        cls, status, fine = row[task.name], row[f"status_{task.name}"], row[task.column]
        if status == NOT_REVIEWED and row["verdict"] == "correct" and not cls and not fine:
            continue
        if cls not in task.classes:
            raise ValueError(f"{task.name}: class {cls!r} is not one of {list(task.classes)}")
        if status != (CONFIRMED if cls == model else CHANGED):
            raise ValueError(f"{task.name}: status {status!r} does not fit class {cls} (model {model})")
        if fine and fine not in task.raw_values[task.classes.index(cls)]:
            raise ValueError(f"{task.name}: {fine!r} is not a Derm7pt value of class {cls}")


def task_labels(row: dict[str, str]) -> dict[str, str]:
    """Task -> class for the tasks this row's reviewer labelled (confirmed or changed)."""
    if row["verdict"] not in LABELLED_VERDICTS:
        return {}
    return {t.name: row[t.name] for t in TASKS if row[f"status_{t.name}"] in (CONFIRMED, CHANGED)}


def logged_time(row: dict[str, str]) -> datetime:
    """When a row was logged (UTC); a row whose time cannot be read counts as the earliest."""
    try:
        stamp = datetime.fromisoformat(row["logged_at"])
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def standing_reviews(events: list[dict]) -> list[dict]:
    """The reviews among a log's events (in log order) that stand: retracted rows, the
    retractions and the reveals left out."""
    withdrawn = {(r["reviewer"], r["note"]) for r in events if r["verdict"] == RETRACT}
    return [r for r in events if r["verdict"] in VERDICTS and (r["reviewer"], r["event_id"]) not in withdrawn]
