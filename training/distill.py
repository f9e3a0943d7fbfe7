"""Distillation from a cross-fitted teacher: soft targets that never come from a model that saw the case.

The teacher is the fold models of ``training.crossval``; a training case's soft target is the
out-of-fold prediction for it, made by the one fold model that did not train on it (so the
teacher never hands the student its own memorised label). Several cross-fitted runs (seeds,
a larger backbone) can be given: their out-of-fold probabilities are averaged.

Loss per head: ``(1 - weight) * hard + weight * T^2 * mean over tasks of KL(teacher_T || student_T)``
where ``_T`` is a softmax at temperature T (Hinton et al. 2015); the heads are weighted as in
the hard loss. Cases without a soft target (a reviewer's new upload) get the hard loss only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from skinnet.data import Derm7pt
from skinnet.labels import split_logits

from .ledger import read_oof


def teacher_probabilities(paths: list[str | Path], case_ids: list[str], temperature: float,
                          data: Derm7pt | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per head ``(N, NUM_OUTPUTS)`` soft targets (task-wise softmax at ``temperature``, averaged
    over the OOF files or ledger entries, which need ``data``) for the cases in order, and which
    cases have one.

    Raises:
        SystemExit: a file is not an OOF file of ``training.crossval`` nor a ledger entry.
    """
    summed: dict[str, torch.Tensor] = {}
    found = torch.zeros(len(case_ids), dtype=torch.bool)
    for path in paths:
        try:
            oof = read_oof(path, data)
            index = {c: i for i, c in enumerate(oof["case_ids"])}
            logits = oof["logits"]
        except (KeyError, ValueError) as err:
            raise SystemExit(f"--distill {path}: not an out-of-fold file of training.crossval ({err})") from None
        rows = torch.tensor([index.get(c, -1) for c in case_ids])
        present = rows >= 0
        if found.any() and not torch.equal(present, found):
            raise SystemExit(f"--distill {path} covers other cases than the first teacher file")
        found = present
        for head, head_logits in logits.items():
            probs = soft_targets(head_logits, temperature)
            picked = torch.zeros(len(case_ids), probs.shape[1])
            picked[present] = probs[rows[present]]
            summed[head] = summed.get(head, 0) + picked / len(paths)
    return summed, found


def teachers_leak_free(paths: list[str | Path], fold: int | None, data: Derm7pt | None = None) -> bool:
    """Whether a fold model's soft targets never saw its own fold: every teacher file was made
    with ``training.crossval --hold-out`` that fold. A teacher held out for another fold is
    refused (it holds out the wrong cases); an ordinary OOF file is allowed (the refit's
    teacher, and the cheaper, optimistic check) and reported as not leak-free.

    Raises:
        SystemExit: a teacher file held out for another fold.
    """
    held = [read_oof(path, data).get("hold_out") for path in paths]
    wrong = [str(p) for p, h in zip(paths, held) if h is not None and h != fold]
    if wrong:
        raise SystemExit(f"--distill {', '.join(wrong)}: made with --hold-out for another fold than "
                         f"{'this refit' if fold is None else f'--fold {fold}'}")
    return fold is not None and all(h == fold for h in held)


def soft_targets(flat_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Task-wise softmax of flat logits at a temperature, same layout."""
    return torch.cat([torch.softmax(t.float() / temperature, -1) for t in split_logits(flat_logits).values()], -1)


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                      mask: torch.Tensor) -> torch.Tensor:
    """``T^2`` times the mean over tasks of ``KL(teacher || student_T)``, averaged over masked cases.

    Args:
        student: (B, NUM_OUTPUTS) logits; teacher: (B, NUM_OUTPUTS) soft targets; mask: (B,) float.
    """
    per_task = []
    for student_task, target in zip(split_logits(student).values(), split_logits(teacher).values()):
        log_student = F.log_softmax(student_task.float() / temperature, -1)
        kl = (target * (target.clamp_min(1e-12).log() - log_student)).sum(-1)
        per_task.append((kl * mask).sum() / mask.sum().clamp(min=1))
    return temperature ** 2 * torch.stack(per_task).mean()


@dataclass
class Teacher:
    """Soft targets of a run's training cases (in cache order) and the distillation settings."""

    probabilities: dict[str, torch.Tensor]
    has_target: torch.Tensor
    weight: float
    temperature: float

    def to(self, device) -> "Teacher":
        self.probabilities = {h: p.to(device) for h, p in self.probabilities.items()}
        self.has_target = self.has_target.to(device)
        return self


def distillation_loss(outputs: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], head_weights: dict[str, float],
                      temperature: float, has_teacher: torch.Tensor, has_clinical: torch.Tensor) -> torch.Tensor:
    """The heads' distillation terms, weighted like the hard loss (clinical: cases with a photo)."""
    total = 0.0
    for head, weight in head_weights.items():
        if head not in outputs or head not in teacher or weight == 0:
            continue
        mask = has_teacher.float() * (has_clinical.float() if head == "clinical" else 1.0)
        total = total + weight * distillation_term(outputs[head], teacher[head], temperature, mask)
    return total
