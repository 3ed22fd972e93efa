"""Reductions along axes: Reduce*, Softmax/LogSoftmax/Hardmax (opset < 13 semantics too), ArgMax/ArgMin,
TopK, CumSum."""
from __future__ import annotations

import math

import torch

from .common import ints, sqrt

__all__ = ["OPS"]


def _reduce(f):
    def build(a):
        def fn(x, axes=None):
            ax = a.get("axes") if axes is None else ints(axes)
            keep = bool(a.get("keepdims", 1))
            if not ax:
                if a.get("noop_with_empty_axes", 0):
                    return x
                ax = list(range(x.dim()))
            return f(x, dim=tuple(d % x.dim() for d in ax), keepdim=keep)
        return fn
    return build


def _sum_square(x, dim, keepdim):
    return torch.sum(x * x, dim=dim, keepdim=keepdim)


def _l1(x, dim, keepdim):
    return torch.sum(x.abs(), dim=dim, keepdim=keepdim)


def _l2(x, dim, keepdim):
    return sqrt(torch.sum(x * x, dim=dim, keepdim=keepdim))


def _log_sum(x, dim, keepdim):
    return torch.log(torch.sum(x, dim=dim, keepdim=keepdim))


def _log_sum_exp(x, dim, keepdim):
    return torch.logsumexp(x, dim=dim, keepdim=keepdim)


def _prod(x, dim, keepdim):
    for d in sorted(dim, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


def _softmax(f):
    def build(a):
        if a.opset >= 13:
            axis = a.get("axis", -1)
            return lambda x: f(x, dim=axis)
        axis = a.get("axis", 1)

        def fn(x):  # opset < 13: the input is seen as 2-D [prod(shape[:axis]), prod(shape[axis:])]
            ax = axis % x.dim() if x.dim() else 0
            return f(x.reshape(math.prod(x.shape[:ax]), -1), dim=1).reshape(x.shape)
        return fn
    return build


def _hardmax(x, dim):
    return torch.nn.functional.one_hot(x.argmax(dim), x.shape[dim]).movedim(-1, dim).to(x.dtype)


def _arg(f):
    def build(a):
        axis, keep, last = a.get("axis", 0), bool(a.get("keepdims", 1)), a.get("select_last_index", 0)

        def fn(x):
            ax = axis % x.dim()
            if last:
                flipped = x.flip(ax)
                i = x.shape[ax] - 1 - f(flipped, dim=ax, keepdim=keep)
            else:
                i = f(x, dim=ax, keepdim=keep)
            return i.to(torch.int64)
        return fn
    return build


def _topk(a):
    axis, largest, sorted_ = a.get("axis", -1), bool(a.get("largest", 1)), bool(a.get("sorted", 1))
    if a.opset < 10:
        a.require("k")  # required before opset 10

    def fn(x, k=None):
        kk = int(k.reshape(-1)[0].item()) if k is not None else a["k"]
        v, i = torch.topk(x, kk, dim=axis, largest=largest, sorted=sorted_)
        return v, i
    return fn


def _cumulative(op: str):
    def build(a):
        exclusive, reverse = a.get("exclusive", 0), a.get("reverse", 0)

        def fn(x, axis):
            ax = int(axis.reshape(-1)[0].item()) % x.dim()
            y = x.flip(ax) if reverse else x
            if exclusive:  # shift by one along the axis, the identity element first
                fill = torch.zeros_like if op == "sum" else torch.ones_like
                y = torch.cat([fill(y.narrow(ax, 0, 1)), y.narrow(ax, 0, y.shape[ax] - 1)], dim=ax)
            c = torch.cumsum(y, dim=ax) if op == "sum" else torch.cumprod(y, dim=ax)
            return c.flip(ax) if reverse else c
        return fn
    return build


OPS = {
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum), "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin), "ReduceProd": _reduce(_prod), "ReduceSumSquare": _reduce(_sum_square),
    "ReduceL1": _reduce(_l1), "ReduceL2": _reduce(_l2), "ReduceLogSum": _reduce(_log_sum),
    "ReduceLogSumExp": _reduce(_log_sum_exp),
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax), "Hardmax": _softmax(_hardmax),
    "ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin), "TopK": _topk, "CumSum": _cumulative("sum"),
    "CumProd": _cumulative("prod"),
}
