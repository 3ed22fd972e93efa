"""Which parameters of a model are coded, and how they form groups.

Any floating-point parameter can be coded, whatever module holds it (Linear, ConvNd,
ConvTranspose, LSTM/GRU and their cells, Embedding, PReLU, norms, custom modules): the choice
is made on parameters, not on a list of layer classes. A parameter is a *bias* when its own name
starts with "bias" (Linear's bias, LSTM's bias_ih_l0, ...) and a *weight* otherwise.

* Weights are coded by a rule: `CodeRule` (size threshold, glob patterns on the state_dict name
  to include or exclude) or any callable (name, parameter) -> bool.
* Biases follow their module's weights and the `biases` option: "coded" (in the module's group),
  "separate" (a group of their own, never hashed) or "raw"; a bias of a module with no coded
  weight stays raw. An `exclude` pattern keeps a bias raw too.
* One group per module (its path names the group, "model" for the root), members in the order
  the module registers them. A parameter shared by several modules (tied weights) stays raw: a
  coded tensor has one place in one group.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Union

from torch import nn

from .blocks import GroupSpec

__all__ = ["BIASES", "CodeRule", "coded_specs"]

BIASES = ("coded", "separate", "raw")


@dataclass(frozen=True)
class CodeRule:
    """Weights with at least `min_size` elements are coded; a name matching an `include` glob is coded
    whatever its size, one matching an `exclude` glob never (exclude wins). The default codes every
    Linear/Conv/LSTM/Embedding weight of any useful size and leaves PReLU slopes and the scales of
    small norms raw (a handful of values gains nothing from coding and costs a block's bits)."""

    min_size: int = 64
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def __call__(self, name: str, param) -> bool:
        if self.excluded(name):
            return False
        return param.numel() >= self.min_size or any(fnmatch.fnmatchcase(name, p) for p in self.include)


Rule = Union[CodeRule, Callable]


def _is_bias(attr: str) -> bool:
    return attr.startswith("bias")


def _ratio(hashing: float | dict | None, name: str) -> float:
    return hashing.get(name, 1.0) if isinstance(hashing, dict) else float(hashing or 1.0)


def coded_specs(model: nn.Module, biases: str = "coded", hashing: float | dict | None = None,
                rule: Rule | None = None, group_by: str = "module") -> list[GroupSpec]:
    """The groups of `model` under `rule` (default `CodeRule()`) and `biases` (see the module doc).

    hashing: weights per coded value, one ratio or {group name: ratio}. group_by: "module" (one group
    per module, named by its path) or "tensor" (one per coded parameter, named by it: for modules that
    hold unrelated tensors, such as a converted ONNX graph's weight store).
    """
    if group_by not in ("module", "tensor"):
        raise ValueError(f"group_by must be 'module' or 'tensor', not {group_by!r}")
    if biases not in BIASES:
        raise ValueError(f"biases must be one of {BIASES}, not {biases!r}")
    rule = CodeRule() if rule is None else rule
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    specs = []
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        own = [(f"{prefix}{attr}", attr, p) for attr, p in module.named_parameters(recurse=False)
               if p.is_floating_point() and uses[id(p)] == 1 and p.numel()]
        weights = {name for name, attr, p in own if not _is_bias(attr) and rule(name, p)}
        if not weights:
            continue
        excluded = rule.excluded if isinstance(rule, CodeRule) else (lambda name: False)
        bias = {name for name, attr, _ in own if _is_bias(attr) and not excluded(name)}
        members = [(name, tuple(p.shape)) for name, _, p in own
                   if name in weights or (biases == "coded" and name in bias)]
        if group_by == "tensor":      # a bias is never hashed
            specs.extend(GroupSpec(name, [(name, shape)], _ratio(hashing, name) if name in weights else 1.0)
                         for name, shape in members)
        else:
            specs.append(GroupSpec(path or "model", members, _ratio(hashing, path)))
        if biases == "separate":
            specs.extend(GroupSpec(name, [(name, tuple(p.shape))], 1.0) for name, _, p in own if name in bias)
    return specs
