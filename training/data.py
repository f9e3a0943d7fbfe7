"""Which cases a training run learns from: the Derm7pt train split, plus reviewers' corrections."""
from __future__ import annotations

import logging

from skinnet.data import Case, Derm7pt

log = logging.getLogger("skinnet.train")


def training_cases(data: Derm7pt, args) -> tuple[list[Case], dict]:
    """Train-split cases (labels overridden by corrections) and counts for the model card."""
    cases = data.split("train")[:args.limit_cases]
    if not args.corrections:
        return cases, {"n_corrections": 0}
    raise NotImplementedError("--corrections arrives with the corrections log")
