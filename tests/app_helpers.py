"""Shared pieces of the app tests: a tiny real checkpoint, test images, a launched app."""
from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skinnet.calibration import from_temperature
from skinnet.checkpoint import ModelCard, save_checkpoint
from skinnet.model import create_model
from synthetic import lesion_image


def tiny_checkpoint(folder: Path) -> Path:
    """A randomly initialised Lite0 with cross-attention (gates opened), at 64 px."""
    torch.manual_seed(0)
    model = create_model(cross_attention_stages=(-2, -1), attention_dim=32)
    for module in model.cross_attention.values():
        module.gate.data.fill_(0.5)
    card = ModelCard(name="tiny", model=model.config.to_dict(), image_size=64, mean=(0.5,) * 3,
                     std=(0.5,) * 3, loss_weights={"clinical": 0.2, "dermoscopy": 0.5, "fused": 0.3},
                     calibration={"clinical": {"DIAG": {"temperature": 1.5, "bias": [0.3, -0.2, 0.1, 0.0, -0.2]}},
                                  "dermoscopy": from_temperature(1.2)})
    return save_checkpoint(model, card, folder / "tiny")


def write_pair(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    clinical, derm = folder / f"clinical_{seed}.jpg", folder / f"dermoscopy_{seed}.png"
    lesion_image(rng, (96, 72), tint=1).save(clinical, quality=92)
    lesion_image(rng, (80, 80), tint=2).save(derm)
    return clinical, derm


def jpeg_with_gps(path: Path) -> Path:
    """A JPEG carrying EXIF GPS coordinates, a camera name and a comment."""
    exif = Image.Exif()
    exif[0x010F] = "PatientCam"
    exif[0x8825] = {1: "N", 2: (45.0, 30.0, 0.0), 3: "E", 4: (9.0, 10.0, 0.0)}
    lesion_image(np.random.default_rng(7), (90, 70)).save(path, exif=exif, comment=b"Jane Doe")
    assert b"PatientCam" in path.read_bytes()
    return path


def write_examples(folder: Path) -> Path:
    """An examples folder as a Space owner would fill it: one full pair (the clinical photo a
    JPEG with GPS EXIF), one dermoscopy image alone, a file that is not an image, a stray file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(12)
    jpeg_with_gps(folder / "first_pair_clinical.jpg")
    lesion_image(rng, (80, 80), tint=2).save(folder / "first_pair_dermoscopy.png")
    lesion_image(rng, (90, 90), tint=3).save(folder / "second_dermoscopy.PNG")
    (folder / "broken_clinical.png").write_bytes(b"not a png")
    (folder / "README.txt").write_text("examples")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_is_not_blank(data: bytes, min_std: float = 10.0) -> bool:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
    return float(pixels.std()) > min_std


def guarded_checkpoint(folder: Path) -> Path:
    """:func:`tiny_checkpoint` with guards fitted beside it on a synthetic release whose two
    modalities look different (see ``synthetic.restyle_release``)."""
    from synthetic import make_release, restyle_release

    from skinnet.data import Derm7pt
    from skinnet.guards import guards_path
    from skinnet.predict import Predictor
    from training import fit_guards

    release = restyle_release(make_release(folder / "derm7pt", n_cases=28, seed=3))
    checkpoint = tiny_checkpoint(folder)
    cases = [c for s in ("train", "valid") for c in Derm7pt(release).split(s)]
    fit_guards.fit(Predictor.from_checkpoint(checkpoint), cases, None, components=16).save(guards_path(checkpoint))
    return checkpoint
