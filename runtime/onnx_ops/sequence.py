"""Sequence operators (lists of tensors, as exporters emit around Loop): construct, insert, erase, index,
length, split into and concatenate from sequences, and optionals. A sequence is a Python list of
tensors here, an empty optional is None."""
from __future__ import annotations

import torch

from .common import ints, onnx_dtype_to_torch
from .tensor import norm_axis

__all__ = ["OPS"]


def _pos(p, n: int, insert: bool = False) -> int:
    i = int(p.reshape(-1)[0].item())
    return i + n + (1 if insert else 0) if i < 0 else i


def _insert(a):
    def fn(seq, t, pos=None):
        out = list(seq)
        out.insert(len(out) if pos is None else _pos(pos, len(out), insert=False), t)
        return out
    return fn


def _erase(a):
    def fn(seq, pos=None):
        out = list(seq)
        del out[-1 if pos is None else _pos(pos, len(out))]
        return out
    return fn


def _split_to_sequence(a):
    axis, keep = a.get("axis", 0), a.get("keepdims", 1)

    def fn(x, split=None):
        ax = norm_axis(a, axis, x.dim())
        if split is None:
            parts = list(torch.split(x, 1, dim=ax))
            return [p.squeeze(ax) for p in parts] if not keep else parts
        s = ints(split)
        sizes = s if split.dim() == 1 else [s[0]] * (x.shape[ax] // s[0]) + (
            [x.shape[ax] % s[0]] if x.shape[ax] % s[0] else [])
        return list(torch.split(x, sizes, dim=ax))
    return fn


def _concat_from_sequence(a):
    axis, new = a["axis"], a.get("new_axis", 0)

    def fn(seq):
        if new:
            return torch.stack(list(seq), dim=axis % (seq[0].dim() + 1))
        return torch.cat(list(seq), dim=norm_axis(a, axis, seq[0].dim()))
    return fn


def _sequence_empty(a):
    onnx_dtype_to_torch(a.get("dtype", 1))
    return list


def _optional(a):
    if "type" in a and not len(a.get("type").ListFields()):
        raise a.error("Optional with an empty type")
    return lambda x=None: x


OPS = {
    "Optional": _optional,
    "OptionalHasElement": lambda a: (lambda x=None: torch.tensor(x is not None)),
    "OptionalGetElement": lambda a: (lambda x=None: x),
    "SequenceConstruct": lambda a: (lambda *xs: list(xs)),
    "SequenceEmpty": _sequence_empty,
    "SequenceAt": lambda a: (lambda seq, p: seq[_pos(p, len(seq))]),
    "SequenceLength": lambda a: (lambda seq: torch.tensor(len(seq), dtype=torch.int64)),
    "SequenceInsert": _insert, "SequenceErase": _erase,
    "SplitToSequence": _split_to_sequence, "ConcatFromSequence": _concat_from_sequence,
}
