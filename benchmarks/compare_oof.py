"""Two cross-fits on the same cases, compared out of fold: per task, per fold, and paired.

    python benchmarks/compare_oof.py runs/student/oof.pt runs/recipe/oof.pt [--json FILE]

Both files come from ``training.crossval`` with the same ``folds.json`` (every case predicted
by a model that never saw it). Prints each run's fused-head accuracy per task and per fold,
and for DIAG the cases only one of them gets right with an exact McNemar test: the paired
difference, which is what 616 cases can tell apart and a difference of averages hides.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from skinnet.labels import TASK_NAMES, split_logits
from training.crossval import oof_report
from training.metrics import exact_mcnemar


def compare(a: dict, b: dict) -> dict:
    """Both runs' OOF reports and, per task, the cases only A / only B gets right (fused head)."""
    if a["case_ids"] != b["case_ids"] or not torch.equal(a["fold"], b["fold"]):
        raise SystemExit("the two OOF files cover other cases or other folds: compare runs of one folds.json")
    right = {}
    for name, oof in (("a", a), ("b", b)):
        tasks = split_logits(oof["logits"]["fused"])
        right[name] = {t: logits.argmax(-1) == oof["labels"][:, i] for i, (t, logits) in enumerate(tasks.items())}
    paired = {}
    for t in TASK_NAMES:
        only_a = int((right["a"][t] & ~right["b"][t]).sum())
        only_b = int((right["b"][t] & ~right["a"][t]).sum())
        paired[t] = {"only_a": only_a, "only_b": only_b, "exact_mcnemar_p": exact_mcnemar(only_a, only_b)}
    return {"a": oof_report(a), "b": oof_report(b), "paired": paired}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="oof.pt of run A (e.g. the student)")
    p.add_argument("b", help="oof.pt of run B (e.g. the recipe it is measured against)")
    p.add_argument("--json", default=None, help="write the comparison here")
    args = p.parse_args(argv)
    result = compare(torch.load(args.a, weights_only=True), torch.load(args.b, weights_only=True))
    result.update(a_file=args.a, b_file=args.b)
    ra, rb = result["a"], result["b"]
    print(f"{'OOF, fused head':<16}{'A':>8}{'B':>8}{'A - B':>8}{'only A':>8}{'only B':>8}{'p':>7}")
    for t in ["avg", *TASK_NAMES]:
        va, vb = (ra["avg"], rb["avg"]) if t == "avg" else (ra["tasks"][t], rb["tasks"][t])
        pair = result["paired"].get(t)
        extra = f"{pair['only_a']:8d}{pair['only_b']:8d}{pair['exact_mcnemar_p']:7.2f}" if pair else ""
        print(f"{t:<16}{100 * va:8.1f}{100 * vb:8.1f}{100 * (va - vb):+8.1f}{extra}")
    for fa, fb in zip(ra["folds"], rb["folds"]):
        print(f"fold {fa['fold']} ({fa['n_cases']} cases): avg {100 * fa['avg']:.1f} vs {100 * fb['avg']:.1f}, "
              f"DIAG {100 * fa['DIAG']:.1f} vs {100 * fb['DIAG']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
