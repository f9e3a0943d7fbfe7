"""Example pairs the app's owner provides (``--examples DIR``): what a demo visitor clicks first.

The folder holds ``NAME_clinical.EXT`` and/or ``NAME_dermoscopy.EXT`` per example (png, jpg,
jpeg, webp; one of the two may be missing). Each image is decoded once at start-up through
:func:`~skinnet.imaging.load_rgb` (metadata dropped, size checked), so visitors get clean
pixels and never a path of the server; a caption is the example's NAME, which the owner
chooses (never a visitor's upload name). They come after the drawn pairs the app ships
(:mod:`skinnet.ui.synthetic_examples`): Derm7pt images may not be redistributed, so a Space
owner adds real images they may show.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..imaging import ImageError, load_rgb

log = logging.getLogger(__name__)

EXAMPLE_FILE = re.compile(r"^(?P<name>.+)_(?P<slot>clinical|dermoscopy)\.(png|jpe?g|webp)$", re.IGNORECASE)
MAX_EXAMPLES = 24
THUMBNAIL = 160


@dataclass(frozen=True)
class Example:
    name: str
    clinical: Image.Image | None
    dermoscopy: Image.Image | None

    def thumbnail(self) -> Image.Image:
        """The pair side by side (one image alone when the other is missing), for the gallery."""
        images = [im for im in (self.clinical, self.dermoscopy) if im is not None]
        small = []
        for im in images:
            copy = im.copy()
            copy.thumbnail((THUMBNAIL, THUMBNAIL))
            small.append(copy)
        sheet = Image.new("RGB", (sum(im.width for im in small) + 4 * (len(small) - 1),
                                  max(im.height for im in small)), "white")
        x = 0
        for im in small:
            sheet.paste(im, (x, 0))
            x += im.width + 4
        return sheet


def read_examples(folder: str | Path | None) -> list[Example]:
    """The folder's example pairs, sorted by name. An unreadable image is left out with a
    warning; a folder that is missing or holds no pair is an error the owner sees at start."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"examples folder {folder} not found")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = EXAMPLE_FILE.match(path.name)
        if match and path.is_file():
            found.setdefault(match["name"], {})[match["slot"].lower()] = path
    examples = []
    for name, slots in sorted(found.items())[:MAX_EXAMPLES]:
        try:
            images = {slot: load_rgb(path, f"example {name} ({slot})") for slot, path in slots.items()}
        except ImageError as err:
            log.warning("left out example %s: %s", name, err)
            continue
        examples.append(Example(name.replace("_", " "), images.get("clinical"), images.get("dermoscopy")))
    if not examples:
        raise ValueError(f"examples folder {folder} holds no readable NAME_clinical.png / NAME_dermoscopy.png pair")
    return examples
