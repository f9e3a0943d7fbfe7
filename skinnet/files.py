"""Writing a whole file or nothing."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(path: str | Path, content: bytes | str | Callable[[str], None], mode: int | None = None) -> None:
    """Write ``path`` in one step: into a temporary file beside it, renamed over it once
    complete. On any failure (a full disk, a killed write) the temporary file is removed and the
    error raised; the old file, if any, is left as it was.

    Args:
        content: the bytes or text, or a function that writes the file at the path it is given.
        mode: permissions of the result (the temporary file is private, 0600, until then).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(content):
            os.close(fd)
            content(temporary)
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content.encode() if isinstance(content, str) else content)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
