"""Train a skinnet model on Derm7pt (and reviewers' corrections).

    python -m training.train --data-root /path/to/release_v0 --out runs/lite0 [options]
    torchrun --nproc_per_node 4 -m training.train ...   # DistributedDataParallel

The data is decoded once into a uint8 cache on the training device and augmented there in
batches. The kept checkpoint is the epoch with the best validation average of the 8 task
accuracies (fused head); it is then calibrated on validation.
With ``--refit`` (a final fit once valid has chosen the recipe) valid is trained on too, the
last epoch is kept and no calibration is fitted. Test is scored only with ``--score-test``
(once per shipped candidate; every scoring is logged in benchmarks/results/test_log.csv).
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from skinnet.backbones import normalization
from skinnet.checkpoint import ModelCard, file_sha256, load_checkpoint, save_checkpoint, update_card
from skinnet.data import Derm7pt
from skinnet.loss import MultiModalLoss
from skinnet.model import count_parameters, create_model
from skinnet.transforms import BatchAugment, ImageCache

from .data import base_cases, trained_splits, training_cases
from .distill import Teacher, teacher_probabilities, teachers_leak_free
from .config import TrainConfig
from .distributed import DistInfo, barrier, cleanup, device_for, init_distributed
from .evaluate import card_summary, evaluate_model, fit_calibration
from .loop import predict_cache, recompute_batchnorm, train_one_epoch
from .metrics import task_accuracies
from .params import parse_args
from .precision import memory_format, resolve_precision

log = logging.getLogger("skinnet.train")
STATE_FILE = "last_state.pt"
OOF_FILE = "oof.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(args):
    """The model to train and its card skeleton (from --init, or from the flags)."""
    if args.init:
        model, init_card = load_checkpoint(args.init)
        if init_card.trained_on_valid and not args.refit:
            raise SystemExit(f"--init {args.init} was trained on the valid split (a refit or a fold model): "
                             "valid can no longer choose epochs or fit calibration, so fine-tune it with --refit")
        return model, init_card.mean, init_card.std, init_card.name
    pretrained = {"offline": "offline", "hub": True, "none": False}[args.pretrained]
    backbone_kwargs = {"drop_path_rate": args.drop_path} if args.drop_path > 0 else {}
    model = create_model(pretrained=pretrained, backbone=args.backbone, shared=not args.two_encoders,
                         cross_attention_stages=args.cross_attention, attention_dim=args.attention_dim,
                         attention_heads=args.attention_heads, attention_sharing=args.attention_sharing,
                         bn_mode=args.bn_mode, dropout=args.dropout,
                         backbone_kwargs=backbone_kwargs)
    mean, std = normalization(args.backbone, pretrained)
    return model, mean, std, None


def make_optimizer(model, args):
    encoder_ids = {id(p) for name, p in model.named_parameters() if "encoder" in name.split(".")[0]}
    encoder = [p for p in model.parameters() if id(p) in encoder_ids]
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    groups = [{"params": encoder, "lr_scale": args.backbone_lr_scale}, {"params": rest, "lr_scale": 1.0}]
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def lr_schedule(optimizer, args, steps_per_epoch: int):
    total = max(1, args.epochs * steps_per_epoch)
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def set_lr(step: int) -> None:
        if step < warmup:
            factor = (step + 1) / warmup
        else:
            factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * group["lr_scale"] * factor

    return set_lr


def plot_curves(history: list[dict], path: Path, refit: bool = False) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for column in ("loss", "clinical", "dermoscopy", "fused"):
        if column in frame:
            left.plot(frame["epoch"], frame[column], label=column if column != "loss" else "total loss")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.legend()
    for column in ("valid_avg", "valid_DIAG", "valid_dermoscopy_avg", "valid_clinical_avg", "valid_swa_avg"):
        if column in frame:
            right.plot(frame["epoch"], 100 * frame[column], label=column.replace("_", " "),
                       linestyle="--" if column == "valid_swa_avg" else "-")
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy (%)" + (", trained on (refit)" if refit else ""))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass
class Run:
    """Where a run computes and what it learns from (what :func:`start` and :func:`load_data` set up)."""

    config: TrainConfig
    command: list[str]
    info: DistInfo
    device: str
    precision: str
    out: Path
    started: float
    data: Derm7pt | None = None
    train_cases: list = field(default_factory=list)
    valid_cases: list = field(default_factory=list)
    correction_stats: dict = field(default_factory=dict)
    train_cache: ImageCache | None = None
    valid_cache: ImageCache | None = None
    augment: BatchAugment | None = None
    teacher: Teacher | None = None
    leak_free: bool | None = None

    @property
    def layout(self) -> dict:
        """The keyword arguments that tell the loops how to compute."""
        return {"device": self.device, "amp": self.precision == "bf16", "channels_last": self.config.channels_last}


@dataclass
class Trainer:
    """The model and what trains it (:func:`build_trainer`), and where it stands (epoch, best, history)."""

    model: torch.nn.Module
    train_model: torch.nn.Module
    card: ModelCard
    checkpoint: Path
    init_name: str | None
    loss_fn: MultiModalLoss
    optimizer: torch.optim.Optimizer
    schedule: object
    steps_per_epoch: int
    ema: object = None
    swa: object = None
    start_epoch: int = 0
    best: float = -1.0
    history: list = field(default_factory=list)

    @property
    def scored(self) -> torch.nn.Module:
        """The weights that are scored and kept: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model


def main(argv: list[str] | None = None) -> Path | None:
    """Train; returns the kept checkpoint's path on the primary process (None elsewhere)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    run = start(parse_args(argv), ["python", "-m", "training.train", *argv])
    load_data(run)
    trainer = build_trainer(run)
    train_epochs(run, trainer)
    if not run.info.is_primary:
        cleanup(run.info)
        return None
    return finish(run, trainer)


def start(config: TrainConfig, command: list[str]) -> Run:
    """Logging, threads, processes, device, precision and seed of a run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if config.threads:
        torch.set_num_threads(config.threads)
    info = init_distributed(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = device_for(config.device, info)
    seed_everything(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    return Run(config, command, info, device, resolve_precision(config.precision, device), out, time.time())


def load_data(run: Run) -> None:
    """The cases to learn and to score each epoch, decoded once; the teacher's soft targets."""
    config = run.config
    run.data = Derm7pt(config.data_root)
    run.train_cases, run.correction_stats = training_cases(run.data, config)
    _, run.valid_cases, _ = base_cases(run.data, config)  # scored each epoch: valid, or the left-out fold


def build_trainer(run: Run) -> Trainer:
    """Model, loss, optimiser, schedule, EMA and SWA, resumed from ``last_state.pt`` if asked."""
    config, device = run.config, run.device
    model, mean, std, init_name = build_model(config)
    model.to(device, memory_format=memory_format(config.channels_last))
    log.info("model: %s, %.2fM parameters; %d train / %d valid cases on %s (%s%s)",
             model.config.backbone, count_parameters(model) / 1e6, len(run.train_cases), len(run.valid_cases),
             device, run.precision, ", channels-last" if config.channels_last else "")
    run.train_cache = ImageCache(run.train_cases, config.cache_size, device)
    run.valid_cache = ImageCache(run.valid_cases, config.image_size, device)
    run.augment = BatchAugment(config.image_size, mean, std, **config.augmentation()).to(device)
    if config.distill:
        teachers = config.distill.split(",")
        probabilities, has_target = teacher_probabilities(teachers, run.train_cache.case_ids,
                                                          config.distill_temperature, run.data)
        run.leak_free = teachers_leak_free(teachers, config.fold, run.data)
        run.teacher = Teacher(probabilities, has_target, config.distill_weight, config.distill_temperature).to(device)
        log.info("distillation: soft targets for %d of %d training cases", int(has_target.sum()), len(has_target))
    optimizer = make_optimizer(model, config)
    steps_per_epoch = max(1, len(run.train_cache) // config.batch_size)
    from timm.utils import ModelEmaV3
    ema = ModelEmaV3(model, decay=config.ema, use_warmup=True) if config.ema > 0 else None
    swa = None
    if config.swa_start and run.info.is_primary:
        from torch.optim.swa_utils import AveragedModel
        swa = AveragedModel(ema.module if ema is not None else model, use_buffers=False)
    train_model = DistributedDataParallel(model) if run.info.enabled else model
    if config.compile:
        train_model = torch.compile(train_model)
    card = ModelCard(name=config.name, model=model.config.to_dict(), image_size=config.image_size,
                     mean=tuple(mean), std=tuple(std), loss_weights=config.loss_weights,
                     inference={"tta": config.tta})
    trainer = Trainer(model, train_model, card, run.out / f"{config.name}.safetensors", init_name,
                      MultiModalLoss(config.loss_weights, config.label_smoothing, config.task_weights), optimizer,
                      lr_schedule(optimizer, config, steps_per_epoch), steps_per_epoch, ema, swa)
    if config.resume:
        resume(trainer, run.out / STATE_FILE, device)
    return trainer


def resume(trainer: Trainer, state_path: Path, device: str) -> None:
    if not state_path.is_file():
        return
    state = torch.load(state_path, map_location=device, weights_only=True)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.ema is not None and state.get("ema") is not None:
        trainer.ema.module.load_state_dict(state["ema"])
    if trainer.swa is not None and state.get("swa") is not None:
        trainer.swa.load_state_dict(state["swa"])
    trainer.start_epoch, trainer.best, trainer.history = state["epoch"] + 1, state["best"], json.loads(state["history"])
    log.info("resumed from %s at epoch %d (best valid avg %.4f)", state_path, trainer.start_epoch, trainer.best)


def train_epochs(run: Run, trainer: Trainer) -> None:
    """The epochs left: train, score on the held-out cases, keep the best (or last) weights, save state."""
    config = run.config
    progress = None
    if run.info.is_primary and not config.no_progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=(config.epochs - trainer.start_epoch) * trainer.steps_per_epoch, unit="step",
                        dynamic_ncols=True)
    for epoch in range(trainer.start_epoch, config.epochs):
        epoch_start = time.time()
        torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation, dropout: a resumed run repeats them

        def on_step(stats, epoch=epoch):
            if trainer.ema is not None:
                trainer.ema.update(trainer.model, step=epoch * trainer.steps_per_epoch + stats["step"])
            if progress is not None:
                progress.update(1)
                progress.set_postfix(epoch=epoch + 1, loss=f"{stats['loss']:.3f}",
                                     best_valid=f"{max(trainer.best, 0):.3f}")

        train_stats = train_one_epoch(trainer.train_model, run.train_cache, run.augment, trainer.loss_fn,
                                      trainer.optimizer, trainer.schedule, epoch=epoch, batch_size=config.batch_size,
                                      seed=config.seed, info=run.info, step_offset=epoch * trainer.steps_per_epoch,
                                      on_step=on_step, mixup=config.mixup, teacher=run.teacher, **run.layout)
        if run.info.is_primary:
            score_epoch(run, trainer, epoch, train_stats, epoch_start)
        barrier(run.info)
    if progress is not None:
        progress.close()


def score_epoch(run: Run, trainer: Trainer, epoch: int, train_stats: dict, epoch_start: float) -> None:
    """Score the epoch on the held-out cases, keep it if it is the best (or must be kept), log,
    and save the state a resumed run starts from."""
    config, card = run.config, trainer.card
    logits = predict_cache(trainer.scored, run.valid_cache, run.augment, **run.layout)
    labels = run.valid_cache.labels.cpu()
    fused = task_accuracies(logits["fused"], labels)
    row = {"epoch": epoch + 1, **train_stats, "valid_avg": fused["avg"],
           **{f"valid_{t}": fused[t] for t in fused if t != "avg"},
           "valid_dermoscopy_avg": task_accuracies(logits["dermoscopy"], labels)["avg"],
           "valid_clinical_avg": task_accuracies(logits["clinical"], labels)["avg"],
           "lr": trainer.optimizer.param_groups[-1]["lr"]}
    trainer.history.append(row)
    if fused["avg"] > trainer.best or config.keep_last:
        trainer.best = fused["avg"]
        card.training = {"best_epoch": epoch + 1}
        save_checkpoint(trainer.scored, card, trainer.checkpoint)
    if trainer.swa is not None and epoch + 1 >= config.swa_start:
        trainer.swa.update_parameters(trainer.scored)
        recompute_batchnorm(trainer.swa.module, run.train_cache, run.augment, **run.layout)
        swa_logits = predict_cache(trainer.swa.module, run.valid_cache, run.augment, **run.layout)
        row["valid_swa_avg"] = task_accuracies(swa_logits["fused"], labels)["avg"]
        if row["valid_swa_avg"] > trainer.best or config.keep_last:
            trainer.best = row["valid_swa_avg"]
            card.training = {"best_epoch": epoch + 1, "swa_epochs": [config.swa_start, epoch + 1]}
            save_checkpoint(trainer.swa.module, card, trainer.checkpoint)
    row["seconds"] = time.time() - epoch_start
    swa_note = f" swa {row['valid_swa_avg']:.4f}" if "valid_swa_avg" in row else ""
    log.info("epoch %d/%d loss %.4f valid avg %.4f%s (best %.4f) %.0fs", epoch + 1, config.epochs,
             train_stats.get("loss", float("nan")), fused["avg"], swa_note, trainer.best, row["seconds"])
    pd.DataFrame(trainer.history).to_csv(run.out / "metrics.csv", index=False)
    state_path = run.out / STATE_FILE
    torch.save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                "ema": trainer.ema.module.state_dict() if trainer.ema is not None else None,
                "swa": trainer.swa.state_dict() if trainer.swa is not None else None,
                "epoch": epoch, "best": trainer.best, "history": json.dumps(trainer.history)},
               state_path.with_suffix(".tmp"))
    state_path.with_suffix(".tmp").replace(state_path)  # a kill mid-write leaves the last good state


def teacher_name(path: str) -> str:
    """A teacher as the card names it: a ledger entry's folder (experiments/teach_k0), or the run
    folder of a cross-fit's oof.pt (runs/cv_lite2/oof.pt: cv_lite2)."""
    path = Path(path)
    return (path.name if path.is_dir() or not path.suffix else path.parent.name) or str(path)


def training_record(run: Run, trainer: Trainer) -> dict:
    """The card's ``training`` section: the whole config, and what the run did with it."""
    config = run.config
    teacher = run.teacher
    return {
        **trainer.card.training, "seed": config.seed, "epochs": config.epochs, "image_size": config.image_size,
        "batch_size": config.batch_size, "lr": config.lr, "backbone_lr_scale": config.backbone_lr_scale,
        "weight_decay": config.weight_decay, "label_smoothing": config.label_smoothing, "mixup": config.mixup,
        "task_weights": config.task_weights, "ema": config.ema, "swa_start": config.swa_start,
        **({"distill": {"teachers": [teacher_name(p) for p in config.distill.split(",")],
                        "weight": config.distill_weight, "temperature": config.distill_temperature,
                        "n_cases_with_targets": int(teacher.has_target.sum()),
                        **({"leak_free": run.leak_free} if config.cross_fit else {})}} if teacher else {}),
        "tta": config.tta, "pretrained": config.pretrained if not config.init else f"init:{trainer.init_name}",
        "data": {"dataset": "Derm7pt release_v0",
                 "split": "+".join(trained_splits(config.keep_last)),
                 **({"less_fold": config.fold, "folds_sha256": file_sha256(config.folds_file)} if config.cross_fit else {}),
                 **({"held_out_fold": config.hold_out} if config.hold_out is not None else {}),
                 "n_train_cases": len(run.train_cases), "train_fraction": config.train_fraction,
                 **run.correction_stats},
        "precision": run.precision, "channels_last": config.channels_last,
        "device": torch.cuda.get_device_name(run.device) if run.device.startswith("cuda") else "cpu",
        "world_size": run.info.world_size, "minutes": round((time.time() - run.started) / 60, 1),
        "config": config.to_card(),
    }


def finish(run: Run, trainer: Trainer) -> Path:
    """Reload the kept weights, calibrate (unless nothing held out may), record, and evaluate:
    a fold model predicts its fold; another model its valid split (and test with --score-test)."""
    config, device, out, checkpoint = run.config, run.device, run.out, trainer.checkpoint
    plot_curves(trainer.history, out / "curves.png", refit=config.refit)
    kept, card = load_checkpoint(checkpoint, device)
    # a refit has learnt valid: calibrating on it would fit training data (raw softmax instead);
    # a fold model's calibration comes later, from all folds' out-of-fold logits (training.crossval)
    card.calibration = {} if config.keep_last else fit_calibration(kept, card, run.valid_cases, device,
                                                                   cache=run.valid_cache)
    trainer.card = card
    card.training = training_record(run, trainer)
    save_checkpoint(kept, card, checkpoint)
    if config.cross_fit:
        return finish_fold(kept, card, checkpoint, run.valid_cache, run.valid_cases, config, device, run.info)
    metrics = {"valid": evaluate_model(kept, card, run.valid_cases, split="valid", device=device,
                                       cache=run.valid_cache)}
    if config.score_test and not config.limit_cases:
        metrics["test"] = evaluate_model(kept, card, run.data.split("test"), split="test", device=device,
                                         figures=out, checkpoint=checkpoint, command=run.command)
    card.metrics = {split: card_summary(record) for split, record in metrics.items()}
    update_card(card, checkpoint)  # the weights stay the file whose hash the test log holds
    (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    log.info("kept epoch %s: valid avg %.4f%s", card.training["best_epoch"], metrics["valid"]["avg"],
             f", test avg {metrics['test']['avg']:.4f}" if "test" in metrics else "")
    cleanup(run.info)
    return checkpoint


def finish_fold(model, card: ModelCard, checkpoint: Path, cache: ImageCache, cases, args, device: str,
                info) -> Path:
    """A fold model's out-of-fold logits (every head, TTA as the card says; float32 whatever the
    training precision) in ``oof.pt`` (with flips, also one view in ``oof_tta_off.pt``), and its scores on the fold it never saw in its card; test
    is not scored (the folds' ensemble is)."""
    augment = BatchAugment(card.image_size, card.mean, card.std).to(device)
    out = checkpoint.parent
    for views, tta in ([("tta_off", False)] if args.tta else []) + [("", args.tta)]:  # oof.pt last: it marks done
        logits = predict_cache(model, cache, augment, device=device, tta=tta)
        torch.save({"case_ids": [c.case_id for c in cases], "fold": args.fold, "logits": logits,
                    "labels": cache.labels.cpu(), "has_clinical": cache.has_clinical.cpu()},
                   out / (f"oof_{views}.pt" if views else OOF_FILE))
    record = evaluate_model(model, card, cases, split=f"fold{args.fold}", device=device, cache=cache)
    card.metrics = {"out_of_fold": card_summary(record)}
    save_checkpoint(model, card, checkpoint)
    (out / "eval.json").write_text(json.dumps({"out_of_fold": record}, indent=2))
    log.info("fold %d: out-of-fold avg %.4f DIAG %.4f (%d cases)", args.fold, record["avg"],
             record["tasks"]["DIAG"], len(cases))
    cleanup(info)
    return checkpoint


if __name__ == "__main__":
    main(sys.argv[1:])
