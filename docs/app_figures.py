"""The public demo's screenshots in docs/results.md, at 1366 x 768, from the shipped checkpoint
and synthetic pictures only (the app's drawn example pairs, a page of text, a huge gradient):
no Derm7pt pixel reaches docs/.

    python docs/app_figures.py            # writes docs/figures/app_*.png

Needs Debian's chromium and Playwright (the dev extra, requirements-lock.txt).
"""
from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet.predict import Predictor
from skinnet.ui import AppSettings, build_app, launch
from skinnet.ui.synthetic_examples import synthetic_examples

FIGURES = Path(__file__).resolve().parent / "figures"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
SCREEN = {"width": 1366, "height": 768}


def text_page(path: Path) -> Path:
    """A picture of a page of text: plainly not a lesion."""
    image = Image.new("RGB", (900, 700), "white")
    draw = ImageDraw.Draw(image)
    for row in range(28):
        draw.text((40, 30 + 23 * row), "Quarterly report, section %d: figures and notes on the results." % row,
                  fill=(20, 20, 20))
    image.save(path)
    return path


def huge_photo(path: Path) -> Path:
    """8000 x 6000 pixels (over the app's 40 megapixel limit) in a small JPEG."""
    gradient = np.linspace(0, 255, 8000, dtype=np.uint8)
    Image.fromarray(np.broadcast_to(gradient, (6000, 8000))).convert("RGB").save(path, quality=60)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--out", default=str(FIGURES))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="skinnet-figures-"))
    settings = AppSettings(checkpoint=Path(args.checkpoint), port=free_port(), log_dir=work / "log")
    app = build_app(Predictor.from_checkpoint(args.checkpoint), settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    drawn = next(e for e in synthetic_examples() if e.clinical is not None and e.dermoscopy is not None)
    drawn.clinical.save(work / "drawn_clinical.png")
    drawn.dermoscopy.save(work / "drawn_dermoscopy.png")
    written = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                                 headless=True, args=CHROMIUM_ARGS)

            def shot(page, name):
                page.wait_for_timeout(800)  # transitions settle
                page.screenshot(path=str(out / name))
                written.append(out / name)

            def fresh():
                page = browser.new_page(viewport=SCREEN)
                page.goto(f"http://127.0.0.1:{settings.port}/")
                expect(page.locator("#examples img").first).to_be_visible(timeout=60_000)
                return page

            def upload(page, slot, path):
                page.locator(f"#{slot}-input input[type=file]").set_input_files(str(path))
                page.wait_for_function(f"document.querySelectorAll('#{slot}-input img').length >= 1",
                                       timeout=60_000)

            page = fresh()
            shot(page, "app_first_screen.png")
            page.locator("#examples img").first.click()
            expect(page.locator("#summary")).to_contain_text("look like a skin lesion photo", timeout=60_000)
            shot(page, "app_synthetic_hidden.png")
            page.locator("#show-anyway").click()
            page.get_by_text("Fused head:").wait_for(timeout=60_000)
            page.locator("#gradcam-dermoscopy img").wait_for(timeout=60_000)
            shot(page, "app_synthetic_answer.png")
            page.close()

            page = fresh()
            upload(page, "clinical", text_page(work / "page.png"))
            page.locator("#analyse").click()
            expect(page.locator("#summary")).to_contain_text("look like a skin lesion photo", timeout=60_000)
            shot(page, "app_not_a_lesion.png")
            page.close()

            page = fresh()
            page.locator("#clinical-input input[type=file]").set_input_files(str(huge_photo(work / "huge.jpg")))
            expect(page.locator("#input-message")).to_contain_text("too large", timeout=60_000)
            shot(page, "app_refused_image.png")
            page.close()
            browser.close()
    finally:
        app.close()
        shutil.rmtree(work, ignore_errors=True)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
