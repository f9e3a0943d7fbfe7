"""What the log's reviews say per case: current labels by rule, the meta.csv export, and
training cases from reviewed uploads; the ``python -m skinnet.corrections`` command line."""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..labels import LABEL_COLUMNS, TASK_NAMES, TASKS
from .schema import LABELLED_VERDICTS, CorrectionsError, neutralise, task_labels
from .storage import read_corrections


def latest_reviews(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each reviewer's latest review of each case when it carries labels, in log order (a later
    'unsure' or 'skip' withdraws that reviewer's earlier labels). ``rows``: in log order, as
    :func:`~skinnet.corrections.storage.read_corrections` gives them."""
    latest: dict[tuple[str, str], tuple[int, dict]] = {}
    for position, row in enumerate(rows):
        latest[(row["case_id"], row["reviewer"])] = position, row
    return [row for _, row in sorted(latest.values(), key=lambda kept: kept[0])
            if row["verdict"] in LABELLED_VERDICTS]


@dataclass
class CaseLabels:
    """What the reviewers' latest reviews of one case say, task by task.

    Attributes:
        labels: task -> class, only for tasks someone labelled and the rule could decide.
        fine: task -> a fine Derm7pt value a reviewer gave for that class ('' if none).
        disagreement: tasks the reviewers labelled differently.
        ties: tasks the ``majority`` rule could not decide (left unlabelled, not guessed).
        latest: the latest of the reviews (source, images, verdict, line).
    """

    case_id: str
    labels: dict[str, str]
    fine: dict[str, str]
    reviewers: list[str]
    disagreement: list[str]
    ties: list[str]
    latest: dict[str, str]


def current_labels(rows: list[dict[str, str]], rule: str = "latest") -> dict[str, CaseLabels]:
    """Per case, per task: the class of the latest review that labelled the task (``latest``),
    or the most common class over the reviewers who labelled it (``majority``; a tie is flagged
    and the task left unlabelled). Tasks nobody labelled stay out (training keeps the
    reference label there)."""
    if rule not in ("latest", "majority"):
        raise ValueError(f"rule must be 'latest' or 'majority', got {rule!r}")
    by_case: dict[str, list[dict]] = {}
    for row in latest_reviews(rows):
        by_case.setdefault(row["case_id"], []).append(row)
    result = {}
    for case_id, reviews in by_case.items():
        labels, fine, disagreement, ties = {}, {}, [], []
        said = [(r, task_labels(r)) for r in reviews]
        for task in TASKS:
            votes = [(r, labelled[task.name]) for r, labelled in said if task.name in labelled]
            if not votes:
                continue
            counts = Counter(cls for _, cls in votes)
            if len(counts) > 1:
                disagreement.append(task.name)
            if rule == "latest":
                chosen = votes[-1][1]
            else:
                best = max(counts.values())
                winners = [cls for cls, n in counts.items() if n == best]
                if len(winners) > 1:
                    ties.append(task.name)
                    continue
                chosen = winners[0]
            labels[task.name] = chosen
            fine[task.name] = next((r[task.column] for r, cls in reversed(votes) if cls == chosen and r[task.column]), "")
        result[case_id] = CaseLabels(case_id, labels, fine, sorted({r["reviewer"] for r in reviews}),
                                     disagreement, ties, reviews[-1])
    return result


EXPORT_COLUMNS = ("case_num", "source", "clinic", "derm", *TASK_NAMES, *LABEL_COLUMNS, "verdict", "n_reviewers",
                  "reviewers", "disagreement", "ties")


def export_meta_csv(rows: list[dict[str, str]], target: str | Path, rule: str = "latest") -> Path:
    """The current labels, one row per case: the class of every task someone labelled (blank
    where nobody did, or a tie), meta.csv's raw columns only where a reviewer gave a fine value,
    the latest verdict, how many reviewers, and which tasks they disagree on or tie."""
    target = Path(target)
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_COLUMNS)
        for case_id, entry in current_labels(rows, rule).items():
            row = entry.latest
            writer.writerow([neutralise(v) for v in
                             [case_id, row["source"], row["clinic"], row["derm"],
                              *(entry.labels.get(t, "") for t in TASK_NAMES),
                              *(entry.fine.get(t.name, "") for t in TASKS), row["verdict"], len(entry.reviewers),
                              ";".join(entry.reviewers), ";".join(entry.disagreement), ";".join(entry.ties)]])
    return target


def main(argv: list[str] | None = None) -> None:
    """``python -m skinnet.corrections export LOG OUT.csv [--rule majority]``; ``check LOG`` (LOG: the
    log folder, or any CSV file in it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m skinnet.corrections", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="current labels, one row per case (see export_meta_csv)")
    export.add_argument("log", help="the log folder (or a file in it)")
    export.add_argument("out")
    export.add_argument("--rule", default="latest", choices=["latest", "majority"])
    check = sub.add_parser("check", help="report bad rows with their line numbers")
    check.add_argument("log", help="the log folder (or a file in it)")
    args = parser.parse_args(argv)
    try:
        rows, problems = read_corrections(args.log)
    except CorrectionsError as err:
        raise SystemExit(str(err)) from None
    for problem in problems:
        print(f"{args.log}: {problem}")
    if args.command == "export":
        export_meta_csv(rows, args.out, args.rule)
        print(f"{len(current_labels(rows, args.rule))} cases written to {args.out}")
    else:
        print(f"{len(rows)} good rows, {len(problems)} bad")
        raise SystemExit(1 if problems else 0)

