"""Would averaging the ablation's models beat the best of them? Out of fold, from the ledger.

    python benchmarks/ensemble_oof.py --data-root ../shared/derm7pt

On the folds every listed entry has finished, each entry's fused-head OOF accuracy (avg over the
8 tasks, and DIAG), that of the mean of their per-task softmax probabilities, and how much the
models' DIAG answers overlap: the share of cases all of them get right, none of them, and at
least one (what an ideal combiner of these models could reach), and per diagnosis how often all
of them are wrong and what the mean says instead. Test is not read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from skinnet.data import Derm7pt
from skinnet.labels import TASKS, split_logits
from training import ledger

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = ("a_two_encoders", "b_shared_encoder", "c_individual_attention", "d_shared_attention", "e_method",
           "f_single_scale")


def task_probabilities(oof: dict) -> list[torch.Tensor]:
    return [torch.softmax(logits, -1) for logits in split_logits(oof["logits"]["fused"]).values()]


def accuracy(probabilities: list[torch.Tensor], labels: torch.Tensor) -> dict:
    right = torch.stack([p.argmax(-1) == labels[:, i] for i, p in enumerate(probabilities)], 1).float()
    return {"avg": float(right.mean()), "DIAG": float(right[:, 0].mean())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--entries", default=",".join(ENTRIES))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ensemble_oof.json"))
    args = p.parse_args(argv)
    data = Derm7pt(args.data_root)
    found = {e.name: e for e in ledger.experiments()}
    entries = [found[name] for name in args.entries.split(",") if name in found]
    unfinished = [e.name for e in entries if not any(e.done(k) for k in e.planned_folds())]
    if unfinished:
        print(f"left out (no fold finished yet): {', '.join(unfinished)}")
    entries = [e for e in entries if e.name not in unfinished]
    folds = [k for k in range(max((e.folds for e in entries), default=0))
             if all(k in e.planned_folds() and e.done(k) for e in entries)]
    if len(entries) < 2 or not folds:
        raise SystemExit("need two or more entries with a finished fold in common")
    oofs = {e.name: ledger.read_entry_oof(e, data, folds=folds) for e in entries}
    first = next(iter(oofs.values()))
    if any(o["case_ids"] != first["case_ids"] for o in oofs.values()):
        raise SystemExit("the entries' out-of-fold cases differ")
    labels = first["labels"]
    probabilities = {name: task_probabilities(o) for name, o in oofs.items()}
    record = {"folds": folds, "n_cases": len(first["case_ids"]),
              "entries": {name: accuracy(ps, labels) for name, ps in probabilities.items()}}
    mean = [torch.stack([ps[i] for ps in probabilities.values()]).mean(0) for i in range(len(TASKS))]
    record["ensemble"] = {"members": list(probabilities), **accuracy(mean, labels)}
    best = max(record["entries"], key=lambda name: record["entries"][name]["avg"])
    record["ensemble_minus_best_by_avg"] = {"best": best, **{k: record["ensemble"][k] - record["entries"][best][k]
                                                             for k in ("avg", "DIAG")}}
    diag_right = torch.stack([ps[0].argmax(-1) == labels[:, 0] for ps in probabilities.values()])  # (models, N)
    record["diag_overlap"] = {"all_right": float(diag_right.all(0).float().mean()),
                              "none_right": float((~diag_right).all(0).float().mean()),
                              "any_right": float(diag_right.any(0).float().mean())}
    none_right = (~diag_right).all(0)
    called = mean[0].argmax(-1)
    record["diag_none_right_by_class"] = {
        cls: {"cases": int((labels[:, 0] == c).sum()),
              "none_right": float(none_right[labels[:, 0] == c].float().mean()) if (labels[:, 0] == c).any() else None,
              "ensemble_says": {TASKS[0].classes[o]: int(((called == o) & none_right & (labels[:, 0] == c)).sum())
                                for o in range(TASKS[0].num_classes) if o != c}}
        for c, cls in enumerate(TASKS[0].classes)}
    print(f"{'fused head, out of fold':<36}{'avg':>7}{'DIAG':>7}   ({record['n_cases']} cases, folds {folds})")
    for name, r in record["entries"].items():
        print(f"{name:<36}{100 * r['avg']:7.1f}{100 * r['DIAG']:7.1f}")
    print(f"{'mean of the ' + str(len(probabilities)) + ' (probabilities)':<36}"
          f"{100 * record['ensemble']['avg']:7.1f}{100 * record['ensemble']['DIAG']:7.1f}")
    o = record["diag_overlap"]
    print(f"DIAG: all right on {100 * o['all_right']:.1f}% of cases, none on {100 * o['none_right']:.1f}%, "
          f"at least one on {100 * o['any_right']:.1f}%")
    for cls, r in record["diag_none_right_by_class"].items():
        if r["cases"]:
            says = ", ".join(f"{k} {v}" for k, v in r["ensemble_says"].items() if v)
            print(f"  {cls:5s} {r['cases']:4d} cases, all models wrong on {100 * r['none_right']:5.1f}%"
                  f"{' (the mean calls them ' + says + ')' if says else ''}")
    Path(args.json).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
