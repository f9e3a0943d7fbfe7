"""The paper's claims at the shipped recipe, out of fold on Derm7pt's 616 train + valid cases,
from the experiment ledger (experiments/a_* ... f_*), with paired tests on the same cases.

    python benchmarks/ablation_oof.py --data-root /path/to/release_v0

Each claim compares two ledger entries on the folds both have finished (the same cases, each
predicted by a model that never saw it): OOF average of the 8 tasks and DIAG accuracy (fused
head; DIAG also balanced: the mean recall of its five classes), the paired difference of the average with a 95% paired-bootstrap interval (cases
resampled, 100,000 draws, seed 0), and an exact McNemar test on DIAG's discordant cases. The
verdict follows the rule written in docs/results.md before the runs: a "replaces" claim holds
when the interval's lower end is above -1.0 point (non-inferior by at most a point), a "helps"
claim when it is above 0; otherwise it does not hold here, and with folds missing it is
"pending". Writes ``benchmarks/results/ablation_oof.json`` (and ``ablation_oof_claims.json`` beside
it) and rewrites the table section of docs/results.md between its ``ablation-oof`` markers; give
``--json`` and ``--results-md`` other paths to look without touching the committed files.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from report import write_section
from skinnet.data import Derm7pt
from skinnet.labels import TASK_NAMES
from skinnet.model import count_parameters, create_model
from training import ledger
from training.metrics import paired_comparison, right_per_task

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {  # ledger entry -> (row label, model options for the parameter count)
    "a_two_encoders": ("a. two encoders, equal loss", dict(shared=False, cross_attention_stages=())),
    "b_shared_encoder": ("b. one shared encoder, equal loss", dict(cross_attention_stages=())),
    "c_individual_attention": ("c. shared + individual cross-attention, equal loss",
                               dict(attention_sharing="individual")),
    "d_shared_attention": ("d. shared + shared cross-attention, equal loss", {}),
    "e_method": ("e. the method: d + loss biased to dermoscopy", {}),
    "f_single_scale": ("f. the method, cross-attention at the last stage only", dict(cross_attention_stages=(-1,))),
}
CLAIMS = [  # (claim, A, B, kind): A against B
    ("one shared encoder replaces two", "b_shared_encoder", "a_two_encoders", "replaces"),
    ("a shared cross-attention module replaces individual ones", "d_shared_attention", "c_individual_attention",
     "replaces"),
    ("cross-attention helps", "d_shared_attention", "b_shared_encoder", "helps"),
    ("the loss biased toward dermoscopy helps", "e_method", "d_shared_attention", "helps"),
    ("multi-scale cross-attention helps (vs the last stage only)", "e_method", "f_single_scale", "helps"),
]
MARGIN = {"replaces": -0.010, "helps": 0.0}


def summarise(entry: ledger.Experiment, data: Derm7pt, folds: list[int], views: str = "") -> dict:
    oof = ledger.read_entry_oof(entry, data, folds=folds, views=views)
    right = right_per_task(oof["logits"]["fused"], oof["labels"])
    per_fold = [right[oof["fold"] == k].float().mean(0) for k in folds]
    spread = {"avg": [float(f.mean()) for f in per_fold], "DIAG": [float(f[0]) for f in per_fold]}
    return {"oof": oof, "right": right, "n_cases": len(oof["case_ids"]), "avg": float(right.float().mean()),
            "DIAG": float(right[:, 0].float().mean()),
            "DIAG_balanced": balanced_accuracy(right[:, 0], oof["labels"][:, 0]),
            "tasks": {t: float(right[:, i].float().mean()) for i, t in enumerate(TASK_NAMES)},
            "fold_sd": {k: (statistics.stdev(v) if len(v) > 1 else None) for k, v in spread.items()}}


def balanced_accuracy(right: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over the classes present of the share of their cases answered right (the rare
    diagnoses count as much as the nevi)."""
    return float(torch.stack([right[labels == c].float().mean() for c in labels.unique()]).mean())


def compare(a: dict, b: dict) -> dict:
    """The paired comparison of two entries on the same cases, and where its difference comes
    from: A - B per task (accuracy, fraction)."""
    if a["oof"]["case_ids"] != b["oof"]["case_ids"]:
        raise SystemExit("the entries cover other cases: compare entries of one folds.json")
    difference = a["right"].float().mean(0) - b["right"].float().mean(0)
    return {**paired_comparison(a["right"], b["right"]),
            "task_difference": {t: float(difference[i]) for i, t in enumerate(TASK_NAMES)}}


def verdict(kind: str, result: dict | None, complete: bool) -> str:
    if result is None:
        return "pending (no fold finished by both)"
    low = result["avg_difference_95ci"][0]
    holds = low > MARGIN[kind]
    word = ("holds" if holds else "does not hold") + ("" if complete else
                                                      f" so far ({result['n_cases']} of 616 cases; pending)")
    return word


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def paired_cells(r: dict) -> str:
    """A paired comparison as table cells: cases | avg A / B | A - B [95% CI] | DIAG A / B | only A / only B, p."""
    low, high = r["avg_difference_95ci"]
    return (f"{r['n_cases']} | {pct(r['avg_a'])} / {pct(r['avg_b'])} | {100 * r['avg_difference']:+.2f} "
            f"[{100 * low:+.2f}, {100 * high:+.2f}] | {pct(r['diag_a'])} / {pct(r['diag_b'])} | "
            f"{r['diag_only_a']} / {r['diag_only_b']}, p = {r['diag_exact_mcnemar_p']:.2f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="Derm7pt release_v0 (labels and case rows; no image is read)")
    p.add_argument("--root", default=str(ledger.LEDGER), help="the ledger folder (default: experiments/)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ablation_oof.json"),
                   help="per-config summary written here; the claims go to ablation_oof_claims.json beside it")
    p.add_argument("--results-md", default=str(ROOT / "docs" / "results.md"),
                   help="the Markdown file whose ablation-oof section is rewritten")
    args = p.parse_args(argv)
    data = Derm7pt(args.data_root)
    entries = {name: ledger.Experiment.load(Path(args.root) / name) for name in CONFIGS}
    # one look at the ledger for everything below (a fold that lands meanwhile waits for the next run)
    done = {name: [k for k in e.planned_folds() if e.done(k)] for name, e in entries.items()}
    complete = {name: done[name] == list(e.planned_folds()) for name, e in entries.items()}
    params = {name: count_parameters(create_model(backbone="tf_efficientnet_lite2", **options))
              for name, (_, options) in CONFIGS.items()}
    rows, summaries = [], {}
    for name, (label, _) in CONFIGS.items():
        s = summarise(entries[name], data, done[name]) if done[name] else None
        summaries[name] = s
        rows.append({"name": label, "entry": name, "params": params[name], "ledger": f"experiments/{name}",
                     "folds_done": done[name], "complete": complete[name],
                     "n_cases": s["n_cases"] if s else 0, "oof_avg": s["avg"] if s else None,
                     "oof_diag": s["DIAG"] if s else None,
                     "oof_diag_balanced": s["DIAG_balanced"] if s else None, "oof_tasks": s["tasks"] if s else None,
                     "fold_sd": s["fold_sd"] if s else None})
    claims = []
    for claim, a, b, kind in CLAIMS:
        common = sorted(set(done[a]) & set(done[b]))
        result = compare(summarise(entries[a], data, common), summarise(entries[b], data, common)) if common else None
        claims.append({"claim": claim, "a": a, "b": b, "kind": kind, "folds": common, "result": result,
                       "verdict": verdict(kind, result, complete[a] and complete[b])})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    Path(args.json).with_name("ablation_oof_claims.json").write_text(json.dumps(claims, indent=1) + "\n")

    lines = ["| config | params | folds done | cases | OOF avg | OOF DIAG | DIAG balanced | fold sd (avg / DIAG) "
             "| ledger |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sd = r["fold_sd"] or {}
        sd_text = " / ".join(pct(sd[k]) if sd.get(k) is not None else "-" for k in ("avg", "DIAG")) if sd else "-"
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {len(r['folds_done'])} of {len(entries[r['entry']].planned_folds())} | {r['n_cases']} | "
                     f"{pct(r['oof_avg']) if r['oof_avg'] is not None else '-'} | "
                     f"{pct(r['oof_diag']) if r['oof_diag'] is not None else '-'} | "
                     f"{pct(r['oof_diag_balanced']) if r['oof_diag_balanced'] is not None else '-'} | {sd_text} | "
                     f"`{r['ledger']}` |")
    lines += ["", "Rows differ in their folds (and so in cases and in fold spread): compare configurations only "
              "in the paired table below, which uses the folds both have finished.",
              "", "| claim | A vs B | cases | avg A / B | avg A - B, 95% CI | DIAG A / B | DIAG only A / only B, "
              "McNemar p | verdict |", "|---|---|---|---|---|---|---|---|"]
    for c in claims:
        r = c["result"]
        if r is None:
            lines.append(f"| {c['claim']} | {c['a'][0]} vs {c['b'][0]} | 0 | | | | | {c['verdict']} |")
            continue
        lines.append(f"| {c['claim']} | {c['a'][0]} vs {c['b'][0]} | {paired_cells(r)} | {c['verdict']} |")
    lines += ["", "Where each difference comes from: A - B per task, accuracy points (the average above is their mean).",
              "", "| A vs B | cases | " + " | ".join(TASK_NAMES) + " |", "|---|---|" + "---|" * len(TASK_NAMES)]
    for c in claims:
        if c["result"] is not None:
            lines.append(f"| {c['a'][0]} vs {c['b'][0]} | {c['result']['n_cases']} | " + " | ".join(
                f"{100 * c['result']['task_difference'][t]:+.1f}" for t in TASK_NAMES) + " |")
    status = "\n".join(ledger.status_lines(Path(args.root)))
    table = "\n".join(lines) + f"\n\nLedger status when this table was made:\n\n```\n{status}\n```"
    print(table)
    write_section(Path(args.results_md), "ablation-oof", table)
    return {"configs": rows, "claims": claims}


if __name__ == "__main__":
    main()
