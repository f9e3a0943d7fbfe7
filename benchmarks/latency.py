"""Latency of the app's model work per case, on real Derm7pt pairs, on this machine's CPU.

    python benchmarks/latency.py --data-root /path/to/release_v0 [--checkpoint CKPT] [--cases 30]

Measures, per case: a bare forward pass (tensors ready, no preprocessing), prediction as the
app does it (decode-free PIL in, calibrated probabilities out, TTA if the card says so), and
the full explanation the app shows (prediction + Grad-CAM of both images + all attention
overlays). Then serving against the model's own speed, in one run: the model alone (the
Predictor in this process, the same threads, no server: pairs per second, each pair new) and
the app launched here, ``/predict`` called by 1, 10 and 30 concurrent light raw-HTTP clients
in a process of their own (each call uploads its pair's two JPEGs, joins the queue and reads
the event stream: a few ms of client CPU a call, where gradio_client took about 190 ms).
Prints tables and writes JSON; ratios are from the same run (the machine is shared and noisy,
so absolute times are indicative only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet.data import Derm7pt
from skinnet.explain import explain
from skinnet.imaging import load_rgb
from skinnet.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "latency.json"))
    p.add_argument("--clients", default="1,10,30", help="concurrent /predict clients ('' skips throughput)")
    p.add_argument("--calls", type=int, default=60, help="calls per throughput measurement (all clients)")
    p.add_argument("--serving-only", action="store_true", help="skip the per-case latencies (model alone and app only)")
    p.add_argument("--turn-rule-pairs", type=int, default=4,
                   help="alternating runs at 10 clients with and without Predictor.turn's rule (0 skips)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    predictor = Predictor.from_checkpoint(args.checkpoint)
    cases = [c for c in Derm7pt(args.data_root).split("test") if not c.clinic_is_derm][:args.cases]
    pairs = [(load_rgb(c.clinical_path), load_rgb(c.dermoscopy_path)) for c in cases]
    record = {"checkpoint": predictor.version, "image_size": predictor.card.image_size,
              "tta": predictor.card.tta, "threads": args.threads,
              "turn_rule": "a model call others are queued behind runs on 1 intra-op thread, one alone on all "
                           "(Predictor.turn)",
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads"}
    if not args.serving_only:
        record.update(case_latencies(predictor, pairs))
    if args.clients:
        paired = [c for c in Derm7pt(args.data_root).split("test") if not c.clinic_is_derm][:args.calls]
        # the model alone before and after the app's runs: the machine's load drifts within a run
        before = model_alone(predictor, pairs)
        record["throughput"] = throughput(predictor, paired, [int(n) for n in args.clients.split(",")], args.calls,
                                          before["pairs_per_s"])
        after = model_alone(predictor, pairs)
        rate = (before["pairs"] + after["pairs"]) / (before["seconds"] + after["seconds"])
        record["model_alone"] = {"before": before, "after": after, "pairs_per_s": rate}
        for r in record["throughput"].values():
            r["ratio_to_model"] = r["calls_per_s"] / rate
        print(f"model alone: {before['pairs_per_s']:.2f} pairs/s before the app's runs, {after['pairs_per_s']:.2f} after; "
              "x model: " + ", ".join(f"{r['clients']} clients {r['ratio_to_model']:.2f}"
                                      for r in record["throughput"].values()))
        if args.turn_rule_pairs:
            record["turn_rule_ab"] = turn_rule_ab(predictor, paired, 10, 120, args.turn_rule_pairs)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2))
    return record


def case_latencies(predictor: Predictor, pairs) -> dict:
    """Per case: the bare forward, the app's predict, predict + explanation; batch costs."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    explain(predictor, *pairs[0])  # warm-up (allocator, grad-cam import)
    bare, predict, full = [], [], []
    for clinical, derm in pairs:
        x_c, x_d = predictor.to_tensor(clinical), predictor.to_tensor(derm)
        with torch.inference_mode():
            bare.append(timed(lambda: predictor.model(x_c, x_d)))
        predictor.forget()
        predict.append(timed(lambda: predictor.predict(clinical, derm)))
        predictor.forget()  # the app's flow: /predict, then /explain of the same pair
        full.append(timed(lambda: (predictor.predict(clinical, derm), explain(predictor, clinical, derm))))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def stats(values):
        return {"median_ms": 1000 * statistics.median(values), "p90_ms": 1000 * percentile(values, 0.9)}

    record = {
        "cases": len(pairs), "bare_forward": stats(bare), "predict": stats(predict), "predict_and_explain": stats(full),
        "ratio_predict_to_forward": statistics.median(predict) / statistics.median(bare),
        "ratio_explain_to_forward": statistics.median(full) / statistics.median(bare),
        "peak_rss_mb": peak_mb, "rss_before_mb": rss_before / 1024,
    }
    print(f"{predictor.version}, {record['cases']} Derm7pt test pairs")
    print(f"{'step':<32}{'median ms':>10}{'p90 ms':>10}{'x forward':>11}")
    for name, key in (("bare forward (pair)", "bare_forward"), ("predict (app)", "predict"),
                      ("predict + Grad-CAM x2 + attention", "predict_and_explain")):
        ratio = statistics.median({"bare_forward": bare, "predict": predict,
                                   "predict_and_explain": full}[key]) / statistics.median(bare)
        print(f"{name:<32}{record[key]['median_ms']:10.0f}{record[key]['p90_ms']:10.0f}{ratio:11.1f}")
    print(f"peak RSS {peak_mb:.0f} MB")
    record["forward_ms_per_pair_by_batch"] = batch_costs(predictor)
    print("forward ms per pair by pairs per batch: " + "; ".join(
        f"{'flips' if k == 'tta' else 'one view'}: " + ", ".join(f"{b}: {v:.0f}" for b, v in costs.items())
        for k, costs in record["forward_ms_per_pair_by_batch"].items()))
    return record


def batch_costs(predictor: Predictor, sizes=(1, 2, 4, 8)) -> dict:
    """Milliseconds per pair of one forward pass of 1, 2, 4, 8 pairs (with the card's four flips
    and with one view): whether batching visitors' requests can pay on this machine."""
    costs = {}
    for name, tta in (("tta", True), ("one_view", False)):
        costs[name] = {}
        for size in sizes:
            x = torch.randn(size, 3, predictor.card.image_size, predictor.card.image_size)
            predictor.forward_tensors(x, x, tta)
            costs[name][size] = 1000 * min(timed(lambda: predictor.forward_tensors(x, x, tta)) for _ in range(3)) / size
    return costs


def model_alone(predictor: Predictor, pairs, seconds: float = 20.0) -> dict:
    """Pairs per second of ``Predictor.predict`` on decoded pairs, one after another, each new to
    it (its memory of recent pairs cleared): the model's own rate, which serving is held to.

    It runs in a thread of its own, as the app's model calls do (Gradio's worker threads): on
    this loaded 2-core machine a forward pass in the main thread took 10-15x longer than the same
    pass in another thread (0.8-1.7 s against 0.08 s, torch's threads at 2 in both), which would
    make the app look faster than its own model.
    """
    import threading

    result = {}

    def run():
        predictor.forget()
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds or done < len(pairs) // 2:
            clinical, dermoscopy = pairs[done % len(pairs)]
            predictor.forget()
            predictor.predict(clinical, dermoscopy)
            done += 1
        wall = time.perf_counter() - began
        result.update(pairs=done, seconds=wall, pairs_per_s=done / wall)

    worker = threading.Thread(target=run, name="model-alone")
    worker.start()
    worker.join()
    return result


@contextmanager
def served(predictor: Predictor, cases):
    """The app launched around ``predictor``: (its URL, a folder of the cases' JPEGs)."""
    import socket
    import tempfile

    from skinnet.ui import AppSettings, build_app, launch

    folder = Path(tempfile.mkdtemp(prefix="skinnet-throughput-"))
    for i, case in enumerate(cases):  # the release's own JPEGs, as a camera gives them
        (folder / f"{i:03d}_c.jpg").write_bytes(Path(case.clinical_path).read_bytes())
        (folder / f"{i:03d}_d.jpg").write_bytes(Path(case.dermoscopy_path).read_bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = AppSettings(checkpoint=Path(predictor.card.name), port=port, log_dir=folder / "log")
    app = build_app(predictor, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}", folder
    finally:
        app.close()


def throughput(predictor: Predictor, cases, clients: list[int], calls: int, model_rate: float) -> dict:
    """``/predict`` calls per second through the launched app for each number of concurrent raw
    HTTP clients, against the model's own rate (pairs/s, same run)."""
    results = {}
    with served(predictor, cases) as (url, folder):
        for n in clients:
            predictor.forget()
            run, server_cpu_s = client_process(url, n, max(1, calls // n), folder)
            results[f"clients_{n}"] = {"clients": n, **run, **cpu_ceiling(server_cpu_s, run),
                                       "ratio_to_model": run["calls_per_s"] / model_rate}
    print(f"\n{'/predict, raw HTTP clients':<28}{'calls/s':>9}{'x model':>9}{'median s':>10}{'p90 s':>8}"
          f"{'errors':>8}{'CPU ms/call server + clients':>30}")
    print(f"{'model alone (no server)':<28}{model_rate:9.2f}{1.0:9.2f}")
    for key, r in results.items():
        print(f"{key.replace('_', ' '):<28}{r['calls_per_s']:9.2f}{r['ratio_to_model']:9.2f}{r['median_s']:10.2f}"
              f"{r['p90_s']:8.2f}{r['errors']:8d}{r['server_cpu_ms_per_call']:17.0f} + {r['client_cpu_ms_per_call']:<10.1f}")
    return results


def turn_rule_ab(predictor: Predictor, cases, clients: int, calls: int, pairs: int) -> dict:
    """The same launched app with and without ``Predictor.turn``'s rule (a call others are queued
    behind on one thread), alternating ``pairs`` times (ABBA...), ``calls`` calls each: this
    machine's speed drifts by 10-15% within minutes, so only paired runs compare."""
    runs, shipped = {"with_rule": [], "without_rule": []}, predictor.threads_when_queued
    with served(predictor, cases) as (url, folder):
        try:
            for k in range(pairs):
                for mode in (("with_rule", "without_rule") if k % 2 == 0 else ("without_rule", "with_rule")):
                    predictor.threads_when_queued = 1 if mode == "with_rule" else None  # None: all threads
                    predictor.forget()
                    run, _ = client_process(url, clients, max(1, calls // clients), folder)
                    runs[mode].append(run)
        finally:
            predictor.threads_when_queued = shipped
    rates = {mode: [r["calls_per_s"] for r in found] for mode, found in runs.items()}
    gains = [a / b for a, b in zip(rates["with_rule"], rates["without_rule"])]
    result = {"clients": clients, "calls_each": max(1, calls // clients) * clients, "pairs": pairs,
              "errors": sum(r["errors"] for found in runs.values() for r in found),
              **{f"{mode}_calls_per_s": values for mode, values in rates.items()},
              **{f"{mode}_median": statistics.median(values) for mode, values in rates.items()},
              "pairwise_gain": gains, "median_gain": statistics.median(gains),
              "pairs_favouring_rule": sum(g > 1 for g in gains)}
    print(f"\n{clients} clients, {pairs} alternating pairs: with the turn rule {result['with_rule_median']:.2f} "
          f"calls/s, without {result['without_rule_median']:.2f} (median gain x{result['median_gain']:.2f}, "
          f"{result['pairs_favouring_rule']} of {pairs} pairs favour the rule, {result['errors']} errors)")
    return result


def client_process(url: str, n: int, per_client: int, folder: Path, timeout_s: float = 1800) -> tuple[dict, float]:
    """Run ``client_run`` in its own process; return its result and the CPU seconds this
    (the server's) process spent while the clients were calling."""
    import subprocess
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
            [sys.executable, __file__, "--client-run", url, str(n), str(per_client), str(folder)],
            stdout=subprocess.PIPE, stderr=errors, text=True) as clients:
        # stderr goes to a file, so a chatty client cannot fill a pipe and stall before "ready";
        # a client that hangs is killed at the deadline, which ends the blocking reads below
        deadline = threading.Timer(timeout_s, clients.kill)
        deadline.start()
        try:
            ready = clients.stdout.readline().strip() == "ready"
            if not ready:
                clients.kill()
            before = os.times()
            out = clients.stdout.read() if ready else ""
            clients.wait()
            after = os.times()
        finally:
            deadline.cancel()
        errors.seek(0)
        if not ready or clients.returncode != 0:
            killed = " (killed at the deadline)" if clients.returncode == -9 and ready else ""
            raise RuntimeError(f"client process failed{killed}: {errors.read()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), (after.user - before.user) + (after.system - before.system)


def cpu_ceiling(server_cpu_s: float, run: dict) -> dict:
    """The server's and the clients' CPU time per call (clients share the cores with the server
    here; on a Space they do not)."""
    ok = max(run["ok"], 1)
    return {"server_cpu_ms_per_call": 1000 * server_cpu_s / ok, "client_cpu_ms_per_call": 1000 * run["client_cpu_s"] / ok,
            "cores": len(os.sched_getaffinity(0))}


def predict_call(http, fn_index: int, clinical: Path, dermoscopy: Path) -> None:
    """One ``/predict`` call as a browser makes it: upload both files, join the queue, read the
    event stream until this event's result. Raises on any failure."""
    import json as json_
    import secrets

    with open(clinical, "rb") as c, open(dermoscopy, "rb") as d:
        uploaded = http.post("/gradio_api/upload", files=[("files", ("clinical.jpg", c)), ("files", ("derm.jpg", d))])
    uploaded.raise_for_status()
    files = [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in uploaded.json()]
    session = secrets.token_hex(8)
    joined = http.post("/gradio_api/queue/join", json={"data": [None, *files, False], "fn_index": fn_index,
                                                       "session_hash": session, "event_data": None, "trigger_id": None})
    joined.raise_for_status()
    event = joined.json()["event_id"]
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json_.loads(line[5:])
                if message.get("event_id") == event and message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(str(message.get("output"))[:200])
                    return
    raise RuntimeError("the event stream ended without a result")


def client_run(url: str, n: int, per_client: int, folder: Path) -> dict:
    """``n`` raw HTTP clients in threads of this process, each making ``per_client`` sequential
    ``/predict`` calls on its own pairs; prints one JSON line."""
    import threading

    import httpx

    files = sorted(zip(sorted(folder.glob("*_c.jpg")), sorted(folder.glob("*_d.jpg"))))
    config = httpx.get(f"{url}/config").json()
    fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "predict")
    connected = [httpx.Client(base_url=url, timeout=600) for _ in range(n)]
    latencies, errors, start = [], [], threading.Barrier(n + 1)

    def run(k, http):
        start.wait()
        for i in range(per_client):
            c, d = files[(k * per_client + i) % len(files)]
            began = time.perf_counter()
            try:
                predict_call(http, fn_index, c, d)
                latencies.append(time.perf_counter() - began)
            except Exception as err:  # noqa: BLE001 (counted, reported)
                errors.append(f"{type(err).__name__}: {err}"[:120])

    threads = [threading.Thread(target=run, args=(k, http)) for k, http in enumerate(connected)]
    for t in threads:
        t.start()
    print("ready", flush=True)  # the server starts counting its CPU time here
    start.wait()
    began, cpu_began = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    result = {"calls": n * per_client, "ok": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
              "calls_per_s": len(latencies) / wall, "median_s": statistics.median(latencies) if latencies else None,
              "p90_s": percentile(latencies, 0.9) if latencies else None, "client_cpu_s": cpu}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client-run":
        client_run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
