"""Parameter counts of every configuration (the single-shared vs two-encoder comparison).

    python benchmarks/params.py [--backbones tf_efficientnet_lite0 tf_efficientnet_lite2]

Prints a Markdown table and writes benchmarks/results/params.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from skinnet.model import count_parameters, create_model

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "two encoders": dict(shared=False, cross_attention_stages=()),
    "two encoders + cross-attention": dict(shared=False),
    "one shared encoder": dict(shared=True, cross_attention_stages=()),
    "shared + cross-attention (the method)": dict(shared=True),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "params.json"))
    args = p.parse_args(argv)
    counts = {b: {name: count_parameters(create_model(backbone=b, **cfg)) for name, cfg in CONFIGS.items()}
              for b in args.backbones}
    print("| configuration | " + " | ".join(args.backbones) + " |")
    print("|---|" + "---|" * len(args.backbones))
    for name in CONFIGS:
        print(f"| {name} | " + " | ".join(f"{counts[b][name] / 1e6:.2f}M" for b in args.backbones) + " |")
    ratio = {b: counts[b]["shared + cross-attention (the method)"] / counts[b]["two encoders"] for b in args.backbones}
    print("| method / two encoders | " + " | ".join(f"{r:.2f}" for r in ratio.values()) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"counts": counts, "ratio_method_to_two_encoders": ratio}, indent=2))
    return counts


if __name__ == "__main__":
    main()
