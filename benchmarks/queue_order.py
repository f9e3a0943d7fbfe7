"""'Least sure first' on the whole Derm7pt release as a queue, while another client predicts.

    python benchmarks/queue_order.py --data-root ../shared/derm7pt [--checkpoint CKPT]

Starts ``python app.py`` with a login and a queue folder holding a copy of the release (hard
links where possible), opens ``meta/meta.csv`` (1011 cases) over raw HTTP as a reviewer, and
times "Least sure first" (cases scored in batches, the model free between batches) while a
second client calls ``/predict`` on new synthetic pairs back to back. Then orders again (from
the shared cache). Writes a table and ``benchmarks/results/queue_order.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet_testkit.raw_http import NO_FORM, RawClient
from skinnet_testkit.app_process import PASSWORD, USER, App, fn
from skinnet_testkit.synthetic import lesion_image

ROOT = Path(__file__).resolve().parents[1]


def copy_release(source: Path, target: Path) -> None:
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:  # another file system: a real copy
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "queue_order.json"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="skinnet-order-"))
    copy_release(Path(args.data_root), work / "queues" / "derm7pt")
    for i in range(400):  # a new pair per call: the app remembers recent predictions by their pixels
        rng = np.random.default_rng(1000 + i)
        lesion_image(rng, (300, 200), tint=i).save(work / f"c{i}.png")
        lesion_image(rng, (256, 256), tint=i + 1).save(work / f"d{i}.png")
    app = App(Path(args.checkpoint), work / "log", env={"SKINNET_QUEUE_ROOT": str(work / "queues")})
    try:
        idle = []
        visitor = RawClient(app.url, USER, PASSWORD)
        config = visitor.config()

        def predict(i: int) -> float:
            started = time.perf_counter()
            result = visitor.call(fn(config, "predict"), [None, {"path": visitor.upload(work / f"c{i}.png")},
                                                          {"path": visitor.upload(work / f"d{i}.png")}, False])
            assert result.success, result.error
            return time.perf_counter() - started

        idle = [predict(i) for i in range(5)]
        reviewer = RawClient(app.url, USER, PASSWORD)
        session = secrets.token_hex(6)
        opened = reviewer.call(fn_by_name(config, "open_queue"), [None, "derm7pt/meta/meta.csv", *NO_FORM], session)
        assert opened.success, opened.error
        during, done = [], threading.Event()

        def keep_predicting():
            i = 5
            while not done.is_set() and i < 400:
                during.append(predict(i))
                i += 1

        thread = threading.Thread(target=keep_predicting)
        thread.start()
        started = time.perf_counter()
        ordered = reviewer.call(fn_by_name(config, "order_queue"), [None, *NO_FORM], session)
        first_order = time.perf_counter() - started
        done.set()
        thread.join()
        assert ordered.success, ordered.error
        second = secrets.token_hex(6)  # another reviewer's session: the same queue, ordered from the cache
        assert reviewer.call(fn_by_name(config, "open_queue"), [None, "derm7pt/meta/meta.csv", *NO_FORM], second).success
        started = time.perf_counter()
        again = reviewer.call(fn_by_name(config, "order_queue"), [None, *NO_FORM], second)
        cached_order = time.perf_counter() - started
        n_cases = int(opened.data[2].split()[1])  # the queue status: "Opened N cases ..."
    finally:
        app.stop()
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "checkpoint": str(args.checkpoint), "cases": n_cases, "order_seconds": first_order,
        "order_again_seconds_cached": cached_order, "second_order_ok": again.success,
        "predict_idle_median_s": statistics.median(idle),
        "predict_during_order_median_s": statistics.median(during) if during else None,
        "predict_during_order_max_s": max(during) if during else None, "predict_calls_during_order": len(during),
    }
    print(f"{'ordering ' + str(n_cases) + ' Derm7pt cases (least sure first)':<52}{first_order:8.1f} s")
    print(f"{'ordering them again (shared cache)':<52}{cached_order:8.1f} s")
    print(f"{'/predict from another client, idle (median)':<52}{record['predict_idle_median_s']:8.2f} s")
    if during:
        print(f"{'/predict during the ordering (median, max)':<52}{statistics.median(during):8.2f} s"
              f"{max(during):8.2f} s  ({len(during)} calls)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2))
    return record


def fn_by_name(config: dict, name: str) -> int:
    """The first event whose handler is ``name`` (Gradio names repeats ``name_1``, ``name_2``)."""
    return next(i for i, d in enumerate(config["dependencies"]) if re.fullmatch(rf"{name}(_\d+)?", d["api_name"] or ""))


if __name__ == "__main__":
    main()
