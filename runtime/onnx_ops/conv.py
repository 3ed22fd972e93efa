"""Convolutions: Conv and ConvTranspose (1-3 spatial dims, groups, dilations, explicit or `auto_pad` pads).

Padding follows onnxruntime: SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the start; a
ConvTranspose with `output_shape` (or SAME_*) gets its total padding from that shape, split the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Unsupported

__all__ = ["OPS", "apply_pads", "auto_pads", "pad_spatial"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_AUTO_PAD = ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER")


def check_auto_pad(a) -> str:
    auto = a.get("auto_pad", "NOTSET")
    if auto not in _AUTO_PAD:
        raise a.error(f"auto_pad {auto!r} is not one of {_AUTO_PAD}")
    return auto


def auto_pads(a, spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads [b1..bn, e1..en] for the spatial sizes, auto_pad resolved (as onnxruntime does)."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * (2 * n)))
        if len(pads) != 2 * n:
            raise a.error(f"pads has {len(pads)} values for {n} spatial axes")
        return pads
    if auto == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for i in range(n):
        size = spatial[i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def pad_spatial(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    """ONNX spatial pads [b1..bn, e1..en] applied with F.pad (negative values crop)."""
    n = len(pads) // 2
    if not any(pads):
        return x
    torch_pads = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[n + i]]
    return F.pad(x, torch_pads, value=value)


def apply_pads(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads become the torch `padding` argument; others are applied with F.pad."""
    n = len(pads) // 2
    if pads[:n] == pads[n:] and min(pads, default=0) >= 0:
        return x, pads[:n]
    return pad_spatial(x, pads, value), [0] * n


def _geometry(a, w: torch.Tensor) -> tuple[int, list[int], list[int], list[int]]:
    """Spatial rank, kernel, strides and dilations of a (transposed) convolution with weight w."""
    n = w.dim() - 2
    if n not in _CONV:
        raise Unsupported(f"{a.op_type} with {n} spatial dimensions")
    return (n, list(a.get("kernel_shape", w.shape[2:])), list(a.get("strides", [1] * n)),
            list(a.get("dilations", [1] * n)))


def _conv(a):
    check_auto_pad(a)
    group = a.get("group", 1)

    def fn(x, w, b=None):
        n, kernel, strides, dil = _geometry(a, w)
        x, pad = apply_pads(x, auto_pads(a, list(x.shape[2:]), kernel, strides, dil))
        return _CONV[n](x, w, b, stride=strides, padding=pad, dilation=dil, groups=group)
    return fn


def _conv_transpose(a):
    auto = check_auto_pad(a)
    group = a.get("group", 1)
    out_shape = a.get("output_shape")

    def fn(x, w, b=None):
        n, kernel, strides, dil = _geometry(a, w)
        adj = list(a.get("output_padding", [0] * n))
        spatial = list(x.shape[2:])
        full = [(s - 1) * st + (k - 1) * d + 1 for s, st, k, d in zip(spatial, strides, kernel, dil)]
        if auto in ("SAME_UPPER", "SAME_LOWER") or out_shape is not None:
            if out_shape is not None:
                target = list(out_shape)[-n:]
            else:
                target = [s * st for s, st in zip(spatial, strides)]
            total = [f + p - t for f, p, t in zip(full, adj, target)]
            upper = auto == "SAME_UPPER"
            begins = [t // 2 if upper else t - t // 2 for t in total]
            ends = [t - t // 2 if upper else t // 2 for t in total]
        elif auto == "VALID":
            begins, ends = [0] * n, [0] * n
        else:
            pads = list(a.get("pads", [0] * (2 * n)))
            begins, ends = pads[:n], pads[n:]
        if begins == ends and all(0 <= p < max(s, d) for p, s, d in zip(adj, strides, dil)) and min(begins) >= 0:
            return _CONV_T[n](x, w, b, stride=strides, padding=begins, output_padding=adj, groups=group,
                              dilation=dil)
        # general case: the full result, then crop (negative pad) or extend with zeros, then the bias
        y = _CONV_T[n](x, w, None, stride=strides, padding=0, groups=group, dilation=dil)
        torch_pads = []
        for i in reversed(range(n)):
            torch_pads += [-begins[i], adj[i] - ends[i]]
        y = F.pad(y, torch_pads)
        if b is not None:
            y = y + b.reshape(-1, *([1] * n))
        return y
    return fn


OPS = {"Conv": _conv, "ConvTranspose": _conv_transpose}
