"""Label exports: made by an admin, downloadable by that admin only, for EXPORT_TTL_S.

An export is everyone's labels, so Gradio never holds it (its file route would serve it to
anyone with the link, from a cache that outlives the app's own clean-up). The file stays in
``<log-dir>/exports/`` under a random name; :func:`skinnet.ui.server.launch` serves it at
``/skinnet/export/<token>`` to the identity that made it (checked per request, from the same
sign-in cookies Gradio reads), until it expires. Files a killed process left are removed when
the next one starts.
"""
from __future__ import annotations

import html
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..corrections import CorrectionsError, CorrectionsLog, export_meta_csv, log_files, read_corrections

EXPORT_TTL_S = 600.0
"""Seconds an export can be downloaded, by the admin who made it."""
ROUTE = "/skinnet/export/"
TOKEN_CHARS = 32


class ExportError(ValueError):
    """An export could not be made; the message says why, without a server path."""


@dataclass(frozen=True)
class Export:
    owner: str
    path: Path
    name: str
    made: float


class Exports:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._made: dict[str, Export] = {}
        self._lock = threading.Lock()
        if self.folder.is_dir():  # a previous process's exports: nobody can still be meant to have them
            for leftover in self.folder.iterdir():
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)

    def create(self, owner: str, log: CorrectionsLog, rule: str) -> tuple[str, list]:
        """Export the log's current labels for ``owner``; (the download token, the log's bad rows,
        left out)."""
        if not log_files(log.folder):
            raise ExportError("No review has been saved yet.")
        try:
            rows, problems = read_corrections(log.folder)
        except CorrectionsError:
            raise ExportError("The review log on the server is not a skinnet corrections file; "
                              "please tell the administrator.") from None
        token = secrets.token_hex(TOKEN_CHARS // 2)
        target = self.folder / f"{token}.csv"
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            export_meta_csv(rows, target, rule)
        except OSError:
            target.unlink(missing_ok=True)
            raise ExportError("The export could not be written on the server (is its disk full?); "
                              "please tell the administrator.") from None
        name = f"labels_{rule}_{time.strftime('%Y%m%dT%H%M%S')}.csv"
        with self._lock:
            self._made[token] = Export(owner, target, name, time.monotonic())
        return token, problems

    def download(self, token: str, who: str | None) -> Export | None:
        """The export behind ``token`` if ``who`` made it and it has not expired, else None."""
        with self._lock:
            export = self._made.get(token)
        if export is None or who != export.owner or time.monotonic() - export.made > EXPORT_TTL_S:
            return None
        return export if export.path.is_file() else None

    def sweep(self, now: float | None = None) -> int:
        """Delete expired exports; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            expired = [t for t, e in self._made.items() if now - e.made > EXPORT_TTL_S]
            gone = [self._made.pop(t) for t in expired]
        for export in gone:
            export.path.unlink(missing_ok=True)
        return len(gone)


def download_link(token: str) -> str:
    """The page's link to an export (relative: it works wherever the app is mounted)."""
    minutes = round(EXPORT_TTL_S / 60)
    return (f'<a href="{ROUTE.lstrip("/")}{html.escape(token)}" download>Download the labels (meta.csv)</a> '
            f"(for you only, for {minutes} minutes)")
