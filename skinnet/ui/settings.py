"""What an app serves and how much at once (set from ``app.py``'s flags and environment)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_SIZE = "20mb"
"""Largest upload Gradio accepts."""
MAX_BODY_BYTES = 1_000_000
"""Largest request body other than an upload (an event's inputs are short JSON: a note, a
queue file name, class names)."""
PREDICT_CONCURRENCY = 8
"""``/predict`` calls handled at once; on an accelerator their model work is batched
(:class:`~skinnet.predict.MicroBatcher`)."""
QUEUE_SIZE = 64
"""Requests waiting in Gradio's queue; past it a visitor is told the app is busy."""


@dataclass
class AppSettings:
    """Where the app listens and what it serves (flags and environment, see ``app.py``)."""

    checkpoint: Path
    host: str = "127.0.0.1"
    port: int = 7860
    log_dir: Path = Path("corrections")
    users: dict[str, str] = field(default_factory=dict)
    """Reviewers' logins (user -> password). None configured: a public demo, saving off."""
    hf_reviewers: frozenset[str] = frozenset()
    """Hugging Face usernames that may save after signing in on a Space (``"*"``: anyone signed in)."""
    queue_root: Path | None = None
    """Queue files and their images must lie inside this folder (None: no queues)."""
    admins: frozenset[str] = frozenset()
    """Reviewer identities (``dr_a``, ``hf:alice``) that may also export everyone's labels."""
    examples: Path | None = None
    """A folder of example pairs the app's owner provides (``NAME_clinical.png``,
    ``NAME_dermoscopy.png``), shown to every visitor (None: no examples)."""
    backup: str | None = None
    """Where the review log is backed up (:func:`skinnet.backup.backup_for`: a private dataset
    ``owner/name``, or ``file:PATH``); None: no backup."""

    @property
    def public_demo(self) -> bool:
        """No reviewer can sign in: predictions only, saving off."""
        return not self.users and not self.hf_reviewers
