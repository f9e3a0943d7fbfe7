import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from skinnet_testkit.synthetic import make_release

ROOT = Path(__file__).resolve().parents[1]
REAL_DERM7PT = Path(os.environ.get("SKINNET_DERM7PT") or Path(__file__).resolve().parents[2] / "shared" / "derm7pt")
"""The real Derm7pt release_v0 (research use only, never in the repository): ``SKINNET_DERM7PT``,
by default ``../shared/derm7pt`` beside the checkout. Tests that need it are skipped without it."""
HAVE_REAL_DERM7PT = (REAL_DERM7PT / "meta" / "meta.csv").is_file()
NEEDS_REAL_DERM7PT = "needs the real Derm7pt release (SKINNET_DERM7PT, default ../shared/derm7pt)"
needs_real_derm7pt = pytest.mark.skipif(not HAVE_REAL_DERM7PT, reason=NEEDS_REAL_DERM7PT)
"""Mark a test that reads the real release; the run's summary says how many ran and were skipped."""


def pytest_configure(config):
    config.addinivalue_line("markers", "real_derm7pt: reads the real Derm7pt release (needs_real_derm7pt)")


LONGEST_FILES = ("test_security.py", "test_crossval.py", "test_review_slips.py", "test_ledger.py",
                 "test_entry_point.py", "test_review_e2e.py")
"""Run first (minutes each): the two workers take a file at a time in collection order, and a long
file left to the end keeps one worker busy while the other has nothing left."""


def pytest_collection_modifyitems(items):
    for item in items:
        if any(m.kwargs.get("reason") == NEEDS_REAL_DERM7PT for m in item.iter_markers("skipif")):
            item.add_marker("real_derm7pt")
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a file's own order is kept


def pytest_terminal_summary(terminalreporter):
    """One line in CI's log: how many real-data tests ran, passed and were skipped."""
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        counts[outcome] = sum(1 for report in terminalreporter.stats.get(outcome, [])
                              if "real_derm7pt" in getattr(report, "keywords", {}) and report.when in ("call", "setup"))
    terminalreporter.write_line(
        f"real Derm7pt tests ({REAL_DERM7PT}{'' if HAVE_REAL_DERM7PT else ', absent'}): "
        + ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n or outcome in ("passed", "skipped"))
        + slow_left_out(terminalreporter))


def slow_left_out(terminalreporter) -> str:
    """Said from the run's marker expression: under xdist the workers deselect, and the
    controller, which writes this line, never sees the deselected items."""
    markexpr = terminalreporter.config.getoption("markexpr") or ""
    return "; the slow ones left out (run them with -m slow)" if "not slow" in markexpr else ""

# the suite scores synthetic models on "test": keep those lines out of the committed test log
os.environ["SKINNET_TEST_LOG"] = str(Path(tempfile.mkdtemp(prefix="skinnet-test-log-")) / "test_log.csv")
# Gradio's upload folder, one per test process (each xdist worker, and the apps it launches): Gradio
# names an upload's folder by its bytes, so two workers uploading the same synthetic pair share a
# file, and one app's sweep of its originals would delete the other's before it is read
_GRADIO_TEMP = tempfile.mkdtemp(prefix="skinnet-gradio-")
os.environ["GRADIO_TEMP_DIR"] = _GRADIO_TEMP
atexit.register(shutil.rmtree, _GRADIO_TEMP, ignore_errors=True)


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


def benchmark(argv: list, check: bool = True) -> subprocess.CompletedProcess:
    """A benchmark script run as its README says (``python benchmarks/x.py``): tests never import benchmarks/."""
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, check=check,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
