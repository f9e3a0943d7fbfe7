"""What more reviewed cases are worth: out-of-fold accuracy against the number of training cases.

    python -m training.crossval --data-root ... --out runs/lc0.25 -- <recipe> --train-fraction 0.25
    ... (0.5, 0.75, and the full run)
    python benchmarks/learning_curve.py runs/lc0.25 runs/lc0.5 runs/lc0.75 runs/cv_lite2 \\
        [--figure docs/figures/learning_curve.png]

Every point is scored on the same out-of-fold cases (each fold model trained on a fraction of
the other folds' cases), so the curve says what a clinic gains per relabelled case without
touching test. A run still training counts with the folds it has finished: all points are then
scored on the folds that every run has (the table and JSON say which). Writes a PNG,
``benchmarks/results/learning_curve.json`` and a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def finished_folds(run: Path) -> set[int]:
    return {int(d.name[4:]) for d in run.glob("fold[0-9]*") if (d / "oof.pt").is_file()}


def point(run: Path, folds: list[int]) -> dict:
    """The fused head's accuracy over these folds' out-of-fold cases, and its sd over the folds."""
    import statistics

    import torch

    from skinnet.checkpoint import read_card
    from training.metrics import task_accuracies

    parts = [torch.load(run / f"fold{k}" / "oof.pt", weights_only=True) for k in folds]
    logits = torch.cat([p["logits"]["fused"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    per_fold = [task_accuracies(p["logits"]["fused"], p["labels"]) for p in parts]
    cards = [read_card(next((run / f"fold{k}").glob("*.safetensors"))) for k in folds]
    data = [c.training["data"] for c in cards]
    acc = task_accuracies(logits, labels)
    return {"run": run.name, "fraction": data[0].get("train_fraction", 1.0),
            "n_train_cases": round(statistics.mean(d["n_train_cases"] for d in data)),
            "folds": folds, "folds_sha256": {d["folds_sha256"] for d in data}, "n_cases": len(labels),
            "oof_avg": acc["avg"], "oof_DIAG": acc["DIAG"],
            "fold_sd_avg": statistics.stdev(f["avg"] for f in per_fold) if len(parts) > 1 else 0.0}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="training.crossval output folders")
    parser.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "learning_curve.png"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "learning_curve.json"))
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    folds = sorted(set.intersection(*(finished_folds(r) for r in runs)))
    if not folds:
        raise SystemExit("no fold is finished in every run")
    points = sorted((point(r, folds) for r in runs), key=lambda p: p["n_train_cases"])
    assignments = set().union(*(p.pop("folds_sha256") for p in points))
    if len(assignments) != 1:
        raise SystemExit("the runs were cross-fitted on different fold assignments (folds.json): not comparable")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = [p["n_train_cases"] for p in points]
    spread = len(folds) > 1
    ax.errorbar(n, [100 * p["oof_avg"] for p in points],
                yerr=[100 * p["fold_sd_avg"] for p in points] if spread else None, marker="o", capsize=3,
                label="average of 8 tasks" + (" (bars: sd over folds)" if spread else " (one fold: no spread)"))
    ax.plot(n, [100 * p["oof_DIAG"] for p in points], marker="s", label="DIAG")
    ax.set_xlabel("training cases per fold model")
    ax.set_ylabel("out-of-fold accuracy (%)")
    ax.set_title(f"Learning curve (out-of-fold, folds {','.join(map(str, folds))}: {points[0]['n_cases']} cases)")
    ax.legend()
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=90)
    plt.close(fig)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(points, indent=2))
    print(f"scored on folds {folds} ({points[0]['n_cases']} out-of-fold cases)")
    print("| run | fraction | training cases | OOF avg | OOF DIAG |\n|---|---|---|---|---|")
    for p in points:
        print(f"| {p['run']} | {p['fraction']:.2f} | {p['n_train_cases']} | {100 * p['oof_avg']:.1f} "
              f"| {100 * p['oof_DIAG']:.1f} |")
    return points


if __name__ == "__main__":
    sys.exit(main() and 0)
