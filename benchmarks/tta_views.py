"""Which test-time views are worth their cost, chosen out of fold.

    python benchmarks/tta_views.py --data-root /path/to/release_v0 --runs runs/cv_lite2

Each fold model of a cross-fitted recipe predicts its own fold's cases under each flip alone
(as it is, mirrored left-right, upside down, both); averaging the logits of a set of views gives
that set's out-of-fold predictions for all 616 train + valid cases, so the sets are compared on
the cases no model trained on (test is not read). Also times the fused prediction of one pair
under each set on this CPU (one batched forward, median of 20), as a multiple of one view.
Writes ``benchmarks/results/tta_views.json`` and a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from skinnet.checkpoint import load_checkpoint
from skinnet.data import Derm7pt
from skinnet.labels import TASK_NAMES
from skinnet.inference import FLIPS
from skinnet.transforms import BatchAugment, ImageCache
from training.evaluate import scored_cases
from training.folds import FOLDS_FILE, pool_cases, read_folds
from training.metrics import expected_calibration_error, task_accuracies

ROOT = Path(__file__).resolve().parents[1]

VIEW_NAMES = {(): "as is", (3,): "mirrored left-right", (2,): "upside down", (2, 3): "both flips"}
VIEW_SETS = {"1 view": [()], "2 views (as is + left-right)": [(), (3,)],
             "2 views (as is + upside down)": [(), (2,)], "4 views (all flips)": list(FLIPS)}


@torch.inference_mode()
def per_view_logits(model, card, cases) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """{flip: {head: (N, NUM_OUTPUTS)}} for the cases, with their labels and has_clinical."""
    cache = ImageCache(cases, card.image_size, "cpu")
    augment = BatchAugment(card.image_size, card.mean, card.std)
    model.eval()
    out = {dims: {} for dims in FLIPS}
    for start in range(0, len(cache), 32):
        index = torch.arange(start, min(start + 32, len(cache)))
        clinical = augment(cache.clinical[index], train=False)
        derm = augment(cache.dermoscopy[index], train=False)
        for dims in FLIPS:
            c, d = (clinical.flip(dims), derm.flip(dims)) if dims else (clinical, derm)
            for head, logits in model(c, d).items():
                out[dims].setdefault(head, []).append(logits.float())
    return ({dims: {h: torch.cat(v) for h, v in heads.items()} for dims, heads in out.items()},
            cache.labels, cache.has_clinical)


def cost_per_set(model, card, repeats: int = 20) -> dict[str, float]:
    """Milliseconds for one pair's views as one batch, per view set (median of ``repeats``)."""
    x = torch.randn(1, 3, card.image_size, card.image_size)
    costs = {}
    with torch.inference_mode():
        for name, views in VIEW_SETS.items():
            batch = torch.cat([x.flip(dims) if dims else x for dims in views])
            model(batch, batch)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(batch, batch)
                times.append(time.perf_counter() - start)
            costs[name] = 1000 * statistics.median(times)
    return costs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--runs", default="runs/cv_lite2", help="a training.crossval output folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "tta_views.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs, data = Path(args.runs), Derm7pt(args.data_root)
    folds, n_folds = read_folds(runs / FOLDS_FILE, data)
    pool = pool_cases(data)
    views, labels, has_clinical, fold_of = {d: {} for d in FLIPS}, [], [], []
    model = card = None
    for k in range(n_folds):
        model, card = load_checkpoint(next((runs / f"fold{k}").glob("*.safetensors")), "cpu")
        cases = [c for c in pool if folds[c.case_id] == k]
        logits, y, clin = per_view_logits(model, card, cases)
        for dims in FLIPS:
            for head, value in logits[dims].items():
                views[dims].setdefault(head, []).append(value)
        labels.append(y)
        has_clinical.append(clin)
        fold_of += [k] * len(cases)
    views = {d: {h: torch.cat(v) for h, v in heads.items()} for d, heads in views.items()}
    labels, has_clinical, fold_of = torch.cat(labels), torch.cat(has_clinical), torch.tensor(fold_of)

    costs = cost_per_set(model, card)
    rows = {}
    for name, chosen in VIEW_SETS.items():
        fused = sum(views[d]["fused"] for d in chosen) / len(chosen)
        acc = task_accuracies(fused, labels)
        per_fold = [task_accuracies(fused[fold_of == k], labels[fold_of == k])["avg"] for k in range(n_folds)]
        heads = {h: task_accuracies((sum(views[d][h] for d in chosen) / len(chosen))[scored_cases(h, has_clinical)],
                                    labels[scored_cases(h, has_clinical)])["avg"] for h in views[()]}
        rows[name] = {"views": [VIEW_NAMES[d] for d in chosen], "oof_avg": acc["avg"], "oof_DIAG": acc["DIAG"],
                      "tasks": {t: acc[t] for t in TASK_NAMES}, "fold_avgs": per_fold, "heads_avg": heads,
                      "ece_raw": expected_calibration_error(fused, labels),
                      "ms_per_pair": costs[name], "x_one_view": costs[name] / costs["1 view"]}
    report = {"runs": str(runs), "n_cases": len(labels), "checkpoint_recipe": card.name, "sets": rows,
              "note": "out-of-fold, uncalibrated fused head; cost: one pair's views as one batch, 2-core CPU"}
    print(f"{len(labels)} out-of-fold cases of {runs} (fused head, raw logits)")
    print(f"{'test-time views':34} {'OOF avg':>8} {'OOF DIAG':>9} {'ms/pair':>8} {'x 1 view':>9}")
    for name, row in rows.items():
        print(f"{name:34} {100 * row['oof_avg']:8.2f} {100 * row['oof_DIAG']:9.2f} "
              f"{row['ms_per_pair']:8.1f} {row['x_one_view']:9.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
