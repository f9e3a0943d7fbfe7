"""Does the shipped card's calibration fit its recipe's out-of-fold predictions in the ledger?

    python benchmarks/calibration_oof.py --data-root ../shared/derm7pt [--entry experiments/e_method]

The card's calibration was fitted on an earlier cross-fit of the recipe (its files were lost);
the ledger entry rebuilds that cross-fit. Per head: DIAG ECE of the entry's one-view OOF logits
uncalibrated, with the card's calibration, and refitted on them (in sample, so optimistic), and
the calibrated accuracies. Test is not read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from skinnet.calibration import calibrate, fit_head
from skinnet.checkpoint import DEFAULT_CHECKPOINT, read_card
from skinnet.data import Derm7pt
from skinnet.model import HEADS
from training.evaluate import scored_cases
from training.ledger import Experiment, read_entry_oof
from training.metrics import expected_calibration_error, task_accuracies

ROOT = Path(__file__).resolve().parents[1]


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--entry", default=str(ROOT / "experiments" / "e_method"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "calibration_oof.json"))
    args = p.parse_args()
    card = read_card(args.checkpoint)
    entry = Experiment.load(Path(args.entry))
    oof = read_entry_oof(entry, Derm7pt(args.data_root), "tta_off")
    record = {"entry": entry.name, "checkpoint": Path(args.checkpoint).name, "heads": {}}
    for head in HEADS:
        keep = scored_cases(head, oof["has_clinical"])
        logits, labels = oof["logits"][head][keep], oof["labels"][keep]
        shipped = calibrate(logits, card.calibration[head])
        accuracies = task_accuracies(shipped, labels)
        record["heads"][head] = {
            "n_cases": len(labels),
            "diag_ece_uncalibrated": expected_calibration_error(logits, labels, task="DIAG"),
            "diag_ece_card_calibration": expected_calibration_error(shipped, labels, task="DIAG"),
            "diag_ece_refitted_in_sample": expected_calibration_error(calibrate(logits, fit_head(logits, labels)),
                                                                      labels, task="DIAG"),
            "avg_card_calibration": sum(accuracies.values()) / len(accuracies),
            "diag_card_calibration": accuracies["DIAG"]}
        r = record["heads"][head]
        print(f"{head:11s} n={r['n_cases']}  DIAG ECE: uncalibrated {r['diag_ece_uncalibrated']:.3f}  "
              f"card {r['diag_ece_card_calibration']:.3f}  refitted in sample {r['diag_ece_refitted_in_sample']:.3f}  "
              f"(avg {100 * r['avg_card_calibration']:.1f}, DIAG {100 * r['diag_card_calibration']:.1f})")
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
