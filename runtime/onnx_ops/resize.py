"""Resampling: Resize (opsets 10-19) and Upsample (nearest, linear and cubic, every coordinate transformation
mode) and GridSample.

The output size and each output pixel's source coordinate are computed per axis in float32 exactly as
onnxruntime does (same formulas, same operation order, same rounding rules), so nearest is bit-exact
and linear/cubic differ only by the order of the final weighted sums. Interpolation is separable: one
gather and weighted sum per resized axis, differentiable with respect to the input.
"""
from __future__ import annotations

import numpy as np
import torch

from .common import Unsupported, floats, ints

__all__ = ["OPS"]

_F = np.float32
_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                "tf_half_pixel_for_nn", "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _original(mode: str, out_len: int, in_len: int, scale, roi_start: float, roi_end: float) -> np.ndarray:
    """Source coordinate (float32) of every output index along one axis, as onnxruntime computes it."""
    x = np.arange(out_len, dtype=_F)
    s = _F(scale)
    half = _F(0.5)
    lr, lo = _F(out_len), _F(in_len)
    if mode == "asymmetric":
        return x / s
    if mode == "pytorch_half_pixel":
        return (x + half) / s - half if out_len > 1 else np.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / s
    if mode == "align_corners":
        return np.zeros_like(x) if out_len == 1 else x * (lo - _F(1)) / (lr - _F(1))
    if mode == "tf_crop_and_resize":
        a, b = _F(roi_start), _F(roi_end)
        if out_len > 1:
            return (a * (lo - 1) + (x * (b - a) * (lo - 1)) / (lr - 1)).astype(_F)
        return np.full_like(x, _F(0.5 * float(a + b) * float(lo - 1)))
    if mode == "half_pixel_symmetric":
        adjustment = lr / (s * lo)
        offset = (lo / _F(2)) * (_F(1) - adjustment)
        return (offset + (x + half) / s) - half
    return ((x + half) / s) - half  # half_pixel


def _nearest(mode: str, xo: np.ndarray, downsample: bool) -> np.ndarray:
    if mode == "simple":  # Resize-10 and Upsample
        return np.ceil(xo).astype(np.int64) if downsample else np.trunc(xo).astype(np.int64)
    if mode == "floor":
        return np.floor(xo).astype(np.int64)
    if mode == "ceil":
        return np.ceil(xo).astype(np.int64)
    away = np.where(xo >= 0, np.floor(xo + _F(0.5)), np.ceil(xo - _F(0.5)))  # std::round: halves away from 0
    if mode == "round_prefer_ceil":
        return away.astype(np.int64)
    halfway = xo == np.trunc(xo) + _F(0.5)
    return np.where(halfway, np.floor(xo), away).astype(np.int64)


def _cubic_coeffs(s: np.ndarray, a: float) -> np.ndarray:
    a = _F(a)
    s1, t, t1 = s + 1, 1 - s, 2 - s
    c0 = ((a * s1 - 5 * a) * s1 + 8 * a) * s1 - 4 * a
    c1 = ((a + 2) * s - (a + 3)) * s * s + 1
    c2 = ((a + 2) * t - (a + 3)) * t * t + 1
    c3 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    return np.stack([c0, c1, c2, c3], axis=1).astype(_F)


def _resize_builder(a, kind: str):
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic", "bilinear", "trilinear"):
        raise Unsupported(f"{a.op_type} mode {mode!r}")
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    if kind == "resize" and a.opset >= 11:
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
    else:
        coord, nearest = "asymmetric", "simple"
    if coord not in _COORD_MODES:
        raise Unsupported(f"Resize coordinate_transformation_mode {coord!r}")
    if nearest not in _NEAREST_MODES:
        raise Unsupported(f"Resize nearest_mode {nearest!r}")
    if a.get("antialias", 0):
        raise Unsupported("Resize with antialias=1")
    policy = a.get("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise Unsupported(f"Resize keep_aspect_ratio_policy {policy!r}")
    cubic_a = a.get("cubic_coeff_a", -0.75)
    exclude = bool(a.get("exclude_outside", 0))
    extrapolation = a.get("extrapolation_value", 0.0)
    axes_attr = a.get("axes")
    attr_scales = a.get("scales")

    def fn(x, *rest):
        rank = x.dim()
        roi = scales = sizes = None
        if kind == "upsample" or a.opset < 11:
            scales = floats(rest[0]) if rest else list(attr_scales) if attr_scales is not None else None
            if scales is None:
                raise a.error("no scales")
        else:
            roi = floats(rest[0]) if len(rest) > 0 and rest[0] is not None and rest[0].numel() else None
            scales = floats(rest[1]) if len(rest) > 1 and rest[1] is not None and rest[1].numel() else None
            sizes = ints(rest[2]) if len(rest) > 2 and rest[2] is not None and rest[2].numel() else None
        axes = [d % rank for d in axes_attr] if axes_attr is not None else list(range(rank))
        in_dims = list(x.shape)
        full_scales = [1.0] * rank
        out_dims = list(in_dims)
        if sizes is not None:
            if len(sizes) != len(axes):
                raise a.error(f"{len(sizes)} sizes for {len(axes)} axes")
            for d, s in zip(axes, sizes):
                out_dims[d] = s
            for d in range(rank):
                full_scales[d] = float(_F(out_dims[d]) / _F(in_dims[d])) if in_dims[d] else 1.0
            if policy != "stretch":
                pick = min if policy == "not_larger" else max
                sc = pick(full_scales[d] for d in axes)
                for d in range(rank):
                    full_scales[d] = sc if d in axes else 1.0
                    out_dims[d] = int(np.round(_F(sc) * _F(in_dims[d]))) if d in axes else in_dims[d]
        elif scales is not None:
            if len(scales) != len(axes):
                raise a.error(f"{len(scales)} scales for {len(axes)} axes")
            for d, s in zip(axes, scales):
                if not s > 0:
                    raise a.error(f"scale {s} is not positive")
                full_scales[d] = s
            out_dims = [int(_F(s) * _F(n)) for s, n in zip(full_scales, in_dims)]
        else:
            raise a.error("neither scales nor sizes is given")
        roi_full = [0.0] * rank + [1.0] * rank
        if roi is not None and coord == "tf_crop_and_resize":
            if len(roi) != 2 * len(axes):
                raise a.error(f"roi has {len(roi)} values for {len(axes)} axes")
            for i, d in enumerate(axes):
                roi_full[d], roi_full[rank + d] = roi[i], roi[len(axes) + i]

        outside = []
        for d in range(rank):
            n_in, n_out = in_dims[d], out_dims[d]
            if n_in == n_out and full_scales[d] == 1.0 and coord != "tf_crop_and_resize":
                continue
            xo = _original(coord, n_out, n_in, full_scales[d], roi_full[d], roi_full[rank + d])
            if coord == "tf_crop_and_resize":
                out = (xo < 0) | (xo > n_in - 1)
                if out.any():
                    outside.append((d, torch.from_numpy(out)))
            x = _along(x, d, xo, n_in, mode, nearest, full_scales[d] < 1, cubic_a, exclude)
        if outside:
            mask = torch.zeros((), dtype=torch.bool)
            for d, m in outside:
                mask = mask | m.reshape([-1 if i == d else 1 for i in range(rank)])
            x = torch.where(mask.to(x.device), torch.as_tensor(extrapolation, dtype=x.dtype, device=x.device), x)
        return x
    return fn


def _along(x: torch.Tensor, d: int, xo: np.ndarray, n_in: int, mode: str, nearest: str, downsample: bool,
           cubic_a: float, exclude: bool) -> torch.Tensor:
    """Resample axis d of x at source coordinates xo."""
    dev = x.device
    shape = [-1 if i == d else 1 for i in range(x.dim())]

    def take(idx: np.ndarray) -> torch.Tensor:
        return x.index_select(d, torch.from_numpy(np.ascontiguousarray(idx)).to(dev))

    def weight(w: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(w)).to(device=dev, dtype=x.dtype).reshape(shape)

    if mode == "nearest":
        return take(np.clip(_nearest(nearest, xo, downsample), 0, n_in - 1))
    if mode == "linear":
        xc = np.clip(xo, _F(0), _F(n_in - 1))
        i1 = np.minimum(xc.astype(np.int64), n_in - 1)
        i2 = np.minimum(i1 + 1, n_in - 1)
        d1 = np.abs(xc - i1.astype(_F))
        d2 = np.abs(xc - i2.astype(_F))
        same = i1 == i2
        d1, d2 = np.where(same, _F(0.5), d1), np.where(same, _F(0.5), d2)
        return take(i1) * weight(d2) + take(i2) * weight(d1)
    base = np.floor(xo)
    coeffs = _cubic_coeffs((xo - base).astype(_F), cubic_a)
    taps = base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    if exclude:
        coeffs = np.where((taps >= 0) & (taps < n_in), coeffs, _F(0))
        coeffs = (coeffs / coeffs.sum(axis=1, keepdims=True)).astype(_F)
    taps = np.clip(taps, 0, n_in - 1)
    out = None
    for k in range(4):
        term = take(taps[:, k]) * weight(coeffs[:, k])
        out = term if out is None else out + term
    return out


def _grid_sample(a):
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(a.get("mode", "bilinear"), a.get("mode", "bilinear"))
    pad = a.get("padding_mode", "zeros")
    if mode not in ("bilinear", "nearest", "bicubic") or pad not in ("zeros", "border", "reflection"):
        raise Unsupported(f"GridSample mode {mode!r} padding_mode {pad!r}")
    align = bool(a.get("align_corners", 0))

    def fn(x, grid):
        if x.dim() != 4 and not (x.dim() == 5 and mode != "bicubic"):
            raise Unsupported(f"GridSample on a rank-{x.dim()} input")
        return torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=pad,
                                               align_corners=align)
    return fn


OPS = {
    "GridSample": _grid_sample,
    "Resize": lambda a: _resize_builder(a, "resize"),
    "Upsample": lambda a: _resize_builder(a, "upsample"),
}
