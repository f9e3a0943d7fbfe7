"""Example pairs drawn by code, shipped with the app: what a demo visitor can click first.

No real lesion image may be shipped (Derm7pt is for research use only, and no pair with a
licence that allows it is available offline), so these are drawn: skin with uneven light, fine
texture and hairs, a pigmented lesion with an irregular border and mottled colour, and for
dermoscopy a magnified view with a pigment network inside the dermatoscope's dark ring. They
are labelled "synthetic" wherever they are shown; the model's answer on them means nothing
medically, they show how the app works. Deterministic (fixed seeds), so every start draws the
same pictures.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .examples import Example

SKIN_TONES = ((226, 184, 160), (200, 150, 120), (236, 200, 178))
PIGMENTS = (((120, 72, 48), (70, 40, 28)), ((95, 60, 50), (45, 30, 35)), ((150, 95, 60), (105, 62, 40)))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Noise in [-1, 1] whose features are about ``scale`` pixels across."""
    h, w = shape
    small = rng.normal(size=(max(2, h // scale + 2), max(2, w // scale + 2))).astype(np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC))
    return big / max(float(np.abs(big).max()), 1e-6)


def _skin(rng: np.random.Generator, shape: tuple[int, int], tone) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = 0.88 + 0.12 * (1 - xx) * (0.7 + 0.3 * yy)  # light from one side
    pixels = np.array(tone, dtype=np.float32) * light[..., None]
    pixels += 10 * _smooth_noise(rng, shape, 40)[..., None] + 4 * _smooth_noise(rng, shape, 4)[..., None]
    return pixels + rng.normal(0, 2.5, (h, w, 3))


def _lesion_mask(rng: np.random.Generator, shape, centre, radius, irregular: float) -> np.ndarray:
    """A blob whose border wanders by ``irregular`` of its radius, softened at the edge."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.arctan2(yy - centre[1], xx - centre[0])
    wobble = sum(rng.normal(0, irregular / k) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    r = np.hypot(xx - centre[0], yy - centre[1]) / (radius * (1 + wobble))
    return np.clip((1.0 - r) * 6, 0, 1)


def _pigment(rng: np.random.Generator, shape, mask: np.ndarray, colours, network: bool) -> np.ndarray:
    light, dark = (np.array(c, dtype=np.float32) for c in colours)
    mottle = (_smooth_noise(rng, shape, 18) + 1) / 2
    pixels = light + (dark - light) * mottle[..., None]
    if network:  # a pigment network: a darker mesh of holes a few pixels apart
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = 3 * _smooth_noise(rng, shape, 25)
        mesh = np.abs(np.sin((xx + warp) / 3.2)) * np.abs(np.sin((yy - warp) / 3.2))
        pixels *= (0.75 + 0.35 * mesh)[..., None]
    return pixels


def _hairs(image: Image.Image, rng: np.random.Generator, count: int, width: int) -> Image.Image:
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(count):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.5) * max(w, h)
        points = [(x + t * length * np.cos(angle) + 6 * np.sin(t * 5), y + t * length * np.sin(angle))
                  for t in np.linspace(0, 1, 12)]
        draw.line(points, fill=(60, 45, 40), width=width)
    return image


def _finish(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def clinical_photo(seed: int, tone=SKIN_TONES[0], colours=PIGMENTS[0], size=(480, 360)) -> Image.Image:
    """A wider view: a small lesion on an area of skin, a few hairs."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = _skin(rng, (h, w), tone)
    mask = _lesion_mask(rng, (h, w), (w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)), h * 0.13, 0.12)
    pixels = pixels * (1 - mask[..., None]) + _pigment(rng, (h, w), mask, colours, False) * mask[..., None]
    return _hairs(_finish(pixels), rng, 5, 1)


def dermoscopy_image(seed: int, tone=SKIN_TONES[0], colours=PIGMENTS[0], size=(400, 400)) -> Image.Image:
    """A magnified view through a dermatoscope: the lesion fills much of the field, a pigment
    network, a dark circular ring around the field."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = _skin(rng, (h, w), np.array(tone) * 0.95)
    mask = _lesion_mask(rng, (h, w), (w / 2 + rng.normal(0, 8), h / 2 + rng.normal(0, 8)), h * 0.3, 0.15)
    pixels = pixels * (1 - mask[..., None]) + _pigment(rng, (h, w), mask, colours, True) * mask[..., None]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - w / 2, yy - h / 2) / (min(w, h) / 2)
    pixels *= np.clip((1.08 - r) * 6, 0, 1)[..., None]
    return _hairs(_finish(pixels), rng, 3, 2)


def synthetic_examples() -> list[Example]:
    """The shipped examples: two drawn pairs, one dermoscopy image alone and a text page (the
    lesion check). No swapped pair: the shipped model's modality check reads a drawn clinical
    photo as dermoscopy (p = 0.94-1.0), so a drawn pair in the wrong slots never showed the swap
    message its name promised."""
    first = clinical_photo(1), dermoscopy_image(2)
    second = (clinical_photo(3, SKIN_TONES[1], PIGMENTS[1]), dermoscopy_image(4, SKIN_TONES[1], PIGMENTS[1]))
    return [Example("pair 1", *first),
            Example("pair 2", *second),
            Example("dermoscopy only", None, dermoscopy_image(6, SKIN_TONES[2], PIGMENTS[2])),
            Example("text, not a lesion", _text_page(), None)]


def _text_page(size=(420, 320)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(5)
    for y in range(16, size[1] - 16, 15):
        words = " ".join("".join(chr(97 + int(c)) for c in rng.integers(0, 26, rng.integers(2, 9)))
                         for _ in range(8))
        draw.text((16, y), words, fill="black")
    return image
