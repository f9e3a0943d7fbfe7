"""Is an image an edited copy of one of a set of reference images?

Used to keep held-out Derm7pt images out of training when a reviewer uploads them as a
"new" case (``training/data.py``). Three checks, cheapest first:

1. the exact pixels (:func:`~skinnet.imaging.pixel_sha256`): the same image in another file format;
2. a perceptual hash of the 8 orientations (:func:`~skinnet.imaging.perceptual_hashes`):
   re-encoding, resizing, blur, noise, colour changes, mirroring and quarter turns;
3. local features matched under one affine map, and the pictures then agreeing: crops, small
   rotations, added borders, shear, and each of these mirrored, which move the whole picture and
   defeat any global hash. ORB keypoints of both images (each scaled to a shorter side of
   FEATURE_SIDE pixels) are matched (nearest neighbour, Lowe's ratio test); the references with
   the most matches are fitted with an affine map by RANSAC; with at least MIN_INLIERS matches
   on that map, refined on the pixels, the image is warped onto the reference and compared
   cell by cell (the median correlation of the textured cells of a 6 x 6 grid must reach
   MIN_AGREEMENT). The second test is what a ruler needs: two different clinical photos with
   a ruler share dozens of keypoints under one map, but not the skin and the lesion around it.

The thresholds were chosen on edits of Derm7pt images and on pairs of different Derm7pt cases
that are not used for the reported numbers (``benchmarks/near_duplicates.py``,
``benchmarks/results/near_duplicates.json``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np
from PIL import Image, ImageOps

from .imaging import hash_distance, perceptual_hashes, pixel_sha256

NEAR_DUPLICATE_BITS = 32
"""Perceptual-hash distance (of 255 bits) at or under which an image counts as a copy. Measured
on Derm7pt: a held-out image re-saved as JPEG q95 is within 4 bits, mirrored or rotated 0-4,
shrunk to half 4, cropped by 1 px 22; two different Derm7pt images are never closer than 44."""
FEATURE_SIDE = 384
"""Images are scaled so that their shorter side has this many pixels before keypoints are found
(Derm7pt's images are 512 px, a working copy's 224: a crop keeps enough keypoints). The
same image in any size is the same picture here, so the check does not depend on the upload's."""
FEATURES = 500
"""ORB keypoints per image."""
RATIO = 0.8
"""Lowe's ratio test: a match counts when its nearest neighbour is clearly nearer than the next."""
CANDIDATES = 3
"""References (those with the most matches) fitted with an affine map per query."""
VOTERS = 250
"""Each reference's strongest keypoints, against which a query's keypoints pick the candidates
(matching against every reference at once is the costly step); a candidate is then matched
with all FEATURES. Taken on the references' side: a query's strongest keypoints can be an
edit's own (a border's or a rotation's edges)."""
MIN_INLIERS = 20
"""Matches on one affine map before the pictures are compared: two different Derm7pt images
shared at most 16 (the first run's tuning set, ``near_duplicates_first_run.json``), a ruler
in both up to 51; an edited copy shares 23 or more (all but the smoothest images cropped by
15-20% a side)."""
RANSAC_PIXELS = 4.0
"""How far (at FEATURE_SIDE) a match may land from where the fitted map puts it."""
AGREEMENT_SIDE = 192
"""Shorter side (pixels) at which an aligned image and its reference are compared."""
AGREEMENT_CELLS = 6
MIN_AGREEMENT = 0.85
"""Median correlation of the aligned pictures' textured cells at or above which they are the
same picture (chosen on held-out edits: ``benchmarks/near_duplicates.py``)."""


@dataclass(frozen=True)
class Verdict:
    """Which reference an image copies (index into the references), and the evidence."""

    reference: int
    check: str
    """``exact``, ``perceptual hash`` or ``local features``."""
    score: int
    """Differing hash bits (perceptual hash) or matches under one affine map (local features)."""
    agreement: float = 1.0
    """Local features: the aligned pictures' median cell correlation."""

    def __str__(self) -> str:
        if self.check == "exact":
            return "the same pixels"
        if self.check == "perceptual hash":
            return f"{self.score} of 255 perceptual-hash bits differ"
        return (f"{self.score} local features match under one affine map, and the aligned pictures "
                f"correlate at {self.agreement:.2f}")


def _grey(image: Image.Image) -> np.ndarray:
    grey = np.asarray(image.convert("L"))
    scale = FEATURE_SIDE / max(1, min(grey.shape))
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def local_features(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(keypoint positions (N, 2), ORB descriptors (N, 32) or None when there are none, strongest
    first, the :func:`small_grey` picture to compare with after alignment)."""
    grey = _grey(image)
    keypoints, descriptors = cv2.ORB_create(nfeatures=FEATURES, fastThreshold=10).detectAndCompute(grey, None)
    order = np.argsort([-k.response for k in keypoints], kind="stable")
    points = np.float32([keypoints[i].pt for i in order]).reshape(-1, 2)
    return points, (descriptors[order] if descriptors is not None else None), small_grey(grey)


def fit_affine(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray | None, int]:
    """(the affine map carrying most point pairs onto each other (RANSAC, a fixed seed), how many
    it carries); (None, 0) for a degenerate map (one that squashes the picture by 10x or more)."""
    if len(source) < 3:
        return None, 0
    cv2.setRNGSeed(0)
    fitted, inliers = cv2.estimateAffine2D(source, target, method=cv2.RANSAC,
                                           ransacReprojThreshold=RANSAC_PIXELS)
    if fitted is None or not np.isfinite(fitted).all() or not 0.1 < abs(np.linalg.det(fitted[:, :2])) < 10:
        return None, 0
    return fitted, int(inliers.sum())


def small_grey(grey: np.ndarray) -> np.ndarray:
    """A FEATURE_SIDE grey image at AGREEMENT_SIDE, blurred a little (alignment is never exact);
    8-bit, so that an index of a thousand references stays small (about 55 KB each)."""
    scale = AGREEMENT_SIDE / FEATURE_SIDE
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return cv2.GaussianBlur(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), (0, 0), 1.5)


def refine(query: np.ndarray, reference: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """The map laying the query on the reference, refined on their pixels (ECC, OpenCV): a map
    fitted to keypoints bunched in one place (a ruler) is off elsewhere; unchanged if ECC fails."""
    inverse = cv2.invertAffineTransform(fitted).astype(np.float32)
    try:
        _, inverse = cv2.findTransformECC(reference, query, inverse, cv2.MOTION_AFFINE,
                                          (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4), None, 1)
    except cv2.error:  # no convergence: keep the keypoints' map
        return fitted
    return cv2.invertAffineTransform(inverse)


def agreement(query: np.ndarray, reference: np.ndarray, fitted: np.ndarray) -> float:
    """How alike two :func:`small_grey` pictures are once ``fitted`` (a map between their
    FEATURE_SIDE versions, :func:`refine`d) lays the query on the reference: the median
    correlation over the cells of an AGREEMENT_CELLS grid that the query covers and that have
    texture (the correlation of the whole overlap when fewer than 3 cells qualify)."""
    query, reference = query.astype(np.float32), reference.astype(np.float32)
    fitted = fitted.copy()
    fitted[:, 2] *= AGREEMENT_SIDE / FEATURE_SIDE
    fitted = refine(query, reference, fitted)
    h, w = reference.shape
    warped = cv2.warpAffine(query, fitted, (w, h), flags=cv2.INTER_LINEAR)
    covered = cv2.warpAffine(np.ones_like(query), fitted, (w, h), flags=cv2.INTER_NEAREST) > 0.5
    covered = cv2.erode(covered.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0

    def correlation(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 1e-3 and b.std() > 1e-3 else 0.0

    cells = []
    for i in range(AGREEMENT_CELLS):
        for j in range(AGREEMENT_CELLS):
            rows = slice(i * h // AGREEMENT_CELLS, (i + 1) * h // AGREEMENT_CELLS)
            columns = slice(j * w // AGREEMENT_CELLS, (j + 1) * w // AGREEMENT_CELLS)
            inside = covered[rows, columns]
            a, b = warped[rows, columns][inside], reference[rows, columns][inside]
            if inside.mean() >= 0.8 and a.std() >= 3 and b.std() >= 3:
                cells.append(correlation(a, b))
    if len(cells) >= 3:
        return float(np.median(cells))
    return correlation(warped[covered], reference[covered]) if covered.sum() > 100 else 0.0


class ReferenceImages:
    """An index of reference images that :meth:`match` checks a new image against."""

    def __init__(self, images: Iterable[Image.Image]):
        self.exact: dict[str, int] = {}
        hashes, self.points, self.descriptors, self.greys = [], [], [], []
        for index, image in enumerate(images):
            self.exact.setdefault(pixel_sha256(image), index)
            hashes.append(perceptual_hashes(image)[0])
            points, found, grey = local_features(image)
            self.points.append(points)
            self.greys.append(grey)
            # an image without keypoints still takes its place in the matcher's numbering
            self.descriptors.append(found if found is not None else np.zeros((0, 32), np.uint8))
        self.hashes = np.array(hashes)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.matcher.add([found[:VOTERS] for found in self.descriptors])

    def __len__(self) -> int:
        return len(self.points)

    def match(self, image: Image.Image) -> Verdict | None:
        """The reference this image is a copy of (edited or not), or None."""
        if not len(self):
            return None
        exact = self.exact.get(pixel_sha256(image))
        if exact is not None:
            return Verdict(exact, "exact", 0)
        distances = hash_distance(perceptual_hashes(image), self.hashes)
        nearest = int(distances.argmin())
        if distances[nearest] <= NEAR_DUPLICATE_BITS:
            return Verdict(nearest, "perceptual hash", int(distances[nearest]))
        for view in (image, ImageOps.mirror(image)):  # keypoint descriptors are not mirror-invariant
            for candidate in self.affine_candidates(view):
                if candidate.score >= MIN_INLIERS and candidate.agreement >= MIN_AGREEMENT:
                    return candidate
        return None

    def affine_candidates(self, image: Image.Image) -> list[Verdict]:
        """The CANDIDATES references with the most local-feature matches, each with its matches
        under one affine map and, from MIN_INLIERS of them, the aligned pictures' agreement (else 0)."""
        points, descriptors, grey = local_features(image)
        if descriptors is None or len(descriptors) < 2:
            return []
        voters = self.matcher.knnMatch(descriptors, k=2)
        votes = np.bincount([m.imgIdx for m, n in (f for f in voters if len(f) == 2) if m.distance < RATIO * n.distance],
                            minlength=len(self))
        found = []
        for reference in np.argsort(-votes, kind="stable")[:CANDIDATES]:
            if votes[reference] == 0:
                break
            # matched again against this reference alone: more matches, a better map than the pool's
            chosen = np.array([(m.queryIdx, m.trainIdx) for m, n in
                               (f for f in cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(
                                   descriptors, self.descriptors[reference], k=2) if len(f) == 2)
                               if m.distance < RATIO * n.distance], dtype=int).reshape(-1, 2)
            fitted, inliers = fit_affine(points[chosen[:, 0]], self.points[reference][chosen[:, 1]])
            alike = agreement(grey, self.greys[reference], fitted) if inliers >= MIN_INLIERS else 0.0
            found.append(Verdict(int(reference), "local features", inliers, round(alike, 4)))
        return found
