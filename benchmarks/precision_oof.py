"""Does training in bf16 autocast + channels-last cost accuracy? Out of fold, from the ledger.

    python benchmarks/precision_oof.py --data-root ../shared/derm7pt

The shipped recipe trained both ways on the same fold (the ledger's ``e_method``, bf16 +
channels-last, the default since 2026-12-06, and ``e_method_fp32``, float32 NCHW, fold 0): each
model's out-of-fold score on the cases it never saw and the paired difference (bootstrap on the
average of 8, McNemar on DIAG), which is the test; then, as the issue words it, whether the
difference lies within ``e_method``'s fold-to-fold spread (a lenient yardstick: folds differ
in their cases, the pair does not). Then the time an epoch takes (training plus predicting the
fold, from each run's metrics.csv), fastest and median, of the float32 fold and of every bf16
fold of the same network (``e_method`` and ``d_shared_attention`` differ only in their loss
weights), each with the time it finished: epoch times move with the day's machine and with
other work, so the float32 fold compares best with bf16 folds of the same day, and the
fastest epoch is the least disturbed one. Test is not read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ablation_oof import compare, summarise
from skinnet.data import Derm7pt
from training import ledger
from training.metrics import describe_paired

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("e_method", "e_method_fp32")  # (bf16 + channels-last, float32)
SAME_NETWORK = ("e_method", "d_shared_attention")  # bf16 entries whose steps cost what e_method's do


def fold_epochs(entry: ledger.Experiment, fold: int) -> dict:
    """The fold run's fastest and median epoch (seconds) and when it finished."""
    seconds = pd.read_csv(entry.fold_path(fold) / "metrics.csv")["seconds"].astype(float)
    finished = json.loads((entry.fold_path(fold) / "run.json").read_text())["recorded_at"]
    return {"entry": entry.name, "fold": fold, "finished": finished, "fastest_s": float(seconds.min()),
            "median_s": float(seconds.median()), "minutes": float(seconds.sum() / 60)}


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
    float32 = [fold_epochs(fp32, k) for k in common]
    same_network = [fold_epochs(entry, k) for entry in (ledger.Experiment.load(Path(args.root) / n) for n in SAME_NETWORK)
                    for k in entry.planned_folds() if entry.done(k)]
    record = {"folds": common, "bf16_entry": PAIR[0], "fp32_entry": PAIR[1], **result,
              "bf16_fold_sd": spread["fold_sd"], "within_fold_spread": within,
              "epochs_float32": float32, "epochs_bf16_same_network": same_network}
    print(f"fold(s) {common}, {result['n_cases']} cases: bf16 {100 * result['avg_a']:.1f} / DIAG "
          f"{100 * result['diag_a']:.1f}, float32 {100 * result['avg_b']:.1f} / DIAG {100 * result['diag_b']:.1f}")
    print(f"bf16 (A) - float32 (B): {describe_paired(result)}; e_method's fold sd: {spread['fold_sd']}; "
          f"within the spread: {within}")
    print("epoch seconds, fastest / median (fold minutes), by when the run finished:")
    for run in sorted(float32 + same_network, key=lambda r: r["finished"]):
        kind = "float32" if run in float32 else "bf16   "
        print(f"  {run['finished'][:16]}  {kind} {run['entry']} fold {run['fold']}: {run['fastest_s']:.0f} / "
              f"{run['median_s']:.0f} s ({run['minutes']:.0f} min)")
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
