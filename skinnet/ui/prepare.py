"""The next case, made ready while the reviewer works on this one.

Opening a queue case costs decoding its two images, copying them de-identified for the session
and the model's forward pass: most of a second on a busy CPU. Once a case is on screen, the cases
``n`` and the right arrow would open next are prepared in a background thread (images decoded and
kept here, copies granted to the same session, the prediction remembered by the predictor), so
the move itself only reads what is ready. The maps (Grad-CAM, attention) are not prepared: they
follow the case on screen.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PIL.Image import Image

from ..imaging import ImageError, load_rgb
from ..predict import Predictor
from ..review_queue import queue_image_path, read_queue_image
from .uploads import CleanStore

log = logging.getLogger(__name__)

DECODED = 8
"""Decoded queue images kept in memory (the open case, the next ones, the one just left)."""
_decoded: OrderedDict[tuple, Image] = OrderedDict()
_decoded_lock = threading.Lock()


def queue_image(path: str, name: str, root: str | Path | None) -> Image:
    """A queue case's image as a clean RGB image, checked inside the queue folder at every read
    (:func:`~skinnet.review_queue.queue_image_path`: a link swapped in later is refused, cached
    or not) and decoded once while it is in use (the file's size and time are part of the key: a
    changed file is read again).

    Raises:
        ImageError: outside the queue folder, missing, or not a readable image.
    """
    resolved = queue_image_path(path, root, name)
    try:
        stat = os.stat(resolved, follow_symlinks=False)
    except OSError:
        return read_queue_image(path, root, name)  # says what is wrong, in the words every image error uses
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    with _decoded_lock:
        if key in _decoded:
            _decoded.move_to_end(key)
            return _decoded[key]
    image = read_queue_image(path, root, name)
    with _decoded_lock:
        _decoded[key] = image
        while len(_decoded) > DECODED:
            _decoded.popitem(last=False)
    return image


def case_images(case: dict, root: str | Path | None) -> tuple[Image | None, Image | None]:
    """(clinical, dermoscopy) of a case (None where it has none): a queue case's from the queue
    folder (``root``), checked as they are read; an upload case's from the server's own
    de-identified copies.

    Raises:
        ImageError: an image cannot be read, or has left the queue folder.
    """
    def one(key: str) -> Image | None:
        if not case.get(key):
            return None
        if case.get("source", "upload") == "upload":
            return load_rgb(case[key], key)
        return queue_image(case[key], f"{key} image", root)

    return one("clinical"), one("dermoscopy")


class Preparer:
    """Prepares cases in one background thread; a request made while it is busy replaces the
    one waiting (only the latest position of the reviewer matters)."""

    def __init__(self, predictor: Predictor, store: CleanStore, queue_root: str | Path | None):
        self.predictor, self.store, self.queue_root = predictor, store, queue_root
        self._wanted: tuple | None = None
        self._cv = threading.Condition()
        threading.Thread(target=self._run, name="skinnet-prepare", daemon=True).start()

    def prepare(self, owner: tuple[str, str], cases: list[dict]) -> None:
        with self._cv:
            self._wanted = (owner, [dict(c) for c in cases])
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._wanted is None:
                    self._cv.wait()
                owner, cases = self._wanted
                self._wanted = None
            for case in cases:
                try:
                    pair = case_images(case, self.queue_root)
                    for image in pair:
                        if image is not None:
                            self.store.add(owner, image)
                    if any(image is not None for image in pair):
                        self.predictor.predict(*pair)
                except (ImageError, OSError, ValueError) as err:  # the move itself will say what is wrong
                    log.info("could not prepare case %s: %s", case.get("case_id"), err)
