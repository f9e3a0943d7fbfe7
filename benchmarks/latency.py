"""Latency of the app's model work per case, on real Derm7pt pairs, on this machine's CPU.

    python benchmarks/latency.py --data-root /path/to/release_v0 [--checkpoint CKPT] [--cases 30]

Measures, per case: a bare forward pass (tensors ready, no preprocessing), prediction as the
app does it (decode-free PIL in, calibrated probabilities out, TTA if the card says so), and
the full explanation the app shows (prediction + Grad-CAM of both images + all attention
overlays). Then throughput: the app launched here, ``/predict`` called through gradio_client
by 1, 10 and 30 concurrent clients (each call its own pair, uploads included), with the
micro-batcher on and, for comparison, off. Prints tables and writes JSON; ratios are from the
same run (the machine is shared and noisy, so absolute CPU times are indicative only).
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app import DEFAULT_CHECKPOINT  # noqa: E402
from skinnet.data import Derm7pt  # noqa: E402
from skinnet.explain import explain  # noqa: E402
from skinnet.imaging import load_rgb  # noqa: E402
from skinnet.predict import Predictor  # noqa: E402


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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    predictor = Predictor.from_checkpoint(args.checkpoint)
    cases = [c for c in Derm7pt(args.data_root).split("test") if not c.clinic_is_derm][:args.cases]
    pairs = [(load_rgb(c.clinical_path), load_rgb(c.dermoscopy_path)) for c in cases]
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
        "checkpoint": predictor.version, "image_size": predictor.card.image_size,
        "tta": predictor.card.tta, "cases": len(pairs),
        "threads": args.threads, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "bare_forward": stats(bare), "predict": stats(predict), "predict_and_explain": stats(full),
        "ratio_predict_to_forward": statistics.median(predict) / statistics.median(bare),
        "ratio_explain_to_forward": statistics.median(full) / statistics.median(bare),
        "peak_rss_mb": peak_mb, "rss_before_mb": rss_before / 1024,
    }
    print(f"{record['checkpoint']} at {record['image_size']} px, TTA {record['tta']}, "
          f"{record['cases']} Derm7pt test pairs, {record['machine']}")
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
    if args.clients:
        paired = [c for c in Derm7pt(args.data_root).split("test") if not c.clinic_is_derm][:args.calls]
        record["throughput"] = throughput(predictor, paired, [int(n) for n in args.clients.split(",")], args.calls)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2))
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


def throughput(predictor: Predictor, cases, clients: list[int], calls: int) -> dict:
    """Calls per second of ``/predict`` through the launched app, for each number of
    concurrent clients, with the micro-batcher on and off (one run, same pairs)."""
    import socket
    import tempfile

    from skinnet.ui import AppSettings, build_app, launch

    folder = Path(tempfile.mkdtemp(prefix="skinnet-throughput-"))
    # each call its own pair (``cases`` holds at least ``calls``), so no call is answered from the
    # recent-predictions memory
    for i, case in enumerate(cases):
        c, d = folder / f"{i:03d}_c.png", folder / f"{i:03d}_d.png"
        load_rgb(case.clinical_path).save(c)
        load_rgb(case.dermoscopy_path).save(d)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = AppSettings(checkpoint=Path(predictor.card.name), port=port, log_dir=folder / "log")
    app = build_app(predictor, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    from skinnet.predict import MicroBatcher

    default = predictor.batcher  # what build_app chose for this device
    batcher = default or MicroBatcher(predictor, 8)
    url = f"http://127.0.0.1:{port}/"
    results = {}
    try:
        for batching in (True, False):
            predictor.batcher = batcher if batching else None
            for n in clients:
                predictor.forget()
                batcher.batches = []
                per_client = max(1, calls // n)
                # the clients run in their own process: their work must not share the server's GIL
                run, server_cpu_s = client_process(url, n, per_client, folder)
                key = f"{'batched' if batching else 'unbatched'}_{n}"
                results[key] = {"clients": n, **run, "mean_batch": (statistics.mean(batcher.batches)
                                                                   if batching and batcher.batches else 1.0),
                                **cpu_ceiling(server_cpu_s, run)}
    finally:
        predictor.batcher = default
        app.close()
    results["app_default"] = "batched" if default else "unbatched"
    one = results.get(f"{results['app_default']}_1", {}).get("calls_per_s")
    print(f"\n{'/predict through the app':<28}{'calls/s':>9}{'x 1 client':>11}{'median s':>10}{'p90 s':>8}"
          f"{'errors':>8}{'batch':>7}{'CPU ms/call server + clients':>30}{'cores allow':>13}")
    for key, r in results.items():
        if not isinstance(r, dict) or "calls_per_s" not in r:
            continue
        ratio = r["calls_per_s"] / one if one else float("nan")
        r["ratio_to_one_client"] = ratio
        print(f"{key.replace('_', ', ') + ' clients':<28}{r['calls_per_s']:9.2f}{ratio:11.2f}{r['median_s']:10.2f}"
              f"{r['p90_s']:8.2f}{r['errors']:8d}{r['mean_batch']:7.1f}"
              f"{r['server_cpu_ms_per_call']:17.0f} + {r['client_cpu_ms_per_call']:<10.0f}"
              f"{r['ceiling_calls_per_s']:13.2f}")
    alone = results.get(f"{results['app_default']}_1")
    if alone and one:
        # a call under load costs at least what it costs alone: the cores then allow at most this
        results["concurrency_bound"] = {"calls_per_s": alone["ceiling_calls_per_s"],
                                        "ratio_to_one_client": alone["ceiling_calls_per_s"] / one}
        print(f"at one client's CPU cost per call the {alone['cores']} cores allow at most "
              f"{alone['ceiling_calls_per_s']:.2f} calls/s, {alone['ceiling_calls_per_s'] / one:.2f}x one client")
    return results


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
    """The server's and the clients' CPU time per call, and the calls per second the cores would
    give at that cost per call if they did nothing else. Clients share the cores with the
    server here (on a Space they do not). Measured with one client it bounds what concurrency
    can reach, as long as a call costs no less CPU under load than alone (it costs more: the
    clients' share grows); measured under load, throughput / ceiling is how busy the cores were."""
    ok = max(run["ok"], 1)
    server_ms, client_ms = 1000 * server_cpu_s / ok, 1000 * run["client_cpu_s"] / ok
    cores = len(os.sched_getaffinity(0))
    return {"server_cpu_ms_per_call": server_ms, "client_cpu_ms_per_call": client_ms, "cores": cores,
            "ceiling_calls_per_s": cores * 1000 / (server_ms + client_ms)}


def client_run(url: str, n: int, per_client: int, folder: Path) -> dict:
    """``n`` gradio_client clients in threads of this process, each making ``per_client``
    sequential ``/predict`` calls on its own pairs; prints one JSON line."""
    import threading

    from gradio_client import Client, handle_file

    files = sorted(zip(sorted(folder.glob("*_c.png")), sorted(folder.glob("*_d.png"))))
    connected = [Client(url, verbose=False) for _ in range(n)]
    latencies, errors, start = [], [], threading.Barrier(n + 1)

    def run(k, client):
        start.wait()
        for i in range(per_client):
            c, d = files[(k * per_client + i) % len(files)]
            began = time.perf_counter()
            try:
                client.predict(handle_file(str(c)), handle_file(str(d)), api_name="/predict")
                latencies.append(time.perf_counter() - began)
            except Exception as err:  # noqa: BLE001 (counted, reported)
                errors.append(type(err).__name__)

    threads = [threading.Thread(target=run, args=(k, cl)) for k, cl in enumerate(connected)]
    for t in threads:
        t.start()
    print("ready", flush=True)  # the server starts counting its CPU time here
    start.wait()
    began, cpu_began = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    result = {"calls": n * per_client, "ok": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)),
              "calls_per_s": len(latencies) / wall, "median_s": statistics.median(latencies) if latencies else None,
              "p90_s": percentile(latencies, 0.9) if latencies else None, "client_cpu_s": cpu}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client-run":
        client_run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
