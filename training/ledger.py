"""The experiment ledger: cross-fitted experiments whose small outputs live in the repository.

A run's weights stay in ``runs/`` and are lost with the machine; what a comparison needs is
committed under ``experiments/<name>/`` as each fold finishes, so an experiment longer than a
machine's life accumulates run by run, on the CPU or on a lent accelerator::

    experiments/<name>/
        experiment.json      what it tests, the training flags, folds, and the command
        folds.json           the fold of every train + valid case (the same for every experiment)
        fold<k>/
            oof.csv          the fused head's out-of-fold probabilities, one row per case
            oof_clinical.csv, oof_dermoscopy.csv      the same for the other two heads
            oof_tta_off*.csv one view only (written when the fold model predicts with flips)
            eval.json        the fold model's evaluation on its fold
            metrics.csv      per-epoch training log
            run.json         the fold model's training record: commit, precision, machine, minutes
        oof.csv, crossval.json    all folds joined, once every fold is in

``oof.csv`` columns: ``case`` (the row index in Derm7pt's meta.csv), ``fold``, and every class
probability of every task as ``<TASK>_<CLASS>`` (``DIAG_MEL``, ``PN_TYP``, ...). The log of
those probabilities are the logits up to a constant per task, which is all calibration and
argmax need, so calibration, the uncertain margin and distillation read the ledger directly.

    python -m training.ledger status                          # done and pending, CPU hours left
    python -m training.ledger run --data-root DIR [--commit]  # train the pending folds
    python -m training.ledger run --data-root DIR --only e_method --folds 0,1
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch

from skinnet.data import Derm7pt
from skinnet.labels import TASKS, split_logits

log = logging.getLogger("skinnet.ledger")
ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "experiments"
EXPERIMENT_FILE = "experiment.json"
HEADS = ("fused", "clinical", "dermoscopy")
PROBABILITY_COLUMNS = [f"{task.name}_{cls}" for task in TASKS for cls in task.classes]
FOLD_FILES = ("eval.json", "metrics.csv")


def oof_file_name(head: str, views: str = "") -> str:
    """``oof.csv`` for the fused head, ``oof_<head>.csv`` for the others; ``views`` = ``tta_off``
    for the one-view predictions of a model whose card predicts with flips."""
    parts = ["oof", *([views] if views else []), *([head] if head != "fused" else [])]
    return "_".join(parts) + ".csv"


@lru_cache(maxsize=None)
def git_commit() -> str:
    """The checkout's commit when this process first asked, with ``+dirty`` when tracked files
    differed from it (a long runner records the code it started with, not later edits)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- the probability files -------------------------------------------------------------------
def probabilities_frame(logits: torch.Tensor, rows: list[int], folds: list[int]) -> pd.DataFrame:
    """One row per case: ``case``, ``fold``, then every task's softmax probabilities."""
    probs = torch.cat([torch.softmax(t.double(), -1) for t in split_logits(logits.double()).values()], 1)
    frame = pd.DataFrame(probs.numpy(), columns=PROBABILITY_COLUMNS)
    frame.insert(0, "fold", folds)
    frame.insert(0, "case", rows)
    return frame


def write_probabilities(path: Path, frame: pd.DataFrame) -> None:
    """Seven significant digits: relative precision is kept for tiny probabilities too, so their
    logs (the logits up to a constant) are accurate to about 1e-6."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # folds finishing at once each write their own
    frame.to_csv(tmp, index=False, float_format="%.7g")
    tmp.replace(path)


def read_probabilities(path: Path) -> pd.DataFrame:
    """An ``oof*.csv``, checked: its columns, one row per case, each task's probabilities sum to 1.

    Raises:
        ValueError: not a ledger probability file.
    """
    frame = pd.read_csv(path)
    expected = ["case", "fold", *PROBABILITY_COLUMNS]
    if list(frame.columns) != expected:
        raise ValueError(f"{path}: columns {list(frame.columns)[:4]}... are not the ledger's {expected[:4]}...")
    if frame["case"].duplicated().any():
        raise ValueError(f"{path}: a case appears twice")
    start = 2
    for task in TASKS:
        sums = frame.iloc[:, start:start + task.num_classes].sum(axis=1)
        if ((sums - 1).abs() > 1e-4).any():
            raise ValueError(f"{path}: {task.name} probabilities do not sum to 1")
        start += task.num_classes
    return frame


def frame_logits(frame: pd.DataFrame) -> torch.Tensor:
    """(N, NUM_OUTPUTS) log-probabilities: logits up to a constant per task."""
    probs = torch.tensor(frame[PROBABILITY_COLUMNS].to_numpy(), dtype=torch.float64)
    return probs.clamp_min(1e-12).log().float()


# -- experiments -----------------------------------------------------------------------------
@dataclass
class Experiment:
    """One ledger entry: a recipe cross-fitted over the shared folds (``experiment.json``).

    Attributes:
        name: the folder's name.
        description: what it is, in words.
        train_flags: ``python -m training.train`` flags of every fold (no data, output or fold flags).
        folds: number of folds; ``fold_seed`` their assignment's seed.
        run_folds: the folds this experiment trains (all unless it is a one-fold check).
        hold_out: the fold every model leaves out (the teachers of a leak-free check), or None.
        priority: lower runs first. Entries in the same hundred (0-99: the paper's ablation;
            100-199: the search for a better model) run fold by fold among themselves; a higher
            hundred's folds wait until the lower hundreds are complete.
        cost: CPU cost of a fold relative to the shipped recipe's.
    """

    name: str
    description: str
    train_flags: list[str]
    folds: int = 5
    fold_seed: int = 0
    run_folds: list[int] = field(default_factory=list)
    hold_out: int | None = None
    priority: int = 50
    cost: float = 1.0
    path: Path = field(default=Path("."), repr=False)

    @classmethod
    def load(cls, path: Path) -> "Experiment":
        record = json.loads((path / EXPERIMENT_FILE).read_text())
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__ and k != "path"}
        experiment = cls(**known, path=path)
        if experiment.name != path.name:
            raise ValueError(f"{path / EXPERIMENT_FILE} names {experiment.name!r}, not its folder {path.name!r}")
        return experiment

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        record = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "path"}
        record["command"] = " ".join(self.command(fold=None))
        (self.path / EXPERIMENT_FILE).write_text(json.dumps(record, indent=1) + "\n")

    def planned_folds(self) -> list[int]:
        folds = self.run_folds or list(range(self.folds))
        return [k for k in folds if k != self.hold_out]

    def fold_path(self, fold: int) -> Path:
        return self.path / f"fold{fold}"

    def done(self, fold: int) -> bool:
        return (self.fold_path(fold) / oof_file_name("fused")).is_file()

    def pending(self) -> list[int]:
        return [k for k in self.planned_folds() if not self.done(k)]

    def complete(self) -> bool:
        return not self.pending() and not self.run_folds

    def command(self, fold: int | None, data_root: str = "DATA", out: str | None = None,
                ledger: str | None = None) -> list[str]:
        """The ``training.crossval`` command that trains one fold (or all, ``fold=None``) into this
        entry (``ledger``: its folder as the command names it; by default relative to the repo)."""
        out = out or f"runs/{self.name}"
        ledger = ledger or f"experiments/{self.name}"
        return ["python", "-m", "training.crossval", "--data-root", data_root, "--out", out,
                "--folds", str(self.folds), "--fold-seed", str(self.fold_seed), "--ledger", ledger,
                *(["--hold-out", str(self.hold_out)] if self.hold_out is not None else []),
                *(["--only", str(fold)] if fold is not None else []), "--", *self.train_flags]


def experiments(root: Path = LEDGER) -> list[Experiment]:
    """Every entry of the ledger, by priority then name."""
    found = [Experiment.load(p.parent) for p in sorted(root.glob(f"*/{EXPERIMENT_FILE}"))]
    return sorted(found, key=lambda e: (e.priority, e.name))


def open_entry(path: Path, train_flags: list[str], folds: int, fold_seed: int, hold_out: int | None) -> Experiment:
    """The ledger entry at ``path``, created on first use; refused when its recipe differs.

    Raises:
        SystemExit: the entry exists with other training flags, folds or hold-out.
    """
    if (path / EXPERIMENT_FILE).is_file():
        entry = Experiment.load(path)
        mine = (train_flags, folds, fold_seed, hold_out)
        theirs = (entry.train_flags, entry.folds, entry.fold_seed, entry.hold_out)
        if mine != theirs:
            raise SystemExit(f"{path} records flags {entry.train_flags}, {entry.folds} folds (seed "
                             f"{entry.fold_seed}), hold-out {entry.hold_out}; this run has {train_flags}, "
                             f"{folds} folds (seed {fold_seed}), hold-out {hold_out}: use another --ledger")
        return entry
    entry = Experiment(name=path.name, description="", train_flags=list(train_flags), folds=folds,
                       fold_seed=fold_seed, hold_out=hold_out, path=path)
    entry.save()
    return entry


def case_rows(data: Derm7pt) -> dict[str, int]:
    """case id -> row index in the full release's meta.csv (a packed release for an accelerator,
    ``training.pack``, keeps those rows in its ``release_row`` column)."""
    rows = data.meta["release_row"].astype(int).tolist() if "release_row" in data.meta else range(len(data.cases()))
    return {case.case_id: row for case, row in zip(data.cases(), rows)}


def record_fold(entry: Experiment, fold: int, run: Path, data: Derm7pt) -> Path:
    """Copy one finished fold run's small outputs into the ledger (probabilities as CSV, no weights).

    The probability files are written last, so a fold counts as done only when all is there.
    """
    target = entry.fold_path(fold)
    target.mkdir(parents=True, exist_ok=True)
    rows = case_rows(data)
    for name in FOLD_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, target / name)
    card = _fold_card(run)
    card.pop("labels", None)  # the schema, the same for every entry (checked when read back)
    (target / "run.json").write_text(json.dumps({
        "commit": git_commit(), "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"{platform.processor() or platform.platform()}", "card": card}, indent=1) + "\n")
    views = [("", run / "oof.pt")] + ([("tta_off", run / "oof_tta_off.pt")] if (run / "oof_tta_off.pt").is_file() else [])
    for suffix, source in reversed(views):  # the plain oof.csv last: it marks the fold done
        part = torch.load(source, weights_only=True)
        if part["fold"] != fold:
            raise ValueError(f"{source} holds fold {part['fold']}'s predictions, not fold {fold}'s")
        case_numbers = [rows[c] for c in part["case_ids"]]
        for head in reversed(HEADS):
            if head in part["logits"]:
                frame = probabilities_frame(part["logits"][head], case_numbers, [fold] * len(case_numbers))
                write_probabilities(target / oof_file_name(head, suffix), frame)
    return target


def _fold_card(run: Path) -> dict:
    cards = [p for p in run.glob("*.json") if p.name not in ("eval.json", "crossval.json")
             and p.with_suffix(".safetensors").is_file()]
    return json.loads(cards[0].read_text()) if cards else {}


def read_entry_oof(entry: Experiment, data: Derm7pt, views: str = "", folds: list[int] | None = None) -> dict:
    """The entry's folds (all, or these ``folds``) joined in pool order, in the format of
    ``training.crossval``'s ``oof.pt`` (logits = log-probabilities; labels and clinical-photo
    flags from ``data``).

    Raises:
        ValueError: a fold is missing, or a case appears twice or not at all.
    """
    from .folds import pool_cases

    pool = pool_cases(data)
    position = {c.case_id: i for i, c in enumerate(pool)}
    wanted = [k for k in (range(entry.folds) if folds is None else folds) if k != entry.hold_out]
    missing = [k for k in wanted if not entry.done(k)]
    if missing:
        raise ValueError(f"{entry.path}: folds {missing} are not in the ledger yet")
    logits: dict[str, torch.Tensor] = {}
    fold_of: dict[str, int] = {}
    for head in HEADS:
        parts = []
        for k in wanted:
            path = entry.fold_path(k) / oof_file_name(head, views)
            if not path.is_file():
                if head == "fused":
                    raise ValueError(f"{path} is missing")
                parts = None
                break
            parts.append(read_probabilities(path))
        if parts is None:
            continue
        frame = pd.concat(parts, ignore_index=True)
        id_of_row = {row: case_id for case_id, row in case_rows(data).items()}
        ids = [id_of_row[r] for r in frame["case"]]
        if head == "fused":
            fold_of = dict(zip(ids, frame["fold"].astype(int)))
        keep = [c.case_id for c in pool if c.case_id in fold_of]
        if sorted(ids) != sorted(keep) or len(set(ids)) != len(ids):
            raise ValueError(f"{entry.path}: {head} probabilities do not cover its cases once each")
        order = torch.tensor(pd.Series(range(len(ids)), index=ids).loc[keep].to_numpy())
        logits[head] = frame_logits(frame)[order]
    kept = [c for c in pool if c.case_id in fold_of]
    if entry.hold_out is None and folds is None and len(kept) != len(position):
        raise ValueError(f"{entry.path}: {len(position) - len(kept)} cases have no out-of-fold prediction")
    return {"case_ids": [c.case_id for c in kept], "fold": torch.tensor([fold_of[c.case_id] for c in kept]),
            "logits": logits, "labels": torch.tensor([c.labels for c in kept], dtype=torch.long),
            "has_clinical": torch.tensor([not c.clinic_is_derm for c in kept]),
            **({"hold_out": entry.hold_out} if entry.hold_out is not None else {}),
            "tta": views != "tta_off" and _entry_tta(entry)}


def _entry_tta(entry: Experiment) -> bool:
    return "--tta" in entry.train_flags


def finish_entry(entry: Experiment, data: Derm7pt) -> dict | None:
    """Once every fold is in: the joined ``oof.csv`` (and one-view file) and ``crossval.json``."""
    from .crossval import oof_report

    if entry.pending() or entry.run_folds:
        return None
    oof = read_entry_oof(entry, data)
    rows = case_rows(data)
    numbers = [rows[c] for c in oof["case_ids"]]
    write_probabilities(entry.path / "oof.csv", probabilities_frame(oof["logits"]["fused"], numbers,
                                                                   oof["fold"].tolist()))
    report = {"experiment": entry.name, "folds": entry.folds, "fold_seed": entry.fold_seed,
              "hold_out": entry.hold_out, "train_flags": entry.train_flags, "out_of_fold": oof_report(oof)}
    if all((entry.fold_path(k) / oof_file_name("fused", "tta_off")).is_file() for k in entry.planned_folds()):
        one_view = read_entry_oof(entry, data, "tta_off")
        write_probabilities(entry.path / oof_file_name("fused", "tta_off"),
                            probabilities_frame(one_view["logits"]["fused"], numbers, one_view["fold"].tolist()))
        report["out_of_fold_one_view"] = {k: v for k, v in oof_report(one_view).items() if k != "heads"}
    (entry.path / "crossval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# -- the command line ------------------------------------------------------------------------
def fold_card(entry: Experiment, fold: int) -> dict:
    """The fold model's card as recorded in ``run.json`` (weights are not kept), or {}."""
    path = entry.fold_path(fold) / "run.json"
    return json.loads(path.read_text()).get("card", {}) if path.is_file() else {}


def fold_minutes(entry: Experiment, fold: int) -> float | None:
    """The fold's training minutes, every epoch counted (the sum of ``metrics.csv``'s seconds,
    so a fold resumed on another day counts whole; the card's minutes are the last process's
    only); None for a twin (its minutes are its twin's, spent once)."""
    training = fold_card(entry, fold).get("training", {})
    if "twin_of" in training:
        return None
    metrics = entry.fold_path(fold) / "metrics.csv"
    if metrics.is_file():
        seconds = pd.read_csv(metrics).get("seconds")
        if seconds is not None and seconds.notna().all() and len(seconds):
            return round(float(seconds.sum()) / 60, 1)
    return training.get("minutes")


def fold_recorded_at(entry: Experiment, fold: int) -> str:
    path = entry.fold_path(fold) / "run.json"
    return json.loads(path.read_text()).get("recorded_at", "") if path.is_file() else ""


def twin(entries: list[Experiment], entry: Experiment, fold: int) -> tuple[Experiment, int] | None:
    """The other ledger fold that the model of ``entry``'s ``fold`` also serves, if any.

    A fold of an entry holding out H learns every fold but H and ``fold``; the fold H of the entry
    holding out ``fold``, same recipe and folds, must learn exactly the same cases
    (:func:`training.crossval.predict_twin`). So the 20 teacher folds of a leak-free
    distillation check need 10 trainings."""
    from .crossval import fold_flags

    if entry.hold_out is None:
        return None
    for other in entries:
        if (other.name != entry.name and other.hold_out == fold
                and fold_flags(other.train_flags, entry.hold_out) == fold_flags(entry.train_flags, fold)
                and (other.folds, other.fold_seed) == (entry.folds, entry.fold_seed)
                and entry.hold_out in other.planned_folds()):
            return other, entry.hold_out
    return None


def fill_twin(entries: list[Experiment], entry: Experiment, fold: int, runs: Path, data: Derm7pt,
              device: str = "cpu", commit: bool = False) -> bool:
    """After ``entry``'s ``fold`` trained (its run in ``runs/<entry>/fold<k>``): fill its twin's
    fold from the same model, record it in the ledger, join the twin's entry if that completes
    it (and commit). False when there is no twin, it is done, the run's weights are not on this
    machine, or the run is not one the twin can use (said in the log): the twin is then trained."""
    from .crossval import predict_twin
    from .folds import FOLDS_FILE

    found = twin(entries, entry, fold)
    source = runs / entry.name / f"fold{fold}"
    if found is None or found[0].done(found[1]) or not (source / "oof.pt").is_file():
        return False
    other, other_fold = found
    folds_file = entry.path / FOLDS_FILE
    if not (other.path / FOLDS_FILE).is_file():
        shutil.copyfile(folds_file, other.path / FOLDS_FILE)
    elif (other.path / FOLDS_FILE).read_bytes() != folds_file.read_bytes():
        return False  # another fold assignment: the same fold numbers name other cases
    target = runs / other.name / f"fold{other_fold}"
    try:
        predict_twin(source, target, data, folds_file, device)
    except ValueError as err:
        log.warning("%s fold %d cannot come from %s: %s; it will be trained", other.name, other_fold, source, err)
        return False
    learnt = _fold_card(target).get("training", {}).get("data", {})
    if (learnt.get("less_fold"), learnt.get("held_out_fold")) != (other_fold, other.hold_out):
        raise ValueError(f"{target}: predicts fold {learnt.get('less_fold')} holding out "
                         f"{learnt.get('held_out_fold')}, not fold {other_fold} holding out {other.hold_out}")
    record_fold(other, other_fold, target, data)
    log.info("%s fold %d: from %s fold %d's model (the same training cases), no training", other.name,
             other_fold, entry.name, fold)
    finish_entry(other, data)  # the twin may be the entry's last fold: its joined files, as a trained one gets
    if commit:
        commit_fold(other, other_fold)
    return True


def is_ledger_path(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".csv"


def ledger_source(path: Path) -> tuple[Experiment, str]:
    """(entry, views) named by an entry's folder (the entry's own predictions) or by one of its
    joined files (``oof_tta_off.csv``: the one-view predictions)."""
    folder = path if path.is_dir() else path.parent
    if not (folder / EXPERIMENT_FILE).is_file():
        raise ValueError(f"{path}: not a ledger entry (no {EXPERIMENT_FILE}) nor an oof.pt")
    return Experiment.load(folder), "tta_off" if path.name.startswith("oof_tta_off") else ""


def read_oof(path: str | Path, data: Derm7pt | None) -> dict:
    """Out-of-fold predictions from a ledger entry (needs ``data``) or an ``oof.pt`` (see :func:`load_oof`).

    Raises:
        ValueError: neither, or an entry without ``data``.
    """
    path = Path(path)
    if is_ledger_path(path):
        if data is None:
            raise ValueError(f"{path}: a ledger entry needs --data-root for the cases' labels")
        entry, views = ledger_source(path)
        return read_entry_oof(entry, data, views)
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{path}: not an out-of-fold file of training.crossval ({err})") from None


def load_oof(path: str | Path, data: Derm7pt) -> tuple[dict, dict]:
    """Out-of-fold predictions from a ledger entry (its folder, or its ``oof_tta_off.csv`` for
    the one-view predictions) or from a ``training.crossval`` ``oof.pt``, and where they came
    from: ``run``, ``oof_file``, ``oof_sha256`` and ``card``, one fold model's card (the recipe).

    Raises:
        ValueError: not an OOF file or ledger entry, or one with folds missing.
    """
    from skinnet.checkpoint import ModelCard, file_sha256, read_card
    from skinnet.labels import schema

    path = Path(path)
    if is_ledger_path(path):
        entry, views = ledger_source(path)
        oof = read_oof(path, data)
        digest = hashlib.sha256()
        for k in entry.planned_folds():
            for head in HEADS:
                part = entry.fold_path(k) / oof_file_name(head, views)
                if part.is_file():
                    digest.update(part.read_bytes())
        card = ModelCard.from_dict({**fold_card(entry, entry.planned_folds()[0]), "labels": schema()}, str(entry.path))
        return oof, {"run": entry.name, "oof_file": oof_file_name("fused", views), "oof_sha256": digest.hexdigest(),
                     "card": card, "ledger": True}
    try:
        oof = torch.load(path, weights_only=True)
        card = read_card(next(path.parent.glob("fold[0-9]*/*.safetensors")))
    except (OSError, RuntimeError, StopIteration, KeyError) as err:
        raise ValueError(f"{path}: not the oof.pt of a training.crossval folder ({err})") from None
    return oof, {"run": path.parent.name, "oof_file": path.name, "oof_sha256": file_sha256(path), "card": card,
                 "ledger": False}


RECENT_FOLDS = 8
"""Finished folds whose minutes estimate the pending ones (the latest: machines differ by day)."""


def status_lines(root: Path = LEDGER, fold_minutes_estimate: float | None = None) -> list[str]:
    """What is done and pending, and the CPU hours the pending folds need: each pending
    training's ``cost`` times the minutes per unit of cost of the last RECENT_FOLDS finished
    folds, as a range from their lower quartile (a quiet machine) to their median (folds that
    shared the cores with test runs or a browser count in it, and they take up to 3x longer)."""
    entries = experiments(root)
    measured = sorted((fold_recorded_at(e, k), fold_minutes(e, k), e.cost) for e in entries
                      for k in e.planned_folds() if e.done(k))
    per_unit = [m / c for _, m, c in measured if m is not None][-RECENT_FOLDS:]  # this machine, these days
    ranked = sorted(per_unit)
    quiet = fold_minutes_estimate or (ranked[len(ranked) // 4] if ranked else None)
    typical = fold_minutes_estimate or (ranked[len(ranked) // 2] if ranked else None)
    lines, units, trainings, counted = [], 0.0, 0, set()
    for e in entries:
        done = [k for k in e.planned_folds() if e.done(k)]
        pending = e.pending()
        state = "complete" if e.complete() else ("done" if not pending else f"pending folds {pending}")
        lines.append(f"{e.name:28s} {len(done)}/{len(e.planned_folds())} folds  {state}")
        for k in pending:
            pair = twin(entries, e, k)
            if pair is not None and ((pair[0].name, pair[1]) in counted or pair[0].done(pair[1])):
                continue  # its twin's training (done, or counted already) fills it
            counted.add((e.name, k))
            trainings += 1
            units += e.cost
    n_pending = sum(len(e.pending()) for e in entries)
    runs = f"{n_pending} folds ({trainings} trainings: a teacher fold's twin fills another)" if trainings != n_pending \
        else f"{n_pending} folds"
    if typical is not None and quiet == typical:
        lines.append(f"pending: {runs}, about {units * typical / 60:.1f} CPU hours ({typical:.0f} min per shipped-recipe fold)")
    elif typical is not None:
        lines.append(f"pending: {runs}, about {units * quiet / 60:.1f}-{units * typical / 60:.1f} CPU hours "
                     f"({quiet:.0f}-{typical:.0f} min per shipped-recipe fold: the lower quartile and the median "
                     f"of the last {len(per_unit)} finished; the quartile is a quiet machine's)")
    else:
        lines.append(f"pending: {runs} (no finished fold to time them by)")
    return lines


def pending_runs(entries: list[Experiment], only: set[str] | None = None,
                 folds: set[int] | None = None) -> list[tuple[Experiment, int]]:
    """(entry, fold) in the order to train them: tier by tier (a hundred of priorities each), and
    within a tier fold by fold across its entries (by priority), so that every comparison gains
    paired cases as each working day adds folds, and a fold of a later question (a one-fold
    float32 check, a new backbone) does not hold up the ablation's next fold."""
    chosen = [e for e in entries if only is None or e.name in only]
    runs = [(e, fold) for e in chosen for fold in e.pending() if folds is None or fold in folds]
    return sorted(runs, key=lambda run: (run[0].priority // 100, run[1], run[0].priority, run[0].name))


def waiting_for(entry: Experiment, fold: int) -> list[str]:
    """The ledger entries this fold's ``--distill`` teachers come from that are not finished yet
    (a student's fold k needs every fold of its teachers' entry, ``{fold}`` filled in)."""
    flags = entry.train_flags
    if "--distill" not in flags:
        return []
    sources = flags[flags.index("--distill") + 1].replace("{fold}", str(fold)).split(",")
    waiting = []
    for source in sources:
        path = Path(source) if Path(source).is_absolute() else ROOT / source
        if (path / EXPERIMENT_FILE).is_file() and Experiment.load(path).pending():
            waiting.append(source)
    return waiting


def commit_fold(entry: Experiment, fold: int) -> None:
    """``git commit`` the fold's folder alone (retried while another git command holds the index)."""
    paths = [str(entry.fold_path(fold).relative_to(ROOT)), str((entry.path / EXPERIMENT_FILE).relative_to(ROOT))]
    for extra in ("folds.json", "oof.csv", "oof_tta_off.csv", "crossval.json"):
        if (entry.path / extra).is_file():
            paths.append(str((entry.path / extra).relative_to(ROOT)))
    message = f"ledger: {entry.name} fold {fold}" + _fold_summary(entry, fold)
    for attempt in range(10):
        add = subprocess.run(["git", "add", "--", *paths], cwd=ROOT, capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *paths], cwd=ROOT, capture_output=True, text=True).returncode == 0
        if done:
            log.info("committed %s", message)
            return
        time.sleep(3 + 3 * attempt)
    log.warning("could not commit %s (commit it by hand)", entry.fold_path(fold))


def _fold_summary(entry: Experiment, fold: int) -> str:
    try:
        record = json.loads((entry.fold_path(fold) / "eval.json").read_text())["out_of_fold"]
        minutes = fold_minutes(entry, fold)
        return (f": OOF avg {100 * record['avg']:.1f}, DIAG {100 * record['tasks']['DIAG']:.1f} "
                f"({record['n_cases']} cases{f', {minutes:.0f} min' if minutes else ''})")
    except (OSError, KeyError, ValueError):
        return ""


def fold_argv(entry: Experiment, fold: int, args) -> list[str]:
    """``training.crossval`` arguments that train one fold of an entry into the ledger."""
    argv = entry.command(fold, args.data_root, str(Path(args.runs) / entry.name), ledger=str(entry.path))[3:]
    own = ["--device", args.device, *(["--threads", str(args.threads)] if args.threads else [])]
    return [*argv[:argv.index("--")], *own, *argv[argv.index("--"):], "--no-progress"]


def prepare_folds(entries: list[Experiment], data_root: str) -> None:
    """Write each entry's ``folds.json`` before folds train at once (so that none races to make it)."""
    from .crossval import ensure_folds

    data = Derm7pt(data_root)
    for entry in entries:
        if not (entry.path / "folds.json").is_file():
            ensure_folds(entry.path, data, entry.folds, entry.fold_seed)


def run_pending(args) -> int:
    """Train the pending folds: one at a time in this process, or ``--jobs`` at once in their own
    processes (log: ``<runs>/<entry>/fold<k>.log``). A student's fold waits for its teachers'
    entry to finish; a failed fold is reported and left pending."""
    from . import crossval

    entries = experiments(Path(args.root))
    only = set(args.only.split(",")) if args.only else None
    folds = {int(k) for k in args.folds.split(",")} if args.folds else None
    deadline = time.time() + args.max_hours * 3600 if args.max_hours else math.inf
    tried: set[tuple[str, int]] = set()
    running: dict = {}
    data = lru_cache(maxsize=None)(lambda: Derm7pt(args.data_root))  # read once, when a twin needs it
    log.info("%d fold runs pending%s", len(pending_runs(entries, only, folds)),
             f" (of {', '.join(sorted(only))})" if only else "")
    if args.jobs > 1:
        prepare_folds([e for e in entries if only is None or e.name in only], args.data_root)
    failed = 0
    while True:
        entries = experiments(Path(args.root))
        ready = [(e, k) for e, k in pending_runs(entries, only, folds)
                 if (e.name, k) not in tried and not waiting_for(e, k)]
        if args.jobs <= 1:
            if not ready or time.time() > deadline:
                break
            entry, fold = ready[0]
            tried.add((entry.name, fold))
            pair = twin(entries, entry, fold)  # twins are mutual: its twin's finished run can fill it
            if pair is not None and fill_twin(entries, *pair, Path(args.runs), data(), args.device, args.commit):
                continue  # a finished run on this machine had learnt its cases already
            log.info("== %s fold %d ==", entry.name, fold)
            crossval.main(fold_argv(entry, fold, args))
            if entry.done(fold):
                if args.commit:
                    commit_fold(entry, fold)
                fill_twin(experiments(Path(args.root)), entry, fold, Path(args.runs), data(), args.device, args.commit)
            continue
        while ready and len(running) < args.jobs and time.time() < deadline:
            entry, fold = ready.pop(0)
            pair = twin(entries, entry, fold)
            if pair is not None and any((e.name, k) == (pair[0].name, pair[1]) for e, k in running.values()):
                continue  # its twin is training now and will fill it
            tried.add((entry.name, fold))
            if pair is not None and fill_twin(entries, *pair, Path(args.runs), data(), args.device, args.commit):
                continue
            logfile = Path(args.runs) / entry.name / f"fold{fold}.log"
            logfile.parent.mkdir(parents=True, exist_ok=True)
            with open(logfile, "a") as out:
                process = subprocess.Popen([sys.executable, "-m", "training.crossval", *fold_argv(entry, fold, args)],
                                           cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            running[process] = (entry, fold)
            log.info("== %s fold %d started (%s) ==", entry.name, fold, logfile)
        if not running:
            break
        time.sleep(2)
        for process in [p for p in running if p.poll() is not None]:
            entry, fold = running.pop(process)
            if process.returncode == 0 and entry.done(fold):
                log.info("%s fold %d done", entry.name, fold)
                if args.commit:
                    commit_fold(entry, fold)
                fill_twin(experiments(Path(args.root)), entry, fold, Path(args.runs), data(), args.device, args.commit)
            else:
                failed += 1
                log.warning("%s fold %d failed (exit %s): see its log", entry.name, fold, process.returncode)
    left = pending_runs(experiments(Path(args.root)), only, folds)
    log.info("%d fold runs left pending%s", len(left), f", {failed} failed" if failed else "")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ledger", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(LEDGER), help="the ledger folder")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("status", help="what is done and pending, and the CPU hours left")
    run = sub.add_parser("run", help="train the pending folds, fold by fold across the entries")
    run.add_argument("--data-root", required=True)
    run.add_argument("--runs", default="runs", help="where the fold runs (weights, resumable state) go")
    run.add_argument("--only", default=None, help="these entries only, e.g. 'e_method,d_shared_attention'")
    run.add_argument("--folds", default=None, help="these folds only, e.g. '0,1'")
    run.add_argument("--device", default="cpu")
    run.add_argument("--threads", type=int, default=None)
    run.add_argument("--jobs", type=int, default=1,
                     help="folds trained at once, each in its own process (an accelerator; on 2 CPU cores, 1)")
    run.add_argument("--max-hours", type=float, default=None, help="start no fold after this many hours")
    run.add_argument("--commit", action="store_true", help="git commit each fold as it lands in the ledger")
    new = sub.add_parser("new", help="add an entry: python -m training.ledger new NAME --description "
                                     "'...' -- <training.train flags>")
    new.add_argument("name")
    new.add_argument("--description", required=True)
    new.add_argument("--folds", type=int, default=5)
    new.add_argument("--fold-seed", type=int, default=0)
    new.add_argument("--run-folds", default="", help="only these folds, e.g. '0' (a one-fold check)")
    new.add_argument("--hold-out", type=int, default=None)
    new.add_argument("--priority", type=int, default=150,
                     help="lower runs first; 0-99: the paper's ablation, 100-199: the model search (each "
                          "hundred runs fold by fold, after the lower ones)")
    new.add_argument("--cost", type=float, default=1.0, help="CPU cost of a fold relative to the shipped recipe's")
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.verb == "new":
        from .crossval import recipe_flags

        path = Path(args.root) / args.name
        if (path / EXPERIMENT_FILE).is_file():
            raise SystemExit(f"{path} exists: an entry's recipe never changes; add a new one")
        Experiment(name=args.name, description=args.description, train_flags=recipe_flags(flags), folds=args.folds,
                   fold_seed=args.fold_seed, run_folds=[int(k) for k in args.run_folds.split(",") if k],
                   hold_out=args.hold_out, priority=args.priority, cost=args.cost, path=path).save()
        print(f"added {path}")
        return 0
    if args.verb == "status":
        print("\n".join(status_lines(Path(args.root))))
        return 0
    return run_pending(args)


if __name__ == "__main__":
    sys.exit(main())
