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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from skinnet.backbones import normalization
from skinnet.checkpoint import ModelCard, file_sha256, load_checkpoint, save_checkpoint
from skinnet.data import Derm7pt
from skinnet.loss import MultiModalLoss
from skinnet.model import count_parameters, create_model
from skinnet.transforms import BatchAugment, ImageCache

from .data import base_cases, trained_splits, training_cases
from .distill import Teacher, teacher_probabilities, teachers_leak_free
from .distributed import barrier, cleanup, device_for, init_distributed
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


def main(argv: list[str] | None = None) -> Path | None:
    """Train; returns the kept checkpoint's path on the primary process (None elsewhere)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = device_for(args.device, info)
    precision = resolve_precision(args.precision, device)
    amp = precision == "bf16"
    seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    data = Derm7pt(args.data_root)
    train_cases, correction_stats = training_cases(data, args)
    _, valid_cases, _ = base_cases(data, args)  # scored each epoch: valid, or the left-out fold
    cross_fit = args.fold is not None
    keep_last = args.refit or cross_fit  # nothing held out to select on (or it must stay untouched)
    model, mean, std, init_name = build_model(args)
    model.to(device, memory_format=memory_format(args.channels_last))
    log.info("model: %s, %.2fM parameters; %d train / %d valid cases on %s (%s%s)",
             model.config.backbone, count_parameters(model) / 1e6, len(train_cases), len(valid_cases), device,
             precision, ", channels-last" if args.channels_last else "")
    train_cache = ImageCache(train_cases, args.cache_size, device)
    valid_cache = ImageCache(valid_cases, args.image_size, device)
    augment = BatchAugment(args.image_size, mean, std).to(device)
    teacher = None
    if args.distill:
        probabilities, has_target = teacher_probabilities(args.distill.split(","), train_cache.case_ids,
                                                          args.distill_temperature, data)
        leak_free = teachers_leak_free(args.distill.split(","), args.fold, data)
        teacher = Teacher(probabilities, has_target, args.distill_weight, args.distill_temperature).to(device)
        log.info("distillation: soft targets for %d of %d training cases", int(has_target.sum()), len(has_target))
    loss_fn = MultiModalLoss(args.loss_weights, args.label_smoothing, args.task_weights)
    optimizer = make_optimizer(model, args)
    steps_per_epoch = max(1, len(train_cache) // args.batch_size)
    schedule = lr_schedule(optimizer, args, steps_per_epoch)

    from timm.utils import ModelEmaV3
    ema = ModelEmaV3(model, decay=args.ema, use_warmup=True) if args.ema > 0 else None
    swa = None
    if args.swa_start and info.is_primary:
        from torch.optim.swa_utils import AveragedModel
        swa = AveragedModel(ema.module if ema is not None else model, use_buffers=False)
    state_path = out / STATE_FILE
    start_epoch, best, history = 0, -1.0, []
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        if swa is not None and state.get("swa") is not None:
            swa.load_state_dict(state["swa"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], json.loads(state["history"])
        log.info("resumed from %s at epoch %d (best valid avg %.4f)", state_path, start_epoch, best)
    train_model = DistributedDataParallel(model) if info.enabled else model
    if args.compile:
        train_model = torch.compile(train_model)
    layout = {"device": device, "amp": amp, "channels_last": args.channels_last}
    card = ModelCard(name=args.name, model=model.config.to_dict(), image_size=args.image_size,
                     mean=tuple(mean), std=tuple(std), loss_weights=args.loss_weights)
    checkpoint = out / f"{args.name}.safetensors"

    progress = None
    if info.is_primary and not args.no_progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=(args.epochs - start_epoch) * steps_per_epoch, unit="step", dynamic_ncols=True)

    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        torch.manual_seed(args.seed * 100_003 + epoch)  # augmentation, dropout: a resumed run repeats them

        def on_step(stats, epoch=epoch):
            if ema is not None:
                ema.update(model, step=epoch * steps_per_epoch + stats["step"])
            if progress is not None:
                progress.update(1)
                progress.set_postfix(epoch=epoch + 1, loss=f"{stats['loss']:.3f}",
                                     best_valid=f"{max(best, 0):.3f}")

        train_stats = train_one_epoch(train_model, train_cache, augment, loss_fn, optimizer, schedule,
                                      epoch=epoch, batch_size=args.batch_size, seed=args.seed, info=info,
                                      step_offset=epoch * steps_per_epoch, on_step=on_step,
                                      mixup=args.mixup, teacher=teacher, **layout)
        if info.is_primary:
            scored = ema.module if ema is not None else model
            logits = predict_cache(scored, valid_cache, augment, **layout)
            labels = valid_cache.labels.cpu()
            fused = task_accuracies(logits["fused"], labels)
            row = {"epoch": epoch + 1, **train_stats, "valid_avg": fused["avg"],
                   **{f"valid_{t}": fused[t] for t in fused if t != "avg"},
                   "valid_dermoscopy_avg": task_accuracies(logits["dermoscopy"], labels)["avg"],
                   "valid_clinical_avg": task_accuracies(logits["clinical"], labels)["avg"],
                   "lr": optimizer.param_groups[-1]["lr"]}
            history.append(row)
            if fused["avg"] > best or keep_last:
                best = fused["avg"]
                card.training = {"best_epoch": epoch + 1}
                save_checkpoint(scored, card, checkpoint)
            if swa is not None and epoch + 1 >= args.swa_start:
                swa.update_parameters(scored)
                recompute_batchnorm(swa.module, train_cache, augment, **layout)
                swa_logits = predict_cache(swa.module, valid_cache, augment, **layout)
                row["valid_swa_avg"] = task_accuracies(swa_logits["fused"], labels)["avg"]
                if row["valid_swa_avg"] > best or keep_last:
                    best = row["valid_swa_avg"]
                    card.training = {"best_epoch": epoch + 1, "swa_epochs": [args.swa_start, epoch + 1]}
                    save_checkpoint(swa.module, card, checkpoint)
            row["seconds"] = time.time() - epoch_start
            swa_note = f" swa {row['valid_swa_avg']:.4f}" if "valid_swa_avg" in row else ""
            log.info("epoch %d/%d loss %.4f valid avg %.4f%s (best %.4f) %.0fs", epoch + 1, args.epochs,
                     train_stats.get("loss", float("nan")), fused["avg"], swa_note, best, row["seconds"])
            pd.DataFrame(history).to_csv(out / "metrics.csv", index=False)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "ema": ema.module.state_dict() if ema is not None else None,
                        "swa": swa.state_dict() if swa is not None else None,
                        "epoch": epoch, "best": best, "history": json.dumps(history)}, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)  # a kill mid-write leaves the last good state
        barrier(info)
    if progress is not None:
        progress.close()
    if not info.is_primary:
        cleanup(info)
        return None

    plot_curves(history, out / "curves.png", refit=args.refit)
    kept, card = load_checkpoint(checkpoint, device)
    # a refit has learnt valid: calibrating on it would fit training data (raw softmax instead);
    # a fold model's calibration comes later, from all folds' out-of-fold logits (training.crossval)
    card.calibration = {} if keep_last else fit_calibration(kept, card, valid_cases, device, cache=valid_cache)
    card.training = {
        **card.training, "seed": args.seed, "epochs": args.epochs, "image_size": args.image_size,
        "batch_size": args.batch_size, "lr": args.lr, "backbone_lr_scale": args.backbone_lr_scale,
        "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing, "mixup": args.mixup,
        "task_weights": args.task_weights, "ema": args.ema, "swa_start": args.swa_start,
        **({"distill": {"teachers": [Path(p).parent.name or str(p) for p in args.distill.split(",")],
                        "weight": args.distill_weight, "temperature": args.distill_temperature,
                        "n_cases_with_targets": int(teacher.has_target.sum()),
                        **({"leak_free": leak_free} if cross_fit else {})}} if teacher else {}),
        "tta": args.tta, "pretrained": args.pretrained if not args.init else f"init:{init_name}",
        "data": {"dataset": "Derm7pt release_v0",
                 "split": "+".join(trained_splits(args.refit or cross_fit)),
                 **({"less_fold": args.fold, "folds_sha256": file_sha256(args.folds_file)} if cross_fit else {}),
                 **({"held_out_fold": args.hold_out} if args.hold_out is not None else {}),
                 "n_train_cases": len(train_cases), "train_fraction": args.train_fraction,
                 **correction_stats},
        "precision": precision, "channels_last": args.channels_last,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "world_size": info.world_size, "minutes": round((time.time() - started) / 60, 1),
    }
    save_checkpoint(kept, card, checkpoint)
    if cross_fit:
        return finish_fold(kept, card, checkpoint, valid_cache, valid_cases, args, device, info)
    metrics = {"valid": evaluate_model(kept, card, valid_cases, split="valid", device=device, cache=valid_cache)}
    if args.score_test and not args.limit_cases:
        metrics["test"] = evaluate_model(kept, card, data.split("test"), split="test", device=device,
                                         figures=out, checkpoint=checkpoint,
                                         command=["python", "-m", "training.train", *(sys.argv[1:] if argv is None else argv)])
    card.metrics = {split: card_summary(record) for split, record in metrics.items()}
    save_checkpoint(kept, card, checkpoint)
    (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    log.info("kept epoch %s: valid avg %.4f%s", card.training["best_epoch"], metrics["valid"]["avg"],
             f", test avg {metrics['test']['avg']:.4f}" if "test" in metrics else "")
    cleanup(info)
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
