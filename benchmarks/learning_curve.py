"""What more reviewed cases are worth: out-of-fold accuracy against the number of training cases.

    python -m training.crossval --data-root ... --out runs/lc25 -- <recipe> --train-fraction 0.25
    ... (0.5, 0.75, and the full run)
    python benchmarks/learning_curve.py runs/lc25 runs/lc50 runs/lc75 runs/cv_lite2 \\
        [--figure docs/figures/learning_curve.png]

Every point is scored on the same 616 out-of-fold predictions (each fold model trained on a
fraction of the other folds' cases), so the curve says what a clinic gains per relabelled case
without touching test. Writes a PNG, ``benchmarks/results/learning_curve.json`` and a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def point(run: Path) -> dict:
    report = json.loads((run / "crossval.json").read_text())
    flags = report.get("train_flags", [])
    fraction = float(flags[flags.index("--train-fraction") + 1]) if "--train-fraction" in flags else 1.0
    oof = report["out_of_fold"]
    folds = report["folds"]
    n_train = round(oof["n_cases"] * (folds - 1) / folds * fraction)
    return {"run": run.name, "fraction": fraction, "n_train_cases": n_train, "oof_avg": oof["avg"],
            "oof_DIAG": oof["DIAG"], "fold_sd_avg": oof["fold_spread"]["avg"]["sd"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="training.crossval output folders")
    parser.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "learning_curve.png"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "learning_curve.json"))
    args = parser.parse_args(argv)
    points = sorted((point(Path(r)) for r in args.runs), key=lambda p: p["n_train_cases"])

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = [p["n_train_cases"] for p in points]
    ax.errorbar(n, [100 * p["oof_avg"] for p in points], yerr=[100 * p["fold_sd_avg"] for p in points],
                marker="o", capsize=3, label="average of 8 tasks (bars: sd over folds)")
    ax.plot(n, [100 * p["oof_DIAG"] for p in points], marker="s", label="DIAG")
    ax.set_xlabel("training cases per fold model")
    ax.set_ylabel("out-of-fold accuracy (%)")
    ax.set_title("Learning curve (out-of-fold, Derm7pt train + valid)")
    ax.legend()
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=90)
    plt.close(fig)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(points, indent=2))
    print("| run | fraction | training cases | OOF avg | OOF DIAG |\n|---|---|---|---|---|")
    for p in points:
        print(f"| {p['run']} | {p['fraction']:.2f} | {p['n_train_cases']} | {100 * p['oof_avg']:.1f} "
              f"| {100 * p['oof_DIAG']:.1f} |")
    return points


if __name__ == "__main__":
    sys.exit(main() and 0)
