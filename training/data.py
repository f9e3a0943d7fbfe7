"""Which cases a training run learns from: the Derm7pt train split, plus reviewers' corrections."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path


from skinnet.checkpoint import file_sha256, read_card
from skinnet.corrections import (CaseLabels, CorrectionsError, current_labels, log_files, log_folder,
                                 read_corrections, where)
from skinnet.data import SPLITS, Case, Derm7pt
from skinnet.labels import NO_LABEL, TASKS
from skinnet.imaging import load_rgb
from skinnet.near_duplicates import ReferenceImages

from .folds import pool_cases, read_folds, stratified_subset

log = logging.getLogger("skinnet.train")


def trained_splits(refit: bool) -> tuple[str, ...]:
    """The splits a run learns from: train, and valid too in a refit (once valid chose the recipe)."""
    return ("train", "valid") if refit else ("train",)


def init_learnt_valid(init: str | None) -> bool:
    """Whether ``--init`` names a model that has learnt the valid split (a refit, like the shipped
    model). Fine-tuning it is a refit too: valid can no longer choose an epoch or fit a
    calibration, and its reviewed cases are trained on like train's (test never is)."""
    return bool(init) and read_card(init).trained_on_valid


def held_out_splits(refit: bool) -> tuple[str, ...]:
    """Splits never trained on: test (reported once) always, valid (selects) unless a refit."""
    return tuple(split for split in SPLITS if split not in trained_splits(refit))


def base_cases(data: Derm7pt, args) -> tuple[list[Case], list[Case], list[Case]]:
    """(cases to learn from, cases scored after each epoch, every held-out case) before corrections.

    A plain run learns train and scores valid; ``--refit`` learns both and scores valid
    (trained on: no selection); ``--fold K`` learns train + valid less fold K and scores fold K;
    ``--hold-out H`` with it leaves fold H out of everything too.
    """
    if args.fold is not None:
        folds, n_folds = read_folds(args.folds_file, data)
        if not 0 <= args.fold < n_folds:
            raise SystemExit(f"--fold {args.fold}: {args.folds_file} has folds 0..{n_folds - 1}")
        if getattr(args, "hold_out", None) is not None and not 0 <= args.hold_out < n_folds:
            raise SystemExit(f"--hold-out {args.hold_out}: {args.folds_file} has folds 0..{n_folds - 1}")
        pool = pool_cases(data)
        hold_out = getattr(args, "hold_out", None)
        left_out = [c for c in pool if folds[c.case_id] == args.fold][:args.limit_cases]
        learnt = [c for c in pool if folds[c.case_id] not in (args.fold, hold_out)][:args.limit_cases]
        held = [c for c in pool if folds[c.case_id] == hold_out]
        return stratified_subset(learnt, args.train_fraction, args.seed), left_out, left_out + held + data.split("test")
    learnt = [case for split in trained_splits(args.refit) for case in data.split(split)[:args.limit_cases]]
    held_out = [case for split in held_out_splits(args.refit) for case in data.split(split)]
    return stratified_subset(learnt, args.train_fraction, args.seed), data.split("valid")[:args.limit_cases], held_out


def correction_case(entry: CaseLabels, folder: Path) -> Case:
    """A training case from the current labels of an uploaded (non-Derm7pt) case; tasks no
    reviewer labelled are :data:`NO_LABEL`.

    Raises:
        CorrectionsError: no stored dermoscopy image, a stored image is missing, or no task
            has a label.
    """
    row = entry.latest
    if not row["derm"]:
        raise CorrectionsError(f"{where(row)}: case {entry.case_id} has no dermoscopy image; "
                               "training needs one")
    if not entry.labels:
        raise CorrectionsError(f"{where(row)}: case {entry.case_id} has no labelled task")
    derm = folder / row["derm"]
    clinical = folder / row["clinic"] if row["clinic"] else derm
    for image in {derm, clinical}:
        if not image.is_file():
            raise CorrectionsError(f"{where(row)}: stored image {row['derm'] if image == derm else row['clinic']} "
                                   "is missing")
    labels = tuple(t.classes.index(entry.labels[t.name]) if t.name in entry.labels else NO_LABEL for t in TASKS)
    return Case(case_id=entry.case_id, clinical_path=clinical, dermoscopy_path=derm, labels=labels,
                clinic_is_derm=not row["clinic"])


class HeldOutImages:
    """Every held-out image (:class:`~skinnet.near_duplicates.ReferenceImages`), to catch a held-out
    case uploaded by hand: re-encoded, mirrored, resized, cropped, turned, framed or sheared."""

    def __init__(self, cases: list[Case]):
        paths = [(case.case_id, path) for case in cases
                 for path in dict.fromkeys((case.clinical_path, case.dermoscopy_path))]
        self.case_of = [case_id for case_id, _ in paths]
        self.references = ReferenceImages(load_rgb(path) for _, path in paths)  # one image in memory at a time

    def match(self, row: dict[str, str], folder: Path) -> str | None:
        """Why a corrections row's images are held-out ones, or None."""
        for column in ("clinic", "derm"):
            if row[f"{column}_sha256"] in self.references.exact:
                return f"its {column} image is a held-out Derm7pt image"
            if row[column] and (folder / row[column]).is_file():
                verdict = self.references.match(load_rgb(folder / row[column]))
                if verdict is not None:
                    return (f"its {column} image is an edited copy of a held-out Derm7pt image of case "
                            f"{self.case_of[verdict.reference]} ({verdict})")
        return None


def training_cases(data: Derm7pt, args) -> tuple[list[Case], dict]:
    """The cases of :func:`base_cases` to learn from, with labels overridden and cases added by
    the corrections CSV (never a held-out case).

    Returns:
        The cases and the counts recorded in the model card.

    Raises:
        SystemExit: ``--strict-corrections`` and the CSV has bad rows.
    """
    cases, _, held_out = base_cases(data, args)
    if not args.corrections:
        return cases, {"n_corrections": 0}
    path = Path(args.corrections)
    try:
        rows, problems = read_corrections(path)
    except CorrectionsError as err:
        raise SystemExit(f"--corrections: {err}") from None
    for problem in problems:
        log.warning("%s %s (skipped)", path, problem)
    if problems and args.strict_corrections:
        raise SystemExit(f"{path}: {len(problems)} bad rows, refused (--strict-corrections):\n"
                         + "\n".join(str(p) for p in problems))
    split_of = data.split_of()
    held_out_ids = {case.case_id for case in held_out}
    known = {c.case_id: c for c in data.cases()}
    position = {c.case_id: i for i, c in enumerate(cases)}
    folder = log_folder(path)
    held_out_images = None  # hashed only if an upload needs it
    used: dict[str, list[str]] = {"derm7pt": [], "new": []}
    skipped: dict[str, str] = {}
    skipped_held_out = 0
    for case_id, entry in current_labels(rows, args.corrections_rule).items():
        row = entry.latest
        place = f"{path} {where(row)} (case {case_id})"

        def skip(reason: str, held: bool = False) -> None:
            nonlocal skipped_held_out
            log.warning("%s: %s; skipped", place, reason)
            skipped[case_id] = reason
            skipped_held_out += held

        if not entry.labels:  # every labelled task tied, or none labelled
            skip("no task has a decided label")
            continue
        if row["source"] == "derm7pt":
            if case_id in held_out_ids:
                skip(f"a held-out {split_of.get(case_id)}-split case is never trained on", held=True)
                continue
            if case_id not in known:
                skip("no such Derm7pt case")
                continue
            # a task no reviewer labelled keeps the reference label
            labels = tuple(t.classes.index(entry.labels[t.name]) if t.name in entry.labels else reference
                           for t, reference in zip(TASKS, known[case_id].labels))
            corrected = dataclasses.replace(known[case_id], labels=labels)
            if case_id in position:
                cases[position[case_id]] = corrected
            else:
                cases.append(corrected)
            used["derm7pt"].append(case_id)
            continue
        if held_out_images is None:
            held_out_images = HeldOutImages(held_out)
        reason = held_out_images.match(row, folder)
        if reason:
            skip(reason, held=True)
            continue
        try:
            cases.append(correction_case(entry, folder))
        except CorrectionsError as err:
            skip(str(err))
            continue
        used["new"].append(case_id)
    counts = {"corrected_derm7pt": len(used["derm7pt"]), "new_cases": len(used["new"]),
              "skipped_held_out": skipped_held_out, "skipped_other": len(skipped) - skipped_held_out}
    stats = {"n_corrections": counts["corrected_derm7pt"] + counts["new_cases"],
             **{f"n_{k}": v for k, v in counts.items()}, "n_bad_rows": len(problems),
             "corrections_rule": args.corrections_rule,
             "corrections_used": {"derm7pt": sorted(used["derm7pt"]), "new": sorted(used["new"])},
             "corrections_skipped": dict(sorted(skipped.items())),
             "corrections_sha256": log_sha256(folder)}
    log.info("corrections: %s", {k: v for k, v in stats.items() if k.startswith("n_")})
    return cases, stats


def log_sha256(folder: Path) -> str:
    """One hash of every file of a corrections log (names and bytes), for the model card."""
    digest = hashlib.sha256()
    for name, file in log_files(folder):
        digest.update(f"{name}\0{file_sha256(file)}\0".encode())
    return digest.hexdigest()
