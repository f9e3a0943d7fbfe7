"""The search for the next model, out of fold: each candidate ledger entry against the shipped
recipe's own cross-fit (``e_method``), paired on the same cases, with the verdict of the rule
written in docs/results.md before their runs ("The next model: candidates out of fold").

    python benchmarks/candidates_oof.py --data-root /path/to/release_v0

A "helps" candidate passes when the 95% paired-bootstrap interval of the 8-task average's
difference has its low end above 0 and its DIAG is not below the reference's; the distilled
student's older rule asks for an average at least 1.0 point above and DIAG not below. Only a
verdict on all 616 train + valid cases counts ("so far" otherwise). Once every candidate has its
verdict, the passing one (at most 6M parameters) with the highest OOF average is the next model,
to be refit, calibrated from its own OOF predictions and scored on test once. No test case is
read here.

Writes ``benchmarks/results/candidates_oof.json`` and rewrites the section of docs/results.md
between its ``candidates-oof`` markers; ``--json`` and ``--results-md`` point elsewhere.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ablation_oof import compare, paired_cells, summarise
from report import write_section
from skinnet.data import Derm7pt
from skinnet.labels import TASK_NAMES
from skinnet.model import count_parameters, create_model
from training import ledger
from training.folds import pool_cases

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "e_method"
MAX_PARAMS = 6_000_000
CANDIDATES = {  # ledger entry -> (row label, rule, backbone)
    "g_lite1": ("EfficientNet-Lite1 backbone", "helps", "tf_efficientnet_lite1"),
    "i_epochs40": ("40 epochs instead of 28", "helps", "tf_efficientnet_lite2"),
    "h_distilled": ("distilled from leak-free teachers (0.5, T 2)", "one point", "tf_efficientnet_lite2"),
}
RULES = {"helps": "avg interval's low end > 0 and DIAG not below",
         "one point": "avg at least +1.0 point and DIAG not below"}


def passes(rule: str, result: dict) -> bool:
    diag_not_below = result["diag_a"] >= result["diag_b"]
    if rule == "helps":
        return result["avg_difference_95ci"][0] > 0 and diag_not_below
    if rule == "one point":
        return result["avg_difference"] >= 0.010 and diag_not_below
    raise ValueError(rule)


def verdict(rule: str, result: dict | None, complete: bool) -> str:
    if result is None:
        return "pending (no fold finished)"
    word = "passes" if passes(rule, result) else "does not pass"
    return word if complete else f"{word} so far ({result['n_cases']} cases; pending)"


def decide(rows: list[dict]) -> str:
    """The rule's choice: only when every candidate has its final verdict (a pending one could still
    pass with a higher average), the passing one with the highest OOF average and at most 6M
    parameters; test is scored once, for that one only."""
    passing = [r for r in rows if r["verdict"] == "passes"]
    too_big = [r["entry"] for r in passing if r["params"] > MAX_PARAMS]
    winners = [r for r in passing if r["params"] <= MAX_PARAMS]
    pending = [r["entry"] for r in rows if not r["complete"]]
    note = f"; {', '.join(too_big)} passes but has more than {MAX_PARAMS / 1e6:.0f}M parameters" if too_big else ""
    if pending:
        so_far = f"{', '.join(r['entry'] for r in winners)} passes" if winners else "none passes so far"
        return f"no choice yet: {so_far}; waiting for {', '.join(pending)}{note}"
    if not winners:
        return f"no candidate: the shipped card stays{note}"
    best = max(winners, key=lambda r: r["result"]["avg_a"])
    return f"next model: {best['entry']} (refit, calibrate from its own OOF, score test once){note}"


def one_view_comparison(entry: ledger.Experiment, reference: ledger.Experiment, data: Derm7pt,
                        folds: list[int]) -> dict | None:
    """The same comparison as the app predicts (one view: ``oof_tta_off.csv``), reported beside the
    rule's numbers and never deciding; None where either entry kept no one-view predictions."""
    if not folds:
        return None
    try:
        return compare(summarise(entry, data, folds, "tta_off"), summarise(reference, data, folds, "tta_off"))
    except ValueError:
        return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="Derm7pt release_v0 (labels and case rows; no image is read)")
    p.add_argument("--root", default=str(ledger.LEDGER), help="the ledger folder (default: experiments/)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "candidates_oof.json"))
    p.add_argument("--results-md", default=str(ROOT / "docs" / "results.md"),
                   help="the Markdown file whose candidates-oof section is rewritten")
    args = p.parse_args(argv)
    data = Derm7pt(args.data_root)
    names = [REFERENCE, *CANDIDATES]
    entries = {name: ledger.Experiment.load(Path(args.root) / name) for name in names}
    # one look at the ledger for everything below (a fold that lands meanwhile waits for the next run)
    done = {name: [k for k in e.planned_folds() if e.done(k)] for name, e in entries.items()}
    if not done[REFERENCE]:
        raise SystemExit(f"{REFERENCE} has no finished fold: nothing to compare the candidates with")
    reference_cases = len(ledger.read_entry_oof(entries[REFERENCE], data, folds=done[REFERENCE])["case_ids"])
    pool = len(pool_cases(data))  # every train + valid case: only a verdict on all of them counts

    rows = []
    for name, (label, rule, backbone) in CANDIDATES.items():
        common = sorted(set(done[name]) & set(done[REFERENCE]))
        result = (compare(summarise(entries[name], data, common), summarise(entries[REFERENCE], data, common))
                  if common else None)
        one_view = one_view_comparison(entries[name], entries[REFERENCE], data, common)
        params = count_parameters(create_model(backbone=backbone))
        complete = result is not None and result["n_cases"] == pool
        rows.append({"entry": name, "label": label, "rule": rule, "rule_text": RULES[rule], "params": params,
                     "ledger": f"experiments/{name}", "folds_done": done[name], "folds": common,
                     "complete": complete, "result": result, "one_view": one_view,
                     "verdict": verdict(rule, result, complete)})
    output = {"reference": REFERENCE, "reference_cases": reference_cases, "pool_cases": pool, "candidates": rows,
              "decision": decide(rows)}
    decision = output["decision"]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(output, indent=1) + "\n")

    lines = [f"Each against `{REFERENCE}` on the folds both have finished ({reference_cases} cases in all); "
             "DIAG \"only A / only B\": the cases right under one and wrong under the other.", "",
             "| candidate | params | folds | cases | avg A / ref | avg A - ref, 95% CI | DIAG A / ref | "
             "DIAG only A / only ref, McNemar p | rule | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        head = f"| `{r['entry']}`: {r['label']} | {r['params'] / 1e6:.2f}M | {len(r['folds_done'])} of {len(entries[r['entry']].planned_folds())} |"
        if res is None:
            lines.append(f"{head} 0 | | | | | {r['rule_text']} | {r['verdict']} |")
            continue
        lines.append(f"{head} {paired_cells(res)} | {r['rule_text']} | {r['verdict']} |")
    decided = [r for r in rows if r["result"] is not None]
    if decided:
        lines += ["", "Per task, candidate - reference (accuracy points):", "",
                  "| candidate | cases | " + " | ".join(TASK_NAMES) + " |", "|---|---|" + "---|" * len(TASK_NAMES)]
        lines += [f"| `{r['entry']}` | {r['result']['n_cases']} | " + " | ".join(
            f"{100 * r['result']['task_difference'][t]:+.1f}" for t in TASK_NAMES) + " |" for r in decided]
    one_view = [r for r in decided if r["one_view"] is not None]
    if one_view:
        lines += ["", "As the app predicts, one view (each entry's `oof_tta_off.csv`; reported, not deciding: the rules "
                  "read the four-flip predictions above):", "",
                  "| candidate | cases | avg A / ref | avg A - ref, 95% CI | DIAG A / ref | DIAG only A / only ref, McNemar p |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| `{r['entry']}` | {paired_cells(r['one_view'])} |" for r in one_view]
    lines += ["", f"**Decision: {decision}.**"]
    table = "\n".join(lines)
    print(table)
    write_section(Path(args.results_md), "candidates-oof", table)
    return output


if __name__ == "__main__":
    main()
