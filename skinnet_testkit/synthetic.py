"""A small synthetic Derm7pt release_v0 with the official release's quirks (no real images).

Same layout (meta/meta.csv with the official columns, meta/*_indexes.csv, images/<DIR>/<file>)
and the same traps: a meta.csv path whose case differs from the file on disk, upper-case
``.JPG`` clinical files, and cases whose clinical image is the dermoscopy image.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from skinnet.labels import TASKS

META_COLUMNS = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks",
                "pigmentation", "regression_structures", "dots_and_globules", "blue_whitish_veil",
                "vascular_structures", "level_of_diagnostic_difficulty", "elevation", "location",
                "sex", "management", "clinic", "derm", "case_id", "notes"]
ALL_RAW_VALUES = {t.column: [v for group in t.raw_values for v in group] for t in TASKS}


def lesion_image(rng: np.random.Generator, size=(72, 56), tint=0) -> Image.Image:
    """A skin-coloured image with a dark blob whose colour depends on ``tint`` (learnable)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    skin = np.array([220, 170, 140], dtype=np.float64)
    blob_colour = np.array([[90, 50, 30], [40, 40, 90], [120, 30, 30], [60, 90, 60], [30, 30, 30]][tint % 5])
    cx, cy, r = w / 2 + rng.normal(0, 4), h / 2 + rng.normal(0, 4), min(w, h) / 3.5
    mask = (((xx - cx) ** 2 + (yy - cy) ** 2) < r ** 2)[..., None]
    pixels = np.where(mask, blob_colour, skin) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_release(root: Path, n_cases: int = 24, seed: int = 0, splits=(0.5, 0.25, 0.25)) -> Path:
    """Write a synthetic release_v0 under ``root``; returns ``root``.

    Row 1 carries the case-mismatch quirk (meta says ``FCl/Fcl001.jpg``, disk has
    ``FCL/Fcl001.jpg``), row 2 has clinic == derm, clinical files are upper-case ``.JPG``.
    Every raw label value of meta.csv appears at least once when n_cases >= 20.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_cases):
        labels = {col: values[i % len(values)] for col, values in ALL_RAW_VALUES.items()}
        diag = TASKS[0].class_index(labels["diagnosis"])
        folder, stem = ("FCL", f"Fcl{i:03d}") if i == 1 else ("NEL", f"Nel{i:03d}")
        meta_folder = "FCl" if i == 1 else folder
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        derm_name, clinic_name = f"{stem}d.jpg", f"{stem.upper()}C.JPG"
        lesion_image(rng, tint=diag).save(root / "images" / folder / derm_name, quality=90)
        derm = f"{meta_folder}/{derm_name}"
        if i == 2:
            clinic = derm
        else:
            lesion_image(rng, size=(64, 48), tint=diag).save(root / "images" / folder / clinic_name, quality=90)
            clinic = f"{folder}/{clinic_name}"
        rows.append({"case_num": i + 1, **labels, "seven_point_score": 0,
                     "level_of_diagnostic_difficulty": "low", "elevation": "flat",
                     "location": "back", "sex": "female", "management": "clinical follow up",
                     "clinic": clinic, "derm": derm, "case_id": "", "notes": ""})
    with open(root / "meta" / "meta.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=META_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    order = rng.permutation(n_cases)
    n_train, n_valid = int(splits[0] * n_cases), int(splits[1] * n_cases)
    parts = {"train": order[:n_train], "valid": order[n_train:n_train + n_valid],
             "test": order[n_train + n_valid:]}
    for split, indexes in parts.items():
        (root / "meta" / f"{split}_indexes.csv").write_text(
            "indexes\n" + "".join(f"{int(i)}\n" for i in sorted(indexes)))
    return root


def other_lesion_image(rng: np.random.Generator, size=(72, 56)) -> Image.Image:
    """A lesion-like image that is not a copy of any :func:`lesion_image` (its layout differs:
    an off-centre ellipse on a shaded background), for cases that must count as new."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    skin = np.array([200, 150, 120], dtype=np.float64) * (0.7 + 0.3 * xx[..., None] / w)
    mask = ((((xx - w * 0.3) / (w * 0.22)) ** 2 + ((yy - h * 0.7) / (h * 0.15)) ** 2) < 1)[..., None]
    pixels = np.where(mask, np.array([70, 40, 30.0]), skin) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def dermoscopy_like_image(rng: np.random.Generator, size=(72, 72)) -> Image.Image:
    """A close-up: a large pigmented blob filling the field, inside a dark circular vignette."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - w / 2, yy - h / 2) / (min(w, h) / 2)
    skin = np.array([210, 150, 130.0]) + rng.normal(0, 6, 3)
    blob = ((r < 0.55 + rng.normal(0, 0.05)))[..., None]
    pixels = np.where(blob, np.array([110, 60, 45.0]) + rng.normal(0, 10, 3), skin)
    pixels = pixels * np.clip(1.25 - r, 0, 1)[..., None] + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def clinical_like_image(rng: np.random.Generator, size=(84, 56)) -> Image.Image:
    """A wider view: a small lesion on an evenly lit skin area, with cloth along one edge."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    skin = np.array([225, 185, 160.0]) + rng.normal(0, 8, 3)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    blob = (np.hypot(xx - cx, yy - cy) < min(w, h) / 9)[..., None]
    pixels = np.where(blob, np.array([100, 60, 40.0]), skin)
    pixels = np.where((yy > h * 0.85)[..., None], np.array([40, 70, 140.0]), pixels)
    return Image.fromarray(np.clip(pixels + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))


def restyle_release(root: Path, seed: int = 1) -> Path:
    """Redraw a :func:`make_release` folder's images so that the two modalities look different
    (:func:`clinical_like_image`, :func:`dermoscopy_like_image`); labels and layout unchanged."""
    rng = np.random.default_rng(seed)
    for path in sorted((Path(root) / "images").rglob("*")):
        if path.is_file():
            draw = dermoscopy_like_image if path.name.endswith("d.jpg") else clinical_like_image
            draw(rng).save(path, quality=90)
    return Path(root)


def textured_lesion_image(rng: np.random.Generator, size=(336, 224)) -> Image.Image:
    """A photo-sized lesion: skin with texture at several scales and an irregular dark blob
    (local-feature matching needs what a photo has; :func:`lesion_image`'s 72 px of per-pixel
    noise changes wholly under any rotation)."""
    w, h = size

    def smooth_noise(cell: int) -> np.ndarray:
        small = rng.normal(0, 1, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
        return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC))

    texture = 6 * smooth_noise(3) + 10 * smooth_noise(12) + 14 * smooth_noise(40)
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot((xx - w * 0.5) / (w * 0.22), (yy - h * 0.5) / (h * 0.3)) + 0.25 * smooth_noise(30)
    blob = np.clip((1.0 - radius) * 4, 0, 1)[..., None]
    skin = np.array([215, 165, 140.0]) + texture[..., None]
    lesion = np.array([95, 55, 40.0]) + 1.5 * texture[..., None]
    return Image.fromarray(np.clip(skin * (1 - blob) + lesion * blob, 0, 255).astype(np.uint8))
