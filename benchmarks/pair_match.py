"""Can the model tell that a pair's two images show different lesions? (issue 14, item 2)

    python benchmarks/pair_match.py --data-root /path/to/release_v0 [--split valid]

Each case's own pair against a mismatched one (its clinical photo with another case's
dermoscopy image, a fixed derangement), scored by how much the clinical and the dermoscopy heads
agree: per task, the probability that both pick the same class, averaged over the 8 tasks
(and DIAG alone). Reports the AUC and the share of mismatches flagged when at most 5% of true
pairs are. Valid is in the shipped refit's training data, so these numbers flatter the check;
the test split is not used: this decides whether to build it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet.data import Derm7pt
from skinnet.imaging import load_rgb
from skinnet.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


def head_agreement(predictor: Predictor, clinical, dermoscopy) -> tuple[float, float]:
    """(mean over tasks, DIAG) of the probability that the two modality heads pick the same class."""
    predictor.forget()
    heads = predictor.predict(clinical, dermoscopy).heads
    c, d = heads["clinical"].probabilities, heads["dermoscopy"].probabilities
    agree = {task: sum(c[task][k] * d[task][k] for k in c[task]) for task in c}
    return float(np.mean(list(agree.values()))), agree["DIAG"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--split", default="valid", choices=["train", "valid"])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "pair_match.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    cases = [c for c in Derm7pt(args.data_root).split(args.split) if not c.clinic_is_derm]
    images = [(load_rgb(c.clinical_path), load_rgb(c.dermoscopy_path)) for c in cases]
    rng = np.random.default_rng(0)
    other = rng.permutation(len(cases))
    while (other == np.arange(len(cases))).any():  # every mismatched pair takes another case's image
        other = rng.permutation(len(cases))
    true = np.array([head_agreement(predictor, c, d) for c, d in images])
    mismatched = np.array([head_agreement(predictor, images[i][0], images[j][1]) for i, j in enumerate(other)])
    is_true = np.r_[np.ones(len(true)), np.zeros(len(mismatched))]
    record = {"checkpoint": Path(args.checkpoint).name, "split": args.split, "pairs": len(true),
              "note": "in-sample for the shipped refit (trained on train + valid): optimistic"}
    for column, name in enumerate(("all 8 tasks", "DIAG")):
        threshold = float(np.quantile(true[:, column], 0.05, method="lower"))  # at most 5% of true pairs flagged
        record[name] = {"auc": roc_auc_score(is_true, np.r_[true[:, column], mismatched[:, column]]),
                        "threshold": threshold,
                        "mismatches_flagged": float((mismatched[:, column] < threshold).mean()),
                        "true_pairs_flagged": float((true[:, column] < threshold).mean())}
        r = record[name]
        print(f"{name}: AUC {r['auc']:.3f}; flagging {100 * r['true_pairs_flagged']:.0f}% of true pairs catches "
              f"{100 * r['mismatches_flagged']:.0f}% of mismatched ones")
    Path(args.json).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
