"""Pooling and local normalisation: MaxPool (with Indices), AveragePool, LpPool, Global*Pool, LRN."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import Unsupported
from .conv import apply_pads, auto_pads, check_auto_pad, pad_spatial

__all__ = ["OPS"]

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window(a):
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    if n not in _MAXPOOL:
        raise Unsupported(f"{a.op_type} with {n} spatial dimensions")
    check_auto_pad(a)
    return kernel, n, list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))


def _maxpool(a):
    kernel, n, strides, dil = _window(a)
    ceil = bool(a.get("ceil_mode", 0))
    col_major = bool(a.get("storage_order", 0))
    if col_major and n != 2 and a.num_outputs > 1:
        raise Unsupported("MaxPool storage_order=1 outside 2-D")

    def fn(x):
        spatial = list(x.shape[2:])
        pads = auto_pads(a, spatial, kernel, strides, dil)
        if any(2 * p > k for p, k in zip(pads, kernel + kernel)):  # more than torch's padding allows
            xp, pad = pad_spatial(x, pads, value=-math.inf), [0] * n
        else:
            xp, pad = apply_pads(x, pads, value=-math.inf)
        if a.num_outputs < 2:
            return _MAXPOOL[n](xp, kernel, strides, pad, dil, ceil_mode=ceil)
        y, idx = _MAXPOOL[n](xp, kernel, strides, pad, dil, ceil_mode=ceil, return_indices=True)
        # torch: index into the (possibly pre-padded) spatial block of one (n, c); ONNX: into the whole
        # input tensor, row-major (or column-major over H, W with storage_order=1)
        padded = list(xp.shape[2:])
        coords, rest = [], idx
        for size in reversed(padded):
            coords.append(rest % size)
            rest = rest // size
        coords.reverse()
        if pad == [0] * n:
            coords = [c - b for c, b in zip(coords, pads[:n])]
        if col_major:
            flat = coords[0] + coords[1] * spatial[0]
        else:
            flat = coords[0]
            for c, size in zip(coords[1:], spatial[1:]):
                flat = flat * size + c
        nc = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *([1] * n))
        return y, flat + nc * math.prod(spatial)
    return fn


def _avgpool(a):
    kernel, n, strides, dil = _window(a)
    if any(d != 1 for d in dil):
        raise Unsupported("AveragePool with dilations")
    include = bool(a.get("count_include_pad", 0))
    ceil = bool(a.get("ceil_mode", 0))

    def fn(x):
        pads = auto_pads(a, list(x.shape[2:]), kernel, strides, [1] * n)
        symmetric = pads[:n] == pads[n:] and all(2 * p <= k for p, k in zip(pads[:n], kernel))
        if symmetric and not (ceil and include and any(pads)):
            return _AVGPOOL[n](x, kernel, strides, pads[:n], ceil_mode=ceil, count_include_pad=include)
        # pads torch cannot take: pad explicitly; without count_include_pad divide by the real count
        xp = pad_spatial(x, pads)
        s = _AVGPOOL[n](xp, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
        if include:
            return s
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return s / _AVGPOOL[n](pad_spatial(ones, pads), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    return fn


def _lppool(a):
    kernel, n, strides, dil = _window(a)
    p = a.get("p", 2)
    if any(d != 1 for d in dil):
        raise Unsupported("LpPool with dilations")

    def fn(x):
        pads = auto_pads(a, list(x.shape[2:]), kernel, strides, dil)
        xp = pad_spatial(x.abs() ** p, pads)
        s = _AVGPOOL[n](xp, kernel, strides, 0, ceil_mode=bool(a.get("ceil_mode", 0)),
                        count_include_pad=True) * math.prod(kernel)
        return s ** (1.0 / p)
    return fn


def _lrn(a):
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)

    def fn(x):
        # sum of squares over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]
        sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
        sq = F.pad(sq, [0, 0, (size - 1) // 2, size // 2])
        win = F.avg_pool2d(sq, (size, 1), 1) * size
        return x / (bias + (alpha / size) * win.reshape(x.shape)) ** beta
    return fn


OPS = {
    "MaxPool": _maxpool, "AveragePool": _avgpool, "LpPool": _lppool, "LRN": _lrn,
    "GlobalAveragePool": lambda a: (lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": lambda a: (lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalLpPool": lambda a: (lambda x: (x.abs() ** a.get("p", 2)).sum(dim=tuple(range(2, x.dim())),
                                                                          keepdim=True) ** (1.0 / a.get("p", 2))),
}
