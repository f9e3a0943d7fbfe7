"""A backup of the corrections log, so that reviews survive a restart with an empty disk.

Hugging Face has discontinued Spaces' persistent storage, and its replacement (Storage Buckets)
offers no locking between writers and may return stale reads. So the log folder is copied to a
private Hugging Face **dataset** repository (``--backup owner/name``, token from the Space secret
``HF_TOKEN``), or to a folder (``--backup file:/mnt/bucket/skinnet``: a mounted volume):

- **restored** when the app starts, before it takes its first save (saves wait for it): every
  file of the log the backup holds and the disk does not, or holds longer, is downloaded;
- **pushed** every few minutes and once more when the app stops: the log's files that grew since
  the backup last saw them, in one commit. A CSV file goes up cut at its last complete line, and
  never over a longer copy in the backup: a log in the backup is never replaced by a shorter one;
- **pulled** at every push as well: the files another replica pushed meanwhile (each writer has
  its own shard, so replicas never write the same file; see :mod:`skinnet.corrections.storage`).

The transport is an object with the four calls of :class:`huggingface_hub.HfApi` used here
(``create_repo``, ``list_repo_tree``, ``hf_hub_download``, ``create_commit``): ``HfApi`` itself,
or :class:`FolderHub` (a folder; what the tests use, with the same calls).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .corrections import CorrectionsLog
from .corrections.storage import IMAGE_DIR, LEGACY_LOG, LEGACY_REVEALS, SHARDS

log = logging.getLogger(__name__)

BACKUP_EVERY_S = 300.0
"""Seconds between two pushes (and pulls) of the log."""
RETRY_RESTORE_S = 30.0
"""Seconds between two tries of a restore that failed (saves wait meanwhile)."""
BACKED_UP = re.compile(rf"(?:{re.escape(LEGACY_LOG)}|{re.escape(LEGACY_REVEALS)}"
                       rf"|{SHARDS}/[0-9A-Za-z_-][0-9A-Za-z_.-]*\.csv|{IMAGE_DIR}/[0-9a-f]{{64}}\.png)")
"""The files of a log folder that are backed up (and the only names ever restored from a backup)."""
APPEND_ONLY = (".csv",)
"""Files that only ever grow: uploaded up to their last complete line, never over a longer copy."""


@dataclass
class _Entry:
    path: str
    size: int


class FolderHub:
    """The calls of ``huggingface_hub.HfApi`` that :class:`Backup` makes, on a folder that stands
    for the repository (a mounted volume; the tests). Same signatures, so the backup's code path
    is the one that runs against the Hub."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def create_repo(self, repo_id: str, *, private: bool | None = None, repo_type: str | None = None,
                    exist_ok: bool = False, token=None):
        self.root.mkdir(parents=True, exist_ok=True)
        return str(self.root)

    def list_repo_tree(self, repo_id: str, path_in_repo: str | None = None, *, recursive: bool = False,
                       repo_type: str | None = None, token=None):
        for path in sorted(self.root.rglob("*") if recursive else self.root.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                yield _Entry(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def hf_hub_download(self, repo_id: str, filename: str, *, repo_type: str | None = None,
                        local_dir: str | Path | None = None, token=None) -> str:
        target = Path(local_dir or tempfile.mkdtemp()) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / filename, target)
        return str(target)

    def create_commit(self, repo_id: str, operations, *, commit_message: str, repo_type: str | None = None,
                      token=None):
        for operation in operations:
            target = self.root / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            content = operation.path_or_fileobj
            temporary.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
            os.replace(temporary, target)


@dataclass
class BackupStatus:
    """What the Queue tab says about the backup."""

    target: str
    restored_at: datetime | None = None
    restored_files: int = 0
    pushed_at: datetime | None = None
    pushed_files: int = 0
    error: str = ""
    refused: list[str] = field(default_factory=list)
    """Files the disk holds shorter than the backup (never pushed over it)."""

    def sentence(self, now: datetime | None = None) -> str:
        now = now or datetime.now(timezone.utc)

        def ago(at: datetime) -> str:
            minutes = int((now - at).total_seconds() // 60)
            return f"{at:%Y-%m-%d %H:%M} UTC ({'just now' if minutes < 1 else f'{minutes} min ago'})"

        if self.restored_at is None:
            state = "restoring the review log from it; saving waits until it is back"
        elif self.pushed_at is None:
            state = f"restored {self.restored_files} files at {ago(self.restored_at)}; not pushed yet"
        else:
            state = f"last backed up {ago(self.pushed_at)} ({self.pushed_files} files sent)"
        trouble = f" **Last attempt failed:** {self.error}" if self.error else ""
        return f"Backup of the review log to {self.target}: {state}.{trouble}"


class Backup:
    """Restore, then push and pull every ``every_s`` seconds, then push once more on :meth:`stop`.

    Args:
        log: the app's corrections log (its ``available`` is cleared until the restore is done).
        api: ``huggingface_hub.HfApi`` or :class:`FolderHub`.
        repo_id: the dataset repository (``owner/name``).
    """

    def __init__(self, log: CorrectionsLog, api, repo_id: str, every_s: float = BACKUP_EVERY_S, target: str = ""):
        self.log, self.api, self.repo_id, self.every_s = log, api, repo_id, every_s
        self.status = BackupStatus(target or f"the private dataset {repo_id}")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._remote: dict[str, int] = {}

    # -- the two directions ----------------------------------------------------------------------
    def remote_files(self) -> dict[str, int]:
        """Backed-up file -> size, as the backup holds them now."""
        entries = self.api.list_repo_tree(self.repo_id, recursive=True, repo_type="dataset")
        return {e.path: e.size for e in entries if getattr(e, "size", None) is not None and BACKED_UP.fullmatch(e.path)}

    def pull(self) -> int:
        """Download the backup's files that the disk lacks or holds shorter; returns how many."""
        folder = self.log.folder
        pulled = 0
        remote = self.remote_files()
        with tempfile.TemporaryDirectory(prefix="skinnet-restore-") as staging:
            for name, size in sorted(remote.items()):
                local = folder / name
                have = local.stat().st_size if local.is_file() else -1
                if have >= size or (have >= 0 and not name.endswith(APPEND_ONLY)):
                    continue
                downloaded = self.api.hf_hub_download(self.repo_id, name, repo_type="dataset", local_dir=staging)
                local.parent.mkdir(parents=True, exist_ok=True)
                temporary = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
                shutil.copyfile(downloaded, temporary)
                os.replace(temporary, local)  # whole files only: a reader never sees half of one
                pulled += 1
        self._remote = remote
        return pulled

    def push(self) -> int:
        """Upload, in one commit, the files that grew since the backup last saw them; returns how
        many. An append-only file goes up to its last complete line and never over a longer copy."""
        from huggingface_hub import CommitOperationAdd

        folder = self.log.folder
        operations, sizes, refused = [], {}, []
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            if not BACKED_UP.fullmatch(name) or not path.is_file():
                continue
            known = self._remote.get(name, -1)
            if name.endswith(APPEND_ONLY):
                data = path.read_bytes()
                data = data[:data.rfind(b"\n") + 1]
                if len(data) < known:
                    refused.append(name)
                if len(data) <= known:
                    continue
                operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=data))
                sizes[name] = len(data)
            elif known < 0:
                operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)))
                sizes[name] = path.stat().st_size
        self.status.refused = refused
        if refused:
            log.warning("backup: %s shorter here than in the backup; not pushed over it", ", ".join(refused))
        if operations:
            self.api.create_commit(self.repo_id, operations, repo_type="dataset",
                                   commit_message=f"skinnet review log: {len(operations)} files")
            self._remote.update(sizes)
        return len(operations)

    def sync(self) -> int:
        """One cycle: pull what others pushed, then push what this disk has more of."""
        with self._lock:
            pulled = self.pull()
            pushed = self.push()
            self.status.pushed_at, self.status.pushed_files = datetime.now(timezone.utc), pushed
            self.status.error = ""
            return pulled + pushed

    def restore(self) -> int:
        """Bring the log back from the backup (creating the repository if it is new); then saves may go on."""
        with self._lock:
            self.api.create_repo(self.repo_id, private=True, repo_type="dataset", exist_ok=True)
            restored = self.pull()
            self.status.restored_at, self.status.restored_files = datetime.now(timezone.utc), restored
            self.status.error = ""
        self.log.available.set()
        log.info("backup: restored %d files of the review log from %s", restored, self.status.target)
        return restored

    # -- running in the background ---------------------------------------------------------------
    def start(self) -> "Backup":
        """Restore in the background (saves wait for it), then sync every ``every_s`` seconds."""
        self.log.available.clear()
        self._thread = threading.Thread(target=self._run, name="skinnet-backup", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.restore()
                break
            except Exception as err:  # the network, the token, the Hub: say so, try again
                self._failed("restore", err)
                self._stop.wait(RETRY_RESTORE_S)
        while not self._stop.wait(self.every_s):
            try:
                self.sync()
            except Exception as err:
                self._failed("backup", err)

    def _failed(self, what: str, err: Exception) -> None:
        self.status.error = f"{what} failed at {datetime.now(timezone.utc):%H:%M} UTC ({type(err).__name__})"
        log.warning("backup: %s failed: %s", what, err)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the cycle and push once more (the app is shutting down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.status.restored_at is None:
            return  # never restored: pushing now could only add rows the backup should have first
        try:
            self.sync()
        except Exception as err:
            self._failed("last backup", err)


def backup_for(target: str | None, log: CorrectionsLog, token: str | None = None,
               every_s: float = BACKUP_EVERY_S) -> Backup | None:
    """The backup that ``--backup`` names: ``owner/name`` (a private Hugging Face dataset, token
    from ``HF_TOKEN``), or ``file:PATH`` (a folder); None for no backup.

    Raises:
        ValueError: the target is neither.
    """
    if not target:
        return None
    if target.startswith("file:"):
        folder = Path(target[len("file:"):].removeprefix("//"))
        return Backup(log, FolderHub(folder), folder.name, every_s, target=f"the folder {folder.name}")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", target):
        raise ValueError(f"--backup takes a dataset repository 'owner/name' or 'file:PATH', got {target!r}")
    from huggingface_hub import HfApi

    return Backup(log, HfApi(token=token or os.environ.get("HF_TOKEN")), target, every_s)

