"""Photos and pictures that are not skin lesions, built offline from installed packages: the
design set (:func:`non_lesion_images`, 53 pictures that chose the lesion check's features) and a
held-out set (:func:`held_out_images`, that did not).

    python -m skinnet_testkit.non_lesion --out DIR [--held-out]    # writes the PNGs to look at (not committed)

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
from PIL import Image, ImageDraw, ImageFilter

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


# -- the held-out set ---------------------------------------------------------------------------
# Pictures the lesion check never saw while it was designed (the set above chose its features and
# its per-block form): other installed packages' files and other generators, in the kinds the app
# meets by mistake (microscopy, histology, X-ray and CT, pets and animals, faces, hands without a
# lesion, text, screenshots). Scored once per guards file by benchmarks/guards.py; nothing here
# chooses a threshold.

def _font(size: int):
    from matplotlib import font_manager
    from PIL import ImageFont
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _gradio_photos() -> list[tuple[str, Image.Image]]:
    import gradio
    root = Path(gradio.__file__).parent
    files = [*(root / "media_assets" / "images").glob("*"), *(root / "test_data").glob("cheetah2.jpg")]
    out = []
    for path in sorted(files):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif"):
            with Image.open(path) as image:
                out.append((f"gradio-{path.stem}", image.convert("RGB")))
    return out


def _other_package_images() -> list[tuple[str, Image.Image]]:
    import gzip

    import matplotlib
    import skimage.data
    from matplotlib import colormaps

    data = Path(skimage.data.__file__).parent
    out = [(f"skimage-{name}", _to_rgb(np.asarray(Image.open(data / f"{name}.png"))))
           for name in ("motorcycle_left", "motorcycle_right", "color", "chessboard_RGB", "clock_motion")]
    faces = np.load(data / "lfw_subset.npy")  # 200 small face crops (skimage's LFW subset)
    out += [(f"lfw-face-{i}", _to_rgb(faces[i]).resize((200, 200), Image.BICUBIC)) for i in range(0, 200, 20)]
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    mri = np.frombuffer(gzip.open(sample / "s1045.ima.gz").read(), np.uint16).reshape(256, 256)
    out.append(("matplotlib-mri-slice", _to_rgb(mri.astype(np.float32))))
    dem = np.load(sample / "jacksboro_fault_dem.npz")["elevation"].astype(np.float32)
    shade = np.clip(np.gradient(dem)[0] * 0.3 + 0.5, 0, 1)
    out.append(("matplotlib-elevation-shaded", _to_rgb(shade)))
    out.append(("matplotlib-elevation-colour",
                Image.fromarray((colormaps["terrain"]((dem - dem.min()) / np.ptp(dem))[..., :3] * 255).astype(np.uint8))))
    return out


def _blobs(rng, size, count, radius, colour, background, soft=True) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.broadcast_to(np.array(background, dtype=np.float32), (h, w, 3)).copy()
    for _ in range(count):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), radius * rng.uniform(0.6, 1.4)
        d = np.hypot(yy - cy, xx - cx) / r
        weight = np.clip(1.2 - d, 0, 1)[..., None] if soft else (d < 1)[..., None]
        image = image * (1 - weight) + np.array(colour, dtype=np.float32) * weight
    return image


def _microscopy(rng, kind: str, size=(300, 400)) -> Image.Image:
    h, w = size
    if kind == "he":  # haematoxylin and eosin: pink tissue, purple nuclei, white gaps
        image = _blobs(rng, size, 160, 7, (80, 40, 130), (236, 170, 200))
        gaps = _blobs(rng, size, 6, 30, (250, 245, 250), (0, 0, 0))
        image = np.where(gaps.sum(-1, keepdims=True) > 0, gaps, image)
    elif kind == "ihc":  # immunohistochemistry: blue nuclei, brown stained patches
        image = _blobs(rng, size, 140, 6, (70, 80, 150), (225, 220, 215))
        brown = _blobs(rng, size, 25, 18, (140, 85, 40), (0, 0, 0))
        image = np.where(brown.sum(-1, keepdims=True) > 0, 0.4 * image + 0.6 * brown, image)
    elif kind == "fluorescence":  # dark field, glowing cells
        image = _blobs(rng, size, 60, 9, (40, 230, 80), (5, 5, 10)) + _blobs(rng, size, 40, 5, (40, 60, 240), (0, 0, 0))
    else:  # brightfield: grey field, cell outlines
        image = _blobs(rng, size, 50, 14, (150, 150, 150), (200, 200, 200), soft=False)
    image += rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def _radiograph(rng, kind: str, size=(360, 360)) -> Image.Image:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    if kind == "chest":  # bright ribs and spine over dark lungs
        image = 0.25 + 0.5 * np.exp(-((xx - 0.5) / 0.06) ** 2)
        for k in range(8):
            for side in (-1, 1):
                curve = 0.2 + 0.08 * k + 0.12 * ((xx - 0.5) * side) ** 2 * 8
                image += 0.25 * np.exp(-((yy - curve) / 0.015) ** 2) * ((xx - 0.5) * side > 0.05) * (abs(xx - 0.5) < 0.4)
        image *= np.clip(1.3 - 2.2 * np.hypot(xx - 0.5, yy - 0.55), 0, 1)
    else:  # a CT slice: a round body, organs, bone, noise
        image = 0.8 * (np.hypot(xx - 0.5, (yy - 0.5) * 1.2) < 0.42)
        for _ in range(5):
            cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.12)
            image = np.where(np.hypot(xx - cx, yy - cy) < r, rng.uniform(0.3, 1.0), image)
        image = np.where(np.hypot(xx - 0.5, yy - 0.78) < 0.05, 1.0, image)
    image = image + rng.normal(0, 0.03, (h, w))
    grey = np.clip(image * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB").filter(ImageFilter.GaussianBlur(1.2))


def _hand(rng, size=(360, 480)) -> Image.Image:
    """A hand without a lesion: palm and fingers in a skin tone, shaded, on a plain background."""
    h, w = size
    background = tuple(int(v) for v in rng.integers(40, 230, 3))
    image = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(image)
    tone = np.array([(224, 180, 150), (190, 140, 110), (140, 95, 70), (240, 205, 185)][int(rng.integers(0, 4))])
    skin = tuple(int(v) for v in tone)
    draw.ellipse((w * 0.3, h * 0.45, w * 0.7, h * 0.95), fill=skin)
    for k, length in enumerate((0.32, 0.4, 0.42, 0.38)):
        x = w * (0.33 + 0.1 * k)
        draw.rounded_rectangle((x, h * (0.55 - length), x + w * 0.08, h * 0.62), radius=int(w * 0.04), fill=skin)
    draw.rounded_rectangle((w * 0.16, h * 0.52, w * 0.36, h * 0.62), radius=int(w * 0.04), fill=skin)
    pixels = np.asarray(image, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels *= (0.85 + 0.15 * xx / w)[..., None]
    pixels += rng.normal(0, 3, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))


def _text_image(rng, kind: str, size=(640, 420)) -> Image.Image:
    image = Image.new("RGB", size, {"letter": "white", "code": (30, 30, 36), "terminal": "black"}.get(kind, "white"))
    draw = ImageDraw.Draw(image)
    font = _font(14 if kind != "letter" else 16)
    colour = {"letter": (20, 20, 20), "code": (200, 210, 160), "terminal": (80, 230, 80)}.get(kind, "black")
    y = 16
    while y < size[1] - 24:
        indent = int(rng.integers(0, 4)) * 24 if kind == "code" else 0
        words = " ".join("".join(chr(97 + int(c)) for c in rng.integers(0, 26, rng.integers(2, 9)))
                         for _ in range(rng.integers(3, 9)))
        draw.text((16 + indent, y), ("$ " if kind == "terminal" else "") + words, fill=colour, font=font)
        y += 22
    return image


def _screenshot(rng, kind: str, size=(800, 500)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(13)
    accent = tuple(int(v) for v in rng.integers(20, 200, 3))
    draw.rectangle((0, 0, size[0], 48), fill=accent)
    draw.text((16, 16), "Home   Products   About   Contact", fill="white", font=font)
    if kind == "spreadsheet":
        for row in range(1, 20):
            for col in range(8):
                x, y = 10 + col * 98, 50 + row * 22
                draw.rectangle((x, y, x + 98, y + 22), outline=(210, 210, 210))
                draw.text((x + 4, y + 4), f"{rng.integers(0, 9999)}", fill="black", font=font)
    else:
        draw.rectangle((24, 70, 380, 300), fill=tuple(int(v) for v in rng.integers(100, 255, 3)))
        for k in range(10):
            draw.text((410, 80 + 28 * k), "Lorem ipsum dolor sit amet, consectetur", fill=(40, 40, 40), font=font)
        draw.rounded_rectangle((410, 400, 560, 440), 8, fill=accent)
    return image


def held_out_images() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) pairs that are not lesions and took no part in designing the check."""
    out = _gradio_photos() + _other_package_images()
    for i in range(4):
        for kind in ("he", "ihc", "fluorescence", "brightfield"):
            out.append((f"microscopy-{kind}-{i}", _microscopy(np.random.default_rng(100 + i), kind)))
    for i in range(4):
        for kind in ("chest", "ct"):
            out.append((f"radiograph-{kind}-{i}", _radiograph(np.random.default_rng(200 + i), kind)))
    out += [(f"hand-{i}", _hand(np.random.default_rng(300 + i))) for i in range(6)]
    for i in range(3):
        for kind in ("letter", "code", "terminal"):
            out.append((f"text-{kind}-{i}", _text_image(np.random.default_rng(400 + i), kind)))
        for kind in ("web", "spreadsheet"):
            out.append((f"screenshot-{kind}-{i}", _screenshot(np.random.default_rng(500 + i), kind)))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--held-out", action="store_true", help="the held-out set instead of the design set")
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    images = held_out_images() if args.held_out else non_lesion_images()
    for name, image in images:
        image.save(folder / f"{name}.png")
    print(f"{len(images)} images in {folder}")
