"""A set of photos and pictures that are not skin lesions, built offline from installed packages.

    python benchmarks/non_lesion.py --out DIR     # writes the PNGs to look at (not committed)

Sources (nothing is downloaded; each package ships these files under its own licence, so the
set is rebuilt where it is needed instead of being stored in this repository):
scikit-image's ``skimage.data`` sample images (astronaut, coffee, cat, rocket, text page,
retina, histology, ...), scikit-learn's two sample photos, matplotlib's sample photo and logos,
and generated pictures: noise, flat colours (including skin tones), gradients, rendered
documents, charts, a screenshot-like user interface and random shapes.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SKIMAGE_SAMPLES = ("astronaut", "binary_blobs", "brick", "camera", "cell", "checkerboard", "chelsea", "clock",
                   "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                   "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
                   "shepp_logan_phantom", "text")


def _to_rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(255 * (array - array.min()) / max(np.ptp(array), 1e-9), 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def package_images() -> list[tuple[str, Image.Image]]:
    import matplotlib
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = [(f"skimage-{name}", _to_rgb(getattr(skimage.data, name)())) for name in SKIMAGE_SAMPLES]
    for name, array in zip(("china", "flower"), load_sample_images().images):
        out.append((f"sklearn-{name}", _to_rgb(array)))
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        with Image.open(sample_data / name) as image:
            out.append((f"matplotlib-{Path(name).stem}", image.convert("RGB")))
    return out


def _figure(draw) -> Image.Image:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    draw(ax, np.random.default_rng(0))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _document(rng: np.random.Generator, size=(420, 560)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    y = 20
    while y < size[1] - 20:
        words = " ".join("".join(chr(97 + int(c)) for c in rng.integers(0, 26, rng.integers(2, 9)))
                         for _ in range(rng.integers(5, 10)))
        draw.text((20, y), words, fill="black")
        y += 16
    return image


def _interface(rng: np.random.Generator, size=(640, 400)) -> Image.Image:
    image = Image.new("RGB", size, (245, 246, 248))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size[0], 36), fill=(40, 60, 120))
    draw.text((12, 12), "Settings - Account - Help", fill="white")
    for i in range(6):
        y = 56 + 54 * i
        draw.rectangle((20, y, size[0] - 20, y + 40), outline=(200, 200, 210), fill="white")
        draw.text((32, y + 14), f"Option {i + 1}: value {int(rng.integers(0, 100))}", fill=(30, 30, 30))
        draw.rounded_rectangle((size[0] - 120, y + 8, size[0] - 32, y + 32), 6, fill=(60, 130, 220))
    return image


def _shapes(rng: np.random.Generator, size=(400, 300)) -> Image.Image:
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, size[0]), rng.integers(0, size[1])
        box = (x0, y0, x0 + rng.integers(20, 150), y0 + rng.integers(20, 150))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def generated_images() -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(0)
    h, w = 300, 400
    out = [("noise-uniform", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))),
           ("noise-gaussian", Image.fromarray(np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8))),
           ("noise-grey", Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert("RGB"))]
    for name, colour in (("black", (0, 0, 0)), ("white", (255, 255, 255)), ("grey", (128, 128, 128)),
                         ("red", (200, 30, 30)), ("skin-light", (224, 180, 150)), ("skin-dark", (120, 80, 60))):
        out.append((f"flat-{name}", Image.new("RGB", (w, h), colour)))
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    for name, pixels in (("gradient-horizontal", np.broadcast_to(x * 255, (h, w, 3))),
                         ("gradient-diagonal", (x + y) / 2 * np.array([255, 120, 40])),
                         ("gradient-radial", np.broadcast_to(
                             255 * np.clip(1 - np.hypot(x - 0.5, y - 0.5) * 2, 0, 1), (h, w, 3)))):
        out.append((name, Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8))))
    out += [("document-1", _document(np.random.default_rng(1))), ("document-2", _document(np.random.default_rng(2))),
            ("interface-1", _interface(np.random.default_rng(1))), ("interface-2", _interface(np.random.default_rng(2))),
            ("shapes-1", _shapes(np.random.default_rng(1))), ("shapes-2", _shapes(np.random.default_rng(2))),
            ("shapes-3", _shapes(np.random.default_rng(3)))]
    out += [("chart-line", _figure(lambda ax, r: ax.plot(r.normal(size=(50, 3)).cumsum(0)))),
            ("chart-bar", _figure(lambda ax, r: ax.bar(range(8), r.random(8)))),
            ("chart-scatter", _figure(lambda ax, r: ax.scatter(*r.normal(size=(2, 200)), c=r.random(200)))),
            ("chart-pie", _figure(lambda ax, r: ax.pie(r.random(5)))),
            ("chart-heatmap", _figure(lambda ax, r: ax.imshow(r.random((20, 20)))))]
    return out


def non_lesion_images() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) pairs: the whole set, in a fixed order."""
    return package_images() + generated_images()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    images = non_lesion_images()
    for name, image in images:
        image.save(folder / f"{name}.png")
    print(f"{len(images)} images in {folder}")
