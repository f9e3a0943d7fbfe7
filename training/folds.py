"""Cross-fitting folds over the Derm7pt train + valid cases (616 in release_v0).

One fixed, saved assignment of every train + valid case to one of K folds, stratified by
diagnosis, so that every recipe is compared on the same out-of-fold (OOF) predictions and a
fold run can be resumed or repeated on another machine. Test is never in a fold.
"""
from __future__ import annotations

import json
from pathlib import Path

from skinnet.data import Case, Derm7pt

POOL_SPLITS = ("train", "valid")
FOLDS_FILE = "folds.json"


def pool_cases(data: Derm7pt) -> list[Case]:
    """The cases the folds cover: train then valid, in split-file order."""
    return [case for split in POOL_SPLITS for case in data.split(split)]


def assign_folds(cases: list[Case], n_folds: int, seed: int) -> dict[str, int]:
    """case id -> fold (0..n_folds-1), stratified by diagnosis (scikit-learn's StratifiedKFold)."""
    from sklearn.model_selection import StratifiedKFold

    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    diagnosis = [case.labels[0] for case in cases]
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = {}
    for fold, (_, held) in enumerate(splitter.split(diagnosis, diagnosis)):
        folds.update({cases[i].case_id: fold for i in held})
    return folds


def write_folds(path: Path, folds: dict[str, int], n_folds: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"n_folds": n_folds, "seed": seed, "splits": list(POOL_SPLITS),
                                "folds": folds}, indent=1))


def read_folds(path: str | Path, data: Derm7pt | None = None) -> tuple[dict[str, int], int]:
    """(case id -> fold, number of folds) from a folds file; with ``data``, checked to cover
    exactly its train + valid cases.

    Raises:
        ValueError: unreadable file, or folds that do not match the data.
    """
    try:
        record = json.loads(Path(path).read_text())
        folds, n_folds = {str(k): int(v) for k, v in record["folds"].items()}, int(record["n_folds"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a folds file written by training.crossval ({err})") from None
    if data is not None:
        expected = {case.case_id for case in pool_cases(data)}
        if set(folds) != expected:
            raise ValueError(f"{path} covers {len(folds)} cases but this data's train + valid has "
                             f"{len(expected)} ({len(set(folds) ^ expected)} differ): another release?")
    if not all(0 <= f < n_folds for f in folds.values()):
        raise ValueError(f"{path}: fold numbers outside 0..{n_folds - 1}")
    return folds, n_folds


def stratified_subset(cases: list[Case], fraction: float, seed: int) -> list[Case]:
    """A fixed fraction of the cases, the same fraction of each diagnosis (at least one of each),
    in their original order: the training sets of a learning curve."""
    import numpy as np

    if not 0 < fraction <= 1:
        raise ValueError("the fraction must be in (0, 1]")
    rng = np.random.default_rng(seed)
    keep = set()
    for diagnosis in sorted({c.labels[0] for c in cases}):
        members = [i for i, c in enumerate(cases) if c.labels[0] == diagnosis]
        chosen = rng.permutation(len(members))[:max(1, round(fraction * len(members)))]
        keep.update(members[j] for j in chosen)
    return [c for i, c in enumerate(cases) if i in keep]
