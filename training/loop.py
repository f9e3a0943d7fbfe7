"""One training epoch and batched prediction over a decoded image cache."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from skinnet.loss import MultiModalLoss
from skinnet.inference import predict_logits
from skinnet.transforms import BatchAugment, ImageCache

from .distill import Teacher, distillation_loss
from .distributed import DistInfo
from .precision import autocast, to_layout


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, info: DistInfo) -> list[torch.Tensor]:
    """Shuffled index batches for one epoch; each process takes its share of every batch.

    All processes draw the same permutation (seed + epoch), so the shares are disjoint.
    The last incomplete batch is dropped (BatchNorm dislikes tiny batches).
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    batches = []
    for start in range(0, n - batch_size + 1, batch_size):
        batch = order[start:start + batch_size]
        batches.append(batch[info.rank::info.world_size])
    return batches


def mix_pairs(clinical: torch.Tensor, derm: torch.Tensor, alpha: float, rng: np.random.Generator):
    """Mixup of whole pairs: both images of a case are blended with the same partner case and weight.

    Returns the mixed clinical and dermoscopy batches, the partner of each case (a permutation of
    the batch) and the weight ``lam`` of the original case (``lam ~ Beta(alpha, alpha)``).
    """
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    partner = torch.from_numpy(rng.permutation(len(clinical))).to(clinical.device)
    return (lam * clinical + (1 - lam) * clinical[partner], lam * derm + (1 - lam) * derm[partner],
            partner, lam)


def train_one_epoch(model: nn.Module, cache: ImageCache, augment: BatchAugment, loss_fn: MultiModalLoss,
                    optimizer: torch.optim.Optimizer, schedule: Callable[[int], None], *, epoch: int,
                    batch_size: int, seed: int, info: DistInfo, device: str, amp: bool,
                    step_offset: int, on_step: Callable[[dict], None] | None = None,
                    mixup: float = 0.0, teacher: Teacher | None = None,
                    channels_last: bool = False) -> dict[str, float]:
    """Train over the cache once. Returns the mean loss and per-head terms.

    ``mixup`` > 0 blends every batch's pairs (:func:`mix_pairs`); the loss is the same blend of
    the two cases' losses. With a ``teacher`` the loss is ``(1 - w) * hard + w * distillation``
    (:mod:`training.distill`), the soft targets blended like the images. ``amp``: bfloat16
    autocast; ``channels_last``: the batches in the layout of a channels-last model.
    """
    model.train()
    rng = np.random.default_rng([seed, epoch])
    totals, count = {}, 0
    for i, index in enumerate(epoch_batches(len(cache), batch_size, epoch, seed, info)):
        schedule(step_offset + i)
        index = index.to(cache.labels.device)
        clinical = augment(cache.clinical[index].to(device, non_blocking=True))
        derm = augment(cache.dermoscopy[index].to(device, non_blocking=True))
        labels = cache.labels[index].to(device)
        has_clinical = cache.has_clinical[index].to(device)
        if mixup > 0:
            clinical, derm, partner, lam = mix_pairs(clinical, derm, mixup, rng)
        clinical, derm = to_layout(clinical, channels_last), to_layout(derm, channels_last)
        with autocast(device, amp):
            outputs = model(clinical, derm)
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, parts = loss_fn(outputs, labels, has_clinical)
        if mixup > 0:
            partner_loss, partner_parts = loss_fn(outputs, labels[partner], has_clinical[partner])
            loss = lam * loss + (1 - lam) * partner_loss
            parts = {k: lam * v + (1 - lam) * partner_parts[k] for k, v in parts.items()}
        if teacher is not None:
            targets = {h: p[index] for h, p in teacher.probabilities.items()}
            has_target, photo = teacher.has_target[index], has_clinical
            if mixup > 0:
                targets = {h: lam * p + (1 - lam) * p[partner] for h, p in targets.items()}
                has_target, photo = has_target & has_target[partner], has_clinical & has_clinical[partner]
            soft = distillation_loss(outputs, targets, loss_fn.weights, teacher.temperature, has_target, photo)
            loss = (1 - teacher.weight) * loss + teacher.weight * soft
            parts["distill"] = float(soft.detach())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch} step {i}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count += 1
        for key, value in {"loss": loss.item(), **parts}.items():
            totals[key] = totals.get(key, 0.0) + value
        if on_step is not None:
            on_step({"step": i + 1, "loss": totals["loss"] / count})
    return {k: v / max(count, 1) for k, v in totals.items()}


def predict_cache(model: nn.Module, cache: ImageCache, augment: BatchAugment, *, device: str,
                  batch_size: int = 64, tta: bool = False, amp: bool = False,
                  channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Logits of every head for every case of the cache, (N, NUM_OUTPUTS) each, on the CPU,
    through the library's prediction path (:func:`skinnet.inference.predict_logits`; with
    ``tta`` averaged over the four flips of both images)."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(cache), batch_size):
        index = torch.arange(start, min(start + batch_size, len(cache)), device=cache.labels.device)
        clinical = to_layout(augment(cache.clinical[index].to(device), train=False), channels_last)
        derm = to_layout(augment(cache.dermoscopy[index].to(device), train=False), channels_last)
        for head, logits in predict_logits(model, clinical, derm, tta, autocast(device, amp)).items():
            chunks.setdefault(head, []).append(logits.cpu())
    model.train(was_training)
    return {head: torch.cat(parts) for head, parts in chunks.items()}


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, cache: ImageCache, augment: BatchAugment, *, device: str,
                        batch_size: int = 64, amp: bool = False, channels_last: bool = False) -> None:
    """Re-estimate every BatchNorm's running statistics on augmented training batches.

    Averaged weights (SWA) do not match any model's running statistics, so they are measured
    again: one pass, cumulative average, with only the BatchNorm layers in training mode (so
    drop-path and dropout stay off).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    model.eval()
    saved_momentum = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(cache), batch_size):
        index = torch.arange(start, min(start + batch_size, len(cache)), device=cache.labels.device)
        clinical = to_layout(augment(cache.clinical[index].to(device)), channels_last)
        derm = to_layout(augment(cache.dermoscopy[index].to(device)), channels_last)
        with autocast(device, amp):
            model(clinical, derm)
    for m, momentum in zip(norms, saved_momentum):
        m.momentum = momentum
    model.train(was_training)
