"""Latency of the app's model work per case, on real Derm7pt pairs, on this machine's CPU.

    python benchmarks/latency.py --data-root /path/to/release_v0 [--checkpoint CKPT] [--cases 30]

Measures, per case: a bare forward pass (tensors ready, no preprocessing), prediction as the
app does it (decode-free PIL in, calibrated probabilities out, TTA if the card says so), and
the full explanation the app shows (prediction + Grad-CAM of both images + all attention
overlays). Prints a table and writes JSON; ratios are from the same run (the machine is
shared and noisy, so absolute CPU times are indicative only).
"""
from __future__ import annotations

import argparse
import json
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
        "tta": bool(predictor.card.training.get("tta", False)), "cases": len(pairs),
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
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
