"""Reading a Derm7pt release_v0 folder: cases, labels, official splits, image paths.

The reader survives the official release's quirks: meta.csv paths whose case differs
from the files on disk (``FCl/Fcl068.jpg`` is ``FCL/Fcl068.jpg``), upper-case ``.JPG``,
and the 9 cases whose clinical image is the dermoscopy image repeated (flagged, so that
training and evaluation can treat them as dermoscopy-only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .labels import LABEL_COLUMNS, TASKS

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
META_FILE = Path("meta") / "meta.csv"
IMAGE_DIR = "images"
REQUIRED_COLUMNS = ("case_num", "clinic", "derm", *LABEL_COLUMNS)


class DatasetError(ValueError):
    """A dataset folder or file is not what the reader expects; the message says what."""


@dataclass(frozen=True)
class Case:
    """One lesion: its two images and its 8 labels (class indexes in TASKS order)."""

    case_id: str
    clinical_path: Path
    dermoscopy_path: Path
    labels: tuple[int, ...]
    clinic_is_derm: bool = False
    """True when the release repeats the dermoscopy image as the clinical one: no clinical
    photo exists, so the clinical head must not be trained or scored on this case."""


class CaseInsensitivePaths:
    """Resolves relative paths under a folder ignoring case, as the release needs on Linux."""

    def __init__(self, root: Path):
        self.root = root
        self._index = {p.relative_to(root).as_posix().lower(): p
                       for p in root.rglob("*") if p.is_file()}

    def resolve(self, relative: str) -> Path | None:
        exact = self.root / relative
        if exact.is_file():
            return exact
        return self._index.get(Path(relative).as_posix().lower())


def read_split_indexes(meta_dir: Path, split: str) -> list[int]:
    """Zero-based row indexes into meta.csv of an official split (``<split>_indexes.csv``)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = meta_dir / f"{split}_indexes.csv"
    if not path.is_file():
        raise DatasetError(f"missing split file {path} (a release_v0 folder has meta/{split}_indexes.csv)")
    try:
        frame = pd.read_csv(path)
        return [int(i) for i in frame["indexes"]]
    except (KeyError, ValueError, pd.errors.ParserError) as err:
        raise DatasetError(f"{path}: expected one column 'indexes' of row numbers ({err})") from None


def parse_labels(row: pd.Series, where: str) -> tuple[int, ...]:
    """Class indexes of the 8 tasks from a meta.csv-style row of raw values."""
    try:
        return tuple(task.class_index(row[task.column]) for task in TASKS)
    except ValueError as err:
        raise DatasetError(f"{where}: {err}") from None


class Derm7pt:
    """A Derm7pt release_v0 folder (``meta/`` and ``images/``).

    Args:
        root: the folder holding ``meta/meta.csv`` and ``images/``.

    Raises:
        DatasetError: the folder, meta.csv, a column, a label or an image is missing or wrong.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        meta_path = self.root / META_FILE
        if not self.root.is_dir():
            raise DatasetError(f"Derm7pt folder not found: {self.root}")
        if not meta_path.is_file():
            raise DatasetError(f"not a Derm7pt release_v0 folder: {meta_path} is missing "
                               "(download release_v0 and pass the folder that holds meta/ and images/)")
        if not (self.root / IMAGE_DIR).is_dir():
            raise DatasetError(f"not a Derm7pt release_v0 folder: {self.root / IMAGE_DIR} is missing")
        try:
            self.meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise DatasetError(f"{meta_path} is not a readable CSV: {err}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in self.meta.columns]
        if missing:
            raise DatasetError(f"{meta_path} lacks the columns {missing}")
        self.paths = CaseInsensitivePaths(self.root / IMAGE_DIR)
        self._cases: list[Case] | None = None

    def cases(self) -> list[Case]:
        """All cases of meta.csv in row order (row i is case index i of the split files)."""
        if self._cases is None:
            self._cases = [self._case(i, row) for i, row in self.meta.iterrows()]
            n_flagged = sum(c.clinic_is_derm for c in self._cases)
            if n_flagged:
                log.info("%d cases have no clinical photo (clinic == derm)", n_flagged)
        return self._cases

    def _case(self, row_index: int, row: pd.Series) -> Case:
        where = f"{self.root / META_FILE} row {row_index + 2} (case {row['case_num']})"
        derm = self._image(row["derm"], where)
        clinic_is_derm = row["clinic"].strip().lower() == row["derm"].strip().lower()
        clinical = derm if clinic_is_derm else self._image(row["clinic"], where)
        return Case(case_id=str(row["case_num"]), clinical_path=clinical, dermoscopy_path=derm,
                    labels=parse_labels(row, where), clinic_is_derm=clinic_is_derm)

    def _image(self, relative: str, where: str) -> Path:
        path = self.paths.resolve(relative.strip())
        if path is None:
            raise DatasetError(f"{where}: image {relative!r} not found under {self.root / IMAGE_DIR}")
        return path

    def split(self, split: str) -> list[Case]:
        """The cases of an official split (train, valid or test)."""
        cases = self.cases()
        indexes = read_split_indexes(self.root / "meta", split)
        bad = [i for i in indexes if not 0 <= i < len(cases)]
        if bad:
            raise DatasetError(f"{split}_indexes.csv names rows {bad[:5]} but meta.csv has {len(cases)} rows")
        return [cases[i] for i in indexes]

    def split_of(self) -> dict[str, str]:
        """case id -> split name, for every case in an official split."""
        cases = self.cases()
        return {cases[i].case_id: split for split in SPLITS
                for i in read_split_indexes(self.root / "meta", split)}
