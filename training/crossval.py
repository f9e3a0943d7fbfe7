"""Cross-fitting a recipe on Derm7pt train + valid: out-of-fold predictions for every case.

    python -m training.crossval --data-root /path/to/release_v0 --folds 5 --out runs/cv_lite2 \\
        [--ensemble-test] -- [training.train flags: --backbone ... --epochs 28 --tta ...]

The 616 train + valid cases are split into K folds stratified by diagnosis (fixed seed, saved
as ``folds.json``); one model per fold trains on the other folds for exactly ``--epochs`` (the
last epoch is kept: nothing is selected on the fold it predicts) and predicts its own fold.
The K out-of-fold (OOF) predictions cover every case once, from a model that never saw it:
recipes are compared on them (616 cases instead of valid's 203), a refit's calibration is
fitted on them, and they are the teacher's soft targets for distillation. Folds that are done
are skipped, an interrupted one resumes, so the command can simply be run again.

**Leak-free distillation check.** A student cross-fitted on the teacher's OOF soft targets is
scored on fold k after learning targets that fold models trained *on fold k* produced, so its
OOF is optimistic. ``--hold-out k`` trains the teachers of fold k's student: one model per other
fold m, trained on the folds other than k and m, so their OOF (all cases but fold k's) never
saw fold k; then train the student's fold k on it and compare with the recipe's fold k
(``training.train`` refuses a teacher file held out for another fold, and records in the
student's card whether its targets were leak-free). All five folds this way: 5 x 4 = 20
teacher folds, from 10 trainings: the model that holds out k and predicts m learnt exactly the
cases (every fold but k and m) that the one holding out m and predicting k needs, so one run
predicts both (:func:`predict_twin`; the ledger does it as each teacher finishes).

    python -m training.crossval ... --out runs/teach_k2 --hold-out 2 -- <recipe>   # 4 teachers
    python -m training.crossval ... --out runs/student_k2 --only 2 -- <recipe> --distill runs/teach_k2/oof.pt
    (runs/student_k2/fold2/eval.json against runs/cv_lite2/fold2/eval.json: the same cases)

``{fold}`` in a training flag becomes each fold's number, so one command cross-fits a student
whose every fold learns from its own leak-free teachers (``--distill runs/teach_k{fold}/oof.pt``).
``--jobs N`` trains N folds at once, each in its own process with its log in its fold folder:
for an accelerator, where one small run leaves most of the chip idle (``training/device.sh``).

Writes ``oof.pt`` (logits of every head for the 616 cases, labels, fold of each case) and
``crossval.json`` (OOF accuracy per head and task, DIAG report, per-fold spread, and with
``--ensemble-test`` the fold models' ensemble on test: a teacher's score, never a choice).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from skinnet.checkpoint import load_checkpoint, read_card
from skinnet.data import Derm7pt
from skinnet.labels import TASK_NAMES

from . import ledger as ledger_lib
from . import train
from .evaluate import card_summary, evaluate_model, head_predictions, scored_cases
from .folds import FOLDS_FILE, assign_folds, pool_cases, read_folds, write_folds
from .metrics import diagnosis_report, expected_calibration_error, task_accuracies
from .test_log import record_test_scoring

log = logging.getLogger("skinnet.crossval")
OOF_FILE = train.OOF_FILE  # the same name for one fold's predictions and for all of them


def fold_dir(out: Path, fold: int) -> Path:
    return out / f"fold{fold}"


def ensure_folds(out: Path, data: Derm7pt, n_folds: int, seed: int) -> dict[str, int]:
    """The saved fold assignment, written on the first run and reused (and checked) after."""
    path = out / FOLDS_FILE
    if path.is_file():
        folds, saved_n = read_folds(path, data)
        if saved_n != n_folds:
            raise SystemExit(f"{path} has {saved_n} folds, not --folds {n_folds}: use another --out")
        return folds
    folds = assign_folds(pool_cases(data), n_folds, seed)
    write_folds(path, folds, n_folds, seed)
    return folds


def check_fold_run(where: Path, hold_out: int | None) -> None:
    """Refuse a finished fold run made with another ``--hold-out`` (a teacher folder and an
    ordinary one must never be mixed: that would bring the leak back or drop cases)."""
    card = read_card(next(where.glob("*.safetensors")))
    theirs = card.training.get("data", {}).get("held_out_fold")
    if theirs != hold_out:
        said = "no --hold-out" if theirs is None else f"--hold-out {theirs}"
        raise SystemExit(f"{where} was trained with {said}, not "
                         f"{'no --hold-out' if hold_out is None else f'--hold-out {hold_out}'}: use another --out")


def predict_twin(source: Path, target: Path, data: Derm7pt, folds_file: Path, device: str = "cpu") -> Path:
    """A teacher fold without training: ``source`` is a finished fold run that held out fold H and
    predicted fold m, so it learnt every fold but H and m; the run that holds out m and predicts
    fold H must learn exactly those cases with the same recipe, so ``source``'s model is that
    run's model. Its weights go to ``target``, with the card saying which fold it held out and
    predicts (and ``twin_of``), and it predicts fold H there as a trained run would. The epoch log
    is not copied: it belongs to the training, recorded once, in ``source``'s fold.

    Raises:
        ValueError: ``source`` is not a finished held-out run on these folds.
    """
    from types import SimpleNamespace

    from skinnet.checkpoint import file_sha256, save_checkpoint
    from skinnet.transforms import ImageCache

    from .distributed import DistInfo

    checkpoint = next(source.glob("*.safetensors"), None)
    if checkpoint is None or not (source / OOF_FILE).is_file():
        raise ValueError(f"{source}: not a finished fold run")
    model, card = load_checkpoint(checkpoint, device)
    data_record = card.training.get("data", {})
    held, learnt_less = data_record.get("held_out_fold"), data_record.get("less_fold")
    if held is None or learnt_less is None or data_record.get("folds_sha256") != file_sha256(folds_file):
        raise ValueError(f"{source}: not a held-out fold run on {folds_file}")
    folds, _ = read_folds(folds_file, data)
    pool = pool_cases(data)
    if data_record.get("n_train_cases") != sum(folds[c.case_id] not in (held, learnt_less) for c in pool):
        raise ValueError(f"{source}: learnt other cases than its folds' (--train-fraction, --limit-cases or "
                         "corrections)")
    cases = [c for c in pool if folds[c.case_id] == held]
    target.mkdir(parents=True, exist_ok=True)
    config = card.training.get("config", {})
    card.training = {**card.training, "twin_of": str(source),
                     "data": {**data_record, "less_fold": held, "held_out_fold": learnt_less},
                     **({"config": {**config, "fold": held, "hold_out": learnt_less}} if config else {})}
    twin = save_checkpoint(model, card, target / checkpoint.name)
    cache = ImageCache(cases, card.image_size, device)
    args = SimpleNamespace(fold=held, tta=bool(card.tta))
    log.info("fold %d (holding out %d): predicted by %s, which learnt the same cases", held, learnt_less, source)
    return train.finish_fold(model, card, twin, cache, cases, args, device, DistInfo())


def gather_oof(out: Path, n_folds: int, data: Derm7pt, folds: dict[str, int], hold_out: int | None = None) -> dict:
    """Every fold's ``oof.pt`` joined in pool order (train then valid), each case checked to come
    from the model of its own fold; with ``hold_out``, that fold's cases are left out."""
    parts = {}
    for fold in (k for k in range(n_folds) if k != hold_out):
        check_fold_run(fold_dir(out, fold), hold_out)
        parts[fold] = torch.load(fold_dir(out, fold) / OOF_FILE, weights_only=True)
    oof = join_oof(parts, out, data, folds, hold_out)
    settings = {bool(read_card(next(fold_dir(out, k).glob("*.safetensors"))).tta) for k in parts}
    if len(settings) != 1:
        raise ValueError(f"{out}: its fold models predicted with and without the test-time flips")
    oof["tta"] = settings.pop()
    return oof


def predict_oof(out: Path, n_folds: int, data: Derm7pt, folds: dict[str, int], tta: bool, device: str) -> dict:
    """The out-of-fold predictions again, each fold model predicting its own fold with this TTA
    setting instead of its card's: what calibrates a card that uses the other setting (the same
    cases, order and format as ``oof.pt``)."""
    unfinished = [k for k in range(n_folds) if not (fold_dir(out, k) / OOF_FILE).is_file()]
    if unfinished:  # a fold still training has a checkpoint of its latest epoch, not its final model
        raise SystemExit(f"--tta-oof: folds {unfinished} of {out} have not finished; train them first")
    parts, cache = {}, None
    for fold in range(n_folds):
        check_fold_run(fold_dir(out, fold), None)
        model, card = load_checkpoint(next(fold_dir(out, fold).glob("*.safetensors")), device)
        cases = [c for c in pool_cases(data) if folds[c.case_id] == fold]
        logits, cache = head_predictions(model, card, cases, device, tta)
        parts[fold] = {"case_ids": [c.case_id for c in cases], "logits": logits,
                       "labels": cache.labels.cpu(), "has_clinical": cache.has_clinical.cpu()}
    return {**join_oof(parts, out, data, folds, None), "tta": tta}


def join_oof(parts: dict[int, dict], out: Path, data: Derm7pt, folds: dict[str, int], hold_out: int | None) -> dict:
    """Fold parts (case ids, logits per head, labels, has_clinical) joined in pool order."""
    pool = [c for c in pool_cases(data) if folds[c.case_id] != hold_out]
    position = {case.case_id: i for i, case in enumerate(pool)}
    n = len(pool)
    logits, labels, has_clinical = {}, torch.zeros(n, len(TASK_NAMES), dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    seen = torch.zeros(n, dtype=torch.bool)
    for fold, part in parts.items():
        index = torch.tensor([position[c] for c in part["case_ids"]])
        if any(folds[c] != fold for c in part["case_ids"]) or seen[index].any():
            raise ValueError(f"{fold_dir(out, fold)}: its out-of-fold cases are not fold {fold}'s")
        seen[index] = True
        for head, head_logits in part["logits"].items():
            logits.setdefault(head, torch.zeros(n, head_logits.shape[1]))[index] = head_logits
        labels[index] = part["labels"]
        has_clinical[index] = part["has_clinical"]
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} cases have no out-of-fold prediction")
    return {"case_ids": [c.case_id for c in pool], "fold": torch.tensor([folds[c.case_id] for c in pool]),
            "logits": logits, "labels": labels, "has_clinical": has_clinical,
            **({"hold_out": hold_out} if hold_out is not None else {})}


def oof_report(oof: dict) -> dict:
    """OOF accuracy per head and task, DIAG report, ECE, and each fold's fused score (the spread)."""
    labels, has_clinical, fold = oof["labels"], oof["has_clinical"], oof["fold"]
    heads = {}
    for head, logits in oof["logits"].items():
        keep = scored_cases(head, has_clinical)
        acc = task_accuracies(logits[keep], labels[keep])
        heads[head] = {"n_cases": int(keep.sum()), "avg": acc["avg"], "tasks": {t: acc[t] for t in TASK_NAMES},
                       "diagnosis": diagnosis_report(logits[keep], labels[keep]),
                       "ece": expected_calibration_error(logits[keep], labels[keep])}
    per_fold = []
    for k in sorted(set(fold.tolist())):
        acc = task_accuracies(oof["logits"]["fused"][fold == k], labels[fold == k])
        per_fold.append({"fold": k, "n_cases": int((fold == k).sum()), "avg": acc["avg"], "DIAG": acc["DIAG"]})
    spread = {key: {"mean": statistics.mean(f[key] for f in per_fold), "sd": statistics.stdev(f[key] for f in per_fold)}
              for key in ("avg", "DIAG")}
    fused = heads["fused"]
    return {"n_cases": len(oof["case_ids"]), "avg": fused["avg"], "DIAG": fused["tasks"]["DIAG"],
            "tasks": fused["tasks"], "heads": heads, "folds": per_fold, "fold_spread": spread}


def ensemble_test(out: Path, n_folds: int, data: Derm7pt, device: str) -> dict:
    """The fold models' ensemble (mean of their logits, TTA as their cards say) scored on test.

    A teacher's score for the record: test chooses nothing here.
    """
    cases = data.split("test")
    summed, cache, card, model = {}, None, None, None
    for fold in range(n_folds):
        model, card = load_checkpoint(next(fold_dir(out, fold).glob("*.safetensors")), device)
        logits, cache = head_predictions(model, card, cases, device, card.tta, cache)
        for head, head_logits in logits.items():
            summed[head] = summed.get(head, 0) + head_logits / n_folds
    labels, has_clinical = cache.labels.cpu(), cache.has_clinical.cpu()
    report = {"n_models": n_folds, "heads": {}}
    for head, logits in summed.items():
        keep = scored_cases(head, has_clinical)
        acc = task_accuracies(logits[keep], labels[keep])
        report["heads"][head] = {"avg": acc["avg"], "tasks": {t: acc[t] for t in TASK_NAMES}}
    report.update(avg=report["heads"]["fused"]["avg"], DIAG=report["heads"]["fused"]["tasks"]["DIAG"],
                  diagnosis=diagnosis_report(summed["fused"], labels))
    record_test_scoring({"n_cases": len(cases), "avg": report["avg"], "tasks": report["heads"]["fused"]["tasks"]},
                        None, what=f"ensemble of {n_folds} fold models ({out.name})")
    single = card_summary(evaluate_model(model, card, cases, split="test", device=device, cache=cache,
                                         checkpoint=next(fold_dir(out, n_folds - 1).glob("*.safetensors"))))
    report["last_fold_model_alone"] = {"avg": single["avg"], "DIAG": single["tasks"]["DIAG"]}
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.crossval", description=__doc__.split("\n")[0],
                                epilog="Flags after '--' go to every fold's python -m training.train.")
    p.add_argument("--data-root", required=True, help="Derm7pt release_v0 folder")
    p.add_argument("--out", required=True, help="folder for folds.json, fold<k>/ runs, oof.pt, crossval.json")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment (kept in folds.json)")
    p.add_argument("--only", default=None, help="train only these folds now, e.g. '0,1' (the report waits for all)")
    p.add_argument("--hold-out", type=int, default=None,
                   help="leave this fold out of every model (the teachers of a leak-free distillation "
                        "check: their OOF covers the other folds, each case from a model that saw "
                        "neither it nor this fold)")
    p.add_argument("--ensemble-test", action="store_true",
                   help="also score the fold models' ensemble on test (a teacher's number, chooses nothing)")
    p.add_argument("--tta-oof", default=None, choices=["on", "off"],
                   help="only write oof_tta_<on|off>.pt: the finished fold models predict their folds "
                        "again with this TTA setting (to calibrate a card that uses it; see "
                        "benchmarks/tta_views.py for what the flips are worth)")
    p.add_argument("--ledger", default=None,
                   help="an experiments/<name> folder: each finished fold's probabilities, evaluation "
                        "and log go there (to be committed), folds already there are skipped on any "
                        "machine, and the report is made from it (training.ledger)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of every fold run")
    p.add_argument("--jobs", type=int, default=1,
                   help="folds trained at once, each in its own process (for an accelerator; on the "
                        "2-core CPU, 1)")
    return p


def fold_flags(train_flags: list[str], fold: int) -> list[str]:
    """The training flags of one fold: ``{fold}`` replaced by its number."""
    return [flag.replace("{fold}", str(fold)) for flag in train_flags]


def train_folds(runs: list[tuple[int, list[str]]], jobs: int, out: Path,
                on_done: Callable[[int], None] = lambda fold: None) -> None:
    """Train each ``(fold, training.train flags)``: in this process one after another, or with
    ``jobs > 1`` that many at once in their own processes (log: ``fold<k>/train.log``);
    ``on_done(fold)`` as each one finishes.

    Raises:
        SystemExit: a fold's process failed (the others still finish; run again to resume).
    """
    if jobs <= 1:
        for fold, flags in runs:
            train.main(flags)
            on_done(fold)
        return
    import subprocess
    from concurrent.futures import ThreadPoolExecutor, as_completed

    def run(fold: int, flags: list[str]) -> int:
        fold_dir(out, fold).mkdir(parents=True, exist_ok=True)
        with open(fold_dir(out, fold) / "train.log", "a") as log_file:
            return subprocess.run([sys.executable, "-m", "training.train", *flags], stdout=log_file,
                                  stderr=subprocess.STDOUT).returncode

    codes = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run, fold, flags): fold for fold, flags in runs}
        for future in as_completed(futures):
            codes[futures[future]] = future.result()
            if codes[futures[future]] == 0:
                on_done(futures[future])
    failed = sorted(fold for fold, code in codes.items() if code != 0)
    if failed:
        raise SystemExit(f"folds {failed} failed: see {', '.join(str(fold_dir(out, k) / 'train.log') for k in failed)}")


RUNTIME_FLAGS = {"--no-progress": 0, "--threads": 1}
"""Training flags that change how a run is computed, not what it learns: left out of a ledger
entry's recipe (``--device`` and ``--threads`` are crossval's own)."""


def recipe_flags(train_flags: list[str]) -> list[str]:
    """The training flags without the runtime ones (:data:`RUNTIME_FLAGS`)."""
    kept, skip = [], 0
    for flag in train_flags:
        if skip:
            skip -= 1
        elif flag.split("=")[0] in RUNTIME_FLAGS:
            skip = RUNTIME_FLAGS[flag] if "=" not in flag else 0
        else:
            kept.append(flag)
    return kept


def share_folds(source: Path, target: Path) -> None:
    """Copy a fold assignment where there is none yet; two different ones are refused."""
    if not source.is_file():
        return
    if target.is_file():
        if json.loads(source.read_text())["folds"] != json.loads(target.read_text())["folds"]:
            raise SystemExit(f"{source} and {target} assign the cases to different folds: use another --out")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def main(argv: list[str] | None = None) -> dict | None:
    """Train the missing folds, then gather and report; returns the report (None while folds are missing)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = build_parser()
    args = parser.parse_args(own)
    if args.hold_out is not None and (args.ensemble_test or args.folds < 3 or not 0 <= args.hold_out < args.folds):
        parser.error("--hold-out must be one of at least 3 folds, and goes without --ensemble-test")
    if args.tta_oof and (args.hold_out is not None or args.only):
        parser.error("--tta-oof re-predicts a finished ordinary cross-fit: it goes without --hold-out and --only")
    if args.ledger and args.tta_oof:
        parser.error("--tta-oof goes without --ledger (a ledger fold keeps its one-view predictions already)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    data = Derm7pt(args.data_root)
    entry = None
    if args.ledger:
        entry = ledger_lib.open_entry(Path(args.ledger), recipe_flags(train_flags), args.folds, args.fold_seed,
                                      args.hold_out)
        share_folds(entry.path / FOLDS_FILE, out / FOLDS_FILE)
    try:
        folds = ensure_folds(out, data, args.folds, args.fold_seed)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if entry is not None:
        share_folds(out / FOLDS_FILE, entry.path / FOLDS_FILE)
    if args.tta_oof:
        oof = predict_oof(out, args.folds, data, folds, args.tta_oof == "on", args.device)
        torch.save(oof, out / f"oof_tta_{args.tta_oof}.pt")
        report = oof_report(oof)
        log.info("out-of-fold with TTA %s (%d cases): avg %.4f DIAG %.4f -> %s", args.tta_oof, report["n_cases"],
                 report["avg"], report["DIAG"], out / f"oof_tta_{args.tta_oof}.pt")
        return {"tta": args.tta_oof == "on", "out_of_fold": report}
    todo = range(args.folds) if args.only is None else [int(k) for k in args.only.split(",")]
    nested = [] if args.hold_out is None else ["--hold-out", str(args.hold_out)]
    runs = []
    threads = ["--threads", str(args.threads)] if args.threads else []

    def record(fold: int) -> None:
        if entry is not None:
            ledger_lib.record_fold(entry, fold, fold_dir(out, fold), data)
            log.info("fold %d recorded in the ledger: %s", fold, entry.fold_path(fold))

    for fold in (k for k in todo if k != args.hold_out):
        where = fold_dir(out, fold)
        if entry is not None and entry.done(fold):
            log.info("fold %d: in the ledger already (%s)", fold, entry.fold_path(fold))
            continue
        if (where / OOF_FILE).is_file():
            check_fold_run(where, args.hold_out)
            log.info("fold %d: done already (%s)", fold, where)
            record(fold)
            continue
        log.info("fold %d of %d: training on %d cases", fold, args.folds, sum(f != fold for f in folds.values()))
        runs.append((fold, [*fold_flags(train_flags, fold), "--data-root", str(args.data_root), "--out", str(where),
                            "--device", args.device, "--fold", str(fold), "--folds-file", str(out / FOLDS_FILE),
                            *nested, *threads, "--resume"]))
    train_folds(runs, args.jobs, out, on_done=record)
    if entry is not None:
        report = ledger_lib.finish_entry(entry, data)
        if report is None:
            log.info("%s: folds %s still to train; run the same command again", entry.path, entry.pending())
        else:
            r = report["out_of_fold"]
            log.info("%s complete, out-of-fold (%d cases): avg %.4f DIAG %.4f", entry.path, r["n_cases"],
                     r["avg"], r["DIAG"])
        return report
    missing = [k for k in range(args.folds) if k != args.hold_out and not (fold_dir(out, k) / OOF_FILE).is_file()]
    if missing:
        log.info("folds %s still to train; run the same command again", missing)
        return None
    oof = gather_oof(out, args.folds, data, folds, args.hold_out)
    torch.save(oof, out / OOF_FILE)
    report = {"folds": args.folds, "fold_seed": args.fold_seed, "hold_out": args.hold_out,
              "train_flags": train_flags, "out_of_fold": oof_report(oof)}
    if args.ensemble_test:
        report["ensemble_test"] = ensemble_test(out, args.folds, data, args.device)
    (out / "crossval.json").write_text(json.dumps(report, indent=2))
    r = report["out_of_fold"]
    log.info("out-of-fold (%d cases): avg %.4f (folds %.4f +- %.4f), DIAG %.4f", r["n_cases"], r["avg"],
             r["fold_spread"]["avg"]["mean"], r["fold_spread"]["avg"]["sd"], r["DIAG"])
    return report


if __name__ == "__main__":
    main()
