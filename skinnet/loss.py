"""The prior-inspired biased loss: a weighted sum of the clinical, dermoscopy and fused terms.

``L = w_clin * L_clin + w_derm * L_derm + w_fused * L_fused``, each term the mean
cross-entropy over the 8 tasks. Equal weights give the unbiased baseline (FusionM4Net's
1/3 each); the method weights dermoscopy above the clinical photo.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .labels import TASK_NAMES, split_logits

EQUAL_WEIGHTS = {"clinical": 1 / 3, "dermoscopy": 1 / 3, "fused": 1 / 3}


def task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                       label_smoothing: float = 0.0, task_weights: dict[str, float] | None = None
                       ) -> torch.Tensor:
    """Mean over the 8 tasks of the cross-entropy of one head's flat logits.

    Args:
        logits: (B, NUM_OUTPUTS).
        labels: (B, 8) class indexes in TASKS order; a negative index (a task no reviewer
            labelled on a corrected upload) leaves that sample out of that task's term.
        mask: (B,) bool, samples that count for this head (all when None).
        task_weights: task name -> weight of its term (missing: 1); the mean is weighted.
    """
    per_task = []
    for t, (name, task_logits) in enumerate(split_logits(logits).items()):
        task_labels = labels[:, t]
        labelled = task_labels >= 0
        loss = F.cross_entropy(task_logits.float(), task_labels.clamp(min=0), reduction="none",
                               label_smoothing=label_smoothing)
        if mask is None and bool(labelled.all()):
            loss = loss.mean()
        else:
            weight = labelled.float() * (mask.float() if mask is not None else 1.0)
            loss = (loss * weight).sum() / weight.sum().clamp(min=1)
        per_task.append(loss)
    if not task_weights:
        return torch.stack(per_task).mean()
    weights = torch.tensor([task_weights.get(name, 1.0) for name in TASK_NAMES], device=logits.device)
    return (torch.stack(per_task) * weights).sum() / weights.sum()


class MultiModalLoss(nn.Module):
    """Weighted sum of the heads' multi-task cross-entropies.

    Args:
        weights: head name -> weight; heads missing from the model's output are skipped.
        label_smoothing: passed to the cross-entropy.
        task_weights: task name -> weight within each head's term (e.g. ``{"DIAG": 2}``).
    """

    def __init__(self, weights: dict[str, float] | None = None, label_smoothing: float = 0.0,
                 task_weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = dict(EQUAL_WEIGHTS if weights is None else weights)
        unknown = set(self.weights) - set(EQUAL_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)} in loss weights; heads: {sorted(EQUAL_WEIGHTS)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.weights}")
        self.label_smoothing = label_smoothing
        unknown = set(task_weights or {}) - set(TASK_NAMES)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)} in task weights; tasks: {TASK_NAMES}")
        self.task_weights = dict(task_weights or {})

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor,
                has_clinical: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and each head's term (as floats, for logging).

        ``has_clinical`` (B,) bool leaves cases without a clinical photo out of the clinical term.
        """
        total = 0.0
        parts = {}
        for head, weight in self.weights.items():
            if head not in outputs or weight == 0:
                continue
            mask = has_clinical.float() if (head == "clinical" and has_clinical is not None) else None
            term = task_cross_entropy(outputs[head], labels, mask, self.label_smoothing, self.task_weights)
            total = total + weight * term
            parts[head] = float(term.detach())
        return total, parts


def parse_weights(text: str) -> dict[str, float]:
    """``"0.2,0.5,0.3"`` -> clinical, dermoscopy, fused weights (command-line form)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ValueError(f"loss weights must be three numbers 'clinical,dermoscopy,fused', got {text!r}")
    return dict(zip(EQUAL_WEIGHTS, values))


def parse_task_weights(text: str) -> dict[str, float]:
    """``"DIAG=2"`` or ``"DIAG=2,PN=1.5"`` -> task weights (command-line form)."""
    error = ValueError(f"task weights look like 'DIAG=2,PN=1.5' with tasks {TASK_NAMES}, got {text!r}")
    weights = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = (part.strip() for part in item.partition("="))
        try:
            weights[name] = float(value)
        except ValueError:
            raise error from None
        if name not in TASK_NAMES or weights[name] < 0:
            raise error
    return weights
