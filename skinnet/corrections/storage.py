"""The corrections log on disk: a folder of append-only CSV shards, safe for several writers.

A log folder holds

- ``shards/<start time>-<random>.csv``: one file per writer (an app process, a script), appended
  to by that writer only. Two processes serving reviewers at once (two replicas, or a restart
  that overlaps the old process) never write to the same file, so copying the folder to a
  backup and back never overwrites anyone's rows (:mod:`skinnet.backup`);
- ``corrections.csv``: the single log of earlier versions, read and never written again;
- ``images/<sha256>.png``: the reviewed images, de-identified (pixels only), content-addressed.

Every reader merges the files into one log (:func:`read_events`), in the order the rows were
logged: by time, then file, then line; one writer's rows keep their file order, and an event id
seen twice counts once. Appends happen under one file lock per folder, as one ``write`` of whole
lines then ``fsync``; a row cut short by a crash is reported by the reader with its line number.
Under the same lock :meth:`CorrectionsLog.append` keeps the log's rules, against every writer's
rows: an event id logs once, a review identical to the reviewer's standing one (same answer, same
images) logs nothing, a case id names one case (one queue kind, and the images of its first review),
and a reviewer who was shown a case's reference labels cannot review that case, or its images
under another id, again. A row's time is after every row already in the log, whatever the
writer's clock says, so the log's order is the order of the saves.

Each :class:`CorrectionsLog` keeps an index of the rows in memory, updated from the bytes each
file gained since it last looked, so a save costs the same with 100 rows or 20,000.
"""
from __future__ import annotations

import bisect
import csv
import errno
import hashlib
import heapq
import logging
import os
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from filelock import FileLock
from PIL import Image

from ..imaging import pixel_sha256, png_bytes
from ..labels import TASK_NAMES
from .schema import (COLUMNS, RETRACT, REVEAL, VERDICTS, CorrectionsError, Header, Problem,
                     Review, csv_line, logged_time, neutralise, parse_file, parse_lines, standing_reviews,
                     write_failure)

log = logging.getLogger(__name__)

LEGACY_LOG = "corrections.csv"
"""The one-file log of earlier versions: still read (it may be in a backup), never written."""
SHARDS = "shards"
IMAGE_DIR = "images"
LEGACY_REVEALS = "reference_revealed.csv"
"""Teaching reveals recorded by earlier versions (``reviewer, [source,] case id, time``): they
still lock their cases; reveals are rows of the log now."""
LOCK_FILE = ".corrections.csv.lock"
WAIT_FOR_RESTORE_S = 30.0
"""Seconds a save waits for the log to come back from its backup after a start."""


def log_folder(path: str | Path) -> Path:
    """The log folder that a path names: the folder itself, its ``corrections.csv`` or one of its
    shards (each stands for the whole log). Any other file is a log of its own (its folder)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.parent.name == SHARDS:
        return path.parent.parent
    return path.parent


def log_files(folder: Path) -> list[tuple[str, Path]]:
    """(name relative to the folder, path) of every file of the log, the earlier versions' first."""
    files = [(LEGACY_LOG, folder / LEGACY_LOG)] if (folder / LEGACY_LOG).is_file() else []
    shards = folder / SHARDS
    if shards.is_dir():
        files += sorted((f"{SHARDS}/{p.name}", p) for p in shards.iterdir()
                        if p.suffix == ".csv" and not p.name.startswith(".") and p.is_file())
    return files


def _ordered(rows: list[dict], file: str, after: datetime | None = None) -> tuple[list[tuple], datetime | None]:
    """(order key, row) of one file's rows, in file order: a writer's rows keep their order even
    if its clock stepped back. Returns the last time, to continue the file later."""
    keyed = []
    for row in rows:
        stamp = logged_time(row)
        after = stamp if after is None or stamp > after else after
        keyed.append(((after, file, row["line"]), row))
    return keyed, after


def read_events(path: str | Path) -> tuple[list[dict], list[Problem]]:
    """Every event of a log (reviews, retractions, reveals), merged in log order, each with its
    ``file``, ``line`` and its position ``order``; and the problems of its bad rows.

    ``path``: a log folder, any file in it, or a single CSV file of rows.

    Raises:
        CorrectionsError: no log there, or one of its files is not a corrections file.
    """
    path = Path(path)
    if path.is_file() and path.name != LEGACY_LOG and path.parent.name != SHARDS:
        files = [(path.name, path)]  # a lone CSV (an export's input, a copy): just it
    else:
        files = log_files(log_folder(path))
        if not files:
            raise CorrectionsError(f"corrections log not found: {path}")
    sequences, problems = [], []
    for name, file in files:
        _, parsed = parse_file(file.read_bytes(), name if len(files) > 1 else "")
        sequences.append(_ordered(parsed.rows, name)[0])
        problems += parsed.problems
    events, seen = [], set()
    for _, row in heapq.merge(*sequences, key=lambda keyed: keyed[0]):
        if row["event_id"] in seen:  # a retried save that reached two processes
            continue
        seen.add(row["event_id"])
        row["order"] = len(events)
        events.append(row)
    return events, problems


def read_corrections(path: str | Path) -> tuple[list[dict[str, str]], list[Problem]]:
    """The reviews that stand (retracted rows, retractions and reveals left out), in log order,
    and the problems of the bad rows. ``path`` as for :func:`read_events`."""
    events, problems = read_events(path)
    return standing_reviews(events), problems


@dataclass
class _FileState:
    """How far the index has read one file of the log."""

    inode: int
    offset: int = 0
    lines: int = 0
    header: Header | None = None
    last_time: datetime | None = None


@dataclass
class _Index:
    """The log's rows as the rules and the review form need them, built from the files' bytes."""

    files: dict[str, _FileState] = field(default_factory=dict)
    event_ids: set[str] = field(default_factory=set)
    reviews: dict[tuple[str, str], list[tuple]] = field(default_factory=dict)
    """(reviewer, case id) -> [(order key, row)] of that reviewer's reviews of the case, in log order."""
    withdrawn: set[tuple[str, str]] = field(default_factory=set)
    sources: dict[str, set[str]] = field(default_factory=dict)
    cases_of: dict[str, set[str]] = field(default_factory=dict)
    revealed_cases: dict[str, set[str]] = field(default_factory=dict)
    revealed_images: dict[str, dict[str, str]] = field(default_factory=dict)
    """reviewer -> {image sha256: the case id it was revealed with}."""
    case_images: dict[str, tuple[str, str]] = field(default_factory=dict)
    """case id -> (clinic sha256, derm sha256) of its first review: the images the id names."""
    newest: datetime | None = None
    """The latest ``logged_at`` of any writer's row."""
    legacy_reveals: tuple[int, int] = (0, 0)
    generation: int = 0

    def add(self, keyed: list[tuple]) -> None:
        for key, row in keyed:
            reviewer, case_id = row["reviewer"], row["case_id"]
            if row["verdict"] == RETRACT:
                self.withdrawn.add((reviewer, row["note"]))
            elif row["verdict"] == REVEAL:
                self.revealed_cases.setdefault(reviewer, set()).add(case_id)
                images = self.revealed_images.setdefault(reviewer, {})
                for sha in (row["clinic_sha256"], row["derm_sha256"]):
                    if sha:
                        images[sha] = case_id
            else:
                bisect.insort(self.reviews.setdefault((reviewer, case_id), []), (key, row), key=lambda kr: kr[0])
                self.cases_of.setdefault(reviewer, set()).add(case_id)
                self.case_images.setdefault(case_id, (row["clinic_sha256"], row["derm_sha256"]))
            self.sources.setdefault(case_id, set()).add(row["source"])
            self.newest = key[0] if self.newest is None or key[0] > self.newest else self.newest
        self.generation += 1

    def latest(self, reviewer: str, case_id: str) -> dict | None:
        for _, row in reversed(self.reviews.get((reviewer, case_id), ())):
            if (reviewer, row["event_id"]) not in self.withdrawn:
                return row
        return None


class CorrectionsLog:
    """A log folder (see the module's doc) and this writer's shard of it.

    Args:
        folder: the log folder (made on the first append).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.path = self.folder / SHARDS / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.csv"
        """The file this writer appends to (created with the first row)."""
        self.lock = FileLock(str(self.folder / LOCK_FILE), timeout=60)
        self.available = threading.Event()
        """Set while the log may take saves (cleared while :mod:`skinnet.backup` restores it)."""
        self.available.set()
        self._index = _Index()
        self._index_lock = threading.RLock()
        self._last_logged: datetime | None = None
        self._reviewed: dict[str, tuple[int, dict[str, str]]] = {}

    # -- reading ---------------------------------------------------------------------------------
    def refresh(self) -> _Index:
        """The index, brought up to date with the bytes the log's files gained (the whole log
        again only if a file shrank or was replaced, e.g. by a restore).

        Raises:
            CorrectionsError: a file of the log is not a corrections file.
        """
        with self._index_lock:
            index = self._index
            files = log_files(self.folder) if self.folder.is_dir() else []
            gone = not index.files.keys() <= {name for name, _ in files} or (
                index.legacy_reveals != (0, 0) and not (self.folder / LEGACY_REVEALS).is_file())
            if gone:  # a file of the log went (an administrator's doing): read what is left anew
                self._index, self._reviewed = _Index(), {}
                return self.refresh()
            for name, path in files:
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                state = index.files.get(name)
                if state is not None and (state.inode != stat.st_ino or stat.st_size < state.offset):
                    self._index, self._reviewed = _Index(), {}  # replaced (a restore) or cut back: read anew
                    return self.refresh()
                if state is None:
                    state = index.files[name] = _FileState(stat.st_ino)
                if stat.st_size > state.offset:
                    self._read_more(index, name, path, state)
            self._read_legacy_reveals(index)
            return index

    @staticmethod
    def _read_more(index: _Index, name: str, path: Path, state: _FileState) -> None:
        """Parse the complete lines a file gained since ``state.offset``."""
        with open(path, "rb") as handle:
            handle.seek(state.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # a line still being written (or cut by a crash) waits
        if end == 0:
            return
        text = data[:end].decode("utf-8-sig" if state.offset == 0 else "utf-8", errors="replace")
        lines = text.split("\n")[:-1]
        first = state.lines + 1
        if state.header is None:
            start = next((i for i, line in enumerate(lines) if line.strip()), None)
            if start is None:
                state.offset, state.lines = state.offset + end, state.lines + len(lines)
                return
            state.header = Header(lines[start], name, first + start)
            lines, first = lines[start + 1:], first + start + 1
        parsed = parse_lines(lines, state.header, first, name)
        keyed, state.last_time = _ordered(parsed.rows, name, state.last_time)
        index.event_ids |= parsed.event_ids
        index.add(keyed)
        state.offset += end
        state.lines = first - 1 + len(lines)

    def _read_legacy_reveals(self, index: _Index) -> None:
        path = self.folder / LEGACY_REVEALS
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        if (stat.st_ino, stat.st_size) == index.legacy_reveals:
            return
        with path.open(newline="") as handle:
            for row in csv.reader(handle):
                if len(row) in (3, 4):  # reviewer, [source,] case id, time
                    index.revealed_cases.setdefault(row[0], set()).add(row[-2])
        index.legacy_reveals = (stat.st_ino, stat.st_size)
        index.generation += 1

    def event_ids(self) -> set[str]:
        """Every event id in the log, bad rows included."""
        return set(self.refresh().event_ids)

    def latest_review(self, reviewer: str, case_id: str) -> dict[str, str] | None:
        """This reviewer's latest standing (not retracted) review of the case, if any."""
        with self._index_lock:
            return self.refresh().latest(reviewer, case_id)

    def newest_save(self, reviewer: str, case_id: str) -> str | None:
        """The event id of this reviewer's newest saved review of the case, withdrawn or not: a
        draft made before it is older than what the reviewer saved last (an undo makes no draft
        older; a save does)."""
        with self._index_lock:
            rows = self.refresh().reviews.get((reviewer, case_id), ())
            return rows[-1][1]["event_id"] if rows else None

    def reviewed_cases(self, reviewer: str) -> dict[str, str]:
        """case id -> this reviewer's latest standing verdict."""
        with self._index_lock:
            index = self.refresh()
            cached = self._reviewed.get(reviewer)
            if cached is None or cached[0] != index.generation:
                latest = {case: index.latest(reviewer, case) for case in index.cases_of.get(reviewer, ())}
                cached = self._reviewed[reviewer] = (index.generation,
                                                     {c: r["verdict"] for c, r in latest.items() if r})
            return dict(cached[1])

    def revealed(self, reviewer: str) -> set[str]:
        """The case ids whose reference labels this reviewer has been shown."""
        with self._index_lock:
            return set(self.refresh().revealed_cases.get(reviewer, ()))

    # -- writing ---------------------------------------------------------------------------------
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
            try:  # on disk before the row that names it is (a power cut leaves no row without its image)
                with open(temporary, "wb") as file:
                    file.write(png_bytes(image))
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, target)
            except OSError as err:
                temporary.unlink(missing_ok=True)
                raise CorrectionsError(write_failure(err)) from None
            _fsync_folder(target.parent)
        return relative, digest

    def append(self, review: Review, clinical: Image.Image | None = None,
               dermoscopy: Image.Image | None = None, images: dict[str, tuple[str, str]] | None = None) -> bool:
        """Log an event. Returns False when it is already logged: the same event id, or a review
        identical to the reviewer's standing review of the case.

        True means the whole row is on disk (written and fsynced). The log's rules are checked
        against every writer's rows under the folder's lock; images are stored only for a
        review the rules admit. On any write failure this writer's file is truncated back to
        what it was and CorrectionsError says so in plain words.

        Args:
            clinical, dermoscopy: the case's images, stored de-identified; or
            images: already stored ``{"clinic": (path, sha), "derm": (path, sha)}``.

        Raises:
            CorrectionsError: a field is invalid, a rule refuses the review (the message says
                which and why), the log is still being restored, or the disk refused the write.
        """
        review.validate()
        if not self.available.wait(WAIT_FOR_RESTORE_S):
            raise CorrectionsError("Not saved: the review log is still being restored from its backup after a "
                                   "restart. Nothing was recorded; save again in a minute.")
        given = {key: image for key, image in (("clinic", clinical), ("derm", dermoscopy)) if image is not None}
        stored = dict(images or {})
        hashes = {**{key: sha for key, (_, sha) in stored.items()},
                  **{key: pixel_sha256(image) for key, image in given.items()}}
        if given:  # refused early: nothing is stored for a review the log will not take
            with self.lock, self._index_lock:
                if self._repeats(review, hashes):
                    return False
                self._check_rules(review, hashes)
            stored.update({key: self.store_image(image) for key, image in given.items()})
        with self.lock, self._index_lock:  # the folder's writers, then this process's threads
            if self._repeats(review, hashes):
                return False
            self._check_rules(review, hashes)
            self._write(review.row(stored, self._next_time()))
        return True

    def record_reveal(self, reviewer: str, case_id: str, revealed_after: dict[str, str]) -> bool:
        """Record (once) that ``reviewer`` is being shown the reference labels of ``case_id``, after
        their review ``revealed_after`` (a row of the log, whose images the reveal locks too)."""
        event = Review(event_id=_content_id(REVEAL, reviewer, case_id), reviewer=reviewer, case_id=case_id,
                       source=revealed_after["source"], verdict=REVEAL,
                       predicted={t: revealed_after[f"model_{t}"] for t in TASK_NAMES}, corrected={},
                       model_version=revealed_after["model_version"],
                       checkpoint_sha256=revealed_after["checkpoint_sha256"], note=revealed_after["event_id"])
        images = {key: (revealed_after[key], revealed_after[f"{key}_sha256"]) for key in ("clinic", "derm")}
        return self.append(event, images=images)

    def _repeats(self, review: Review, hashes: dict[str, str]) -> bool:
        index = self.refresh()
        if review.event_id in index.event_ids:
            return True
        standing = index.latest(review.reviewer, review.case_id) if review.verdict in VERDICTS else None
        return (standing is not None and review.same_answer(standing)
                and all(standing[f"{key}_sha256"] == hashes.get(key, "") for key in ("clinic", "derm")))

    def _check_rules(self, review: Review, hashes: dict[str, str]) -> None:
        """The log's rules for a new event, against every writer's rows (called under the lock).

        Raises:
            CorrectionsError: the rule the event breaks, in words a reviewer understands.
        """
        index = self._index
        if review.verdict == REVEAL:
            return
        other_sources = index.sources.get(review.case_id, set()) - {review.source}
        if other_sources:
            raise CorrectionsError(
                f"Case id {review.case_id} is already in the review log as a case of a "
                f"{', '.join(sorted(other_sources))} queue: one id must name one case, so this review is not "
                "saved. Give this queue's cases ids of their own (for example with a prefix).")
        if review.verdict == RETRACT:
            withdrawn = next((r for _, r in index.reviews.get((review.reviewer, review.case_id), ())
                              if r["event_id"] == review.note), None)
            hashes = {k: withdrawn[f"{k}_sha256"] for k in ("clinic", "derm")} if withdrawn else {}
        seen_case = review.case_id in index.revealed_cases.get(review.reviewer, ())
        revealed_images = index.revealed_images.get(review.reviewer, {})
        seen_with = next((revealed_images[sha] for sha in hashes.values() if sha in revealed_images), None)
        if not seen_case and seen_with is None:
            named = index.case_images.get(review.case_id)
            if review.verdict in VERDICTS and named not in (None, (hashes.get("clinic", ""), hashes.get("derm", ""))):
                raise CorrectionsError(
                    f"Case id {review.case_id} is already in the review log with other images (another lesion under "
                    "the same id, or its image files were replaced since): one id must name one case, so this "
                    "review is not saved. Give this case an id of its own in its queue file.")
            return
        what = (f"case {review.case_id}" if seen_case
                else f"case {seen_with}, whose image{'s' if len(hashes) > 1 else ''} this case shows")
        if review.verdict == RETRACT:
            raise CorrectionsError(f"You have seen the Derm7pt reference labels of {what}: your review of it stays "
                                   "as it was saved before the reveal.")
        raise CorrectionsError(f"You have seen the Derm7pt reference labels of {what}: a new review of it would "
                               "no longer be your own reading, so it is not saved.")

    def _next_time(self) -> datetime:
        """Now, but after every row already in the log (called under the lock): readers order the
        writers' rows by time, so a writer whose clock runs behind another's (a replica, a clock
        stepped back) must still log its row as the latest, which it is."""
        now = datetime.now(timezone.utc)
        for before in (self._last_logged, self._index.newest):
            if before is not None and now <= before and before < datetime.max.replace(tzinfo=timezone.utc):
                now = before + timedelta(microseconds=1)
        self._last_logged = now
        return now

    def _write(self, row: dict[str, str]) -> None:
        """Append one row to this writer's shard (with the header if it is new), all or nothing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            # a crash cut this file's last row short: close it first (the reader reports it)
            prefix = "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
            state = self._index.files.get(f"{SHARDS}/{self.path.name}")
            if state is None or state.header is None:  # a new file, or blank lines only so far
                prefix += csv_line(COLUMNS)
            data = (prefix + csv_line([neutralise(row[c]) for c in COLUMNS])).encode("utf-8")
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
                raise CorrectionsError(write_failure(err)) from None
        finally:
            os.close(fd)
        if size == 0:
            _fsync_folder(self.path.parent)  # the new file's name is durable too


def _fsync_folder(folder: Path) -> None:
    if sys.platform.startswith("win"):
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _content_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

