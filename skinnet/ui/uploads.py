"""Images that reach the app from a browser or an API client, and the only paths it will open.

The rule: **no handler opens a path that a client sent**, except

1. an original that came through Gradio's own upload route (``/gradio_api/upload``: it is in
   the app's ``upload_file_set``, stored under a folder named by the file's SHA-256, so naming
   it requires having its bytes), read once and swept away within ``ORIGINAL_TTL_S``; or
2. a de-identified copy that this session was given (:class:`CleanStore`): the client's value
   only names it (``<sha256>.png``); the file opened is the store's own, and only if that name
   was handed to the same session and identity.

Anything else gets one message, whatever the path is (missing, a directory, a secret): the
answers say nothing about the server's files.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from PIL import Image

from ..files import write_atomically
from ..imaging import ImageError, load_rgb, pixel_sha256, png_bytes

log = logging.getLogger(__name__)

CLEAN_NAME = re.compile(r"([0-9a-f]{64})\.png")
ORIGINAL_TTL_S = 120.0
"""Seconds an original upload (with its file name and metadata) may stay on disk, whether or
not any event ever reads it."""
CLEAN_TTL_S = 3600.0
"""Seconds a session keeps access to a de-identified copy after it last used it."""
PER_SESSION = 64
"""De-identified copies one session may hold (the oldest are forgotten first)."""
MAX_GRANTS = 4096
"""De-identified copies all sessions together may hold (those of visitors who may not review go
first, then the longest unused), so that visitors inventing session hashes cannot fill the disk
(a copy is at most 1024 px) or push out a reviewer's images."""
NOT_YOURS = "{name}: that file is not an upload of this session; upload the image again."


class NotYours(ImageError):
    """A client named a file this session was not given (a forged request, or a copy that expired)."""


def client_path(value) -> str | None:
    """The path inside an image component's raw value (a string, or a FileData dict)."""
    if isinstance(value, dict):
        value = value.get("path")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise ImageError("image: not a file reference")
    return value


class Owner(NamedTuple):
    """Who holds a copy: a session of one identity, and whether that identity may review (a
    signed-in Hugging Face account that is not on the reviewer list counts as a visitor)."""

    session: str
    identity: str
    reviewer: bool = False


class CleanStore:
    """De-identified copies (``<sha256>.png``, pixels only) and which session may use which.

    Several sessions may hold the same picture (content-addressed): a file goes only when no
    session has used it for ``CLEAN_TTL_S``.
    """

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="skinnet-clean-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._grants: dict[tuple[str, str], OrderedDict[str, float]] = {}
        self._lock = threading.Lock()

    def add(self, owner: Owner, image: Image.Image) -> str:
        """Store an image for ``owner``; returns the file's path."""
        digest = pixel_sha256(image)
        target = self.folder / f"{digest}.png"
        self.grant(owner, digest)  # before the file exists: a sweep in between must not delete it
        if not target.exists():
            write_atomically(target, png_bytes(image))
        return str(target)

    def grant(self, owner: Owner, digest: str) -> None:
        """Give (or refresh) ``owner``'s access to a copy."""
        with self._lock:
            held = self._grants.setdefault(owner, OrderedDict())
            held[digest] = time.monotonic()
            held.move_to_end(digest)
            while len(held) > PER_SESSION:
                held.popitem(last=False)
            total = sum(len(h) for h in self._grants.values())
            if total > MAX_GRANTS:
                # visitors' grants go first (oldest first): visitors inventing session hashes (a
                # click on an example is two grants) must not push a reviewer's case out
                oldest = sorted((o.reviewer, used, o, d) for o, h in self._grants.items() for d, used in h.items())
                for _, _, o, d in oldest[: total - MAX_GRANTS]:
                    self._grants[o].pop(d, None)

    def refresh(self, owner: Owner, path: str | None) -> None:
        """Keep ``owner``'s access to a copy of the store it holds in its session state."""
        match = CLEAN_NAME.fullmatch(os.path.basename(path or ""))
        if match and Path(path).parent == self.folder:
            self.grant(owner, match.group(1))

    def path_for(self, owner: Owner, value) -> Path | None:
        """The store's own file that a client value names, if ``owner`` was given it."""
        path = client_path(value)
        match = CLEAN_NAME.fullmatch(os.path.basename(path or ""))
        if match is None:
            return None
        digest = match.group(1)
        with self._lock:
            held = self._grants.get(owner)
            if held is None or digest not in held:
                return None
            held[digest] = time.monotonic()
        target = self.folder / f"{digest}.png"
        return target if target.is_file() else None

    def sweep(self, now: float | None = None) -> int:
        """Forget grants unused for CLEAN_TTL_S and delete files nobody holds; returns files deleted."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for owner in list(self._grants):
                held = self._grants[owner]
                for digest in [d for d, used in held.items() if now - used > CLEAN_TTL_S]:
                    del held[digest]
                if not held:
                    del self._grants[owner]
            live = {d for held in self._grants.values() for d in held}
        deleted = 0
        for path in self.folder.glob("*.png"):
            match = CLEAN_NAME.fullmatch(path.name)
            if match and match.group(1) not in live:
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted


class SessionImages:
    """Opens the images a client names, under the rule in this module's docstring.

    Args:
        store: the de-identified copies.
        uploaded: returns the set of paths Gradio's upload route wrote (``Blocks.upload_file_set``).
    """

    def __init__(self, store: CleanStore, uploaded: Callable[[], Iterable[str]]):
        self.store = store
        self.uploaded = uploaded

    def is_original(self, path: str) -> bool:
        """Whether Gradio's upload route wrote this path: one set lookup for the path as Gradio
        stored it (every call, at 30 clients a scan of the last two minutes' uploads cost more),
        a scan only for any other spelling of a path."""
        normal = os.path.normpath(path)
        uploaded = self.uploaded()
        return normal in uploaded or any(os.path.normpath(p) == normal for p in list(uploaded))

    def open(self, owner: Owner, value, name: str, originals: bool = True) -> Image.Image | None:
        """Clean RGB pixels of the image a client value names, or None for an empty value.

        Args:
            originals: also accept an original from Gradio's upload route (the upload events
                and the public API); the other events take de-identified copies only.

        Raises:
            ImageError: anything else (one message for every case), or an unreadable image.
        """
        path = client_path(value)
        if path is None:
            return None
        clean = self.store.path_for(owner, path)
        if clean is not None:
            return load_rgb(clean, name)
        if originals and self.is_original(path) and os.path.isfile(path) and not os.path.islink(path):
            return load_rgb(path, name)
        raise NotYours(NOT_YOURS.format(name=name))

    def sweep_originals(self, now: float | None = None) -> int:
        """Delete originals older than ORIGINAL_TTL_S (their names and metadata go with them)."""
        now = time.time() if now is None else now
        uploaded = self.uploaded()
        deleted = 0
        for path in list(uploaded):
            try:
                if now - os.path.getmtime(path) < ORIGINAL_TTL_S:
                    continue
                os.unlink(path)
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError as err:
                log.warning("could not delete an expired upload: %s", err)
                continue
            if hasattr(uploaded, "discard"):
                uploaded.discard(path)
        return deleted


def start_sweeper(*sweeps: Callable[[], object], every_s: float = 5.0) -> threading.Event:
    """A daemon thread that runs each sweep (originals, unused clean copies, expired exports)
    every ``every_s``; set the event to stop it."""
    stop = threading.Event()

    def run():
        while not stop.wait(every_s):
            for sweep in sweeps:
                try:
                    sweep()
                except Exception:  # the sweeper must outlive one bad file
                    log.exception("sweeper")

    threading.Thread(target=run, name="skinnet-sweeper", daemon=True).start()
    return stop
