"""Evaluate a checkpoint on a Derm7pt split: accuracy per task and head, DIAG report, calibration.

    python -m training.evaluate --checkpoint checkpoints/skinnet_lite2.safetensors \\
        --data-root /path/to/release_v0 --split test --json test.json [--figures DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from skinnet.agreement import plot_confusion
from skinnet.calibration import calibrate, fit_head
from skinnet.checkpoint import WEIGHT_FORMATS, ModelCard, load_checkpoint, read_card, save_checkpoint
from skinnet.data import Derm7pt, SPLITS
from skinnet.labels import TASK_BY_NAME, TASK_NAMES
from skinnet.model import count_parameters
from skinnet.transforms import BatchAugment, ImageCache

from .metrics import confusion_matrix, diagnosis_report, expected_calibration_error, task_accuracies
from .loop import predict_cache
from .test_log import record_test_scoring

log = logging.getLogger("skinnet.evaluate")


def head_predictions(model, card: ModelCard, cases, device: str, tta: bool, cache: ImageCache | None = None):
    """Every head's logits for the cases, decoding them unless their cache is given."""
    cache = cache if cache is not None else ImageCache(cases, card.image_size, device)
    augment = BatchAugment(card.image_size, card.mean, card.std).to(device)
    return predict_cache(model, cache, augment, device=device, tta=tta), cache


def scored_cases(head: str, has_clinical: torch.Tensor) -> torch.Tensor:
    """Which cases a head is scored (and calibrated) on: the clinical head needs a clinical photo."""
    return has_clinical if head == "clinical" else torch.ones_like(has_clinical)


def evaluate_model(model, card: ModelCard, cases, *, split: str, device: str = "cpu",
                   tta: bool | None = None, figures: Path | None = None, cache: ImageCache | None = None,
                   checkpoint: str | Path | None = None, command: list[str] | None = None) -> dict:
    """The evaluation record of one split (see the module docstring for the keys).

    Accuracies are those of the calibrated prediction (what the app shows); each head's
    ``uncalibrated`` entry holds the raw logits' accuracies beside them. Clinical-head
    numbers leave out cases without a clinical photo (``n_cases`` says how many).
    ``cache``: the cases already decoded at the card's image size (training passes its own).
    A test-split record is appended to the test log (:mod:`training.test_log`) with
    ``checkpoint``'s hash and the ``command`` that asked for it.
    """
    tta = card.tta if tta is None else tta
    logits, cache = head_predictions(model, card, cases, device, tta, cache)
    labels = cache.labels.cpu()
    has_clinical = cache.has_clinical.cpu()
    heads = {}
    calibrated = {head: calibrate(raw, card.calibration.get(head)) for head, raw in logits.items()}
    for head, head_logits in calibrated.items():
        keep = scored_cases(head, has_clinical)
        acc = task_accuracies(head_logits[keep], labels[keep])
        raw = task_accuracies(logits[head][keep], labels[keep])
        heads[head] = {
            "n_cases": int(keep.sum()), "tasks": {n: acc[n] for n in TASK_NAMES}, "avg": acc["avg"],
            "uncalibrated": {"tasks": {n: raw[n] for n in TASK_NAMES}, "avg": raw["avg"]},
            "diagnosis": diagnosis_report(head_logits[keep], labels[keep]),
            "ece": expected_calibration_error(logits[head][keep], labels[keep]),
            "ece_calibrated": expected_calibration_error(head_logits[keep], labels[keep]),
            "diag_ece_calibrated": expected_calibration_error(head_logits[keep], labels[keep], task="DIAG"),
        }
    if figures is not None:
        save_confusion_figures(calibrated["fused"], labels, Path(figures), split)
    fused = heads["fused"]
    record = {"split": split, "n_cases": len(cases), "params": count_parameters(model), "tta": tta,
              "tasks": fused["tasks"], "avg": fused["avg"], "heads": heads,
              "checkpoint": card.name}
    if split == "test":
        record_test_scoring(record, checkpoint, what=None if checkpoint else card.name, command=command)
    return record


def card_summary(record: dict) -> dict:
    """The part of an evaluation record a model card keeps (per split)."""
    return {"avg": record["avg"], "tasks": record["tasks"],
            "heads": {h: {"avg": v["avg"], "tasks": v["tasks"]} for h, v in record["heads"].items()}}


def fit_calibration(model, card: ModelCard, valid_cases, device: str,
                    cache: ImageCache | None = None) -> dict[str, dict]:
    """Every head's calibration (:mod:`skinnet.calibration`), fitted on the validation split."""
    logits, cache = head_predictions(model, card, valid_cases, device, card.tta, cache)
    labels, has_clinical = cache.labels.cpu(), cache.has_clinical.cpu()
    calibration = {}
    for head, head_logits in logits.items():
        keep = scored_cases(head, has_clinical)
        calibration[head] = fit_head(head_logits[keep], labels[keep])
    return calibration


RECIPE_KEYS = ("epochs", "image_size", "batch_size", "lr", "backbone_lr_scale", "weight_decay", "label_smoothing",
               "mixup", "task_weights", "ema", "swa_start", "tta")
"""What must match between the cross-fitted fold models and a refit for their OOF logits to
stand for the refit's (seeds may differ)."""


def oof_tta(oof: dict, path: str | Path) -> bool:
    """Whether an OOF file's logits were predicted with the test-time flips: its own record, or
    for files written before it kept one, its fold models' cards (the setting they predicted with).

    Raises:
        SystemExit: neither the file nor a fold card beside it says.
    """
    if "tta" in oof:
        return bool(oof["tta"])
    try:
        return bool(read_card(next(Path(path).parent.glob("fold[0-9]*/*.safetensors"))).tta)
    except (OSError, StopIteration, ValueError) as err:
        raise SystemExit(f"{path}: cannot tell whether its logits were predicted with the flips ({err})") from None


def calibration_from_oof(path: str | Path, card: ModelCard, data: Derm7pt | None = None) -> tuple[dict[str, dict], dict]:
    """Every head's calibration fitted on a cross-fit's out-of-fold logits (a ``training.crossval``
    ``oof.pt``, or a ledger entry: its folder or its ``oof_tta_off.csv``, which needs ``data``),
    and the card note that says so; refused when the fold models' recipe is not the card's.

    Raises:
        SystemExit: unreadable file, or another recipe.
    """
    from .ledger import load_oof

    path = Path(path)
    try:
        oof, source = load_oof(path, data)
    except ValueError as err:
        raise SystemExit(f"--calibrate-from {path}: {err}") from None
    if oof.get("hold_out") is not None:
        raise SystemExit(f"--calibrate-from {path}: the OOF of --hold-out teachers leaves fold "
                         f"{oof['hold_out']} out; calibrate from an ordinary cross-fit")
    fold_card = source["card"]
    differ = [k for k in RECIPE_KEYS if k != "tta" and fold_card.training.get(k) != card.training.get(k)]
    flips = oof_tta(oof, path)
    if flips != card.tta:
        differ.append(f"TTA: the logits were predicted with it {'on' if flips else 'off'}, the card has it "
                      f"{'off' if flips else 'on'}; the one-view OOF is oof_tta_off (ledger) or "
                      "training.crossval --tta-oof writes the other")
    # as configs, not as stored dicts: a card written before a config field existed (the shipped
    # one has no attention_sharing) holds its default
    try:
        same_model = fold_card.model_config == card.model_config
    except (TypeError, ValueError):  # a field this version does not know, or a value it refuses
        same_model = False
    if not same_model or fold_card.loss_weights != card.loss_weights:
        differ.append("model or loss weights")
    if differ:
        raise SystemExit(f"--calibrate-from {path}: the fold models were trained with another recipe "
                         f"({', '.join(differ)} differ), so their out-of-fold logits do not stand for this model's")
    labels, has_clinical = oof["labels"], oof["has_clinical"]
    calibration = {head: fit_head(logits[scored_cases(head, has_clinical)], labels[scored_cases(head, has_clinical)])
                   for head, logits in oof["logits"].items()}
    n_folds = int(oof["fold"].max()) + 1
    note = {"fitted_on": "out-of-fold", "n_cases": len(oof["case_ids"]), "folds": n_folds, "tta": flips,
            **{k: source[k] for k in ("run", "oof_file", "oof_sha256")},
            **({"ledger": f"experiments/{source['run']}"} if source["ledger"] else {})}
    return calibration, note


def save_confusion_figures(logits: torch.Tensor, labels: torch.Tensor, folder: Path, split: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    for ax, task in zip(axes.flat, TASK_NAMES):
        plot_confusion(ax, confusion_matrix(logits, labels, task), TASK_BY_NAME[task].classes, "true",
                       "predicted", task)
    fig.suptitle(f"Confusion matrices, fused head, {split} split")
    fig.tight_layout()
    path = folder / f"confusion_{split}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def format_table(record: dict) -> str:
    lines = [f"{record['checkpoint']} on {record['split']} ({record['n_cases']} cases, "
             f"{record['params'] / 1e6:.2f}M params, TTA {'on' if record['tta'] else 'off'})",
             f"{'head':<11}" + "".join(f"{n:>7}" for n in TASK_NAMES) + f"{'avg':>7}{'raw avg':>9}"
             f"{'ECE raw':>9}{'ECE':>7}"]
    for head, h in record["heads"].items():
        lines.append(f"{head:<11}" + "".join(f"{100 * h['tasks'][n]:7.1f}" for n in TASK_NAMES)
                     + f"{100 * h['avg']:7.1f}{100 * h['uncalibrated']['avg']:9.1f}"
                     f"{h['ece']:9.3f}{h['ece_calibrated']:7.3f}")
    diag = record["heads"]["fused"]["diagnosis"]
    lines.append("DIAG, fused head: " + "  ".join(
        f"{c} sens {d['sensitivity']:.2f} spec {d['specificity']:.2f} AUC {d['auc']:.2f}" for c, d in diag.items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help=".safetensors file with its .json card beside it")
    p.add_argument("--data-root", required=True, help="Derm7pt release_v0 folder")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--json", default=None, help="write the record here")
    p.add_argument("--figures", default=None, help="folder for confusion matrix PNGs")
    p.add_argument("--tta", default=None, choices=["on", "off"], help="override the card's TTA setting")
    p.add_argument("--set-tta", default=None, choices=["on", "off"],
                   help="store this TTA setting in the card (the app uses it); needs --calibrate-from "
                        "OOF logits predicted the same way (or --calibrate), and re-scores the card")
    p.add_argument("--calibrate", action="store_true",
                   help="fit each head's calibration (per task: temperature, class biases) on the "
                        "valid split and store it in the card, with the card's valid and --split scores")
    p.add_argument("--calibrate-from", default=None, metavar="OOF",
                   help="fit the calibration on the out-of-fold logits of the same recipe (a ledger entry, "
                        "experiments/<name> or its oof_tta_off.csv for one view, or the oof.pt of "
                        "training.crossval; the way to calibrate a refit) and store it with the card's scores")
    p.add_argument("--weights", default=None, choices=WEIGHT_FORMATS,
                   help="first re-save the checkpoint's weights in this format (int8: about half a "
                        "float16 file); implies --calibrate (except for a refit), so calibration and "
                        "scores are those of the re-saved weights")
    p.add_argument("--int8-min-elements", type=int, default=None,
                   help="with --weights int8: quantize only tensors of at least this many values")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit-cases", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.set_tta and not (args.calibrate_from or args.calibrate):
        parser.error("--set-tta changes the logits the calibration was fitted on: give --calibrate-from "
                     "(a refit) or --calibrate")
    model, card = load_checkpoint(args.checkpoint, args.device)
    data = Derm7pt(args.data_root)
    refit = card.trained_on_valid
    if args.set_tta:
        card.inference["tta"] = args.set_tta == "on"
    if args.calibrate_from:
        card.calibration, card.training["calibration_source"] = calibration_from_oof(args.calibrate_from, card, data)
        save_checkpoint(model, card, args.checkpoint)
        model, card = load_checkpoint(args.checkpoint, args.device)
        args.calibrate = True  # the card's scores must be those of the new calibration
    elif args.calibrate and refit:
        raise SystemExit(f"{args.checkpoint} was trained on the valid split (a refit): calibrating on "
                         "valid would fit its own training data, so it stays uncalibrated")
    if args.weights:
        if args.int8_min_elements:
            card.int8_min_elements = args.int8_min_elements
        save_checkpoint(model, card, args.checkpoint, args.weights)
        model, card = load_checkpoint(args.checkpoint, args.device)
        args.calibrate = True  # the card's scores (and calibration) must be those of the new weights
    tta = None if args.tta is None else args.tta == "on"
    valid_cache = None  # valid decoded once for fitting and scoring
    if args.calibrate:
        valid = data.split("valid")[:args.limit_cases]
        valid_cache = ImageCache(valid, card.image_size, args.device)
        if not refit and not args.calibrate_from:
            card.calibration = fit_calibration(model, card, valid, args.device, cache=valid_cache)
            card.training.pop("calibration_source", None)
        card.metrics = {}  # scored before this calibration: stale
        if args.split != "valid" and tta is None and not args.limit_cases:
            card.metrics["valid"] = card_summary(evaluate_model(model, card, valid, split="valid",
                                                                device=args.device, cache=valid_cache))
    record = evaluate_model(model, card, data.split(args.split)[:args.limit_cases], split=args.split,
                            device=args.device, tta=tta, figures=args.figures and Path(args.figures),
                            cache=valid_cache if args.split == "valid" else None, checkpoint=args.checkpoint,
                            command=["python", "-m", "training.evaluate", *(sys.argv[1:] if argv is None else argv)])
    if args.calibrate:
        if tta is None and not args.limit_cases:
            card.metrics[args.split] = card_summary(record)
        save_checkpoint(model, card, args.checkpoint)
        fitted = ("calibration (fitted on out-of-fold logits) and scores" if args.calibrate_from
                  else "scores" if refit else "calibration (fitted on valid) and scores")
        log.info("%s stored in %s", fitted, args.checkpoint)
    print(format_table(record))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
