"""Does a learned combiner of the three heads and the eight tasks beat the calibrated fused head,
out of fold? (The rule is in docs/results.md, "Combining the heads and the tasks".)

    python benchmarks/stacking_oof.py --data-root ../shared/derm7pt [--entry experiments/e_method]

Per task, a multinomial logistic regression on standardised log-probabilities, its L2 strength
chosen by an inner 4-fold cross-validation (log-loss) within the training folds, cross-fitted over
the ledger entry's folds: every case is predicted by a combiner fitted on the other folds' cases
only. Two combiners: ``all`` sees every task's classes from all three heads, ``own`` only the
task's own classes from the three heads. The reference is the card's calibration (a temperature
and class biases per task on the fused head), cross-fitted the same way. One-view predictions.
Writes ``benchmarks/results/stacking_oof.json``; test is not read.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from skinnet.calibration import cross_fit
from skinnet.data import Derm7pt
from skinnet.labels import TASK_SLICES, TASKS
from skinnet.model import HEADS
from training.ledger import Experiment, read_entry_oof
from training.metrics import describe_paired, expected_calibration_error, paired_comparison, right_per_task

ROOT = Path(__file__).resolve().parents[1]
STRENGTHS = (0.01, 0.1, 1.0, 10.0)  # sklearn's C: inverse L2 strength, chosen by the inner folds
INNER_FOLDS = 4
FLOOR = 1e-6  # probability given to a class a combiner never saw in its training folds


def features(logits: dict[str, torch.Tensor], task: str | None) -> np.ndarray:
    """The heads' log-probabilities side by side: every task's (``task`` None) or one task's."""
    parts = [logits[head] if task is None else logits[head][:, TASK_SLICES[task]] for head in HEADS]
    return torch.cat(parts, dim=1).float().numpy()


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, num_classes: int,
                seed: int = 0) -> np.ndarray:
    """Log-probabilities (len(x_test), num_classes) of a combiner fitted on the training cases."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y_train, minlength=num_classes)
    inner = min(INNER_FOLDS, int(counts[counts > 0].min())) if (counts > 0).sum() > 1 else 0
    out = np.full((len(x_test), num_classes), np.log(FLOOR))
    if inner < 2:  # one class, or a class too rare to split: predict the training frequencies
        prior = np.maximum(counts / counts.sum(), FLOOR)
        out[:] = np.log(prior / prior.sum())
        return out
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=list(STRENGTHS), cv=StratifiedKFold(inner, shuffle=True, random_state=seed),
        scoring="neg_log_loss", max_iter=5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's notes on rare classes in an inner fold
        model.fit(x_train, y_train)
    probabilities = np.maximum(model.predict_proba(x_test), FLOOR)
    out[:, model.classes_] = np.log(probabilities)
    out = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


def combine(logits: dict[str, torch.Tensor], labels: torch.Tensor, folds: torch.Tensor, own_task_only: bool,
            seed: int = 0) -> torch.Tensor:
    """Cross-fitted combiner output, flat (N, NUM_OUTPUTS) log-probabilities like a head's."""
    out = torch.zeros_like(logits["fused"], dtype=torch.float32)
    for t, task in enumerate(TASKS):
        x = features(logits, task.name if own_task_only else None)
        y = labels[:, t].numpy()
        for k in folds.unique().tolist():
            held = (folds == k).numpy()
            out[torch.from_numpy(held), TASK_SLICES[task.name]] = torch.from_numpy(
                fit_predict(x[~held], y[~held], x[held], task.num_classes, seed)).float()
    return out


def summary(logits: torch.Tensor, labels: torch.Tensor, right: torch.Tensor) -> dict:
    return {"avg": float(right.float().mean()), "DIAG": float(right[:, 0].float().mean()),
            "per_task": {task.name: float(right[:, t].float().mean()) for t, task in enumerate(TASKS)},
            "ece_mean_of_8": expected_calibration_error(logits, labels),
            "diag_ece": expected_calibration_error(logits, labels, task="DIAG")}


def verdict(comparison: dict, combined: dict, reference: dict) -> str:
    low = comparison["avg_difference_95ci"][0]
    if low > 0 and combined["DIAG"] >= reference["DIAG"]:
        return "goes into a candidate (interval above 0, DIAG not below)"
    return "does not go into a candidate (the rule needs the interval above 0 and DIAG not below)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--entry", default=str(ROOT / "experiments" / "e_method"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "stacking_oof.json"))
    args = p.parse_args(argv)
    entry = Experiment.load(Path(args.entry))
    oof = read_entry_oof(entry, Derm7pt(args.data_root), "tta_off")
    labels, folds = oof["labels"], oof["fold"]
    missing = [h for h in HEADS if h not in oof["logits"]]
    if missing:
        raise SystemExit(f"{entry.path}: no one-view out-of-fold predictions of the {missing} heads")
    variants = {"calibrated fused (the card)": cross_fit(oof["logits"]["fused"], labels, folds, True),
                "combiner, own task": combine(oof["logits"], labels, folds, own_task_only=True),
                "combiner, all tasks": combine(oof["logits"], labels, folds, own_task_only=False)}
    right = {name: right_per_task(v, labels) for name, v in variants.items()}
    rows = {name: summary(variants[name], labels, right[name]) for name in variants}
    reference = "calibrated fused (the card)"
    record = {"entry": entry.name, "n_cases": len(labels), "views": "one", "strengths": list(STRENGTHS),
              "variants": rows, "comparisons": {}}
    print(f"{entry.name}: {len(labels)} cases, one view, cross-fitted over folds {sorted(folds.unique().tolist())}")
    for name, r in rows.items():
        tasks = " ".join(f"{t} {100 * a:.1f}" for t, a in r["per_task"].items())
        print(f"{name:28s} avg {100 * r['avg']:.1f}  DIAG {100 * r['DIAG']:.1f}  ECE {r['ece_mean_of_8']:.3f} "
              f"(DIAG {r['diag_ece']:.3f})  | {tasks}")
    for name in variants:
        if name == reference:
            continue
        comparison = paired_comparison(right[name], right[reference])
        comparison["verdict"] = verdict(comparison, rows[name], rows[reference])
        record["comparisons"][f"{name} vs {reference}"] = comparison
        print(f"{name} (A) - {reference} (B): {describe_paired(comparison)}")
        if name == "combiner, all tasks":
            print(f"  by the rule: {comparison['verdict']}")
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
