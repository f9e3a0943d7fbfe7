"""How far lesions the *network* never saw lie from its guards' training images, out of fold.

    python benchmarks/guard_threshold_oof.py --data-root ../shared/derm7pt --run runs/e_method

The shipped lesion check's threshold is the 99th percentile of distances of the shipped model's
own training images, each left out of the Gaussians' fit but not out of the network's training.
It flags 1.8% of train + valid cases and 4.6% of test pairs. Could the gap be that test lesions
are new to the network? This asks without test: each fold model of a cross-fit run
(``training.crossval``: ``folds.json`` and ``fold<k>/``) gets guards fitted as the shipped ones
(``training.fit_guards.fit``, factor 1) on its training cases less a sample as large as its
held-out fold; the app's prediction path then scores the held-out fold (new to the network and
to the guards) and the sample (new to the guards only, as the shipped threshold's images were).
A case's distance is the largest over its images, in thresholds (above 1: flagged).
``ood_factor`` in the JSON is the ``--quantile`` of the held-out cases' distances. Test is not read.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from skinnet.data import Derm7pt
from skinnet.imaging import load_rgb
from skinnet.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


def case_distances(predictor: Predictor, cases) -> list[float]:
    """Each case's largest image distance in thresholds, through ``Predictor.predict`` as the app
    calls it (no clinical photo where the release has none)."""
    out = []
    for case in cases:
        clinical = None if case.clinic_is_derm else load_rgb(case.clinical_path)
        out.append(max(predictor.predict(clinical, load_rgb(case.dermoscopy_path)).checks.distance.values()))
        predictor.forget()
    return out


def upper_95(k: int, n: int) -> float:
    """One-sided 95% upper limit of a rate after ``k`` events in ``n`` trials (Clopper-Pearson)."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(0.95, k + 1, n - k))


def flagged(distances: list[float], factor: float = 1.0) -> float:
    return sum(d > factor for d in distances) / len(distances)


def main(argv=None) -> dict:
    from training.fit_guards import fit

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--run", default=str(ROOT / "runs" / "e_method"), help="a training.crossval run folder")
    p.add_argument("--quantile", type=float, default=0.98, help="share of unseen lesions that should pass")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "guard_threshold_oof.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    folds = {str(k): int(v) for k, v in json.loads((run / "folds.json").read_text())["folds"].items()}
    data = Derm7pt(args.data_root)
    cases = [c for split in ("train", "valid") for c in data.split(split)]
    shown = run.resolve().relative_to(ROOT) if run.resolve().is_relative_to(ROOT) else run
    record, unseen_all, seen_all = {"run": str(shown), "folds": {}}, [], []
    for fold_dir in sorted(run.glob("fold*")):
        weights = next(fold_dir.glob("*.safetensors"), None)
        if weights is None or not fold_dir.name[4:].isdigit():
            continue
        k = int(fold_dir.name[4:])
        trained = [c for c in cases if folds[c.case_id] != k]
        held = [c for c in cases if folds[c.case_id] == k]
        # as many of its training cases as it held out are left out of the Gaussians' fit (as the
        # shipped threshold's images were): seen by the network, not by the guards
        sample = random.Random(k).sample(trained, len(held))
        fit_on = [c for c in trained if c not in sample]
        predictor = Predictor.from_checkpoint(weights, guards=False)
        predictor.guards = fit(predictor, fit_on, None)
        unseen = case_distances(predictor, held)
        seen = case_distances(predictor, sample)
        unseen_all += unseen
        seen_all += seen
        record["folds"][k] = {"trained_cases": len(trained), "guards_fitted_on": len(fit_on), "held_out_cases": len(held),
                              "flagged_network_seen": flagged(seen), "flagged_network_unseen": flagged(unseen)}
        print(f"fold {k}: flagged {100 * flagged(seen):.1f}% of {len(seen)} training cases, "
              f"{100 * flagged(unseen):.1f}% of its {len(unseen)} held-out cases")
    if not unseen_all:
        raise SystemExit(f"{run}: no fold folder with weights")
    factor = float(torch.tensor(unseen_all).quantile(args.quantile))
    record.update(
        n_unseen=len(unseen_all), n_seen=len(seen_all), quantile=args.quantile,
        flagged_network_seen=flagged(seen_all), flagged_network_unseen=flagged(unseen_all),
        unseen_distance_quantiles={q: float(torch.tensor(unseen_all).quantile(q)) for q in (0.5, 0.9, 0.95, 0.98, 0.99)},
        seen_distance_quantiles={q: float(torch.tensor(seen_all).quantile(q)) for q in (0.5, 0.9, 0.95, 0.98, 0.99)},
        ood_factor=factor,
        # the largest flag rate on unseen lesions that these counts leave plausible (one-sided 95%)
        flagged_network_unseen_upper_95=upper_95(sum(d > 1 for d in unseen_all), len(unseen_all)))
    print(f"\n{'cases':<44}{'n':>5}{'flagged at factor 1':>22}")
    print(f"{'training cases of the fold model (seen)':<44}{len(seen_all):>5}{100 * flagged(seen_all):>21.1f}%")
    print(f"{'held-out cases of the fold model (unseen)':<44}{len(unseen_all):>5}{100 * flagged(unseen_all):>21.1f}%")
    print(f"flagged on unseen lesions: at most {100 * record['flagged_network_unseen_upper_95']:.1f}% (one-sided 95%)")
    print(f"--ood-factor at the {args.quantile:.2f} quantile of the unseen cases' distances: {factor:.3f}")
    Path(args.json).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
