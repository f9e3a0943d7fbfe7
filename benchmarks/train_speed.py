"""Seconds per epoch of the shipped recipe in float32 against the new default (bf16 autocast +
channels-last), and what each part and torch.compile add, measured in one run.

    python benchmarks/train_speed.py --data-root /path/to/release_v0 [--steps 12] [--compile]

Each configuration trains the shipped recipe's model (Lite2, shared encoder, cross-attention
after the last two stages, 192 px, batch 32, mixup 0.3, the recipe's loss weights) on real
Derm7pt training pairs through ``training.loop.train_one_epoch``: one warm-up step, then
``--steps`` timed steps (median; float32 keeps speeding up over its first ten or so steps, so
a short run overstates the gain: a whole fold run is the final word). An epoch is the fold
run's 15 steps (492 cases) plus the per-epoch prediction of the 124 left-out cases, timed the
same way. Writes
``benchmarks/results/train_speed.json`` and prints a Markdown table. Stop other work first: the
2 cores are shared, only ratios from one run compare.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from skinnet.backbones import normalization
from skinnet.data import Derm7pt
from skinnet.loss import MultiModalLoss
from skinnet.model import create_model
from skinnet.transforms import BatchAugment, ImageCache
from training.distributed import DistInfo
from training.loop import predict_cache, train_one_epoch
from training.precision import cpu_has_bf16, memory_format

ROOT = Path(__file__).resolve().parents[1]

STEPS_PER_EPOCH = 492 // 32  # a fold run of the shipped recipe
VALID_CASES = 124
CONFIGS = {  # name -> (bf16, channels_last, compile)
    "fp32, NCHW (before)": (False, False, False),
    "bf16 autocast": (True, False, False),
    "channels-last": (False, True, False),
    "bf16 + channels-last (the default)": (True, True, False),
}


def build(channels_last: bool):
    model = create_model(pretrained="offline", backbone="tf_efficientnet_lite2", dropout=0.2,
                         backbone_kwargs={"drop_path_rate": 0.1})
    model.to(memory_format=memory_format(channels_last))
    encoder = [p for n, p in model.named_parameters() if n.startswith("encoder")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder")]
    optimizer = torch.optim.AdamW([{"params": encoder, "lr": 3e-4}, {"params": rest, "lr": 1e-3}], weight_decay=1e-4)
    return model, optimizer


def time_config(bf16: bool, channels_last: bool, compile_model: bool, train_cache, valid_cache, augment, steps: int):
    torch.manual_seed(0)
    model, optimizer = build(channels_last)
    trained = torch.compile(model) if compile_model else model
    loss_fn = MultiModalLoss({"clinical": 0.1, "dermoscopy": 0.7, "fused": 0.2}, 0.1)
    stamps = []
    started = time.perf_counter()
    train_one_epoch(trained, train_cache, augment, loss_fn, optimizer, lambda step: None, epoch=0, batch_size=32,
                    seed=0, info=DistInfo(), device="cpu", amp=bf16, channels_last=channels_last, step_offset=0,
                    mixup=0.3, on_step=lambda stats: stamps.append(time.perf_counter()))
    steps_seconds = [b - a for a, b in zip([started, *stamps[:-1]], stamps)]
    step = statistics.median(steps_seconds[1:])
    timings = []
    for _ in range(2):
        t = time.perf_counter()
        predict_cache(model, valid_cache, augment, device="cpu", amp=bf16, channels_last=channels_last)
        timings.append(time.perf_counter() - t)
    predict = min(timings)
    return {"first_step_s": round(steps_seconds[0], 2), "step_s": round(step, 3),
            "steps_s": [round(s, 3) for s in steps_seconds[1:]], "predict_124_s": round(predict, 2),
            "epoch_s": round(STEPS_PER_EPOCH * step + predict, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--steps", type=int, default=12, help="timed steps per configuration (after one warm-up; at most 11: the train split's 413 cases)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (bf16 + channels-last)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Derm7pt(args.data_root)
    train_cases = data.split("train")[:32 * (args.steps + 1)]
    mean, std = normalization("tf_efficientnet_lite2", "offline")
    train_cache = ImageCache(train_cases, round(192 * 8 / 7))
    valid_cache = ImageCache(data.split("valid")[:VALID_CASES], 192)
    augment = BatchAugment(192, mean, std)
    configs = dict(CONFIGS)
    if args.compile:
        configs["bf16 + channels-last + torch.compile"] = (True, True, True)
    results = {}
    for name, (bf16, channels_last, compile_model) in configs.items():
        results[name] = time_config(bf16, channels_last, compile_model, train_cache, valid_cache, augment, args.steps)
        print(f"{name}: {results[name]}", flush=True)
    base = results["fp32, NCHW (before)"]["epoch_s"]
    lines = ["| configuration | s / training step (median) | s / epoch (15 steps + predict 124 cases) | x fp32 |",
             "|---|---|---|---|"]
    for name, r in results.items():
        r["speedup"] = round(base / r["epoch_s"], 2)
        lines.append(f"| {name} | {r['step_s']:.2f} | {r['epoch_s']:.0f} | {r['speedup']:.2f} |")
    table = "\n".join(lines)
    print(table)
    record = {"machine": f"{platform.machine()}, {args.threads} torch threads, bf16 native: {cpu_has_bf16()}",
              "torch": torch.__version__, "recipe": "Lite2 192 px, batch 32, mixup 0.3, cross-attention -2,-1",
              "timed_steps": args.steps, "results": results, "table": table,
              "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
