"""Shared by the benchmark scripts: raw scores from evaluation records, results.md sections."""
from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (appended if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = path.read_text() if path.is_file() else "# Results\n"
    if begin not in current:
        current = current.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = current.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def uncalibrated(record: dict) -> dict:
    """The fused head's raw ``{"tasks", "avg"}`` from a ``training.evaluate`` record.

    Choices made on valid (epochs, loss weights, runs) use raw scores: the calibration is
    fitted on valid, so its valid accuracy is in-sample. Records written before calibration
    had class biases are raw already.
    """
    return record["heads"]["fused"].get("uncalibrated", record)
