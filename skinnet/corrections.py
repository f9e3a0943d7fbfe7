"""The reviewers' corrections log: an append-only CSV that training reads like meta.csv.

One row per saved review, never edited in place; a later row for the same case and
reviewer supersedes an earlier one. Per task a row stores exactly what the reviewer said:
the task-level class (``DIAG = NEV``), its status (``confirmed`` the model's class,
``changed`` it, or ``not reviewed``: a task left at "no change" under verdict ``correct``),
and a fine Derm7pt value (``diagnosis = dermal nevus``) only when the reviewer picked one.
Nothing is filled in for the reviewer. Images are stored beside the log, de-identified
(pixels only, PNG, named by their SHA-256).

Logs written before the per-task status existed (``LEGACY_COLUMNS``: a raw value per task,
invented from the class when the reviewer left it alone) are read as such and upgraded in
place, with a backup, on the next append.

Safety: every append happens under a file lock, as one ``write`` of whole lines to a file
opened for appending, then ``fsync``; a row cut short by a crash is terminated before the
next append and reported by the reader with its line number. Cells that a spreadsheet
would run as a formula are neutralised. A review's event id makes saving idempotent.
"""
from __future__ import annotations

import csv
import errno
import io
import logging
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock
from PIL import Image

from .data import Case
from .imaging import pixel_sha256, png_bytes
from .labels import LABEL_COLUMNS, TASK_NAMES, TASKS

VERDICTS = ("agree", "correct", "unsure", "skip")
LABELLED_VERDICTS = ("agree", "correct")
RETRACT = "retract"
"""The verdict of a row that withdraws one of the same reviewer's earlier rows (its event id in
``note``): the log stays append-only, and every reader drops both (:func:`read_corrections`)."""
"""Verdicts whose row carries labels that training may use."""
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
IMAGE_DIR = "images"
SOURCES = ("derm7pt", "manifest", "upload")
MAX_NOTE = 2000
"""Characters in a note; the form says so too. Longer notes are refused, not cut."""
MAX_FIELD = 200
"""Characters in a reviewer name, case id or model version."""
EVENT_ID = re.compile(r"[0-9a-f]{32}")


class CorrectionsError(ValueError):
    """The corrections file or a review is not usable; the message says where and why."""


def new_event_id() -> str:
    """Made when a case is opened for review, so a double-clicked save logs once."""
    return uuid.uuid4().hex


def neutralise(value: object) -> str:
    """A CSV cell that no spreadsheet runs as a formula (OWASP: prefix a quote)."""
    text = "" if value is None else str(value)
    # one physical line per row: a row cut short by a crash can never swallow the next one
    text = " ".join(text.replace("\r", "\n").split("\n")) if ("\n" in text or "\r" in text) else text
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def restore(value: str) -> str:
    """Inverse of :func:`neutralise` for reading."""
    return value[1:] if value.startswith("'") and value[1:2] in FORMULA_PREFIXES else value


@dataclass
class Review:
    """One saved review, before it becomes a CSV row.

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
        if self.source not in SOURCES:
            raise CorrectionsError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.verdict not in VERDICTS + (RETRACT,):
            raise CorrectionsError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == RETRACT and not EVENT_ID.fullmatch(self.note):
            raise CorrectionsError("a retraction names the event id it withdraws")
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


def is_answer(task, value: str) -> bool:
    """A class name of the task, or one of its fine Derm7pt values (exact, lower case)."""
    return value in task.classes or any(value in values for values in task.raw_values)


def split_answer(task, value: str) -> tuple[str, str]:
    """(class, fine value or '') of an answer :func:`is_answer` accepts."""
    if value in task.classes:
        return value, ""
    return task.classes[task.class_index(value)], value


def fine_choices(task) -> list[tuple[str, str]]:
    """(label, value) of the fine Derm7pt values a reviewer may pick, for classes that group
    several (``NEV · dermal nevus``); none for one-value classes (the class says it all)."""
    return [(f"{cls} · {value}", value) for cls, values in zip(task.classes, task.raw_values)
            if len(values) > 1 for value in values]


class CorrectionsLog:
    """The corrections CSV and its image folder, safe for several writers at once.

    Args:
        folder: holds ``corrections.csv``, its lock and ``images/``.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "corrections.csv"
        self.lock = FileLock(str(self.folder / ".corrections.csv.lock"), timeout=60)

    def store_image(self, image: Image.Image) -> tuple[str, str]:
        """Save de-identified pixels as ``images/<sha256>.png``; (relative path, sha256).

        Raises:
            CorrectionsError: the image could not be written (no partial file is left).
        """
        digest = pixel_sha256(image)
        relative = f"{IMAGE_DIR}/{digest}.png"
        target = self.folder / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                temporary.write_bytes(png_bytes(image))
                os.replace(temporary, target)
            except OSError as err:
                temporary.unlink(missing_ok=True)
                raise CorrectionsError(_write_failure(err)) from None
        return relative, digest

    def append(self, review: Review, clinical: Image.Image | None = None,
               dermoscopy: Image.Image | None = None, images: dict[str, tuple[str, str]] | None = None) -> bool:
        """Log a review (once per event id). Returns False when the event was already logged.

        True means the whole row is on disk (written and fsynced). On any write failure the
        file is truncated back to what it was and CorrectionsError says so in plain words.

        Args:
            clinical, dermoscopy: the case's images, stored de-identified; or
            images: already stored ``{"clinic": (path, sha), "derm": (path, sha)}``.
        """
        review.validate()
        self.folder.mkdir(parents=True, exist_ok=True)
        stored = dict(images or {})  # content-addressed: storing twice is harmless, so outside the lock
        for key, image in (("clinic", clinical), ("derm", dermoscopy)):
            if image is not None:
                stored[key] = self.store_image(image)
        row = self._row(review, stored)
        with self.lock:
            prefix, logged = self._scan()
            if review.event_id in logged:
                return False
            data = (prefix + _csv_line([row[c] for c in COLUMNS])).encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    if written <= 0:
                        raise OSError(errno.EIO, "write made no progress")
                    view = view[written:]
                os.fsync(fd)
            except OSError as err:
                try:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                except OSError:
                    pass
                raise CorrectionsError(_write_failure(err)) from None
            finally:
                os.close(fd)
        return True

    def _scan(self) -> tuple[str, set[str]]:
        """(what to write before the next row, every event id in the file, bad rows included).

        Called under the lock. The event ids come from each line's first cell, so a row the
        reader reports as bad still counts for idempotency.
        """
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return _csv_line(COLUMNS), set()
        raw = self.path.read_bytes()
        lines = raw.decode("utf-8-sig", errors="replace").split("\n")
        newline = "" if raw.endswith(b"\n") else "\n"  # a crash cut the last row short: close it
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is None:  # only blank lines: the header is still to come
            return newline + _csv_line(COLUMNS), set()
        header = _parse_line(lines[first]) or []
        if _is_legacy(header):
            self._upgrade_legacy(raw)
            return self._scan()
        if any(c not in header for c in COLUMNS):
            raise CorrectionsError(f"{self.path} is not a skinnet corrections file (its first line is not "
                                   "the corrections header); nothing was saved")
        ids = {line.split(",", 1)[0].strip('"') for line in lines[first + 1:] if line}
        return newline, ids

    def _upgrade_legacy(self, raw: bytes) -> None:
        """Rewrite a first-version log in the current columns (under the lock): the original is
        kept byte for byte as ``corrections.legacy-<time>.csv``, good rows are converted with
        :func:`from_legacy`, and the new file replaces the old one in one rename."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        backup = self.folder / f"corrections.legacy-{stamp}.csv"
        _write_durably(backup, raw)
        lines = raw.decode("utf-8-sig", errors="replace").split("\n")
        first = next(i for i, line in enumerate(lines) if line.strip())
        header = _parse_line(lines[first]) or []
        out, dropped = [_csv_line(COLUMNS)], 0
        for line in lines[first + 1:]:
            cells = _parse_line(line)
            if not line.strip() or cells is None or len(cells) != len(header):
                dropped += bool(line.strip())
                continue
            try:  # every row, retractions and the rows they withdraw included
                row = from_legacy({k: restore(v) for k, v in zip(header, cells)})
            except (ValueError, KeyError):
                dropped += 1
                continue
            out.append(_csv_line([neutralise(row[c]) for c in COLUMNS]))
        temporary = self.path.with_name(f".corrections.upgrade.{uuid.uuid4().hex[:8]}.tmp")
        _write_durably(temporary, "".join(out).encode("utf-8"))
        os.replace(temporary, self.path)
        if dropped:
            logging.getLogger(__name__).warning("upgraded %s: %d bad rows stay only in %s", self.path, dropped, backup)

    def _row(self, review: Review, stored: dict[str, tuple[str, str]]) -> dict[str, str]:
        answers = review.answers()
        row = {
            "event_id": review.event_id,
            "logged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reviewer": review.reviewer, "case_id": review.case_id, "source": review.source,
            "clinic": stored.get("clinic", ("", ""))[0], "clinic_sha256": stored.get("clinic", ("", ""))[1],
            "derm": stored.get("derm", ("", ""))[0], "derm_sha256": stored.get("derm", ("", ""))[1],
            "model_version": review.model_version, "checkpoint_sha256": review.checkpoint_sha256,
            "verdict": review.verdict, "seconds_spent": f"{review.seconds_spent:.1f}",
            "confidence": "" if review.confidence is None else str(int(review.confidence)),
            "note": review.note,
        }
        for task in TASKS:
            row[f"model_{task.name}"] = review.predicted[task.name]
            row[task.name], row[f"status_{task.name}"], row[task.column] = answers[task.name]
        return {k: neutralise(v) for k, v in row.items()}

    def event_ids(self) -> set[str]:
        """Every event id in the log, bad rows included."""
        with self.lock:
            return self._scan()[1]

    def reviewed_cases(self, reviewer: str) -> dict[str, str]:
        """case id -> this reviewer's latest verdict."""
        if not self.path.is_file():
            return {}
        rows, _ = read_corrections(self.path)
        return {r["case_id"]: r["verdict"] for r in rows if r["reviewer"] == reviewer}

    def case_sources(self, case_id: str) -> set[str]:
        """Where the log's rows of this case id came from (derm7pt, manifest, upload): one
        source, unless two queues used the same id for different cases."""
        if not self.path.is_file():
            return set()
        rows, _ = read_corrections(self.path)
        return {r["source"] for r in rows if r["case_id"] == case_id}

    def latest_review(self, reviewer: str, case_id: str) -> dict[str, str] | None:
        """This reviewer's latest standing (not retracted) row for the case, if any."""
        if not self.path.is_file():
            return None
        rows, _ = read_corrections(self.path)
        mine = [r for r in rows if r["reviewer"] == reviewer and r["case_id"] == case_id]
        return mine[-1] if mine else None

    def same_content(self, review: Review, row: dict[str, str]) -> bool:
        """Whether saving ``review`` would repeat ``row`` (verdict, labels, confidence, note)."""
        new = {k: restore(v) for k, v in self._row(review, {}).items()}
        return all(new[c] == row[c] for c in ("verdict", "confidence", "note", *TASK_NAMES, *STATUS_COLUMNS,
                                              *FINE_COLUMNS))


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _write_failure(err: OSError) -> str:
    reason = "the server's disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
        else "the server could not write to its log"
    return f"Not saved: {reason}. Nothing was recorded; please tell the administrator, then save again."


@dataclass
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_corrections(path: str | Path) -> tuple[list[dict[str, str]], list[Problem]]:
    """Rows (dicts of restored values in the current columns, with ``line``) and the problems
    of the bad ones. A first-version log is read as if it had been upgraded (:func:`from_legacy`).

    Retracted rows and the retractions themselves are left out: every reader sees the
    reviews that stand.

    A bad row (wrong number of cells, a row cut short by a crash, an unknown verdict or
    label, a status that contradicts its class) is left out and reported with its line
    number; good rows are never lost.

    Raises:
        CorrectionsError: the file is missing or its header is not a corrections header.
    """
    path = Path(path)
    if not path.is_file():
        raise CorrectionsError(f"corrections file not found: {path}")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")  # a spreadsheet may add a BOM
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return [], []
    header = _parse_line(lines[first]) or []
    legacy = _is_legacy(header)
    missing = [] if legacy else [c for c in COLUMNS if c not in header]
    if missing:
        raise CorrectionsError(f"{path} line {first + 1}: not a skinnet corrections header (missing {missing[:4]})")
    rows, problems = [], []
    for number, text_line in enumerate(lines[first + 1:], start=first + 2):
        if number == len(lines) and not complete:
            problems.append(Problem(number, "row cut short (the writer stopped mid-row); skipped"))
            break
        cells = _parse_line(text_line)
        if cells is None or len(cells) != len(header):
            found = "unreadable" if cells is None else f"{len(cells)} cells"
            problems.append(Problem(number, f"expected {len(header)} cells, found {found}"))
            continue
        row = {k: restore(v) for k, v in zip(header, cells)}
        if row["verdict"] not in VERDICTS + (RETRACT,):
            problems.append(Problem(number, f"unknown verdict {row['verdict']!r}"))
            continue
        try:
            row = from_legacy(row) if legacy else row
            check_row(row)
        except ValueError as err:
            problems.append(Problem(number, str(err)))
            continue
        row["line"] = number
        rows.append(row)
    withdrawn = {(r["reviewer"], r["note"]) for r in rows if r["verdict"] == RETRACT}
    return [r for r in rows if r["verdict"] != RETRACT and (r["reviewer"], r["event_id"]) not in withdrawn], problems


def _is_legacy(header: list[str]) -> bool:
    return all(c in header for c in LEGACY_COLUMNS) and not all(c in header for c in COLUMNS)


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


def _parse_line(line: str) -> list[str] | None:
    try:
        parsed = list(csv.reader([line], strict=True))
    except csv.Error:
        return None
    return parsed[0] if parsed else []


def latest_reviews(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each reviewer's latest review of each case when it carries labels, in file (time) order
    (a later 'unsure' or 'skip' withdraws that reviewer's earlier labels)."""
    latest: dict[tuple[str, str], dict] = {}
    for row in rows:  # file order is time order (append-only)
        latest[(row["case_id"], row["reviewer"])] = row
    return sorted((r for r in latest.values() if r["verdict"] in LABELLED_VERDICTS), key=lambda r: r["line"])


@dataclass
class CaseLabels:
    """What the reviewers' latest reviews of one case say, task by task.

    Attributes:
        labels: task -> class, only for tasks someone labelled and the rule could decide.
        fine: task -> a fine Derm7pt value a reviewer gave for that class ('' if none).
        disagreement: tasks the reviewers labelled differently.
        ties: tasks the ``majority`` rule could not decide (left unlabelled, not guessed).
        latest: the latest of the reviews (source, images, verdict, line).
    """

    case_id: str
    labels: dict[str, str]
    fine: dict[str, str]
    reviewers: list[str]
    disagreement: list[str]
    ties: list[str]
    latest: dict[str, str]


def current_labels(rows: list[dict[str, str]], rule: str = "latest") -> dict[str, CaseLabels]:
    """Per case, per task: the class of the latest review that labelled the task (``latest``),
    or the most common class over the reviewers who labelled it (``majority``; a tie is flagged
    and the task left unlabelled). Tasks nobody labelled stay out (training keeps the
    reference label there)."""
    if rule not in ("latest", "majority"):
        raise ValueError(f"rule must be 'latest' or 'majority', got {rule!r}")
    by_case: dict[str, list[dict]] = {}
    for row in latest_reviews(rows):
        by_case.setdefault(row["case_id"], []).append(row)
    result = {}
    for case_id, reviews in by_case.items():
        labels, fine, disagreement, ties = {}, {}, [], []
        said = [(r, task_labels(r)) for r in reviews]
        for task in TASKS:
            votes = [(r, labelled[task.name]) for r, labelled in said if task.name in labelled]
            if not votes:
                continue
            counts = Counter(cls for _, cls in votes)
            if len(counts) > 1:
                disagreement.append(task.name)
            if rule == "latest":
                chosen = votes[-1][1]
            else:
                best = max(counts.values())
                winners = [cls for cls, n in counts.items() if n == best]
                if len(winners) > 1:
                    ties.append(task.name)
                    continue
                chosen = winners[0]
            labels[task.name] = chosen
            fine[task.name] = next((r[task.column] for r, cls in reversed(votes) if cls == chosen and r[task.column]), "")
        result[case_id] = CaseLabels(case_id, labels, fine, sorted({r["reviewer"] for r in reviews}),
                                     disagreement, ties, reviews[-1])
    return result


EXPORT_COLUMNS = ("case_num", "source", "clinic", "derm", *TASK_NAMES, *LABEL_COLUMNS, "verdict", "n_reviewers",
                  "reviewers", "disagreement", "ties")


def export_meta_csv(rows: list[dict[str, str]], target: str | Path, rule: str = "latest") -> Path:
    """The current labels, one row per case: the class of every task someone labelled (blank
    where nobody did, or a tie), meta.csv's raw columns only where a reviewer gave a fine value,
    the latest verdict, how many reviewers, and which tasks they disagree on or tie."""
    target = Path(target)
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_COLUMNS)
        for case_id, entry in current_labels(rows, rule).items():
            row = entry.latest
            writer.writerow([neutralise(v) for v in
                             [case_id, row["source"], row["clinic"], row["derm"],
                              *(entry.labels.get(t, "") for t in TASK_NAMES),
                              *(entry.fine.get(t.name, "") for t in TASKS), row["verdict"], len(entry.reviewers),
                              ";".join(entry.reviewers), ";".join(entry.disagreement), ";".join(entry.ties)]])
    return target


NO_LABEL = -1
"""A task's label index where no reviewer labelled it (the loss skips it)."""


def correction_case(entry: CaseLabels, folder: Path) -> Case:
    """A training case from the current labels of an uploaded (non-Derm7pt) case; tasks no
    reviewer labelled are :data:`NO_LABEL`.

    Raises:
        CorrectionsError: no stored dermoscopy image, a stored image is missing, or no task
            has a label.
    """
    row = entry.latest
    if not row["derm"]:
        raise CorrectionsError(f"line {row['line']}: case {entry.case_id} has no dermoscopy image; "
                               "training needs one")
    if not entry.labels:
        raise CorrectionsError(f"line {row['line']}: case {entry.case_id} has no labelled task")
    derm = folder / row["derm"]
    clinical = folder / row["clinic"] if row["clinic"] else derm
    for image in {derm, clinical}:
        if not image.is_file():
            raise CorrectionsError(f"line {row['line']}: stored image {image} is missing")
    labels = tuple(t.classes.index(entry.labels[t.name]) if t.name in entry.labels else NO_LABEL for t in TASKS)
    return Case(case_id=entry.case_id, clinical_path=clinical, dermoscopy_path=derm, labels=labels,
                clinic_is_derm=not row["clinic"])


def main(argv: list[str] | None = None) -> None:
    """``python -m skinnet.corrections export LOG.csv OUT.csv [--rule majority]``; ``check LOG.csv``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m skinnet.corrections", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="current labels, one row per case (see export_meta_csv)")
    export.add_argument("log")
    export.add_argument("out")
    export.add_argument("--rule", default="latest", choices=["latest", "majority"])
    check = sub.add_parser("check", help="report bad rows with their line numbers")
    check.add_argument("log")
    args = parser.parse_args(argv)
    try:
        rows, problems = read_corrections(args.log)
    except CorrectionsError as err:
        raise SystemExit(str(err)) from None
    for problem in problems:
        print(f"{args.log} {problem}")
    if args.command == "export":
        export_meta_csv(rows, args.out, args.rule)
        print(f"{len(current_labels(rows, args.rule))} cases written to {args.out}")
    else:
        print(f"{len(rows)} good rows, {len(problems)} bad")
        raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
