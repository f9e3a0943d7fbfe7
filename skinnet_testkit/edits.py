"""Edits a near-duplicate of a held-out image must survive (issue 27, item 2): used by
``benchmarks/near_duplicates.py`` (tuning and report) and ``tests/test_training.py`` (an edited
held-out image is not trained on)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def crop(image: Image.Image, share: float) -> Image.Image:
    """``share`` of the width and height cut from each side."""
    w, h = image.size
    dx, dy = round(w * share), round(h * share)
    return image.crop((dx, dy, w - dx, h - dy))


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Turned, the corners it uncovers black (the whole picture kept)."""
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)


def border(image: Image.Image, share: float, colour=(255, 255, 255)) -> Image.Image:
    w, h = image.size
    return ImageOps.expand(image, border=(round(w * share), round(h * share)), fill=colour)


def shear(image: Image.Image, amount: float = 0.2) -> Image.Image:
    w, h = image.size
    return image.transform((w + round(amount * h), h), Image.Transform.AFFINE, (1, -amount, 0, 0, 1, 0),
                           resample=Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def noise(image: Image.Image, sigma: float = 8.0) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64) + np.random.default_rng(0).normal(0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


HARD_EDITS = {
    "crop 3% per side": lambda im: crop(im, 0.03),
    "crop 5% per side": lambda im: crop(im, 0.05),
    "crop 10% per side": lambda im: crop(im, 0.10),
    "crop 15% per side": lambda im: crop(im, 0.15),
    "crop 20% per side": lambda im: crop(im, 0.20),
    "rotate 5 degrees": lambda im: rotate(im, 5),
    "rotate 15 degrees": lambda im: rotate(im, 15),
    "rotate 15 degrees, crop 12% per side": lambda im: crop(rotate(im, 15), 0.12),
    "border 5% (white)": lambda im: border(im, 0.05),
    "border 10% (black)": lambda im: border(im, 0.10, (0, 0, 0)),
    "border 15% (white)": lambda im: border(im, 0.15),
    "shear 0.2": shear,
    "mirror, crop 10% per side": lambda im: crop(ImageOps.mirror(im), 0.10),
}
"""What the perceptual hash missed (issue 27): the picture moves against the frame."""
EASY_EDITS = {
    "JPEG quality 70": lambda im: jpeg(im, 70),
    "mirrored": ImageOps.mirror,
    "rotated 90 degrees": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "half size": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "blur (radius 2)": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "noise (sigma 8)": noise,
    "colour (autocontrast, 15% darker)": lambda im: ImageOps.autocontrast(im).point(lambda v: v * 0.85),
}
"""What the perceptual hash already caught: kept to show nothing was lost."""
