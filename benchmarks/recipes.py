"""The full-length training runs tried for the shipped checkpoint, side by side.

    python benchmarks/recipes.py runs/lite0_160_s0 runs/lite0_192_d07 runs/mix192 ...

Each argument is a ``training.train`` output folder (its card and ``eval.json``). Prints a
table and writes ``benchmarks/results/recipes.json`` and the ``recipes`` section of
docs/results.md. The chosen run is the one with the best **valid** average of the raw
(uncalibrated) fused head, with the card's TTA, among the runs whose weights file is under
the checkpoint size limit (``--max-mb``, 10 MB) and that did not train on valid (``--refit``):
the calibration is fitted on valid, so its valid accuracy would flatter it. Test is shown, raw
and calibrated, never used to choose.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from report import uncalibrated, write_section
from skinnet.checkpoint import DEFAULT_CHECKPOINT
from skinnet.checkpoint import file_sha256, read_card

ROOT = Path(__file__).resolve().parents[1]


def describe(run: Path, shipped_sha256: str | None) -> dict:
    """One run's recipe and numbers, from its card and eval.json; ``shipped_sha256``: the app's
    default checkpoint file's hash."""
    weights = next(run.glob("*.safetensors"))
    card = read_card(weights)
    scores = json.loads((run / "eval.json").read_text())
    t = card.training
    recipe = [card.model["backbone"].replace("tf_efficientnet_", ""), f"seed {t['seed']}",
              f"{t['image_size']} px", f"{t['epochs']} ep",
              "loss " + "/".join(f"{w:g}" for w in card.loss_weights.values())]
    if t.get("mixup"):
        recipe.append(f"mixup {t['mixup']:g}")
    if card.model.get("backbone_kwargs", {}).get("drop_path_rate"):
        recipe.append(f"drop-path {card.model['backbone_kwargs']['drop_path_rate']:g}")
    refit = card.trained_on_valid
    if refit:
        recipe.append("**refit on train+valid**, last epoch")
    if t.get("swa_start"):
        recipe.append(f"SWA from epoch {t['swa_start']}")
    if t.get("task_weights"):
        recipe.append("tasks " + ",".join(f"{k}x{v:g}" for k, v in t["task_weights"].items()))
    if str(t.get("pretrained", "")).startswith("init:"):
        recipe.append("fine-tuned from " + t["pretrained"][5:])
    if card.weights == "int8":
        recipe.append(f"int8 tensors >= {card.int8_min_elements:,} values")
    test, valid = scores["test"], scores["valid"]
    raw_valid, raw_test = uncalibrated(valid), uncalibrated(test)
    kept = t.get("best_epoch") if "swa_epochs" not in t else "SWA {}-{}".format(*t["swa_epochs"])
    return {"run": run.name, "recipe": ", ".join(recipe), "best_epoch": kept,
            "minutes": t.get("minutes"), "device": t.get("device"), "params": test["params"],
            "megabytes": weights.stat().st_size / 1e6, "valid_avg": raw_valid["avg"], "valid_DIAG": raw_valid["tasks"]["DIAG"],
            "test_raw_avg": raw_test["avg"], "test_raw_DIAG": raw_test["tasks"]["DIAG"],
            "test_avg": test["avg"], "test_DIAG": test["tasks"]["DIAG"],
            "test_dermoscopy_avg": test["heads"]["dermoscopy"]["avg"], "refit": refit,
            "shipped": file_sha256(weights) == shipped_sha256}


def table(rows: list[dict], max_mb: float) -> str:
    candidates = [r for r in rows if r["megabytes"] < max_mb and not r["refit"]]
    best = max(candidates, key=lambda r: r["valid_avg"]) if candidates else None
    lines = ["| run | recipe | params | kept epoch | minutes | valid avg | valid DIAG | test avg raw | "
             "test DIAG raw | **test avg** | **test DIAG** | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = {k: f"{100 * r[k]:.1f}" for k in r if k.startswith(("valid_", "test_"))}
        chosen = "yes" if r is best else (f"no: {r['megabytes']:.1f} MB" if r["megabytes"] >= max_mb else "")
        if r["refit"]:  # trained on valid: its valid numbers are in-sample and choose nothing
            chosen, pct["valid_avg"], pct["valid_DIAG"] = "refit", f"({pct['valid_avg']})", f"({pct['valid_DIAG']})"
        if r["shipped"]:
            chosen += ", **shipped**"
        lines.append(f"| {r['run']} | {r['recipe']} | {r['params'] / 1e6:.2f}M | {r['best_epoch']} | "
                     f"{r['minutes']} | {pct['valid_avg']} | {pct['valid_DIAG']} | {pct['test_raw_avg']} | "
                     f"{pct['test_raw_DIAG']} | {pct['test_avg']} | {pct['test_DIAG']} | "
                     f"{chosen} |")
    devices = sorted({str(r["device"]) for r in rows})
    return "\n".join([
        "Full-length runs of the method (shared encoder + cross-attention after the last two stages, "
        "EMA, flip TTA), fused head, accuracy %. valid: raw logits, the numbers that choose. "
        "test raw: before calibration; **test**: the calibrated prediction the checkpoint ships "
        f"(per-task temperature and class biases fitted on valid). Device: {', '.join(devices)} (2 cores). "
        f"Chosen by the valid average among checkpoints under {max_mb:g} MB; test is never used to choose. "
        "A refit is the final fit of a chosen recipe on train + valid (its valid numbers, in "
        "parentheses, are in-sample; it is not calibrated, so its test and test raw agree); "
        "**shipped**: the same weights file as the app's default checkpoint.",
        "", *lines])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", default=ROOT / "benchmarks" / "results" / "recipes.json", type=Path)
    p.add_argument("--results", default=ROOT / "docs" / "results.md", type=Path)
    p.add_argument("--max-mb", default=10.0, type=float, help="checkpoint size limit (weights file, MB)")
    args = p.parse_args(argv)
    shipped_sha256 = file_sha256(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.is_file() else None
    rows = [describe(run, shipped_sha256) for run in args.runs]
    text = table(rows, args.max_mb)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    write_section(args.results, "recipes", text)
    print(text)


if __name__ == "__main__":
    main()
