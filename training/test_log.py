"""The record of every time a model was scored on the test split.

"Test is scored once per shipped candidate" is a rule a reader can check only if each scoring
leaves a trace: every test evaluation appends one line (UTC time, checkpoint and the SHA-256 of
its weights, the command, the numbers) to ``benchmarks/results/test_log.csv``, which is
committed. ``SKINNET_TEST_LOG`` points it elsewhere (the test suite's synthetic runs do).
"""
from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path

from skinnet.checkpoint import file_sha256
from skinnet.labels import TASK_NAMES

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["logged_at", "checkpoint", "checkpoint_sha256", "command", "n_cases", "avg", *TASK_NAMES, "ece", "DIAG_ece"]
"""``ece``: the fused head's calibrated ECE averaged over the 8 tasks; ``DIAG_ece``: DIAG's alone."""


def test_log_path() -> Path:
    return Path(os.environ.get("SKINNET_TEST_LOG") or ROOT / "benchmarks" / "results" / "test_log.csv")


def record_test_scoring(record: dict, checkpoint: str | Path | None, what: str | None = None,
                        command: list[str] | None = None) -> Path:
    """Append one line for an evaluation record of the test split (``training.evaluate``'s format).

    ``checkpoint``: the weights scored (their hash is logged), or None for something that is not one
    file (``what`` then names it, e.g. an ensemble of fold models). ``command``: what was run
    (default: this process's command line).
    """
    path = test_log_path()
    fused = record.get("heads", {}).get("fused", {})
    row = {"logged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "checkpoint": what or (Path(checkpoint).name if checkpoint else ""),
           "checkpoint_sha256": file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file() else "",
           "command": " ".join(command or sys.argv),
           "n_cases": record.get("n_cases", ""), "avg": f"{record['avg']:.4f}",
           **{t: f"{record['tasks'][t]:.4f}" for t in TASK_NAMES},
           "ece": f"{fused['ece_calibrated']:.4f}" if "ece_calibrated" in fused else "",
           "DIAG_ece": f"{fused['diag_ece_calibrated']:.4f}" if "diag_ece_calibrated" in fused else ""}
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    line = io.StringIO()
    writer = csv.DictWriter(line, COLUMNS, lineterminator="\n")
    if new:
        writer.writeheader()
    writer.writerow(row)
    with open(path, "a", encoding="utf-8") as log:  # one write: concurrent appenders do not interleave lines
        log.write(line.getvalue())
    return path
