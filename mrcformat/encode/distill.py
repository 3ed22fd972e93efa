"""Knowledge distillation: learn the pretrained model's outputs (`compress(..., teacher=...)`, and the
default objective of a run without labels).

Post-training compression starts from a network that already works. Its outputs carry more
than the labels (how much a 4 resembles a 9: Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network"), and a posterior held to a few bits per weight cannot fit
everything: with the teacher's soft targets its capacity goes to copying the teacher's
function instead of rediscovering it from hard labels. With labels the data term becomes

    (1 - weight) * loss_fn(student, y) + weight * soft term

and without labels it is the soft term alone. The soft term sums, over every float output of
the model (tuples, dicts, nested: `signature.named_leaves`), a divergence that suits the output,
each summed over an example's elements and averaged over the batch (a per-example log-loss, the
unit of the ELBO's data term; the batch axis is 0, or the axis of the inputs' batch size when axis 0
is not it, as in an RNN state (layers, N, hidden)):

* "kl": logits, T^2 * KL(softmax(teacher / T) || softmax(student / T)) over axis 1 (T^2 keeps the
  gradients on the scale of the hard term as T changes);
* "probs": probabilities over axis 1 (a softmax output), KL(teacher || student);
* "bce": independent probabilities in [0, 1] (a sigmoid map, one channel or many), the binary KL
  = BCE(student, teacher) - BCE(teacher, teacher);
* "mse": anything else (box regressions, embeddings, states), 0.5 * (student - teacher)^2 / var,
  var the teacher output's variance on the first batch (outputs of any scale weigh alike);
* a callable (student, teacher) -> loss.

"auto" chooses per output from the teacher's values on a first batch (`prepare`): values in [0, 1]
are "probs" when they sum to 1 over axis 1, else "bce"; a model's only float output of shape
[N, C >= 2] is "kl" (a classifier's logits); everything else "mse". A divergence that cannot
work is refused before training: "kl" over a single channel (softmax of one value is 1: the loss
would be 0 whatever the student does), "probs"/"bce" on values outside [0, 1].
The teacher sees the same, possibly augmented, batch as the student. The KL control (betas) is
unchanged: every block still meets its budget; only what the bits are spent on changes.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .digest import state_digest
from .signature import call, named_leaves, to_device

__all__ = ["DIVERGENCES", "Distillation"]

DIVERGENCES = ("kl", "probs", "bce", "mse")
_PROB_TOL = 1e-6


def _float_leaves(outputs: Any) -> list[tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in named_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _auto_kind(name: str, t: torch.Tensor, only: bool) -> str:
    t = t.detach()
    if t.numel() and bool(t.min() >= 0) and bool(t.max() <= 1):
        if t.dim() >= 2 and t.shape[1] >= 2 and bool(((t.sum(1) - 1).abs() <= 1e-3).all()):
            return "probs"
        return "bce"
    if only and t.dim() == 2 and t.shape[1] >= 2:
        return "kl"
    return "mse"


def _check(name: str, kind, t: torch.Tensor) -> None:
    if callable(kind):
        return
    if kind not in DIVERGENCES:
        raise ValueError(f"output {name!r}: divergence must be one of {DIVERGENCES} or a callable, not {kind!r}")
    if kind in ("kl", "probs") and (t.dim() < 2 or t.shape[1] < 2):
        raise ValueError(f"output {name!r} of shape {tuple(t.shape)}: {kind!r} compares distributions over axis 1, "
                         "which needs at least 2 channels (over one channel it is 0 whatever the student does); "
                         "use 'bce' for a probability map or 'mse'")
    if kind in ("probs", "bce") and t.numel() and not (bool(t.min() >= -_PROB_TOL) and bool(t.max() <= 1 + _PROB_TOL)):
        raise ValueError(f"output {name!r}: {kind!r} needs probabilities, but the teacher gives values in "
                         f"[{float(t.min()):.4g}, {float(t.max()):.4g}]; use 'kl' for logits or 'mse'")


def _per_example(x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Sum over an example's elements, mean over the batch; a 0-d value as it is. The batch axis is 0,
    unless axis 0 is not the batch size `batch` (the inputs') and another axis is: an RNN state
    (layers, N, hidden) is then averaged over its N examples, not over its layers (which would weigh
    it N times as much as an output with the batch first)."""
    if not x.dim():
        return x
    if batch is not None and x.shape[0] != batch and batch in tuple(x.shape[1:]):
        return x.sum() / batch
    return x.sum() / x.shape[0]


def _batch_size(x: Any) -> int | None:
    """The leading size of the first tensor input with an axis (the batch size), or None."""
    for _, leaf in named_leaves(x):
        if isinstance(leaf, torch.Tensor) and leaf.dim():
            return int(leaf.shape[0])
    return None


class Distillation:
    """The distillation data term with a frozen copy of `teacher` (see the module doc)."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, weight: float = 0.9,
                 divergence: str | Callable | dict = "auto") -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], not {weight}")
        self.teacher = copy.deepcopy(teacher).eval()
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.divergence = divergence
        self.teacher_digest = state_digest(self.teacher)
        self.kinds: dict[str, Any] | None = None     # output name -> divergence, set by `prepare`
        self.scales: dict[str, float] = {}           # "mse": the teacher output's variance

    def __repr__(self) -> str:  # part of a run's settings: a checkpoint of another teacher is refused
        extra = "" if self.divergence == "auto" and self.kinds is None else f", divergence={self._kinds_repr()}"
        return f"Distillation(T={self.temperature}, weight={self.weight}, teacher={self.teacher_digest}{extra})"

    def _kinds_repr(self) -> str:
        if self.kinds is None:
            return repr(self.divergence)
        return repr({n: (getattr(k, "__qualname__", repr(k)) if callable(k) else k) for n, k in self.kinds.items()})

    def to(self, device: torch.device | str) -> Distillation:
        self.teacher.to(device)
        return self

    def _choose(self, name: str, t: torch.Tensor, only: bool):
        spec = self.divergence
        if isinstance(spec, dict):
            spec = spec.get(name, "auto")
        return _auto_kind(name, t, only) if spec == "auto" else spec

    @torch.no_grad()
    def prepare(self, inputs: Any) -> dict[str, Any]:
        """Fix each output's divergence from the teacher's outputs on `inputs` (and check that it
        can work); returns {output name: divergence}. Called before training, so that an output
        the divergence cannot handle fails at once and a resumed run chooses the same."""
        device = next(iter(self.teacher.parameters()), torch.empty(0)).device
        leaves = _float_leaves(call(self.teacher, to_device(inputs, device)))
        if not leaves:
            raise ValueError("the model has no floating-point output to learn from")
        if isinstance(self.divergence, dict):
            unknown = set(self.divergence) - {n for n, _ in leaves}
            if unknown:
                raise ValueError(f"divergence names unknown outputs {sorted(unknown)}; "
                                 f"the outputs are {[n for n, _ in leaves]}")
        kinds = {}
        for name, t in leaves:
            kind = self._choose(name, t, len(leaves) == 1)
            _check(name, kind, t)
            kinds[name] = kind
        self._fix(kinds, leaves)
        return kinds

    def _fix(self, kinds: dict, leaves: list) -> None:
        self.kinds = kinds
        for name, t in leaves:
            if kinds[name] == "mse":
                v = float(t.float().var()) if t.numel() > 1 else 0.0
                self.scales[name] = v if v > 0 else max(float(t.float().pow(2).mean()), 1.0)

    def _term(self, name: str, kind, s: torch.Tensor, t: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        if callable(kind):
            return kind(s, t)
        temp = self.temperature
        if kind == "kl":
            target = F.log_softmax(t / temp, dim=1)
            log_s = F.log_softmax(s / temp, dim=1)
            if s.dim() == 2:      # the classifier case, as computed since the first release
                return F.kl_div(log_s, target, reduction="batchmean", log_target=True) * temp ** 2
            return _per_example(F.kl_div(log_s, target, reduction="none", log_target=True), batch) * temp ** 2
        if kind == "probs":
            t = t.clamp(0, 1)
            log_s = torch.log(s.clamp_min(1e-12))
            return _per_example(torch.xlogy(t, t) - t * log_s, batch)
        if kind == "bce":
            t = t.clamp(0, 1)
            s = s.clamp(0, 1)
            ent = F.binary_cross_entropy(t, t, reduction="none")      # the teacher's own entropy: 0 at a match
            return _per_example(F.binary_cross_entropy(s, t, reduction="none") - ent, batch)
        return _per_example(0.5 * (s - t).pow(2), batch) / self.scales.get(name, 1.0)

    def soft_loss(self, student: Any, x: Any) -> torch.Tensor:
        """The soft term over every float output (see the module doc), teacher run on `x`."""
        with torch.no_grad():
            teacher_out = call(self.teacher, x)
        t_leaves = _float_leaves(teacher_out)
        s_leaves = _float_leaves(student)
        if [n for n, _ in s_leaves] != [n for n, _ in t_leaves]:
            raise ValueError(f"student outputs {[n for n, _ in s_leaves]} differ from the teacher's "
                             f"{[n for n, _ in t_leaves]}")
        if self.kinds is None:      # not prepared: chosen from the first batch
            kinds = {}
            for name, t in t_leaves:
                kinds[name] = self._choose(name, t, len(t_leaves) == 1)
                _check(name, kinds[name], t)
            self._fix(kinds, t_leaves)
        total = None
        batch = _batch_size(x)
        for (name, s), (_, t) in zip(s_leaves, t_leaves):
            term = self._term(name, self.kinds[name], s, t, batch)
            total = term if total is None else total + term
        return total

    def __call__(self, student: Any, hard_loss: torch.Tensor | None, x: Any) -> torch.Tensor:
        """The data term: `hard_loss` (loss_fn on the labels) mixed with the soft term; without labels
        (`hard_loss` None) the soft term alone."""
        if hard_loss is None:
            return self.soft_loss(student, x)
        if self.weight == 0.0:
            return hard_loss
        return (1.0 - self.weight) * hard_loss + self.weight * self.soft_loss(student, x)
