"""Does int8 for every weight cost accuracy against the shipped partial int8? Out of fold.

    python benchmarks/int8_oof.py --data-root ../shared/derm7pt [--runs runs/e_method]

The shipped checkpoint stores only its two widest layers as int8 (``int8_min_elements`` 400,000:
9.6 MB); int8 for every weight matrix (1,024, 5.5 MB) was set aside on a test score, which the
protocol forbids. Here each of the shipped recipe's five fold models (``runs/<entry>/fold<k>``,
the weights the ledger's ``e_method`` entry was made from; weights are not in the repo) predicts
the fold it never saw, one view as the app does, with its weights stored as float16 (as trained),
the shipped partial int8, and int8 everywhere; calibrated with the shipped card's calibration.
Paired: int8 everywhere against partial int8 (bootstrap on the average of 8, McNemar on DIAG).
The float16 predictions are checked against the ledger's ``oof_tta_off.csv`` first (the same
models). Test is not read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from skinnet.calibration import calibrate
from skinnet.checkpoint import DEFAULT_CHECKPOINT, dequantize, load_checkpoint, quantize_int8, read_card
from skinnet.data import Derm7pt
from skinnet.labels import split_logits
from skinnet.transforms import ImageCache
from training.evaluate import head_predictions
from training.folds import pool_cases
from training.ledger import Experiment, read_entry_oof
from training.metrics import describe_paired, expected_calibration_error, paired_comparison, right_per_task

ROOT = Path(__file__).resolve().parents[1]
# stored weights -> int8_min_elements (None: float16, as the fold models were saved)
STORAGE = {"float16": None, "int8_partial_shipped": 400_000, "int8_everywhere": 1024}


def stored_as(state: dict[str, torch.Tensor], min_elements: int | None) -> dict[str, torch.Tensor]:
    """The weights as the app would read them back from a file of this storage."""
    if min_elements is None:
        return state
    return dequantize(quantize_int8(state, min_elements))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--runs", default=str(ROOT / "runs" / "e_method"), help="the entry's fold runs (weights)")
    p.add_argument("--entry", default=str(ROOT / "experiments" / "e_method"))
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="whose calibration the app applies")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "int8_oof.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, entry = Derm7pt(args.data_root), Experiment.load(Path(args.entry))
    ledger_oof = read_entry_oof(entry, data, "tta_off")
    calibration = read_card(args.checkpoint).calibration.get("fused")
    position = {case_id: i for i, case_id in enumerate(ledger_oof["case_ids"])}
    fused = {name: torch.zeros_like(ledger_oof["logits"]["fused"]) for name in STORAGE}
    for k in ledger_oof["fold"].unique().tolist():
        model, card = load_checkpoint(next((Path(args.runs) / f"fold{k}").glob("*.safetensors")))
        cases = [c for c in pool_cases(data) if c.case_id in position and int(ledger_oof["fold"][position[c.case_id]]) == k]
        rows = torch.tensor([position[c.case_id] for c in cases])
        # a copy: state_dict() shares the model's tensors, which each variant's load overwrites
        trained = {key: value.clone() for key, value in model.state_dict().items()}
        cache = ImageCache(cases, card.image_size)
        for name, min_elements in STORAGE.items():
            model.load_state_dict(stored_as(trained, min_elements))
            logits, _ = head_predictions(model, card, cases, "cpu", tta=False, cache=cache)
            fused[name][rows] = logits["fused"].float()
        gap = (torch.cat([t.softmax(-1) for t in split_logits(fused["float16"][rows]).values()], 1)
               - torch.cat([t.softmax(-1) for t in split_logits(ledger_oof["logits"]["fused"][rows]).values()], 1))
        if gap.abs().max() > 1e-3:
            raise SystemExit(f"fold {k}: {args.runs}'s model does not reproduce the ledger's predictions "
                             f"(max probability difference {float(gap.abs().max()):.4f}): not the entry's weights")
        print(f"fold {k}: {len(cases)} cases, float16 reproduces the ledger (max difference {float(gap.abs().max()):.1e})")
    labels = ledger_oof["labels"]
    right, record = {}, {"entry": entry.name, "runs": str(args.runs), "n_cases": len(labels), "storage": {}}
    for name, logits in fused.items():
        calibrated = calibrate(logits, calibration)
        right[name] = right_per_task(calibrated, labels)
        record["storage"][name] = {
            "int8_min_elements": STORAGE[name], "avg": float(right[name].float().mean()),
            "DIAG": float(right[name][:, 0].float().mean()),
            "diag_ece": expected_calibration_error(calibrated, labels, task="DIAG"),
            "max_probability_change_vs_float16": float(max(
                (a.softmax(-1) - b.softmax(-1)).abs().max()
                for a, b in zip(split_logits(calibrated).values(), split_logits(calibrate(fused["float16"], calibration)).values())))}
        r = record["storage"][name]
        print(f"{name:22s} avg {100 * r['avg']:.1f}  DIAG {100 * r['DIAG']:.1f}  DIAG ECE {r['diag_ece']:.3f}  "
              f"max prob. change vs float16 {r['max_probability_change_vs_float16']:.3f}")
    a, b = right["int8_everywhere"], right["int8_partial_shipped"]
    record["everywhere_vs_partial"] = {**paired_comparison(a, b), "answers_changed_any_task": int((a != b).any(1).sum())}
    c = record["everywhere_vs_partial"]
    print(f"int8 everywhere (A) - partial (B): {describe_paired(c)}; "
          f"{c['answers_changed_any_task']} cases right/wrong on some task changed")
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
