"""Review queues: the cases a reviewer walks through, from a manifest CSV or a Derm7pt meta.csv.

A manifest is a CSV with the columns ``case_id, clinical, dermoscopy`` (paths relative to
the manifest's folder; one of the two images may be empty). A Derm7pt ``meta.csv`` (inside
``meta/`` of a release_v0 folder) opens as a queue of its cases, with the reader's quirk
handling.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from .corrections.schema import MAX_FIELD, is_case_id
from .data import CaseInsensitivePaths, DatasetError, Derm7pt
from .imaging import ImageError, load_rgb
from .labels import TASKS

MANIFEST_COLUMNS = ("case_id", "clinical", "dermoscopy")


@dataclass(frozen=True)
class QueueCase:
    case_id: str
    clinical: str | None
    dermoscopy: str | None
    source: str
    """``derm7pt`` (case id = meta.csv case_num), ``manifest`` or ``upload``."""
    split: str = ""
    """The case's official Derm7pt split (train, valid, test); '' for a manifest."""
    reference: tuple[str, ...] = ()
    """Derm7pt's labels of the case (a class per task, in TASKS order); () for a manifest. Kept
    on the server: shown only to a reviewer who asked for them, after saving (teaching)."""


def _inside(path: Path, root: Path) -> bool:
    resolved, root = path.resolve(), root.resolve()
    return resolved == root or root in resolved.parents


def queue_image_path(path: str | Path, root: str | Path | None, name: str = "image") -> Path:
    """Where a queue image is now, refused if that is no longer inside the queue folder.

    Raises:
        ImageError: outside the queue folder (said without paths).
    """
    resolved = Path(path).resolve()
    if root is not None and not _inside(resolved, Path(root)):
        raise ImageError(f"{name}: the file is no longer inside the queue folder; tell the administrator")
    return resolved


def read_queue_image(path: str | Path, root: str | Path | None, name: str = "image") -> Image.Image:
    """A queue case's image, checked to lie inside the queue folder when it is read, not only
    when the queue opened: a link put in place of the file later is refused. The file opened is
    the resolved path, with its last part not followed if it has become a link since.

    Raises:
        ImageError: outside the queue folder, missing, or not a readable image (said without paths).
    """
    resolved = queue_image_path(path, root, name)
    try:
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise ImageError(f"{name}: the file is missing from the queue folder; tell the administrator") from None
    with os.fdopen(fd, "rb") as handle:
        return load_rgb(handle, name)


def open_queue(path: str | Path, root: str | Path | None = None, split: str | None = None) -> list[QueueCase]:
    """Read a manifest CSV or a Derm7pt meta.csv into a queue.

    Args:
        path: the CSV.
        root: if given, the CSV and every image must lie inside this folder (the app's
            ``--queue-root``: a reviewer must not open arbitrary server files).
        split: for a Derm7pt meta.csv, only this official split.

    Raises:
        DatasetError: the file is missing, outside the root, malformed, or names missing images.
    """
    path = Path(path).expanduser()
    if root is not None and not _inside(path, Path(root)):
        raise DatasetError(f"{path} is outside the queue folder {root}")
    if not path.is_file():
        raise DatasetError(f"queue file not found: {path}")
    try:
        header = pd.read_csv(path, nrows=0, dtype=str).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not a readable CSV ({err})") from None
    if {"clinic", "derm", "case_num"} <= set(header):
        if path.parent.name != "meta":
            raise DatasetError(f"{path} looks like a Derm7pt meta.csv but is not inside a release's meta/ folder")
        data = Derm7pt(path.parent.parent)
        cases = data.split(split) if split else data.cases()
        if root is not None:
            outside = [c.case_id for c in cases
                       if not _inside(c.dermoscopy_path, Path(root)) or not _inside(c.clinical_path, Path(root))]
            if outside:
                raise DatasetError(f"{path}: the images of {len(outside)} cases (e.g. case {outside[0]}) are "
                                   f"outside the queue folder {root}")
        split_of = data.split_of()
        return [QueueCase(c.case_id, None if c.clinic_is_derm else str(c.clinical_path),
                          str(c.dermoscopy_path), "derm7pt", split_of.get(c.case_id, ""),
                          tuple(t.classes[i] for t, i in zip(TASKS, c.labels))) for c in cases]
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path}: a manifest needs the columns {list(MANIFEST_COLUMNS)} "
                           f"(missing {missing}), or use a Derm7pt meta.csv")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    paths = CaseInsensitivePaths(path.parent)
    queue, seen = [], set()
    for number, row in enumerate(frame.itertuples(index=False), start=2):
        case_id = str(row.case_id).strip()
        if not case_id or case_id in seen:
            raise DatasetError(f"{path} line {number}: case id {case_id!r} is empty or repeated")
        if not is_case_id(case_id):
            raise DatasetError(f"{path} line {number}: case id {case_id[:40]!r} is longer than {MAX_FIELD} "
                               "characters or has a line break or another control character; a review of it could "
                               "not be saved under it")
        seen.add(case_id)
        images = {}
        for column in ("clinical", "dermoscopy"):
            relative = str(getattr(row, column)).strip()
            if not relative:
                images[column] = None
                continue
            resolved = paths.resolve(relative)
            if resolved is None or (root is not None and not _inside(resolved, Path(root))):
                raise DatasetError(f"{path} line {number}: {column} image {relative!r} not found")
            images[column] = str(resolved)
        if images["clinical"] is None and images["dermoscopy"] is None:
            raise DatasetError(f"{path} line {number}: case {case_id} has no image")
        queue.append(QueueCase(case_id, images["clinical"], images["dermoscopy"], "manifest"))
    if not queue:
        raise DatasetError(f"{path} lists no cases")
    return queue


def entropy(probabilities: dict[str, float]) -> float:
    return -sum(p * math.log(p) for p in probabilities.values() if p > 0)


def uncertainty(prediction) -> float:
    """Mean normalised entropy over the 8 tasks of the primary head (0 = sure, 1 = uniform)."""
    head = prediction.heads[prediction.primary_head]
    values = [entropy(p) / math.log(len(p)) for p in head.probabilities.values()]
    return sum(values) / len(values)


MAX_LISTED = 500


def list_queues(root: str | Path) -> list[str]:
    """Queue files inside ``root`` (manifests and Derm7pt ``meta/meta.csv``), as paths relative
    to it: what a reviewer may choose from. Files reached through a link that leaves the root
    are not listed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*.csv")):
        if len(found) >= MAX_LISTED or len(path.relative_to(root).parts) > 5:
            continue
        if not _inside(path, root) or not path.is_file():
            continue
        try:
            header = set(pd.read_csv(path, nrows=0, dtype=str).columns)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
            continue
        if set(MANIFEST_COLUMNS) <= header or ({"clinic", "derm", "case_num"} <= header and path.parent.name == "meta"):
            found.append(path.relative_to(root).as_posix())
    return found
