"""Linear quantisation operators of QDQ models: QuantizeLinear and DequantizeLinear, per tensor or per
axis (blocked quantisation is listed as unsupported)."""
from __future__ import annotations

import torch

from .common import Unsupported

__all__ = ["OPS"]

_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.uint16: (0, 65535), torch.int16: (-32768, 32767),
           torch.int32: (-2**31, 2**31 - 1)}


def _per_axis(v: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    if v.dim() == 0 or v.numel() == 1 and x.dim() <= 1:
        return v.reshape(())
    ax = axis % x.dim()
    return v.reshape([-1 if i == ax else 1 for i in range(x.dim())])


def _check_block(a):
    if a.get("block_size", 0):
        raise Unsupported(f"{a.op_type} with block_size")


def _quantize(a):
    _check_block(a)
    axis, saturate = a.get("axis", 1), a.get("saturate", 1)
    out_type = a.get("output_dtype", 0)
    if not saturate:
        raise Unsupported("QuantizeLinear with saturate=0")

    def fn(x, scale, zp=None):
        dt = zp.dtype if zp is not None else torch.uint8
        if out_type:
            from .common import onnx_dtype_to_torch

            dt = onnx_dtype_to_torch(out_type)
        if dt not in _RANGES:
            raise Unsupported(f"QuantizeLinear to {dt}")
        q = torch.round(x / _per_axis(scale, x, axis).to(x.dtype))
        if zp is not None:
            q = q + _per_axis(zp, x, axis).to(q.dtype)
        lo, hi = _RANGES[dt]
        return q.clamp(lo, hi).to(dt)
    return fn


def _dequantize(a):
    _check_block(a)
    axis = a.get("axis", 1)

    def fn(x, scale, zp=None):
        v = x.to(torch.int32 if x.dtype != torch.float32 else x.dtype)
        if zp is not None:
            v = v - _per_axis(zp, x, axis).to(v.dtype)
        return v.to(scale.dtype) * _per_axis(scale, x, axis)
    return fn


OPS = {"QuantizeLinear": _quantize, "DequantizeLinear": _dequantize}
