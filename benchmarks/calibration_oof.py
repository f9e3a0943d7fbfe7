"""Does the shipped card's calibration fit its recipe's out-of-fold predictions in the ledger?

    python benchmarks/calibration_oof.py --data-root ../shared/derm7pt [--entry experiments/e_method]

The card's calibration was fitted on an earlier cross-fit of the recipe (its files were lost);
the ledger entry rebuilds that cross-fit. Per head: DIAG ECE of the entry's one-view OOF logits
uncalibrated, with the card's calibration, and refitted on them (in sample, so optimistic), and
the calibrated accuracies.

Then the question the card's class biases left open (they were adopted on a test number, which
the protocol forbids): do they beat a temperature alone? Cross-fitted on the entry's folds, each
fold's predictions calibrated by a fit on the other four folds' (no case calibrated by a fit that
saw it): accuracy, ECE and log-loss of no calibration, a temperature per task, and a temperature
plus class biases per task, with a paired bootstrap (average of 8) and an exact McNemar (DIAG)
of biases against the temperature alone on the fused head. Test is not read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from skinnet.calibration import calibrate, cross_fit, fit_head
from skinnet.checkpoint import DEFAULT_CHECKPOINT, read_card
from skinnet.data import Derm7pt
from skinnet.labels import split_logits
from skinnet.model import HEADS
from training.evaluate import scored_cases
from training.ledger import Experiment, read_entry_oof
from training.metrics import (describe_paired, diagnosis_report, expected_calibration_error, paired_comparison,
                              right_per_task, task_accuracies)

ROOT = Path(__file__).resolve().parents[1]
# calibrations compared out of fold: the fit_head ``biases`` flag (None: uncalibrated)
VARIANTS = {"uncalibrated": None, "temperature": False, "temperature_and_biases": True}


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the 8 tasks of the cross-entropy (nats per case)."""
    return float(torch.stack([torch.nn.functional.cross_entropy(part.float(), labels[:, t])
                              for t, part in enumerate(split_logits(logits).values())]).mean())


def compare_out_of_fold(oof: dict) -> dict:
    """The three VARIANTS per head, cross-fitted on the entry's folds; biases vs temperature paired."""
    result = {}
    for head in HEADS:
        keep = scored_cases(head, oof["has_clinical"])
        logits, labels, fold = oof["logits"][head][keep], oof["labels"][keep], oof["fold"][keep]
        rows, right = {}, {}
        for name, biases in VARIANTS.items():
            calibrated = logits if biases is None else cross_fit(logits, labels, fold, biases)
            right[name] = right_per_task(calibrated, labels)
            mel = diagnosis_report(calibrated, labels)["MEL"]
            rows[name] = {"avg": float(right[name].float().mean()), "DIAG": float(right[name][:, 0].float().mean()),
                          "ece_mean_of_8": expected_calibration_error(calibrated, labels),
                          "diag_ece": expected_calibration_error(calibrated, labels, task="DIAG"),
                          "log_loss_mean_of_8": log_loss(calibrated, labels),
                          "mel_sensitivity": mel["sensitivity"], "mel_specificity": mel["specificity"]}
        result[head] = {"n_cases": len(labels), "variants": rows,  # a: with biases, b: the temperature alone
                        "biases_vs_temperature": paired_comparison(right["temperature_and_biases"],
                                                                   right["temperature"])}
    return result


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
    record["out_of_fold"] = compare_out_of_fold(oof)
    print("cross-fitted (each fold calibrated by a fit on the other folds):")
    for head, r in record["out_of_fold"].items():
        for name, v in r["variants"].items():
            print(f"{head:11s} {name:23s} avg {100 * v['avg']:.1f}  DIAG {100 * v['DIAG']:.1f}  "
                  f"ECE {v['ece_mean_of_8']:.3f} (DIAG {v['diag_ece']:.3f})  log-loss {v['log_loss_mean_of_8']:.4f}  "
                  f"MEL sens/spec {v['mel_sensitivity']:.2f}/{v['mel_specificity']:.2f}")
        c = r["biases_vs_temperature"]
        print(f"{head:11s} biases (A) - temperature (B): {describe_paired(c)}")
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
