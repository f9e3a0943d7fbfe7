"""The prior-inspired biased loss: a weighted sum of the clinical, dermoscopy and fused terms.

``L = w_clin * L_clin + w_derm * L_derm + w_fused * L_fused``, each term the mean
cross-entropy over the 8 tasks. Equal weights give the unbiased baseline (FusionM4Net's
1/3 each); the method weights dermoscopy above the clinical photo.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .labels import split_logits

EQUAL_WEIGHTS = {"clinical": 1 / 3, "dermoscopy": 1 / 3, "fused": 1 / 3}


def task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the 8 tasks of the cross-entropy of one head's flat logits.

    Args:
        logits: (B, NUM_OUTPUTS).
        labels: (B, 8) class indexes in TASKS order.
        mask: (B,) bool, samples that count for this head (all when None).
    """
    per_task = []
    for t, (name, task_logits) in enumerate(split_logits(logits).items()):
        loss = F.cross_entropy(task_logits.float(), labels[:, t], reduction="none",
                               label_smoothing=label_smoothing)
        if mask is not None:
            loss = (loss * mask).sum() / mask.sum().clamp(min=1)
        else:
            loss = loss.mean()
        per_task.append(loss)
    return torch.stack(per_task).mean()


class MultiModalLoss(nn.Module):
    """Weighted sum of the heads' multi-task cross-entropies.

    Args:
        weights: head name -> weight; heads missing from the model's output are skipped.
        label_smoothing: passed to the cross-entropy.
    """

    def __init__(self, weights: dict[str, float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.weights = dict(EQUAL_WEIGHTS if weights is None else weights)
        unknown = set(self.weights) - set(EQUAL_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)} in loss weights; heads: {sorted(EQUAL_WEIGHTS)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.weights}")
        self.label_smoothing = label_smoothing

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
            term = task_cross_entropy(outputs[head], labels, mask, self.label_smoothing)
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

