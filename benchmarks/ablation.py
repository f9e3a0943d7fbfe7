"""The ablation of design.md section 6 and the dermoscopy-weight sweep, from real training runs.

    python benchmarks/ablation.py --data-root /path/to/release_v0 --out runs/ablation \\
        [--epochs 12 --image-size 128 --seeds 0 1 2]

1. Sweep of the loss weights (seed 0, shared + cross-attention): the weights with the best
   *validation* average become the method's biased weights (test is never used to choose).
2. Four configurations x seeds, same recipe: two encoders / shared / shared + cross-attention
   with equal weights, and shared + cross-attention with the chosen biased weights.
3. Writes ``<out>/ablation.json`` and the table (mean ± std over seeds, official test split,
   fused head) to ``docs/results.md`` between markers, with the published reference points.

Runs already finished (their ``eval.json`` exists) are reused, so an interrupted ablation
continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from report import uncalibrated, write_section
from skinnet.labels import TASK_NAMES

ROOT = Path(__file__).resolve().parents[1]

EQUAL = "0.3333,0.3333,0.3334"
SWEEP = {"equal (1/3 each)": EQUAL, "derm 0.5": "0.2,0.5,0.3", "derm 0.7": "0.1,0.7,0.2"}
CONFIGS = {
    "two encoders, equal loss": ["--two-encoders", "--cross-attention", "none", "--loss-weights", EQUAL],
    "one shared encoder, equal loss": ["--cross-attention", "none", "--loss-weights", EQUAL],
    "shared + cross-attention, equal loss": ["--loss-weights", EQUAL],
    "shared + cross-attention + biased loss (the method)": None,  # weights from the sweep
}
REFERENCES = """| method | inputs | params | DIAG | avg of 8 |
|---|---|---|---|---|
| Kawahara et al. 2019, Inception combined | images | ~2x22M | ~74 | ~73.6 |
| HcCNN | images | | | 74.9 |
| FusionM4Net stage 1 (2x ResNet-50, SWA, TTA) | images | 50.4M | 77.0 | 75.1 |
| FusionM4Net final | images + metadata | | 78.5 | 76.3 |
| TFormer (shared Swin-T, cross-attention) | images + metadata | | 80.0 | 78.0 |"""


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:40]


def run(args, name: str, flags: list[str], seed: int) -> dict:
    out = Path(args.out) / f"{slug(name)}_s{seed}"
    result = out / "eval.json"
    if not result.is_file():
        cmd = [sys.executable, "-m", "training.train", "--data-root", args.data_root, "--out", str(out),
               "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--seed", str(seed),
               "--no-progress", *args.extra, *flags]
        print("running", " ".join(cmd), flush=True)
        started = time.time()
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f"{out.name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
        (out / "seconds.txt").write_text(f"{time.time() - started:.0f}\n")
    record = json.loads(result.read_text())
    seconds = float((out / "seconds.txt").read_text()) if (out / "seconds.txt").is_file() else float("nan")
    # architectures are compared on raw logits, as published tables are
    test = {**uncalibrated(record["test"]), "params": record["test"]["params"]}
    return {"valid": uncalibrated(record["valid"]), "test": test, "seconds": seconds, "folder": out.name}


def mean_std(values: list[float]) -> str:
    values = 100 * np.asarray(values)
    return f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0:.1f}"


def table(results: dict, sweep: dict, args) -> str:
    header = "| config | params | " + " | ".join(TASK_NAMES) + " | avg of 8 | valid avg |"
    lines = [header, "|" + "---|" * (len(TASK_NAMES) + 4)]
    for name, runs in results.items():
        tests = [r["test"] for r in runs]
        cells = [mean_std([t["tasks"][task] for t in tests]) for task in TASK_NAMES]
        lines.append(f"| {name} | {tests[0]['params'] / 1e6:.2f}M | " + " | ".join(cells)
                     + f" | **{mean_std([t['avg'] for t in tests])}** | "
                     f"{mean_std([r['valid']['avg'] for r in runs])} |")
    sweep_lines = ["| loss weights (clinical, dermoscopy, fused) | valid avg (seed 0) | chosen |", "|---|---|---|"]
    for label, (weights, valid) in sweep["runs"].items():
        sweep_lines.append(f"| {label}: {weights} | {100 * valid:.1f} | {'yes' if label == sweep['chosen'] else ''} |")
    minutes = [r["seconds"] / 60 for runs in results.values() for r in runs]
    return "\n".join([
        f"Derm7pt official split, test (395 cases), fused head, accuracy % mean ± std over seeds "
        f"{args.seeds}. Recipe: `{args.backbone_note}`, {args.epochs} epochs at {args.image_size} px, "
        f"batch 32, AdamW + cosine, EMA, label smoothing 0.1, flips/rotation/zoom/colour augmentation. "
        f"Hardware: {args.hardware}; {np.nanmean(minutes):.1f} min per run.",
        "", *lines, "",
        "Dermoscopy-weight sweep (chosen on validation, never on test):", "", *sweep_lines,
        "", "Published reference points (same test split):", "", REFERENCES])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--hardware", default=f"{platform.processor() or platform.machine()} CPU, 2 cores")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more training flags")
    args = p.parse_args(argv)
    args.backbone_note = "tf_efficientnet_lite0, offline ImageNet weights"

    sweep_runs = {}
    for label, weights in SWEEP.items():
        record = run(args, f"sweep {label}", ["--loss-weights", weights], args.seeds[0])
        sweep_runs[label] = (weights, uncalibrated(record["valid"])["avg"])
    candidates = {k: v for k, v in sweep_runs.items() if v[0] != EQUAL}
    chosen = max(candidates, key=lambda k: candidates[k][1])
    sweep = {"runs": sweep_runs, "chosen": chosen}
    results = {}
    for name, flags in CONFIGS.items():
        if flags is None:
            flags = ["--loss-weights", SWEEP[chosen]]
        results[name] = []
        for seed in args.seeds:
            if seed == args.seeds[0] and name.startswith("shared + cross-attention") and "--cross-attention" not in flags:
                weights = flags[flags.index("--loss-weights") + 1]
                label = next(k for k, v in SWEEP.items() if v == weights)
                results[name].append(run(args, f"sweep {label}", ["--loss-weights", weights], seed))
            else:
                results[name].append(run(args, name, flags, seed))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(json.dumps({"sweep": sweep, "results": results}, indent=2))
    text = table(results, sweep, args)
    write_section(Path(args.results), "ablation", text)
    print(text)


if __name__ == "__main__":
    main()
