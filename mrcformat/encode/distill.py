"""Knowledge distillation for `compress(..., teacher=...)`: learn the pretrained model's outputs.

Post-training compression starts from a network that already works. Its outputs carry more
than the labels (how much a 4 resembles a 9: Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network"), and a posterior held to a few bits per weight cannot fit
everything: with the teacher's soft targets its capacity goes to copying the teacher's
function instead of rediscovering it from hard labels. The data term of the variational
objective becomes

    (1 - weight) * loss_fn(student, y) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(T^2 keeps the soft term's gradients on the scale of the hard one as T changes). The teacher
sees the same, possibly augmented, batch as the student. The KL control (betas) is unchanged:
every block still meets its budget; only what the bits are spent on changes.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .digest import state_digest

__all__ = ["Distillation"]


class Distillation:
    """The distillation data term with a frozen copy of `teacher` (logits [N, C] in, like the student)."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, weight: float = 0.9) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], not {weight}")
        self.teacher = copy.deepcopy(teacher).eval()
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.teacher_digest = state_digest(self.teacher)

    def __repr__(self) -> str:  # part of a run's settings: a checkpoint of another teacher is refused
        return f"Distillation(T={self.temperature}, weight={self.weight}, teacher={self.teacher_digest})"

    def to(self, device: torch.device | str) -> Distillation:
        self.teacher.to(device)
        return self

    def soft_loss(self, student: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """T^2 * KL(teacher || student) at temperature T, mean over the batch."""
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x) / self.temperature, dim=1)
        log_s = F.log_softmax(student / self.temperature, dim=1)
        kl = F.kl_div(log_s, target, reduction="batchmean", log_target=True)
        return kl * self.temperature ** 2

    def __call__(self, student: torch.Tensor, hard_loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The data term: `hard_loss` (loss_fn on the labels) mixed with the soft term."""
        if self.weight == 0.0:
            return hard_loss
        return (1.0 - self.weight) * hard_loss + self.weight * self.soft_loss(student, x)
