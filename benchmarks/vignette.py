"""Does the dermoscope's dark circular vignette draw the dermoscopy Grad-CAM to the border?

    python benchmarks/vignette.py --data-root ../shared/derm7pt [--checkpoint CKPT] [--split test]

For every dermoscopy image of the split, as the model sees it (resized, centre square): the
vignette is the dark pixels connected to the image's edge (luminance under a third of the
image's median). Then the dermoscopy head's Grad-CAM for its predicted diagnosis (what the
app shows for "dermoscopy head"): the share of the map's mass on the vignette against the
share of the image it covers (enrichment = mass share / area share; 1 = no preference), and
the share within the central disc. Then the same image with the vignette filled with the
median colour of the rest: where the map goes, and how often the predicted diagnosis and
P(melanoma) change. Descriptive only: nothing is chosen from these numbers.

Also draws ``docs/figures/vignette_synthetic.png`` from synthetic images only (no Derm7pt
pixels): the same drawn lesion with and without a vignette, and the vignette filled, with the
shipped model's dermoscopy Grad-CAM. Writes ``benchmarks/results/vignette.json`` and a
section of docs/results.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from report import write_section

ROOT = Path(__file__).resolve().parents[1]

DARK = 1 / 3
"""A vignette pixel is darker than this fraction of the image's median luminance..."""
MIN_VIGNETTE = 0.02
"""... and an image has a vignette when such edge-connected pixels cover at least this share
(the dark corners a circular field stop leaves in the centre square cover about 3%)."""
CENTRE = 0.5
"""The central disc: radius as a fraction of half the side."""


def vignette_mask(pixels: np.ndarray) -> np.ndarray:
    """Dark pixels connected to the image's edge (a dermoscope's circular field stop)."""
    from scipy import ndimage

    luminance = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    dark = luminance < DARK * np.median(luminance)
    labels, _ = ndimage.label(dark)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def fill(pixels: np.ndarray, mask: np.ndarray, margin: int = 4) -> np.ndarray:
    """The vignette, and its soft edge (``margin`` pixels), painted the median colour of the rest."""
    from scipy import ndimage

    grown = ndimage.binary_dilation(mask, iterations=margin) if mask.any() else mask
    filled = pixels.copy()
    if grown.any() and (~grown).any():
        filled[grown] = np.median(pixels[~grown], axis=0).astype(pixels.dtype)
    return filled


def centre_disc(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) < CENTRE * size / 2


def dermoscopy_cam(predictor, image: Image.Image):
    """(heat map at input size, predicted DIAG class, P(MEL)) of the dermoscopy head alone."""
    from skinnet.explain import LogitTarget, gradcam_map

    prediction = predictor.predict(None, image).heads["dermoscopy"]
    cls = prediction.classes["DIAG"]
    with predictor.turn():
        heat = gradcam_map(predictor, predictor.pair_encoding(None, image), "dermoscopy", "dermoscopy",
                           LogitTarget("DIAG", cls))
    return heat, cls, prediction.probabilities["DIAG"]["MEL"]


def shares(heat: np.ndarray, mask: np.ndarray, centre: np.ndarray) -> dict:
    mass = float(heat.sum()) or 1.0
    return {"mass_on_vignette": float(heat[mask].sum()) / mass, "area": float(mask.mean()),
            "mass_in_centre": float(heat[centre].sum()) / mass}


def measure(predictor, cases) -> dict:
    from skinnet.transforms import resize_center_crop

    size = predictor.card.image_size
    centre = centre_disc(size)
    rows = []
    for case in cases:
        seen = np.asarray(resize_center_crop(Image.open(case.dermoscopy_path).convert("RGB"), size))
        mask = vignette_mask(seen)
        heat, cls, p_mel = dermoscopy_cam(predictor, Image.fromarray(seen))
        row = {"case": case.case_id, "mel": case.labels[0] == 2, "vignette": bool(mask.mean() >= MIN_VIGNETTE),
               **shares(heat, mask, centre)}
        if row["vignette"]:
            heat_filled, cls_filled, p_mel_filled = dermoscopy_cam(predictor, Image.fromarray(fill(seen, mask)))
            row |= {f"filled_{k}": v for k, v in shares(heat_filled, mask, centre).items()}
            row |= {"changed": cls_filled != cls, "delta_p_mel": p_mel_filled - p_mel}
        rows.append(row)
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    def mean(values):
        values = list(values)
        return float(np.mean(values)) if values else float("nan")

    def group(selected):
        with_v = [r for r in selected if r["vignette"]]
        return {
            "images": len(selected), "with_vignette": len(with_v),
            "vignette_area": mean(r["area"] for r in with_v),
            "cam_mass_on_vignette": mean(r["mass_on_vignette"] for r in with_v),
            "enrichment": mean(r["mass_on_vignette"] for r in with_v) / max(mean(r["area"] for r in with_v), 1e-9),
            "cam_mass_in_centre_with_vignette": mean(r["mass_in_centre"] for r in with_v),
            "cam_mass_in_centre_without_vignette": mean(r["mass_in_centre"] for r in selected if not r["vignette"]),
            "filled_cam_mass_on_former_vignette": mean(r["filled_mass_on_vignette"] for r in with_v),
            "filled_cam_mass_in_centre": mean(r["filled_mass_in_centre"] for r in with_v),
            "prediction_changed_when_filled": mean(r["changed"] for r in with_v),
            "mean_abs_delta_p_mel_when_filled": mean(abs(r["delta_p_mel"]) for r in with_v),
        }
    return {"all": group(rows), "melanoma": group([r for r in rows if r["mel"]]), "rows": rows}


def synthetic_figure(predictor, path: Path) -> None:
    """The same synthetic lesion without a vignette, with one, and with it filled; CAMs below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = predictor.card.image_size
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
    skin = np.array([205, 150, 130.0])
    lesion = (np.hypot(xx - size * 0.55, yy - size * 0.45) < size * 0.22)[..., None]
    network = (np.sin(xx / 3.0) * np.sin(yy / 3.0) > 0.3)[..., None] & lesion
    base = np.where(lesion, np.array([120, 70, 50.0]), skin)
    base = np.where(network, np.array([70, 40, 30.0]), base) + rng.normal(0, 5, (size, size, 3))
    plain = np.clip(base, 0, 255).astype(np.uint8)
    vignetted = np.clip(base * np.clip((1.05 - r) / 0.15, 0, 1)[..., None], 0, 255).astype(np.uint8)
    filled = fill(vignetted, vignette_mask(vignetted))
    panels = [("no vignette", plain), ("dark circular vignette", vignetted), ("vignette filled", filled)]
    figure, axes = plt.subplots(2, 3, figsize=(9, 6.2))
    for column, (title, pixels) in enumerate(panels):
        heat, cls, p_mel = dermoscopy_cam(predictor, Image.fromarray(pixels))
        mask = vignette_mask(pixels)
        axes[0, column].imshow(pixels)
        axes[0, column].set_title(title, fontsize=10)
        axes[1, column].imshow(pixels)
        axes[1, column].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        share = shares(heat, mask, centre_disc(size))
        axes[1, column].set_title(f"CAM {cls}, P(MEL) {p_mel:.2f}\n"
                                  f"on vignette {100 * share['mass_on_vignette']:.0f}% of mass "
                                  f"({100 * share['area']:.0f}% of area)", fontsize=8)
        for axis in axes[:, column]:
            axis.axis("off")
    figure.suptitle("Dermoscopy head's Grad-CAM on synthetic images (no Derm7pt pixels)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


SECTION = """### The dermoscope's vignette and the Grad-CAM

`python benchmarks/vignette.py` ({checkpoint}, sha256 {sha}..., Derm7pt {split}, {n} dermoscopy images as the
model sees them; descriptive, nothing was chosen from it). Vignette: dark pixels connected to
the edge (under a third of the median luminance), present when they cover at least 2% of the
image (a circular field stop leaves dark corners in the centre square). Grad-CAM of the dermoscopy head for its predicted diagnosis.

| | all | melanoma |
|---|---|---|
{table}

![vignette](figures/vignette_synthetic.png)

{reading}"""

ROWS = (("images with a vignette", "with_vignette", "{:.0f}"), ("share of the image the vignette covers",
        "vignette_area", "{:.1%}"), ("share of the CAM's mass on the vignette", "cam_mass_on_vignette", "{:.1%}"),
        ("enrichment (mass share / area share)", "enrichment", "{:.2f}"),
        ("CAM mass in the central disc, images with a vignette", "cam_mass_in_centre_with_vignette", "{:.1%}"),
        ("CAM mass in the central disc, images without", "cam_mass_in_centre_without_vignette", "{:.1%}"),
        ("vignette filled: CAM mass on its former area", "filled_cam_mass_on_former_vignette", "{:.1%}"),
        ("vignette filled: CAM mass in the central disc", "filled_cam_mass_in_centre", "{:.1%}"),
        ("vignette filled: predicted diagnosis changed", "prediction_changed_when_filled", "{:.1%}"),
        ("vignette filled: mean change of P(melanoma)", "mean_abs_delta_p_mel_when_filled", "{:.3f}"))


def reading(summary: dict) -> str:
    enrichment = summary["all"]["enrichment"]
    if enrichment > 1.2:
        verdict = (f"The map puts {enrichment:.1f}x more of its mass on the vignette than the vignette's share of the "
                   "image: the dark border does draw it.")
    elif enrichment < 0.8:
        verdict = (f"The map avoids the vignette ({enrichment:.2f}x its area share): on average the dark border does "
                   "not draw it; a map that lights up the border is the exception, not the rule.")
    else:
        verdict = f"The map's mass on the vignette is about its area share ({enrichment:.2f}x): no clear pull."
    changed = summary["all"]["prediction_changed_when_filled"]
    n_changed = round(changed * summary["all"]["with_vignette"])
    melanoma = summary["melanoma"]["enrichment"]
    if melanoma > 1.3 * enrichment:
        verdict += (f" Melanomas' maps come nearer the vignette ({melanoma:.2f}x) than all images' ({enrichment:.2f}x), "
                    "but stay below its area share on average.")
    verdict += (f" Filling the vignette changes the dermoscopy head's diagnosis of {n_changed} of the "
                f"{summary['all']['with_vignette']} images that have one ({changed:.0%})")
    verdict += ("; so the border is not neutral to the model either." if changed >= 0.02 else
                ", so the model mostly ignores the border.")
    return (verdict + " The app's maps show the whole image with the part the model never saw dimmed; a map "
            "concentrated on the border should be read as that, not as the lesion.")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vignette.json"))
    args = parser.parse_args(argv)
    import torch

    from skinnet.checkpoint import file_sha256
    from skinnet.data import Derm7pt
    from skinnet.predict import Predictor

    torch.set_num_threads(2)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    cases = Derm7pt(args.data_root).split(args.split)[:args.limit]
    summary = measure(predictor, cases)
    synthetic_figure(predictor, ROOT / "docs" / "figures" / "vignette_synthetic.png")
    table = "\n".join(f"| {title} | {fmt.format(summary['all'][key])} | {fmt.format(summary['melanoma'][key])} |"
                      for title, key, fmt in ROWS)
    print(table)
    Path(args.out).write_text(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1) + "\n")
    write_section(ROOT / "docs" / "results.md", "vignette", SECTION.format(
        checkpoint=Path(args.checkpoint).stem, sha=file_sha256(args.checkpoint)[:12], split=args.split, n=len(cases), table=table, reading=reading(summary)))
    return summary


if __name__ == "__main__":
    main()
