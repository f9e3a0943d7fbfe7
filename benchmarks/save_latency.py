"""How long a save takes as the review log grows: 100 rows against 20,000.

    python benchmarks/save_latency.py [--checkpoint CKPT] [--saves 30] [--rows 100 20000]

For each log size, a log of that many rows (20 reviewers, 1,000 cases, in the one-file
``corrections.csv`` that every version reads) is written into a fresh log folder, and then:

- **the app's save**: ``python app.py`` is started on it and a signed-in reviewer's session saves
  ``--saves`` changed reviews of one case by raw HTTP (the save event, as the browser sends it;
  each is a new row), timed from the request to the acknowledgement;
- **the log's append**: ``CorrectionsLog.append`` of ``--saves`` new reviews in this process (no
  images), timed alone.

Medians and the ratio of the largest log to the smallest, from one run (the machine's load is
written down with them). Writes a table and ``benchmarks/results/save_latency.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from report import write_section
from skinnet_testkit.raw_http import NO_FORM, RawClient
from skinnet_testkit.app_process import PASSWORD, USER, App, fn

ROOT = Path(__file__).resolve().parents[1]

PREDICTED = {"DIAG": "NEV", "PN": "TYP", "STR": "ABS", "PIG": "REG", "RS": "ABS", "DaG": "REG", "BWV": "ABS",
             "VS": "ABS"}


def write_log(folder: Path, n_rows: int) -> None:
    """``n_rows`` agree/correct/unsure reviews by 20 reviewers of 1,000 cases, as the app writes them."""
    from skinnet.corrections import COLUMNS
    from skinnet.labels import TASKS

    folder.mkdir(parents=True)
    with open(folder / "corrections.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(n_rows):
            verdict = ("agree", "correct", "unsure")[i % 3]
            row = {c: "" for c in COLUMNS}
            row.update(event_id=f"{i:032x}", logged_at=f"2026-01-01T00:{(i // 600) % 60:02d}:{(i // 10) % 60:02d}+00:00",
                       reviewer=f"dr_{i % 20}", case_id=f"case{(i * 7) % 1000}", source="manifest",
                       derm=f"images/{i:064x}.png", derm_sha256=f"{i:064x}", model_version="tiny@0",
                       verdict=verdict, seconds_spent="12.0", confidence="3", note=f"row {i}")
            for task in TASKS:
                row[f"model_{task.name}"] = PREDICTED[task.name]
                if verdict == "agree":
                    row[task.name], row[f"status_{task.name}"] = PREDICTED[task.name], "confirmed"
                elif verdict == "correct":
                    changed = task.name == "DIAG"
                    row[task.name] = "MEL" if changed else ""
                    row[f"status_{task.name}"] = "changed" if changed else "not reviewed"
            writer.writerow([row[c] for c in COLUMNS])


def app_saves(checkpoint: Path, folder: Path, saves: int) -> list[float]:
    """Seconds per save event of the launched app (each save a changed review: a new row)."""
    from skinnet_testkit.queues import write_manifest

    write_manifest(folder / "queues" / "clinic")
    app = App(checkpoint, folder / "log", env={"SKINNET_QUEUE_ROOT": str(folder / "queues")})
    try:
        client = RawClient(app.url, USER, PASSWORD)
        config = client.config()
        session = secrets.token_hex(6)
        assert client.call(fn(config, "open_queue"), [None, "clinic/manifest.csv", *NO_FORM], session).success
        assert client.call(fn(config, "step_next"), [None], session).success
        token = client.call(fn(config, "show_case"), [None], session).data[-1]
        seconds = []
        for i in range(saves + 3):  # the first three warm the model's cache and the log's index
            started = time.perf_counter()
            saved = client.call(fn(config, "save"), [None, token, False, "unsure", None, f"save {i}"] + ["no change"] * 8,
                                session)
            elapsed = time.perf_counter() - started
            assert saved.success and "Saved" in saved.data[0], saved.error
            if i >= 3:
                seconds.append(elapsed)
        return seconds
    finally:
        app.stop()


def log_appends(folder: Path, saves: int) -> list[float]:
    """Seconds per ``CorrectionsLog.append`` of a new review (no images), in this process."""
    from skinnet.corrections import CorrectionsLog, Review, new_event_id

    log = CorrectionsLog(folder)
    seconds = []
    for i in range(saves + 1):
        review = Review(new_event_id(), "dr_bench", f"bench{i}", "manifest", "unsure", dict(PREDICTED), {})
        started = time.perf_counter()
        assert log.append(review)
        if i:  # the first reads the log once
            seconds.append(time.perf_counter() - started)
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--saves", type=int, default=30)
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 20000])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "save_latency.json"))
    args = parser.parse_args(argv)
    results = {"saves_per_size": args.saves, "load_average_1min_at_start": round(os.getloadavg()[0], 2), "sizes": {}}
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            write_log(folder / "log", rows)
            app = app_saves(Path(args.checkpoint), folder, args.saves)
            write_log(folder / "alone", rows)
            alone = log_appends(folder / "alone", args.saves)
        results["sizes"][str(rows)] = {"app_save_median_s": round(statistics.median(app), 4),
                                       "app_save_p90_s": round(sorted(app)[int(0.9 * (len(app) - 1))], 4),
                                       "log_append_median_s": round(statistics.median(alone), 5)}
        print(rows, results["sizes"][str(rows)], flush=True)
    small, large = (results["sizes"][str(n)] for n in (min(args.rows), max(args.rows)))
    results["ratio_app_save"] = round(large["app_save_median_s"] / small["app_save_median_s"], 2)
    results["ratio_log_append"] = round(large["log_append_median_s"] / small["log_append_median_s"], 2)
    results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    lines = ["| rows in the log | app save, median | app save, p90 | log append alone, median |", "|---|---|---|---|"]
    lines += [f"| {n:,} | {v['app_save_median_s'] * 1000:.0f} ms | {v['app_save_p90_s'] * 1000:.0f} ms | "
              f"{v['log_append_median_s'] * 1000:.1f} ms |" for n, v in ((int(k), v) for k, v in results["sizes"].items())]
    lines.append(f"| ratio {max(args.rows):,} / {min(args.rows):,} | {results['ratio_app_save']}x | | "
                 f"{results['ratio_log_append']}x |")
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    write_section(ROOT / "docs" / "results.md", "save_latency", SECTION.format(
        checkpoint=Path(args.checkpoint).stem, saves=args.saves, load=results["load_average_1min_at_start"],
        table="\n".join(lines), before=before_line()))
    return results


SECTION = """### Saving as the log grows

`python benchmarks/save_latency.py` ({checkpoint}; one run, load average {load} on the shared 2-core
machine): a log of 100 and of 20,000 rows (20 reviewers, 1,000 cases), then {saves} changed reviews
saved by raw HTTP through the launched app's save event (request to acknowledgement), and
{saves} appends of the log alone in the benchmark's process.

{table}

{before}"""


def before_line() -> str:
    """The same benchmark on the code before issue 24, if it was run (``results/save_latency_before.json``)."""
    path = ROOT / "benchmarks" / "results" / "save_latency_before.json"
    if not path.is_file():
        return ""
    before = json.loads(path.read_text())
    small, large = (before["sizes"][k] for k in ("100", "20000"))
    return (f"Before (the code before issue 24, which re-read and re-parsed the whole CSV several times per save; "
            f"load average {before['load_average_1min_at_start']}): the app's save took "
            f"{small['app_save_median_s'] * 1000:.0f} ms at 100 rows and {large['app_save_median_s'] * 1000:.0f} ms "
            f"at 20,000 ({before['ratio_app_save']}x); the append alone {before['ratio_log_append']}x.")


if __name__ == "__main__":
    main()
