"""What the app's guards catch: pictures that are not lesions, swapped images, uncertain cases.

    python benchmarks/guards.py --data-root ../shared/derm7pt [--checkpoint CKPT] \
        [--oof experiments/e_method/oof_tta_off.csv [--oof-partial]]

Runs the app's own prediction path (``Predictor.predict``: TTA, calibration, guards) on
- the pictures of ``skinnet_testkit/non_lesion.py`` (the 53 of the design set, and the held-out set
  that took no part in designing the check), each in both slots, in the clinical slot beside a
  real dermoscopy image, and in the dermoscopy slot beside a real clinical photo, with the
  distribution of their distances in thresholds (the margin);
- all 395 Derm7pt test pairs as given and swapped (the test split is scored here once per
  shipped guards file; nothing here chooses a threshold);
and draws the risk-coverage curve of DIAG (accuracy of the cases kept against the fraction
kept, ordered by the top-2 margin the 'uncertain' badge uses) with melanoma sensitivity, from
out-of-fold predictions (``--oof``) and from the test pairs. Writes a table, JSON and a PNG.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet_testkit.non_lesion import held_out_images, non_lesion_images
from skinnet.data import Derm7pt
from skinnet.guards import LEVELS, UNCERTAIN
from skinnet.imaging import load_rgb
from skinnet.labels import TASK_BY_NAME
from skinnet.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]

MEL = TASK_BY_NAME["DIAG"].classes.index("MEL")
DIAG_CLASSES = TASK_BY_NAME["DIAG"].classes


def risk_coverage(margins: torch.Tensor, predicted: torch.Tensor, truth: torch.Tensor,
                  coverages=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5)) -> list[dict]:
    """Keep the most confident fraction of cases; their DIAG accuracy and melanoma sensitivity."""
    order = margins.argsort(descending=True)
    rows = []
    for coverage in coverages:
        kept = order[:max(1, round(coverage * len(order)))]
        melanoma = truth[kept] == MEL
        rows.append({"coverage": coverage, "n_kept": len(kept),
                     "accuracy": float((predicted[kept] == truth[kept]).float().mean()),
                     "melanoma_sensitivity": float((predicted[kept][melanoma] == MEL).float().mean())
                     if melanoma.any() else None,
                     "margin_at_least": float(margins[kept].min())})
    return rows


def oof_curve(oof_path: Path, predictor: Predictor, data: Derm7pt, partial: bool) -> tuple[list[dict], int]:
    from training.fit_guards import oof_margins, read_oof_for_levels
    from skinnet.calibration import calibrate
    from skinnet.labels import split_logits

    oof = read_oof_for_levels(oof_path, data, partial)
    margins, _ = oof_margins(oof_path, predictor, "fused", data, partial)
    probs = torch.softmax(split_logits(calibrate(oof["logits"]["fused"], predictor.card.calibration.get("fused")))
                          ["DIAG"], -1)
    return risk_coverage(margins, probs.argmax(-1), oof["labels"][:, 0]), len(margins)


def quantiles(values: list[float]) -> dict:
    t = torch.tensor(values)
    return {"min": float(t.min()), "p05": float(t.quantile(0.05)), "p10": float(t.quantile(0.1)),
            "median": float(t.median()), "p90": float(t.quantile(0.9)), "max": float(t.max())}


def picture_checks(predictor: Predictor, pictures, paired) -> dict:
    """Each picture in both slots and beside a real image of the other modality: how often it
    is flagged, and its distance in thresholds (clinical slot, a real dermoscopy image beside it)."""
    def checks(clinical, dermoscopy):
        result = predictor.predict(clinical, dermoscopy).checks
        predictor.forget()
        return result

    flagged = {"both slots": 0, "clinical slot, real dermoscopy beside it": 0,
               "dermoscopy slot, real clinical photo beside it": 0}
    missed, distances = [], {}
    for i, (name, picture) in enumerate(pictures):
        partner = paired[i % len(paired)]
        both = checks(picture, picture)
        in_clinical = checks(picture, load_rgb(partner.dermoscopy_path))
        in_derm = checks(load_rgb(partner.clinical_path), picture)
        flagged["both slots"] += bool(both.not_lesion)
        flagged["clinical slot, real dermoscopy beside it"] += "clinical" in in_clinical.not_lesion
        flagged["dermoscopy slot, real clinical photo beside it"] += "dermoscopy" in in_derm.not_lesion
        distances[name] = in_clinical.distance["clinical"]
        if "clinical" not in in_clinical.not_lesion:
            missed.append(name)
    return {"n": len(pictures), **{k: v / len(pictures) for k, v in flagged.items()}, "missed_in_clinical_slot": missed,
            "distance_in_thresholds": quantiles(list(distances.values())),
            "below_1_5x": sorted(n for n, d in distances.items() if d < 1.5), "distances": distances}


def draw(curves: dict[str, list[dict]], margin: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in curves.items():
        cov = [r["coverage"] for r in rows]
        axes[0].plot(cov, [100 * r["accuracy"] for r in rows], "o-", label=name)
        axes[1].plot(cov, [100 * (r["melanoma_sensitivity"] or 0) for r in rows], "o-", label=name)
    for ax, title in zip(axes, ("DIAG accuracy of the cases kept (%)", "melanoma sensitivity among kept (%)")):
        ax.set_xlabel("fraction of cases kept (the rest referred as uncertain)")
        ax.set_title(title)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Risk-coverage, fused head, ordered by top-2 DIAG margin (badge below {margin:.2f})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--oof", default=None, help="the shipped recipe's out-of-fold predictions (a ledger entry or "
                   "its oof_tta_off.csv, or an oof.pt): risk-coverage")
    p.add_argument("--oof-partial", action="store_true", help="a ledger entry still being built: its finished folds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "guards.json"))
    p.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "risk_coverage.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    if predictor.guards is None:
        raise SystemExit(f"{args.checkpoint} has no guards file: python -m training.fit_guards first")
    started = time.time()
    test = [c for c in Derm7pt(args.data_root).split("test")]
    paired = [c for c in test if not c.clinic_is_derm]

    def checks(clinical, dermoscopy):
        return predictor.predict(clinical, dermoscopy).checks

    sets = {"design": picture_checks(predictor, non_lesion_images(), paired),
            "held_out": picture_checks(predictor, held_out_images(), paired)}

    lesion_flagged, swapped_right, swap_false_alarm, wrong_slot_alarm = 0, 0, 0, 0
    margins, predicted, truth, levels, test_distances = [], [], [], [], []
    for case in test:
        clinical = None if case.clinic_is_derm else load_rgb(case.clinical_path)
        derm = load_rgb(case.dermoscopy_path)
        prediction = predictor.predict(clinical, derm)
        lesion_flagged += bool(prediction.checks.not_lesion)
        diag = prediction.heads[prediction.primary_head].probabilities["DIAG"]
        margins.append(prediction.checks.margin)
        levels.append(prediction.checks.level)
        test_distances.append(max(prediction.checks.distance.values()))
        predicted.append(DIAG_CLASSES.index(max(diag, key=diag.get)))
        truth.append(case.labels[0])
        if clinical is not None:
            swap_false_alarm += prediction.checks.swapped
            wrong_slot_alarm += bool(prediction.checks.wrong_slot)
            swapped_right += checks(derm, clinical).swapped
        predictor.forget()
    margins_t, predicted_t, truth_t = torch.tensor(margins), torch.tensor(predicted), torch.tensor(truth)
    uncertain = torch.tensor([level == UNCERTAIN for level in levels])
    right = predicted_t == truth_t
    test_levels = {name: {"share": sum(level == name for level in levels) / len(levels),
                          "accuracy": float(right[[level == name for level in levels]].float().mean())
                          if name in levels else None} for name in LEVELS}
    curves = {"test (395)": risk_coverage(margins_t, predicted_t, truth_t)}
    record = {
        "checkpoint": predictor.version, "guards": predictor.guards.notes,
        "non_lesion": sets["design"], "held_out_non_lesion": sets["held_out"],
        "derm7pt_test": {
            "n": len(test), "lesion_check_flagged": lesion_flagged / len(test),
            "distance_in_thresholds": quantiles(test_distances),
            "levels": test_levels, "levels_out_of_fold": predictor.guards.levels.get("fused"),
            "n_pairs": len(paired), "swapped_pairs_detected": swapped_right / len(paired),
            "unswapped_called_swapped": swap_false_alarm / len(paired),
            "unswapped_with_a_wrong_slot_warning": wrong_slot_alarm / len(paired),
            "uncertain": float(uncertain.float().mean()),
            "accuracy_certain": float((predicted_t == truth_t)[~uncertain].float().mean()),
            "accuracy_uncertain": float((predicted_t == truth_t)[uncertain].float().mean()) if uncertain.any() else None,
            "melanomas_flagged_uncertain": float(uncertain[truth_t == MEL].float().mean()),
        },
        "seconds": time.time() - started,
    }
    if args.oof:
        curve, n = oof_curve(Path(args.oof), predictor, Derm7pt(args.data_root), args.oof_partial)
        curves[f"out-of-fold ({n})"] = curve
    record["risk_coverage"] = curves
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2))
    draw(curves, predictor.guards.uncertain_margin["fused"], Path(args.figure))

    print(f"{predictor.version}: guards")
    print(f"{'check':<70}{'result':>10}")
    for name, found in sets.items():
        for key in ("both slots", "clinical slot, real dermoscopy beside it",
                    "dermoscopy slot, real clinical photo beside it"):
            label = f"{name} non-lesion pictures ({found['n']}) flagged, {key}"
            print(f"{label:<70}{100 * found[key]:9.1f}%")
        d = found["distance_in_thresholds"]
        print(f"  {name}: distance in thresholds min {d['min']:.2f} p10 {d['p10']:.2f} median {d['median']:.2f}; "
              f"missed {found['missed_in_clinical_slot']}; under 1.5x {found['below_1_5x']}")
    t = record["derm7pt_test"]
    for label, key in (("Derm7pt test pairs flagged as not a lesion", "lesion_check_flagged"),
                       ("Derm7pt test pairs swapped: detected", "swapped_pairs_detected"),
                       ("Derm7pt test pairs as given: called swapped", "unswapped_called_swapped"),
                       ("Derm7pt test pairs as given: a wrong-slot warning", "unswapped_with_a_wrong_slot_warning"),
                       ("Derm7pt test cases called uncertain", "uncertain"),
                       ("DIAG accuracy, certain cases", "accuracy_certain"),
                       ("DIAG accuracy, uncertain cases", "accuracy_uncertain"),
                       ("test melanomas called uncertain", "melanomas_flagged_uncertain")):
        print(f"{label:<58}{100 * (t[key] or 0):9.1f}%")
    d = t["distance_in_thresholds"]
    print(f"test pairs' largest distance in thresholds: median {d['median']:.2f}, p90 {d['p90']:.2f}, max {d['max']:.2f}")
    for name in LEVELS:
        oof = (t["levels_out_of_fold"] or {}).get(name) or {}
        print(f"level {name:<15} test: {100 * t['levels'][name]['share']:.0f}% of cases, right "
              f"{100 * (t['levels'][name]['accuracy'] or 0):.0f}%; out of fold: {100 * (oof.get('share') or 0):.0f}%, "
              f"right {100 * (oof.get('accuracy') or 0):.0f}% ({oof.get('cases')} cases)")
    for name, rows in curves.items():
        print(f"risk-coverage, {name}: " + "  ".join(
            f"{r['coverage']:.0%} kept: acc {100 * r['accuracy']:.1f} MEL sens "
            f"{100 * (r['melanoma_sensitivity'] or 0):.0f}" for r in rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
