"""Post-hoc calibration of a head: per task, one temperature and one bias per class.

Fitted on the validation split (never on test) by minimising each task's cross-entropy.
The temperature fixes over- or under-confidence; the bias fixes class priors that label
smoothing, mixup and a skewed training split leave off (the model ranks melanomas well,
AUC 0.86, yet calls too few of them). A bias can change the top class, so evaluation
reports accuracy with and without calibration.

A head's calibration is plain JSON, stored in the checkpoint card::

    {"DIAG": {"temperature": 1.1, "bias": [0.2, -0.4, 0.3, 0.1, 0.0]}, "PN": {...}, ...}
"""
from __future__ import annotations

import torch

from .labels import TASK_BY_NAME, split_logits

# A class missing from the validation labels would drive its bias to -inf: a small
# penalty keeps every bias finite and near 0 unless the data says otherwise.
BIAS_PENALTY = 1e-3
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_task(logits: torch.Tensor, labels: torch.Tensor, biases: bool = True) -> dict:
    """Temperature and class biases minimising one task's NLL on ``(N, C)`` logits
    (``biases=False``: the temperature alone, every bias 0)."""
    logits, labels = logits.detach().float(), labels.long()
    log_t = torch.zeros((), requires_grad=True)
    bias = torch.zeros(logits.shape[1], requires_grad=biases)
    optimizer = torch.optim.LBFGS([log_t, bias] if biases else [log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp() + bias, labels)
        loss = loss + BIAS_PENALTY * (bias ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    bias = bias.detach() - bias.detach().mean()  # softmax ignores a shared offset
    temperature = float(log_t.detach().exp().clamp(*TEMPERATURE_RANGE))
    return {"temperature": round(temperature, 4), "bias": [round(float(b), 4) for b in bias]}


def fit_head(flat_logits: torch.Tensor, labels: torch.Tensor, biases: bool = True) -> dict[str, dict]:
    """One head's calibration from its ``(N, NUM_OUTPUTS)`` logits and ``(N, 8)`` labels."""
    return {task: fit_task(logits, labels[:, t], biases)
            for t, (task, logits) in enumerate(split_logits(flat_logits).items())}


def cross_fit(flat_logits: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor, biases: bool = True) -> torch.Tensor:
    """Out-of-fold calibration: each fold's ``(N, NUM_OUTPUTS)`` logits calibrated by a fit on the
    other folds' logits and ``(N, 8)`` labels only (how a calibration would do on cases it never saw)."""
    out = flat_logits.detach().float().clone()
    for k in folds.unique().tolist():
        held = folds == k
        out[held] = calibrate(flat_logits[held], fit_head(flat_logits[~held], labels[~held], biases))
    return out


def calibrate(flat_logits: torch.Tensor, head_calibration: dict | None) -> torch.Tensor:
    """Calibrated logits, same shape; ``None`` or ``{}`` (an uncalibrated card) is the identity."""
    if not head_calibration:
        return flat_logits
    parts = []
    for task, logits in split_logits(flat_logits.float()).items():
        entry = head_calibration.get(task)
        if entry is None:
            parts.append(logits)
            continue
        bias = torch.tensor(entry.get("bias") or [0.0] * TASK_BY_NAME[task].num_classes,
                            dtype=logits.dtype, device=logits.device)
        parts.append(logits / float(entry.get("temperature", 1.0)) + bias)
    return torch.cat(parts, -1)


def from_temperature(temperature: float) -> dict[str, dict]:
    """A head calibration with one temperature for every task and no bias (cards of format 1)."""
    return {task: {"temperature": float(temperature), "bias": [0.0] * TASK_BY_NAME[task].num_classes}
            for task in TASK_BY_NAME}
