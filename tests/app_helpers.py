"""Shared pieces of the app tests: a tiny real checkpoint, test images, a launched app."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skinnet.calibration import from_temperature
from skinnet.checkpoint import ModelCard, save_checkpoint
from skinnet.model import create_model
from skinnet_testkit.synthetic import lesion_image


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


ROOT = Path(__file__).resolve().parents[1]


def app_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The environment of ``python app.py`` on a free port with the tiny checkpoint, its log in
    ``tmp_path/log`` and no password users, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k != "SKINNET_USERS"}
    return {**env, "GRADIO_SERVER_PORT": str(free_port()), "SKINNET_LOG_DIR": str(tmp_path / "log"),
            "SKINNET_CHECKPOINT": str(tiny_checkpoint(tmp_path)), **values}


def start_app(env: dict[str, str], seconds: float = 120) -> tuple[subprocess.Popen, str]:
    """``python app.py`` as a process with ``env``, once it serves: (the process, its URL). Its
    output goes to ``app.log`` beside the log folder."""
    import urllib.request

    output = Path(env["SKINNET_LOG_DIR"]).parent / "app.log"
    with open(output, "ab") as sink:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}"
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app exited early: {output.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.3)
    stop_app(process)
    raise AssertionError("app did not answer in time")


def stop_app(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def launched(settings, predictor=None):
    """The app of ``settings`` launched in this process (the tiny checkpoint's predictor unless
    given); yields it, closes it after."""
    from skinnet.predict import Predictor
    from skinnet.ui import build_app, launch

    app = build_app(predictor or Predictor.from_checkpoint(settings.checkpoint), settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield app
    finally:
        app.close()


def png_is_not_blank(data: bytes, min_std: float = 10.0) -> bool:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
    return float(pixels.std()) > min_std


def guarded_checkpoint(folder: Path) -> Path:
    """:func:`tiny_checkpoint` with guards fitted beside it on a synthetic release whose two
    modalities look different (see ``synthetic.restyle_release``)."""
    from skinnet_testkit.synthetic import make_release, restyle_release

    from skinnet.data import Derm7pt
    from skinnet.guards import guards_path
    from skinnet.predict import Predictor
    from training import fit_guards

    release = restyle_release(make_release(folder / "derm7pt", n_cases=28, seed=3))
    checkpoint = tiny_checkpoint(folder)
    cases = [c for s in ("train", "valid") for c in Derm7pt(release).split(s)]
    fit_guards.fit(Predictor.from_checkpoint(checkpoint), cases, None, components=16).save(guards_path(checkpoint))
    return checkpoint


SPACE_OAUTH_ENV = {"SYSTEM": "spaces", "SPACE_ID": "skinnet/review", "OAUTH_CLIENT_ID": "client-id",
                   "OAUTH_CLIENT_SECRET": "space-oauth-secret", "OAUTH_SCOPES": "openid profile",
                   "OPENID_PROVIDER_URL": "http://127.0.0.1:9"}
"""The environment a Space with ``hf_oauth: true`` gives the app (huggingface.co itself is not
reachable from the tests, so the provider URL goes nowhere)."""


def hf_session_cookie(username: str, client_secret: str = SPACE_OAUTH_ENV["OAUTH_CLIENT_SECRET"]) -> str:
    """The ``session`` cookie Gradio keeps after a Hugging Face sign-in of ``username``, signed
    the way its middleware signs it, so that tests skip only the round trip to huggingface.co."""
    import itsdangerous

    # gradio.oauth.attach_oauth: SessionMiddleware(secret_key=sha256(OAUTH_CLIENT_SECRET + "-v4"))
    secret = hashlib.sha256((client_secret + "-v4").encode()).hexdigest()
    userinfo = {"sub": "1", "name": f"Dr {username}", "preferred_username": username,
                "profile": f"https://huggingface.co/{username}", "picture": "https://huggingface.co/a.png"}
    session = {"oauth_info": {"access_token": "token", "token_type": "bearer", "scope": "openid profile",
                              "expires_at": int(time.time()) + 3600, "userinfo": userinfo}}
    data = base64.b64encode(json.dumps(session).encode())
    return itsdangerous.TimestampSigner(secret).sign(data).decode()
