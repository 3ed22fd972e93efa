"""Layer operators with weights: Gemm, MatMul, Einsum, BatchNormalization, Instance/Layer/Group normalisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Unsupported, binary

__all__ = ["OPS"]


def _gemm(a):
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    ta, tb = a.get("transA", 0), a.get("transB", 0)

    def fn(x, w, c=None):
        if not ta and tb and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() <= 1):
            return F.linear(x, w, c)  # what nn.Linear computes, same kernel
        y = (x.t() if ta else x) @ (w.t() if tb else w)
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return y
    return fn


def _batchnorm(a):
    if a.get("training_mode", 0):
        raise Unsupported("BatchNormalization with training_mode=1")
    eps = a.get("epsilon", 1e-5)
    return lambda x, s, b, mean, var: F.batch_norm(x, mean, var, s, b, False, 0.0, eps)


def _instancenorm(a):
    eps = a.get("epsilon", 1e-5)
    return lambda x, s, b: F.instance_norm(x, weight=s, bias=b, eps=eps)


def _layernorm(a):
    axis, eps = a.get("axis", -1), a.get("epsilon", 1e-5)
    if a.num_outputs > 1:
        raise Unsupported("LayerNormalization's Mean and InvStdDev outputs")
    if a.get("stash_type", 1) != 1:
        raise Unsupported("LayerNormalization with stash_type other than float")

    def fn(x, s, b=None):
        ax = axis % x.dim()
        shape = x.shape[ax:]
        if s.shape == shape and (b is None or b.shape == shape):
            y = F.layer_norm(x, shape, s, b, eps)
        else:  # scale/bias broadcast to the normalised shape
            y = F.layer_norm(x, shape, None, None, eps) * s
            if b is not None:
                y = y + b
        return y
    return fn


def _groupnorm(a):
    eps, groups = a.get("epsilon", 1e-5), a["num_groups"]

    def fn(x, s, b):
        if s.shape[0] == x.shape[1]:  # opset 21: per channel
            return F.group_norm(x, groups, s, b, eps)
        # opset 18: scale and bias per group
        y = F.group_norm(x, groups, None, None, eps)
        rep = x.shape[1] // groups
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return y * s.repeat_interleave(rep).reshape(shape) + b.repeat_interleave(rep).reshape(shape)
    return fn


def _einsum(a):
    eq = a["equation"]
    return lambda *xs: torch.einsum(eq, *xs)


def _mvn(a):
    axes = tuple(a.get("axes", [0, 2, 3]))

    def fn(x):
        mean = x.mean(dim=axes, keepdim=True)
        var = (x * x).mean(dim=axes, keepdim=True) - mean * mean
        return (x - mean) / (torch.sqrt(var) + 1e-9)
    return fn


def _lp_norm(a):
    axis, p = a.get("axis", -1), a.get("p", 2)
    if p not in (1, 2):
        raise a.error(f"p must be 1 or 2, not {p}")

    def fn(x):
        norm = x.abs().sum(dim=axis, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(dim=axis, keepdim=True))
        return x / norm
    return fn


def _rms_norm(a):
    axis, eps = a.get("axis", -1), a.get("epsilon", 1e-5)

    def fn(x, scale):
        ax = axis % x.dim()
        dims = tuple(range(ax, x.dim()))
        return x / torch.sqrt((x * x).mean(dim=dims, keepdim=True) + eps) * scale
    return fn


def _matmul_integer(a):
    def fn(x, w, xz=None, wz=None):
        xi, wi = x.to(torch.int32), w.to(torch.int32)
        if xz is not None:
            xi = xi - (xz.to(torch.int32).reshape(-1, 1) if xz.numel() > 1 else xz.to(torch.int32).reshape(()))
        if wz is not None:
            wi = wi - wz.to(torch.int32).reshape(-1) if wz.numel() > 1 else wi - wz.to(torch.int32).reshape(())
        return torch.matmul(xi.to(torch.int64), wi.to(torch.int64)).to(torch.int32)
    return fn


OPS = {
    "LpNormalization": _lp_norm, "RMSNormalization": _rms_norm, "MatMulInteger": _matmul_integer,
    "Det": lambda a: (lambda x: torch.linalg.det(x)),
    "MeanVarianceNormalization": _mvn,
    "Gemm": _gemm, "MatMul": binary(torch.matmul), "Einsum": _einsum, "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instancenorm, "LayerNormalization": _layernorm, "GroupNormalization": _groupnorm,
}
