"""Does the near-duplicate check catch edited held-out images, and only them? (issue 27, item 2)

    python benchmarks/near_duplicates.py --data-root /path/to/release_v0

The references are every image of Derm7pt's test split (what training never learns from).
Edited copies of test images (crops, rotations, borders, shear, and the edits the perceptual
hash already caught) must match the image they came from; images of other cases (train and
valid splits, disjoint from test by case) must match nothing. Two disjoint sets are used:

- **tuning**: 24 test images under each hard edit, and as the different cases 150 valid-split
  images and the first 300 train-split images (those the first run reported on);
  MIN_AGREEMENT is chosen here (the middle of the gap between the best agreement any different
  case reached and the lowest any caught edit needed);
- **report**: other test images under every edit, and train-split images as the different
  cases, scored with the chosen MIN_AGREEMENT.

A first run (``near_duplicates_first_run.json``: local features with an inlier threshold and no
appearance check) reported on the 24 test images after the tuning ones and the first 300
train images, and found 2 false matches (two clinical photos sharing only a ruler). Those
images have shaped this design, so they are tuning data now; the report skips them
(``--report-offset``, ``--negatives-offset``) and is scored on images the design never saw.

Only derived numbers are written (``benchmarks/results/near_duplicates.json``), never pixels.
CPU: one thread, niced; about an hour on the project's shared 2-core machine under a training.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image, ImageOps

import cv2

from skinnet import near_duplicates as nd
from skinnet.data import Derm7pt
from skinnet.imaging import load_rgb
from skinnet_testkit.edits import EASY_EDITS, HARD_EDITS

ROOT = Path(__file__).resolve().parents[1]


CERTAIN = 0.95
"""Agreement beyond which the mirrored view is not tried (no threshold above it is considered)."""


def evidence(index: nd.ReferenceImages, image: Image.Image) -> dict:
    """Every check's score against the references, whatever the threshold: exact match, nearest
    perceptual hash, and each affine candidate of the image and (unless one is certain) its mirror."""
    started = time.perf_counter()
    exact = index.exact.get(nd.pixel_sha256(image))
    distances = nd.hash_distance(nd.perceptual_hashes(image), index.hashes)
    candidates = index.affine_candidates(image)
    if not any(c.score >= nd.MIN_INLIERS and c.agreement >= CERTAIN for c in candidates):
        candidates += index.affine_candidates(ImageOps.mirror(image))
    return {"exact": exact, "hash_bits": int(distances.min()), "hash_reference": int(distances.argmin()),
            "candidates": [(c.reference, c.score, c.agreement) for c in candidates],
            "seconds": time.perf_counter() - started}


def decide(record: dict, min_agreement: float) -> tuple[str | None, int | None]:
    """(the check that fires, the reference it names) at this threshold, as ReferenceImages.match does."""
    if record["exact"] is not None:
        return "exact", record["exact"]
    if record["hash_bits"] <= nd.NEAR_DUPLICATE_BITS:
        return "perceptual hash", record["hash_reference"]
    for reference, inliers, agreement in record["candidates"]:
        if inliers >= nd.MIN_INLIERS and agreement >= min_agreement:
            return "local features", reference
    return None, None


def best_agreement(record: dict, keep=lambda reference: True) -> float:
    """The highest agreement among the record's candidates with MIN_INLIERS matches (and ``keep``)."""
    return max((a for r, n, a in record["candidates"] if n >= nd.MIN_INLIERS and keep(r)), default=0.0)


def choose_min_agreement(edited: list[dict], different: list[dict], owner: list[str]) -> tuple[float, dict]:
    """The middle of the widest gap: above every different case's agreement, and no higher than
    the lowest agreement among the edits that the lowest such threshold catches."""
    ceiling = max((best_agreement(r) for r in different), default=0.0)
    caught = [a for a in (best_agreement(r, lambda ref, r=r: owner[ref] == r["case"]) for r in edited) if a > ceiling]
    floor = min(caught) if caught else min(ceiling + 0.01, 1.0)
    chosen = round((ceiling + floor) / 2, 3)
    assert chosen < CERTAIN, chosen
    return chosen, {"best_agreement_of_a_different_case": round(ceiling, 4),
                    "lowest_agreement_of_a_caught_edit": round(floor, 4)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--images", type=int, default=24, help="test images per edit for the report")
    p.add_argument("--tuning-images", type=int, default=24, help="other test images per edit for the threshold")
    p.add_argument("--negatives", type=int, default=300, help="train-split images for the report's false matches")
    p.add_argument("--tuning-negatives", type=int, default=150, help="valid-split images for choosing the threshold")
    p.add_argument("--report-offset", type=int, default=24, help="test images after the tuning ones to skip")
    p.add_argument("--negatives-offset", type=int, default=300, help="train-split images to skip")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "near_duplicates.json"))
    args = p.parse_args(argv)
    os.nice(19)
    cv2.setNumThreads(1)
    data = Derm7pt(args.data_root)
    test = data.split("test")
    references, owner = [], []
    for case in test:
        for path in dict.fromkeys((case.dermoscopy_path, case.clinical_path)):
            references.append(load_rgb(path))
            owner.append(case.case_id)
    started = time.time()
    index = nd.ReferenceImages(references)
    print(f"{len(index)} test images indexed in {time.time() - started:.0f} s")

    rng = np.random.default_rng(0)
    order = rng.permutation(len(test))
    picked = [test[i] for i in order[:args.tuning_images + args.report_offset + args.images]]
    # alternate the modality: half dermoscopy images, half clinical photos (a dermoscopy-only
    # case gives its dermoscopy image)
    sources = [(c.case_id, c.dermoscopy_path if i % 2 == 0 or c.clinic_is_derm else c.clinical_path)
               for i, c in enumerate(picked)]
    tuning_sources, report_sources = sources[:args.tuning_images], sources[args.tuning_images + args.report_offset:]

    def run_edits(chosen, edits):
        rows = []
        for case_id, path in chosen:
            original = load_rgb(path)
            for name, edit in edits.items():
                record = evidence(index, edit(original))
                rows.append({**record, "edit": name, "case": case_id})
        return rows

    def run_different(cases, skip, limit):
        paths = [(case.case_id, path) for case in cases for path in dict.fromkeys((case.dermoscopy_path, case.clinical_path))]
        return [{**evidence(index, load_rgb(path)), "case": case_id} for case_id, path in paths[skip:skip + limit]]

    tuning_edited = run_edits(tuning_sources, HARD_EDITS)
    tuning_different = (run_different(data.split("valid"), 0, args.tuning_negatives)
                        + run_different(data.split("train"), 0, args.negatives_offset))
    min_agreement, gap = choose_min_agreement(tuning_edited, tuning_different, owner)
    print(f"tuning: MIN_AGREEMENT = {min_agreement} ({gap})")
    report_edited = run_edits(report_sources, {**HARD_EDITS, **EASY_EDITS})
    report_different = run_different(data.split("train"), args.negatives_offset, args.negatives)

    per_edit = {}
    for name in {**HARD_EDITS, **EASY_EDITS}:
        rows = [r for r in report_edited if r["edit"] == name]
        checks = [decide(r, min_agreement) for r in rows]
        right = [check is not None and owner[reference] == r["case"] for r, (check, reference) in zip(rows, checks)]
        per_edit[name] = {
            "images": len(rows), "caught": sum(right),
            "matched_another_case": sum(check is not None and not ok for (check, _), ok in zip(checks, right)),
            "caught_by_perceptual_hash_alone": sum(r["hash_bits"] <= nd.NEAR_DUPLICATE_BITS
                                                  and owner[r["hash_reference"]] == r["case"] for r in rows),
            "by_check": {c: sum(1 for (check, _), ok in zip(checks, right) if ok and check == c)
                         for c in ("exact", "perceptual hash", "local features")},
            "lowest_agreement_with_its_own_image": min(
                best_agreement(r, lambda ref, r=r: owner[ref] == r["case"]) for r in rows)}
    false = [(r["case"], *decide(r, min_agreement)) for r in report_different]
    false = [(case, check, owner[reference]) for case, check, reference in false if check]
    record = {
        "references": f"Derm7pt test split: {len(index)} images of {len(test)} cases",
        "settings": {"feature_side": nd.FEATURE_SIDE, "features": nd.FEATURES, "ratio": nd.RATIO,
                     "candidates": nd.CANDIDATES, "voters": nd.VOTERS, "ransac_pixels": nd.RANSAC_PIXELS, "min_inliers": nd.MIN_INLIERS,
                     "agreement_side": nd.AGREEMENT_SIDE, "agreement_cells": nd.AGREEMENT_CELLS,
                     "near_duplicate_bits": nd.NEAR_DUPLICATE_BITS},
        "tuning": {"edited_test_images": len(tuning_sources), "edits": list(HARD_EDITS),
                   "different_cases": f"{args.tuning_negatives} valid-split and the first {args.negatives_offset} "
                                      f"train-split images x {len(index)} test images",
                   "min_agreement": min_agreement, **gap,
                   "edited_images_caught": sum(decide(r, min_agreement)[1] is not None
                                               and owner[decide(r, min_agreement)[1]] == r["case"] for r in tuning_edited),
                   "edited_images": len(tuning_edited)},
        "report": {"edited_test_images": len(report_sources), "test_images_skipped": args.report_offset,
                   "per_edit": per_edit,
                   "different_cases": {"images": len(report_different), "train_images_skipped": args.negatives_offset,
                                       "pairs": len(report_different) * len(index),
                                       "false_matches": len(false), "which": false,
                                       "best_agreement": round(max(best_agreement(r) for r in report_different), 4),
                                       "most_inliers": max((n for r in report_different for _, n, _ in r["candidates"]),
                                                           default=0),
                                       "fewest_hash_bits": min(r["hash_bits"] for r in report_different)}},
        "seconds_per_check": {"edited (median)": median(r["seconds"] for r in report_edited),
                              "different case (median)": median(r["seconds"] for r in report_different)},
        "machine": "the project's shared 2-core x86_64 CPU, one OpenCV thread, niced under a running training",
    }
    Path(args.json).write_text(json.dumps(record, indent=2))
    print(f"MIN_AGREEMENT {min_agreement}; false matches {len(false)} of {record['report']['different_cases']['pairs']} pairs")
    for name, r in per_edit.items():
        print(f"{name:45s} {r['caught']:2d}/{r['images']} (hash alone {r['caught_by_perceptual_hash_alone']:2d}), "
              f"lowest agreement {r['lowest_agreement_with_its_own_image']:.3f}")
    return record


if __name__ == "__main__":
    main()
