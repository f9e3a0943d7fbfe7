"""Does training in bf16 autocast + channels-last cost accuracy? Out of fold, from the ledger.

    python benchmarks/precision_oof.py --data-root ../shared/derm7pt

The shipped recipe trained both ways on the same fold (the ledger's ``e_method``, bf16 +
channels-last, the default since 2026-12-06, and ``e_method_fp32``, float32 NCHW, fold 0): each
model's out-of-fold score on the cases it never saw and the paired difference (bootstrap on the
average of 8, McNemar on DIAG), which is the test; then, as the issue words it, whether the
difference lies within ``e_method``'s fold-to-fold spread (a lenient yardstick: folds differ
in their cases, the pair does not). Also the same fold's epoch times from both metrics.csv,
median and fastest (the fastest is the least disturbed by other work on a shared machine; the
two runs were made at different times, so this is a rough ratio, and
``benchmarks/train_speed.py`` is the controlled one). Test is not read.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd

from ablation_oof import compare, summarise
from skinnet.data import Derm7pt
from training import ledger

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("e_method", "e_method_fp32")  # (bf16 + channels-last, float32)


def epoch_seconds(entry: ledger.Experiment, folds: list[int]) -> dict[str, float]:
    """Median and fastest epoch of these folds' runs (each epoch: training plus predicting its fold)."""
    seconds = [float(s) for k in folds for s in pd.read_csv(entry.fold_path(k) / "metrics.csv")["seconds"]]
    return {"median": statistics.median(seconds), "fastest": min(seconds), "epochs": len(seconds)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--root", default=str(ledger.LEDGER))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "precision_oof.json"))
    args = p.parse_args(argv)
    data = Derm7pt(args.data_root)
    bf16, fp32 = (ledger.Experiment.load(Path(args.root) / name) for name in PAIR)
    common = [k for k in fp32.planned_folds() if fp32.done(k) and bf16.done(k)]
    if not common:
        raise SystemExit(f"{fp32.path}: no fold finished by both entries yet (python -m training.ledger status)")
    spread = summarise(bf16, data, [k for k in bf16.planned_folds() if bf16.done(k)])
    result = compare(summarise(bf16, data, common), summarise(fp32, data, common))
    within = {task: (None if spread["fold_sd"][task] is None  # one fold: no spread yet
                     else abs(result[f"{key}_a"] - result[f"{key}_b"]) <= spread["fold_sd"][task])
              for task, key in (("avg", "avg"), ("DIAG", "diag"))}
    seconds = {name: epoch_seconds(entry, common) for name, entry in zip(PAIR, (bf16, fp32))}
    record = {"folds": common, "bf16_entry": PAIR[0], "fp32_entry": PAIR[1], **result,
              "bf16_fold_sd": spread["fold_sd"], "within_fold_spread": within,
              "epoch_seconds": seconds,
              "speedup_fastest_epoch": seconds[PAIR[1]]["fastest"] / seconds[PAIR[0]]["fastest"],
              "speedup_median_epoch": seconds[PAIR[1]]["median"] / seconds[PAIR[0]]["median"]}
    low, high = result["avg_difference_95ci"]
    print(f"fold(s) {common}, {result['n_cases']} cases: bf16 {100 * result['avg_a']:.1f} / DIAG "
          f"{100 * result['diag_a']:.1f}, float32 {100 * result['avg_b']:.1f} / DIAG {100 * result['diag_b']:.1f}")
    print(f"bf16 - float32: avg {100 * result['avg_difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], "
          f"DIAG only bf16 {result['diag_only_a']} / only float32 {result['diag_only_b']} "
          f"(p = {result['diag_exact_mcnemar_p']:.2f}); e_method's fold sd: {spread['fold_sd']}; "
          f"within the spread: {within}")
    b, f = seconds[PAIR[0]], seconds[PAIR[1]]
    print(f"epoch, fastest / median: bf16 {b['fastest']:.0f} / {b['median']:.0f} s ({b['epochs']} epochs), float32 "
          f"{f['fastest']:.0f} / {f['median']:.0f} s ({f['epochs']}): {record['speedup_fastest_epoch']:.2f}x / "
          f"{record['speedup_median_epoch']:.2f}x")
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
