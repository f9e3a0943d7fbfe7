"""The prediction pass on the CPU: float32 NCHW against channels-last, bfloat16 autocast,
torch.compile and (when installed) ONNX Runtime, with what each does to the predictions.

    python benchmarks/inference_speed.py --data-root /path/to/release_v0 [--cases 395] [--timed 30]

Each variant predicts every test pair of the shipped card (one view, as the card says) and is
compared with float32 NCHW, the reference: the top DIAG class and the top class of every task
on each pair, the largest difference of any calibrated probability, and the confidence level
the page shows (uncertain / low confidence / confident, from the guards' margins). Then the median time of a single pair's forward pass over
``--timed`` pairs, in one run. A variant may ship only if its predictions stay the same (top
classes identical on all pairs, probabilities within 0.01, levels identical). ONNX Runtime is
measured when ``onnxruntime`` and ``onnx`` are installed (``pip install onnxruntime onnx``: a
benchmark-only extra, not needed by the app or training). Writes ``benchmarks/results/inference_speed.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from skinnet.calibration import calibrate
from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet.data import Derm7pt
from skinnet.imaging import load_rgb
from skinnet.labels import TASKS, split_logits
from skinnet.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


def probabilities(predictor: Predictor, logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, NUM_OUTPUTS) calibrated per-task probabilities of the fused head."""
    flat = calibrate(logits["fused"], predictor.card.calibration.get("fused"))
    return torch.cat([torch.softmax(t, -1) for t in split_logits(flat).values()], -1)


def tops(probs: torch.Tensor) -> torch.Tensor:
    return torch.stack([t.argmax(-1) for t in torch.split(probs, [t.num_classes for t in TASKS], -1)], -1)


def torch_variant(predictor: Predictor, channels_last: bool, bf16: bool, compiled: bool):
    """A function (B, 3, S, S) x 2 -> fused-head logits, the model prepared as the variant says."""
    model = copy.deepcopy(predictor.model).to(memory_format=torch.channels_last if channels_last
                                               else torch.contiguous_format)
    run = torch.compile(model) if compiled else model
    layout = torch.channels_last if channels_last else torch.contiguous_format

    @torch.inference_mode()
    def forward(c, d):
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            out = run(c.contiguous(memory_format=layout), d.contiguous(memory_format=layout))
        return {h: v.float() for h, v in out.items()}
    return forward


def onnx_variant(predictor: Predictor, folder: Path):
    """ONNX Runtime on the exported pair forward, or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    model = copy.deepcopy(predictor.model).to(memory_format=torch.contiguous_format).eval()
    size = predictor.card.image_size
    path = folder / "skinnet.onnx"
    example = (torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size))
    torch.onnx.export(model, example, str(path), input_names=["clinical", "dermoscopy"],
                      output_names=["clinical_logits", "dermoscopy_logits", "fused_logits"],
                      dynamic_axes={"clinical": {0: "b"}, "dermoscopy": {0: "b"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(c, d):
        out = session.run(None, {"clinical": c.numpy(), "dermoscopy": d.numpy()})
        return {"clinical": torch.from_numpy(out[0]), "dermoscopy": torch.from_numpy(out[1]),
                "fused": torch.from_numpy(out[2])}
    return forward


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--cases", type=int, default=395)
    p.add_argument("--timed", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling on 2 cores)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "inference_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    cases = Derm7pt(args.data_root).split("test")[:args.cases]
    tensors = [(predictor.to_tensor(load_rgb(c.clinical_path)), predictor.to_tensor(load_rgb(c.dermoscopy_path)))
               for c in cases]
    variants = {"float32 NCHW (reference)": torch_variant(predictor, False, False, False),
                "float32 channels-last": torch_variant(predictor, True, False, False),
                "bfloat16 + channels-last": torch_variant(predictor, True, True, False)}
    if args.compile:
        variants["float32 channels-last + torch.compile"] = torch_variant(predictor, True, False, True)
    onnx = onnx_variant(predictor, Path(args.json).parent)
    if onnx is not None:
        variants["ONNX Runtime (float32)"] = onnx
    guards = predictor.guards
    results, reference = {}, None
    for name, forward in variants.items():
        probs, decisions = [], []
        for c, d in tensors:
            out = forward(c, d)
            prob = probabilities(predictor, out)
            probs.append(prob)
            if guards is not None:  # the confidence level the page shows (uncertain / low / confident)
                diag = sorted(prob[0, :TASKS[0].num_classes].tolist())
                margin = diag[-1] - diag[-2]
                decisions.append(0 if margin < guards.uncertain_margin.get("fused", 0.0)
                                 else 1 if margin < guards.low_confidence_margin.get("fused", 0.0) else 2)
        probs = torch.cat(probs)
        times = []
        for c, d in tensors[:args.timed]:
            start = time.perf_counter()
            forward(c, d)
            times.append(time.perf_counter() - start)
        result = {"median_ms": 1000 * statistics.median(times)}
        if reference is None:
            reference = (probs, decisions)
        else:
            result.update(top_diag_same=int((tops(probs)[:, 0] == tops(reference[0])[:, 0]).sum()),
                          all_tops_same=int((tops(probs) == tops(reference[0])).all(1).sum()),
                          max_probability_difference=float((probs - reference[0]).abs().max()),
                          levels_same=sum(a == b for a, b in zip(decisions, reference[1])))
        results[name] = result
        print(name, result, flush=True)
    base = results["float32 NCHW (reference)"]["median_ms"]
    n = len(tensors)
    lines = ["| prediction pass | ms per pair (median) | x reference | top DIAG same | all 8 tops same | "
             "max prob. difference | confidence level same |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        same = (f"{r['top_diag_same']}/{n} | {r['all_tops_same']}/{n} | {r['max_probability_difference']:.4f} | "
                f"{r['levels_same']}/{n}") if "top_diag_same" in r else "reference | | | "
        lines.append(f"| {name} | {r['median_ms']:.0f} | {base / r['median_ms']:.2f} | {same} |")
    table = "\n".join(lines)
    print(table)
    Path(args.json).write_text(json.dumps({"cases": n, "timed": args.timed, "threads": args.threads,
                                           "results": results, "table": table}, indent=2) + "\n")
    (Path(args.json).parent / "skinnet.onnx").unlink(missing_ok=True)
    return results


if __name__ == "__main__":
    main()
