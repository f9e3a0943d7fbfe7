"""Fit a checkpoint's guards (:mod:`skinnet.guards`) on the Derm7pt images it was trained on.

    python -m training.fit_guards --checkpoint checkpoints/skinnet_lite2.safetensors \\
        --data-root ../shared/derm7pt --oof runs/cv_lite2/oof.pt

- Lesion check: per block of the features (each stage's statistics, the pooled features), a
  Gaussian per modality over that modality's training images (in their own slot, in the other
  slot, and alone). Each block's distances are measured in units of its 99th percentile over
  images whose case was left out of the Gaussians' fit (5 folds by case), an image's distance
  is the largest over the blocks, and the threshold is ``--ood-factor`` times the 99th
  percentile of that; no test image and no non-lesion image chooses it.
- Modality: logistic regression on the same images (label: the image's true modality).
- Confidence levels: "uncertain" below the top-2 DIAG margin of the least sure 17.5% of the
  out-of-fold predictions of the same recipe (``--oof``, calibrated with the card's
  calibration), "low confidence" up to the 40% quantile; each level keeps its out-of-fold
  accuracy. ``--oof-partial`` fits them on the ledger entry's finished folds (say so).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from skinnet.calibration import calibrate
from skinnet.data import Case, Derm7pt
from skinnet.guards import (LEVELS, FeatureBlock, Guards, confidence_levels, fit_gaussian, fit_modality,
                            guard_feature_blocks, guard_features, guards_path, weights_fingerprint)
from skinnet.imaging import load_rgb
from skinnet.labels import split_logits
from skinnet.model import HEADS, MODALITIES
from skinnet.predict import Predictor

from .data import trained_splits
from .evaluate import oof_tta
from .ledger import is_ledger_path, ledger_source, read_entry_oof, read_oof

log = logging.getLogger(__name__)


@torch.inference_mode()
def pair_features(predictor: Predictor, clinical: list, dermoscopy: list) -> dict[str, torch.Tensor]:
    """:func:`guard_features` of a batch of pairs, one slot each, as the app computes them (unflipped)."""
    model = predictor.model
    given = {m: torch.cat([predictor.to_tensor(im) for im in images])
             for m, images in zip(MODALITIES, (clinical, dermoscopy)) if images}
    if len(given) == 2:
        encoding = model.encode_pair(given["clinical"], given["dermoscopy"], summaries=True)
        return {m: guard_features(encoding.summaries[m], encoding.pooled[m]) for m in MODALITIES}
    (m, x), = given.items()
    summaries: list = []
    pooled = model.encode_one(x, m, summaries=summaries)
    return {m: guard_features(summaries, pooled)}


def lesion_features(predictor: Predictor, cases: list[Case], batch: int = 16
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Features of every image of ``cases``, grouped by the image's true modality: modality ->
    (features (N, D), index of each row's case in ``cases`` (N,)).

    Each image is seen in its own slot of its pair, in the other slot (the pair swapped) and
    alone, the three ways the app may meet it. Cases without a clinical photo give dermoscopy
    features only.
    """
    out: dict[str, list[torch.Tensor]] = {m: [] for m in MODALITIES}
    rows: dict[str, list[torch.Tensor]] = {m: [] for m in MODALITIES}
    for start in range(0, len(cases), batch):
        index = torch.arange(start, min(start + batch, len(cases)))
        derm = [load_rgb(cases[i].dermoscopy_path) for i in index]
        out["dermoscopy"].append(pair_features(predictor, [], derm)["dermoscopy"])
        rows["dermoscopy"].append(index)
        index = torch.tensor([int(i) for i in index if not cases[i].clinic_is_derm], dtype=torch.long)
        if len(index) == 0:
            continue
        clin = [load_rgb(cases[i].clinical_path) for i in index]
        derm = [load_rgb(cases[i].dermoscopy_path) for i in index]
        normal, swapped = pair_features(predictor, clin, derm), pair_features(predictor, derm, clin)
        out["clinical"] += [normal["clinical"], swapped["dermoscopy"], pair_features(predictor, clin, [])["clinical"]]
        rows["clinical"] += [index] * 3
        out["dermoscopy"] += [normal["dermoscopy"], swapped["clinical"]]
        rows["dermoscopy"] += [index] * 2
    return {m: (torch.cat(out[m]), torch.cat(rows[m])) for m in MODALITIES}


def feature_blocks(predictor: Predictor) -> list[tuple[int, int]]:
    """:func:`guard_feature_blocks` of the predictor's model (one forward pass of a blank image)."""
    size = predictor.card.image_size
    summaries: list = []
    with torch.inference_mode():
        pooled = predictor.model.encode_one(torch.zeros(1, 3, size, size, device=predictor.device), "dermoscopy",
                                            summaries=summaries)
    return guard_feature_blocks(summaries, pooled)


def fit_blocks(features: dict[str, torch.Tensor], components: int, blocks: list[tuple[int, int]]) -> list[FeatureBlock]:
    """A Gaussian per modality in each block of the features (distances not yet in unseen units)."""
    fitted = []
    for start, stop in blocks:
        gaussians = {m: fit_gaussian(f[:, start:stop], min(components, len(f) - 1, stop - start)) for m, f in features.items()}
        fitted.append(FeatureBlock(start, stop, *({m: g[i] for m, g in gaussians.items()} for i in range(4))))
    return fitted


def unseen_distances(features: dict[str, tuple[torch.Tensor, torch.Tensor]], components: int,
                     blocks: list[tuple[int, int]], folds: int = 5) -> torch.Tensor:
    """(blocks, images): each case's images' distance in each block under Gaussians fitted
    without that case (cross-fitted by case): how far lesions the Gaussians have not seen lie."""
    out = []
    for fold in range(folds):
        fitted = fit_blocks({m: f[rows % folds != fold] for m, (f, rows) in features.items()}, components, blocks)
        unseen = torch.cat([f[rows % folds == fold] for f, rows in features.values()])
        out.append(torch.stack([block.distance(unseen) for block in fitted]))
    return torch.cat(out, 1)


def read_oof_for_levels(oof_path: str | Path, data: Derm7pt | None, partial: bool = False) -> dict:
    """The out-of-fold predictions; with ``partial``, a ledger entry's finished folds only (an
    entry still being built: the levels are then fitted on fewer cases, which the notes say)."""
    try:
        if partial and is_ledger_path(Path(oof_path)):
            entry, views = ledger_source(Path(oof_path))
            done = [k for k in entry.planned_folds() if entry.done(k)]
            if not done:
                raise ValueError(f"{oof_path}: no fold is finished yet")
            return read_entry_oof(entry, data, views, folds=done)
        return read_oof(oof_path, data)
    except ValueError as err:
        raise SystemExit(f"--oof {err}") from None


def oof_margins(oof_path: str | Path, predictor: Predictor, head: str = "fused",
                data: Derm7pt | None = None, partial: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-2 DIAG margin, correct) of one head's out-of-fold predictions (an ``oof.pt`` or a
    ledger entry, which needs ``data``), calibrated as the app calibrates (the clinical head
    only on cases that have a clinical photo)."""
    oof = read_oof_for_levels(oof_path, data, partial)
    if oof.get("hold_out") is not None:
        raise SystemExit(f"--oof {oof_path}: the OOF of --hold-out teachers leaves a fold out; use an ordinary cross-fit")
    card_tta, flips = predictor.card.tta, oof_tta(oof, oof_path)
    if flips != card_tta:
        raise SystemExit(f"--oof {oof_path}: predicted with TTA {'on' if flips else 'off'}, the checkpoint "
                         f"predicts with it {'on' if card_tta else 'off'} (training.crossval --tta-oof writes the other)")
    keep = oof["has_clinical"] if head == "clinical" else torch.ones(len(oof["labels"]), dtype=torch.bool)
    logits = calibrate(oof["logits"][head][keep], predictor.card.calibration.get(head))
    probs = torch.softmax(split_logits(logits)["DIAG"], -1)
    top2 = probs.topk(2, -1).values
    return top2[:, 0] - top2[:, 1], probs.argmax(-1) == oof["labels"][keep][:, 0]


def fit(predictor: Predictor, cases: list[Case], oof_path: str | Path | None, *, components: int = 32,
        ood_factor: float = 1.0, data: Derm7pt | None = None, oof_partial: bool = False) -> Guards:
    """Guards of ``predictor``'s model from the images of ``cases`` (without ``oof_path`` every
    case is called confident)."""
    features = lesion_features(predictor, cases)
    weight, bias = fit_modality(torch.cat([features["clinical"][0], features["dermoscopy"][0]]),
                                torch.cat([torch.zeros(len(features["clinical"][0])),
                                           torch.ones(len(features["dermoscopy"][0]))]))
    blocks = feature_blocks(predictor)
    fitted = fit_blocks({m: f for m, (f, _) in features.items()}, components, blocks)
    unseen = unseen_distances(features, components, blocks)
    for block, distances in zip(fitted, unseen):  # each block in units of its unseen lesions' 99th percentile
        block.unseen = float(distances.quantile(0.99))
    largest = (unseen / torch.tensor([b.unseen for b in fitted])[:, None]).max(0).values
    guards = Guards(blocks=fitted, ood_threshold=ood_factor * float(largest.quantile(0.99)), modality_weight=weight,
                    modality_bias=bias, uncertain_margin={}, fingerprint=weights_fingerprint(predictor.model))
    guards.notes = {
        "fitted_on": f"{len(cases)} cases",
        "lesion_check": f"per feature block ({len(blocks)}: each stage's statistics, the pooled features) a Gaussian "
                        f"per modality, Ledoit-Wolf, top {components} components and one variance for the rest; "
                        "each block's distance in units of its 99th percentile over images whose case was left "
                        "out of the fit (5 folds by case), the largest over the blocks; "
                        f"threshold = {ood_factor} x the 99th percentile of that ({guards.ood_threshold:.3f})",
        "modality": "logistic regression (C=0.1, standardised features) on the training images in both slots "
                    "and alone",
        "uncertain": "not fitted (no out-of-fold predictions given): every case is called confident",
    }
    return guards if oof_path is None else fit_levels(guards, predictor, oof_path, data, oof_partial)


def fit_levels(guards: Guards, predictor: Predictor, oof_path: str | Path, data: Derm7pt | None = None,
               partial: bool = False) -> Guards:
    """Choose the confidence levels' limits on out-of-fold predictions (calibrated with the
    card's calibration, so refit this after recalibrating); each level keeps its accuracy."""
    guards.uncertain_margin, guards.low_confidence_margin, guards.levels, notes = {}, {}, {}, []
    for head in HEADS:
        margins, correct = oof_margins(oof_path, predictor, head, data, partial)
        uncertain, low, levels = confidence_levels(margins, correct)
        guards.uncertain_margin[head], guards.low_confidence_margin[head], guards.levels[head] = uncertain, low, levels
        notes.append(f"{head} head: uncertain < {uncertain:.3f} <= low confidence < {low:.3f} <= confident; right "
                     + ", ".join(f"{100 * levels[n]['accuracy']:.0f}% of the {n}" for n in LEVELS)
                     + f" ({len(margins)} cases)")
    where = Path(oof_path).name if Path(oof_path).is_dir() else f"{Path(oof_path).parent.name}/{Path(oof_path).name}"
    folds = ""
    if partial and is_ledger_path(Path(oof_path)):
        entry, _ = ledger_source(Path(oof_path))
        folds = f", folds {[k for k in entry.planned_folds() if entry.done(k)]} of {entry.folds} only"
    guards.notes["uncertain"] = f"top-2 DIAG margin, out-of-fold ({where}{folds}, calibrated): " + "; ".join(notes)
    return guards


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m training.fit_guards", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--oof", default=None, help="a ledger entry (experiments/<name>, or its oof_tta_off.csv "
                   "for one view) or an oof.pt of training.crossval, with the checkpoint's recipe "
                   "(chooses the 'uncertain' margin; without it no case is called uncertain)")
    p.add_argument("--components", type=int, default=32)
    p.add_argument("--ood-factor", type=float, default=1.0)
    p.add_argument("--uncertain-only", action="store_true",
                   help="keep the existing guards file's checks; choose only the confidence levels again "
                        "(after recalibrating the checkpoint, or once a ledger entry has all its folds)")
    p.add_argument("--oof-partial", action="store_true",
                   help="a ledger entry still being built: fit the confidence levels on its finished folds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="default: beside the checkpoint")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, guards=args.uncertain_only)
    if args.uncertain_only:
        if predictor.guards is None or not args.oof:
            raise SystemExit("--uncertain-only needs an existing guards file beside the checkpoint and --oof")
        out = fit_levels(predictor.guards, predictor, args.oof, Derm7pt(args.data_root),
                         args.oof_partial).save(args.out or guards_path(args.checkpoint))
        print(f"uncertain: {predictor.guards.notes['uncertain']}\nwrote {out}")
        return out
    data = Derm7pt(args.data_root)
    splits = trained_splits(predictor.card.trained_on_valid)
    cases = [c for s in splits for c in data.split(s)]
    guards = fit(predictor, cases, args.oof, components=args.components, ood_factor=args.ood_factor, data=data,
                 oof_partial=args.oof_partial)
    guards.notes["fitted_on"] = f"Derm7pt {' + '.join(splits)} ({len(cases)} cases), the checkpoint's training data"
    out = guards.save(args.out or guards_path(args.checkpoint))
    for key, text in guards.notes.items():
        print(f"{key}: {text}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
