import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from skinnet_testkit.synthetic import make_release

REAL_DERM7PT = Path(__file__).resolve().parents[2] / "shared" / "derm7pt"

# the suite scores synthetic models on "test": keep those lines out of the committed test log
os.environ["SKINNET_TEST_LOG"] = str(Path(tempfile.mkdtemp(prefix="skinnet-test-log-")) / "test_log.csv")


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Path:
    """A synthetic Derm7pt release_v0 (24 cases), shared by the session: do not modify."""
    return make_release(tmp_path_factory.mktemp("derm7pt"))


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """``folder`` as a tmpfs of ``size`` (``96k``): a disk that fills up. Needs root; skips the
    test elsewhere."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
