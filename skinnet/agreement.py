"""How much reviewers agree: with the model, with each other, with Derm7pt's reference labels.

    python -m skinnet.agreement corrections/ [--reference meta/meta.csv] --out DIR

Per task (DIAG and the seven criteria, compared as classes, so "melanoma (in situ)" and
"melanoma" agree): Cohen's kappa and raw agreement of each reviewer with the model's
prediction at the time of the review, of each pair of reviewers, and of each reviewer with
the reference labels; Fleiss' kappa when three or more reviewers labelled the same cases.
Each reviewer's latest labelled review of a case counts (``agree``/``correct``; ``unsure``
and ``skip`` carry no label), and per task only the tasks a reviewer confirmed or changed
(one left at "no change" under ``correct`` was not reviewed). 95% intervals: percentile bootstrap over cases (1000 draws,
fixed seed). Writes ``agreement.json``, ``agreement.md`` and one confusion-matrix PNG per
compared pair.
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corrections import latest_reviews, read_corrections, task_labels
from .labels import TASKS

BOOTSTRAP_DRAWS = 1000
MODEL = "(model)"
REFERENCE = "(reference)"
"""Display names of the two non-human raters (kept apart from reviewers' identities in the code)."""


def cohen_kappa(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa of two raters' class indexes (1.0 when both are constant and equal)."""
    matrix = np.zeros((n_classes, n_classes))
    np.add.at(matrix, (a, b), 1)
    total = matrix.sum()
    observed = np.trace(matrix) / total
    expected = float((matrix.sum(0) * matrix.sum(1)).sum()) / total ** 2
    return 1.0 if expected == 1 else float((observed - expected) / (1 - expected))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of an (items, classes) matrix of how many raters chose each class; every
    item rated by the same number of raters."""
    counts = np.asarray(counts, dtype=np.float64)
    raters = counts.sum(1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("every item needs the same number (>= 2) of ratings")
    n = raters[0]
    p_item = ((counts ** 2).sum(1) - n) / (n * (n - 1))
    p_class = counts.sum(0) / counts.sum()
    expected = float((p_class ** 2).sum())
    return 1.0 if expected == 1 else float((p_item.mean() - expected) / (1 - expected))


def bootstrap_interval(statistic, n_items: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``statistic(indexes)`` over resampled items."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_items, n_items)) for _ in range(BOOTSTRAP_DRAWS)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class Comparison:
    """Two raters on one task over the cases both labelled."""

    task: str
    first: str
    second: str
    n_cases: int
    kappa: float
    kappa_interval: tuple[float, float]
    agreement: float
    agreement_interval: tuple[float, float]
    confusion: list[list[int]]


def compare(task_index: int, first: str, second: str, a: np.ndarray, b: np.ndarray,
            intervals: bool = True) -> Comparison:
    k = TASKS[task_index].num_classes
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (a, b), 1)
    none = (float("nan"), float("nan"))
    return Comparison(
        task=TASKS[task_index].name, first=first, second=second, n_cases=len(a), kappa=cohen_kappa(a, b, k),
        kappa_interval=bootstrap_interval(lambda i: cohen_kappa(a[i], b[i], k), len(a)) if intervals else none,
        agreement=float((a == b).mean()),
        agreement_interval=bootstrap_interval(lambda i: float((a[i] == b[i]).mean()), len(a)) if intervals else none,
        confusion=confusion.tolist())


Rating = tuple  # class index per task in TASKS order; None where the rater did not label the task


def ratings(rows: list[dict[str, str]], reference: dict[str, tuple[int, ...]] | None = None
            ) -> tuple[dict[str, dict[str, Rating]], dict[str, dict[str, Rating]], dict[str, Rating]]:
    """(reviewer -> case -> their labels, reviewer -> case -> the model's prediction they were
    shown, case -> reference labels of the reviewed cases). Each reviewer's latest labelled
    review counts; a task they did not review is None."""
    reviewers: dict[str, dict[str, Rating]] = {}
    shown: dict[str, dict[str, Rating]] = {}
    for row in latest_reviews(rows):
        labels = task_labels(row)
        reviewers.setdefault(row["reviewer"], {})[row["case_id"]] = tuple(
            t.classes.index(labels[t.name]) if t.name in labels else None for t in TASKS)
        shown.setdefault(row["reviewer"], {})[row["case_id"]] = tuple(
            t.classes.index(row[f"model_{t.name}"]) for t in TASKS)
    reviewed = {case for cases in reviewers.values() for case in cases}
    return reviewers, shown, {case: labels for case, labels in (reference or {}).items() if case in reviewed}


def agreement_report(rows: list[dict[str, str]], reference: dict[str, tuple[int, ...]] | None = None,
                     intervals: bool = True) -> dict:
    """Every comparison (see the module docstring) as plain data (``intervals=False``: no
    bootstrap, for a quick view). A reviewer is compared with the prediction the model showed
    *that reviewer*; the model against the reference uses the prediction stored with each
    case's first review. Per task, only cases both raters labelled count."""
    rated, shown, truth = ratings(rows, reference)
    names = sorted(rated)
    first_shown: dict[str, Rating] = {}
    for row in latest_reviews(rows):
        first_shown.setdefault(row["case_id"], shown[row["reviewer"]][row["case_id"]])
    pairs = [(r, MODEL, rated[r], shown[r]) for r in names]
    pairs += [(a, b, rated[a], rated[b]) for a, b in itertools.combinations(names, 2)]
    if truth:
        pairs += [(r, REFERENCE, rated[r], truth) for r in names] + [(MODEL, REFERENCE, first_shown, truth)]
    comparisons = []
    for first, second, left, right in pairs:
        cases = sorted(set(left) & set(right))
        for t in range(len(TASKS)):
            both = [c for c in cases if left[c][t] is not None and right[c][t] is not None]
            if both:
                comparisons.append(compare(t, first, second, np.array([left[c][t] for c in both]),
                                           np.array([right[c][t] for c in both]), intervals))
    fleiss = {}
    if len(names) >= 3:
        for t, task in enumerate(TASKS):
            shared = sorted(set.intersection(*({c for c, v in rated[r].items() if v[t] is not None} for r in names)))
            if shared:
                counts = np.zeros((len(shared), task.num_classes))
                for i, case in enumerate(shared):
                    for r in names:
                        counts[i, rated[r][case][t]] += 1
                fleiss[task.name] = {"n_cases": len(shared), "n_reviewers": len(names),
                                     "kappa": fleiss_kappa(counts),
                                     "kappa_interval": bootstrap_interval(lambda i: fleiss_kappa(counts[i]),
                                                                          len(shared)) if intervals else None}
    return {"reviewers": names, "cases": {r: len(c) for r, c in rated.items()},
            "comparisons": [c.__dict__ for c in comparisons], "fleiss": fleiss}


def markdown(report: dict) -> str:
    lines = ["| task | raters | cases | Cohen's kappa (95% CI) | agreement (95% CI) |", "|---|---|---|---|---|"]
    for c in report["comparisons"]:
        lines.append(f"| {c['task']} | {c['first']} vs {c['second']} | {c['n_cases']} | {c['kappa']:.2f} "
                     f"({c['kappa_interval'][0]:.2f} to {c['kappa_interval'][1]:.2f}) | {100 * c['agreement']:.0f}% "
                     f"({100 * c['agreement_interval'][0]:.0f} to {100 * c['agreement_interval'][1]:.0f}) |")
    if report["fleiss"]:
        lines += ["", "| task | reviewers | cases | Fleiss' kappa (95% CI) |", "|---|---|---|---|"]
        for task, f in report["fleiss"].items():
            lines.append(f"| {task} | {f['n_reviewers']} | {f['n_cases']} | {f['kappa']:.2f} "
                         f"({f['kappa_interval'][0]:.2f} to {f['kappa_interval'][1]:.2f}) |")
    return "\n".join(lines)


def kappa_table(report: dict, only: str | None = None) -> list[dict[str, str]]:
    """One row per compared pair, Cohen's kappa per task (the app's agreement view).

    Args:
        only: keep just this reviewer's agreement with the model and the reference labels.
            Against another reviewer a kappa is an oracle (save a guess, read the kappa, undo)
            for that reviewer's labels, so only admins see the pairs of reviewers.
    """
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for c in report["comparisons"]:
        if only is not None and not ({c["first"], c["second"]} - {MODEL, REFERENCE} == {only}
                                     and {c["first"], c["second"]} & {MODEL, REFERENCE}):
            continue
        row = rows.setdefault((c["first"], c["second"]), {"raters": f"{c['first']} vs {c['second']}",
                                                          "cases": str(c["n_cases"])})
        row[c["task"]] = f"{c['kappa']:.2f}"
        row["cases"] = str(max(int(row["cases"]), c["n_cases"]))  # tasks differ where some were not reviewed
    return list(rows.values())


def plot_confusion(ax, matrix: np.ndarray, classes, rows: str, columns: str, title: str) -> None:
    """One confusion matrix on a matplotlib axis, counts written in the cells."""
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_ylabel(rows)
    ax.set_xlabel(columns)
    ax.set_title(title)


def draw_confusions(report: dict, folder: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for c in report["comparisons"]:
        by_pair.setdefault((c["first"], c["second"]), []).append(c)
    for (first, second), items in by_pair.items():
        fig, axes = plt.subplots(2, 4, figsize=(16, 8))
        for ax, c in zip(axes.flat, items):
            classes = next(t.classes for t in TASKS if t.name == c["task"])
            plot_confusion(ax, np.array(c["confusion"]), classes, first, second,
                           f"{c['task']}: kappa {c['kappa']:.2f}, {c['n_cases']} cases")
        fig.suptitle(f"{first} (rows) vs {second} (columns)")
        fig.tight_layout()
        name = f"{first}_vs_{second}".replace("(", "").replace(")", "")
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        path = folder / f"confusion_{safe}.png"
        fig.savefig(path, dpi=70)
        plt.close(fig)
        paths.append(path)
    return paths


def read_reference(meta_csv: str | Path) -> dict[str, tuple[int, ...]]:
    """Case id (``case_num``) -> labels of a Derm7pt meta.csv (no images needed)."""
    import pandas as pd

    from .data import parse_labels

    table = pd.read_csv(meta_csv, dtype=str, keep_default_na=False)
    return {str(row["case_num"]): parse_labels(row, f"{meta_csv} row {i + 2}") for i, row in table.iterrows()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m skinnet.agreement", description=__doc__.split("\n")[0])
    parser.add_argument("log", help="the corrections log folder (or a file in it)")
    parser.add_argument("--reference", default=None, help="a Derm7pt meta.csv: each reviewer against its labels")
    parser.add_argument("--out", required=True, help="folder for agreement.json, agreement.md and PNGs")
    args = parser.parse_args(argv)
    rows, problems = read_corrections(args.log)
    report = agreement_report(rows, read_reference(args.reference) if args.reference else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report["figures"] = [p.name for p in draw_confusions(report, out)]
    report["problems"] = [str(p) for p in problems]
    (out / "agreement.json").write_text(json.dumps(report, indent=2))
    (out / "agreement.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
