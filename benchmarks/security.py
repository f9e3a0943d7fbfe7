"""The app under attack and under load, measured from outside (raw HTTP, as issue 12 asks).

    python benchmarks/security.py [--checkpoint CKPT] [--workers 8] [--saves 50]

Launches ``python app.py`` (the shipped model unless told otherwise) as its own process and
measures: its memory (peak RSS) while six 39.7-megapixel PNGs are sent anonymously to four
image events at once, and how long a normal ``/predict`` takes meanwhile (against the same call
when idle); ``workers x saves`` reviews saved concurrently through the HTTP API (each
acknowledged one on disk once, the file parses); the app killed with SIGKILL in the middle of
such a burst (no acknowledged review lost, the log still parses, saving works after a restart);
and a full disk (a small tmpfs as the log folder, when this machine lets root mount one). Prints
a table and writes ``benchmarks/results/security.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet.corrections import NO_CHANGE, read_corrections
from skinnet_testkit.app_process import PASSWORD, USER, App, fn
from skinnet_testkit.raw_http import RawClient
from skinnet_testkit.synthetic import lesion_image

ROOT = Path(__file__).resolve().parents[1]

def predict_seconds(url: str, pair: list[Path]) -> float:
    client = RawClient(url)
    config = client.config()
    started = time.perf_counter()
    result = client.call(fn(config, "predict"), [None, {"path": client.upload(pair[0])}, {"path": client.upload(pair[1])}, False])
    assert result.success, result.error
    return time.perf_counter() - started


def memory_attack(checkpoint: Path, work: Path) -> dict:
    app = App(checkpoint, work / "log_mem", users=False)
    try:
        pairs = []  # a new pair each time: the app remembers recent predictions by their pixels
        for i, size in enumerate(((600, 400), (512, 512), (640, 480), (500, 500))):
            lesion_image(np.random.default_rng(i), size, tint=i).save(work / f"normal{i}.png")
        pairs = [[work / "normal0.png", work / "normal1.png"], [work / "normal2.png", work / "normal3.png"]]
        idle_rss = app.rss_gb()
        idle_predict = predict_seconds(app.url, pairs[0])
        bombs = []
        for i in range(6):
            image = Image.new("RGB", (6300, 6300), (40 * i, 90, 200 - 30 * i))
            image.paste((10, 10, 10), (100 * i, 100, 100 * i + 500, 600))
            image.save(work / f"big{i}.png")
            bombs.append(work / f"big{i}.png")
        del image
        config = RawClient(app.url).config()
        events = [(fn(config, "upload_clinical"), lambda f: [None, f]), (fn(config, "upload_dermoscopy"), lambda f: [None, f]),
                  (fn(config, "predict"), lambda f: [None, f, f, False]),
                  (fn(config, "explain"), lambda f: [None, f, f, "DIAG", "(predicted class)", "auto"])]
        outcomes = []

        def attack(path, index, make):
            client = RawClient(app.url)
            outcomes.append(client.call(index, make({"path": client.upload(path)})).success)

        threads = [threading.Thread(target=attack, args=(p, i, m)) for p in bombs for i, m in events]
        started = time.perf_counter()
        for t in threads:
            t.start()
        during = predict_seconds(app.url, pairs[1])
        for t in threads:
            t.join()
        return {"idle_rss_gb": round(idle_rss, 2), "peak_rss_gb": round(app.rss_gb("VmHWM"), 2),
                "attack_requests": len(threads), "attack_seconds": round(time.perf_counter() - started, 1),
                "predict_idle_s": round(idle_predict, 2), "predict_during_attack_s": round(during, 2),
                "bomb_png_bytes": max(p.stat().st_size for p in bombs)}
    finally:
        app.stop()


def save_burst(url: str, workers: int, saves: int, work: Path, stop_after: float | None = None,
               tag: str = "w") -> list[str]:
    """``workers`` threads, each saving ``saves`` reviews of its own uploads; the acknowledged notes.
    Bursts with another ``tag`` upload other images (the same image and answer again would be
    'already saved', rightly)."""
    acknowledged, lock = [], threading.Lock()
    config = RawClient(url, USER, PASSWORD).config()

    def worker(w: int):
        client = RawClient(url, USER, PASSWORD)
        rng = np.random.default_rng([1000 + w, ord(tag[0])])
        for i in range(saves):
            try:
                session = secrets.token_hex(6)
                path = work / f"{tag}{w}_{i}.png"
                lesion_image(rng, (64, 48), tint=i).save(path)
                clean = client.call(fn(config, "upload_dermoscopy"), [None, {"path": client.upload(path)}], session)
                case = client.call(fn(config, "case_from_upload"), [None, None, clean.data[0]], session)
                note = f"{tag}{w}-{i}"
                saved = client.call(fn(config, "save"),
                                    [None, case.data[-1], False, "unsure", None, note, *[NO_CHANGE] * 8], session)
                if saved.success and saved.data[0].startswith("Saved"):
                    with lock:
                        acknowledged.append(note)
            except Exception:  # the server went away (the kill -9 run): stop this worker
                return

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    if stop_after is None:
        for t in threads:
            t.join()
    else:
        time.sleep(stop_after)
    return acknowledged


def check_log(log_dir: Path, acknowledged: list[str]) -> dict:
    rows, problems = read_corrections(log_dir / "corrections.csv")
    notes = [r["note"] for r in rows]
    return {"acknowledged": len(acknowledged), "rows": len(rows),
            "acknowledged_missing": len(set(acknowledged) - set(notes)),
            "rows_twice": len(notes) - len(set(notes)), "problems": [str(p) for p in problems]}


def concurrent_saves(checkpoint: Path, work: Path, workers: int, saves: int) -> dict:
    app = App(checkpoint, work / "log_saves")
    try:
        started = time.perf_counter()
        acknowledged = save_burst(app.url, workers, saves, work)
        seconds = time.perf_counter() - started
        return {**check_log(work / "log_saves", acknowledged), "workers": workers, "saves_each": saves,
                "seconds": round(seconds, 1), "saves_per_s": round(len(acknowledged) / seconds, 2)}
    finally:
        app.stop()


def killed_mid_burst(checkpoint: Path, work: Path) -> dict:
    app = App(checkpoint, work / "log_kill")
    acknowledged = save_burst(app.url, 8, 1000, work, stop_after=20.0)
    app.stop(signal.SIGKILL)
    before = check_log(work / "log_kill", acknowledged)
    again = App(checkpoint, work / "log_kill")
    try:
        after = save_burst(again.url, 1, 1, work, tag="r")
    finally:
        again.stop()
    return {**before, "saved_after_restart": len(after) == 1,
            "parses_after_restart": check_log(work / "log_kill", acknowledged + after)["acknowledged_missing"] == 0}


def disk_full(checkpoint: Path, work: Path) -> dict:
    folder = work / "small_disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True).returncode:
        return {"skipped": "cannot mount a tmpfs here"}
    app = App(checkpoint, folder)
    try:
        config = RawClient(app.url, USER, PASSWORD).config()
        client = RawClient(app.url, USER, PASSWORD)
        acknowledged, messages, failures = [], set(), 0
        rng = np.random.default_rng(7)
        for i in range(400):
            session = secrets.token_hex(6)
            path = work / f"full{i}.png"
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(path)  # incompressible
            clean = client.call(fn(config, "upload_dermoscopy"), [None, {"path": client.upload(path)}], session)
            case = client.call(fn(config, "case_from_upload"), [None, None, clean.data[0]], session)
            saved = client.call(fn(config, "save"),
                                [None, case.data[-1], False, "unsure", None, f"full-{i}", *[NO_CHANGE] * 8], session)
            if saved.success:
                acknowledged.append(f"full-{i}")
            else:
                messages.add(saved.error)
                failures += 1
                if failures == 3:
                    break
        leftovers = [p.name for p in (folder / "images").iterdir() if p.suffix == ".tmp"]
        return {**check_log(folder, acknowledged), "messages": sorted(messages), "tmp_files_left": len(leftovers)}
    finally:
        app.stop()
        subprocess.run(["umount", str(folder)], check=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--saves", type=int, default=50)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "security.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"checkpoint": Path(args.checkpoint).name, "machine": f"{os.cpu_count()} CPU cores",
                   "memory_attack": memory_attack(Path(args.checkpoint), work),
                   "concurrent_saves": concurrent_saves(Path(args.checkpoint), work, args.workers, args.saves),
                   "killed_mid_burst": killed_mid_burst(Path(args.checkpoint), work),
                   "disk_full": disk_full(Path(args.checkpoint), work)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    m, c, k, d = (results[key] for key in ("memory_attack", "concurrent_saves", "killed_mid_burst", "disk_full"))
    print(f"| check | result |\n|---|---|\n"
          f"| 6 x 39.7 MP PNGs, {m['attack_requests']} anonymous requests at once | peak RSS {m['peak_rss_gb']} GB "
          f"(idle {m['idle_rss_gb']} GB); normal /predict {m['predict_during_attack_s']} s during, "
          f"{m['predict_idle_s']} s idle |\n"
          f"| {c['workers']} x {c['saves_each']} concurrent saves over HTTP | {c['acknowledged']} acknowledged, "
          f"{c['rows']} rows, {c['acknowledged_missing']} missing, {c['rows_twice']} twice, "
          f"{len(c['problems'])} bad rows; {c['saves_per_s']} saves/s |\n"
          f"| kill -9 mid-burst | {k['acknowledged']} acknowledged, {k['acknowledged_missing']} missing, "
          f"{k['rows_twice']} twice, bad rows {k['problems']}; saves after restart: {k['saved_after_restart']} |\n"
          f"| full disk (512 KB tmpfs) | " + (d.get("skipped") or
          f"{d['acknowledged']} acknowledged, {d['acknowledged_missing']} missing, bad rows {len(d['problems'])}, "
          f".tmp left {d['tmp_files_left']}; told: {d['messages'][:1]}") + " |")
    return results


if __name__ == "__main__":
    main()
