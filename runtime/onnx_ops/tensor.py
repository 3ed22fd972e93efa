"""Structural ONNX operators: shapes, reshaping, slicing, joining, gathering/scattering, padding, casts.

Shapes are read from the tensors at run time, so the module accepts every shape the graph accepts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import Unsupported, ints, onnx_dtype_to_torch, tensor_from_proto

__all__ = ["OPS", "norm_axis"]


def norm_axis(a, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise a.error(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def _flatten(a):
    axis = a.get("axis", 1)

    def fn(x):
        ax = axis + x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:ax]), -1)
    return fn


def _reshape(a):
    allowzero = a.get("allowzero", 0)
    if a.opset < 5:
        a.require("shape")  # required before opset 5: a GraphError now, not at run time

    def fn(x, shape=None):
        s = ints(shape) if shape is not None else list(a["shape"])
        if not allowzero:
            s = [x.shape[i] if d == 0 else d for i, d in enumerate(s)]
        return x.reshape(s)
    return fn


def _transpose(a):
    perm = a.get("perm")
    return lambda x: x.permute(*(perm if perm is not None else range(x.dim() - 1, -1, -1)))


def _squeeze(a):
    def fn(x, axes=None):
        ax = a.get("axes") if axes is None else ints(axes)
        if ax is None:
            return x.squeeze()
        return x.squeeze(tuple(d % x.dim() for d in ax)) if ax else x
    return fn


def _unsqueeze(a):
    if a.opset < 13:
        a.require("axes")  # required before opset 13

    def fn(x, axes=None):
        ax = a["axes"] if axes is None else ints(axes)
        rank = x.dim() + len(ax)
        for d in sorted(d % rank for d in ax):
            x = x.unsqueeze(d)
        return x
    return fn


def _concat(a):
    axis = a["axis"]

    def fn(*xs):
        xs = [x for x in xs if x is not None]
        return torch.cat(xs, dim=norm_axis(a, axis, xs[0].dim()))
    return fn


def _split(a):
    axis = a.get("axis", 0)
    split_attr = a.get("split")
    num = a.get("num_outputs")
    n_out = a.num_outputs

    def fn(x, split=None):
        ax = norm_axis(a, axis, x.dim())
        size = x.shape[ax]
        sizes = ints(split) if split is not None else (list(split_attr) if split_attr is not None else None)
        if sizes is None:
            parts = num if num is not None else n_out
            chunk = -(-size // parts)
            sizes = [min(chunk, size - i * chunk) for i in range(parts)] if num is not None else [size // parts] * parts
            if num is None and size % parts:
                raise a.error(f"axis of size {size} does not split into {parts} equal outputs")
        if sum(sizes) != size:
            raise a.error(f"split sizes {sizes} do not add up to the axis size {size}")
        return tuple(torch.split(x, sizes, dim=ax))
    return fn


def _slice(a):
    if a.opset < 10:
        a.require("starts", "ends")  # required before opset 10

    def fn(x, starts=None, ends=None, axes=None, steps=None):
        if starts is None:  # opset < 10: attributes
            st, en, ax, sp = list(a["starts"]), list(a["ends"]), a.get("axes"), None
        else:
            st, en, ax, sp = ints(starts), ints(ends), ints(axes), ints(steps)
        ax = list(ax) if ax is not None else list(range(len(st)))
        sp = sp if sp is not None else [1] * len(st)
        for s, e, d, k in zip(st, en, ax, sp):
            if k == 0:
                raise a.error("a slice step is 0")
            d %= x.dim()
            lo, hi, step = slice(s, e, k).indices(x.shape[d])
            if k > 0:
                x = x[(slice(None),) * d + (slice(lo, hi, step),)]
            else:
                idx = torch.arange(lo, hi, step, device=x.device, dtype=torch.int64)
                x = x.index_select(d, idx)
        return x
    return fn


def _wrap_index(i: torch.Tensor, size: int) -> torch.Tensor:
    i = i.to(torch.int64)
    return torch.where(i < 0, i + size, i)


def _gather(a):
    axis = a.get("axis", 0)

    def fn(x, idx):
        ax = norm_axis(a, axis, x.dim())
        i = _wrap_index(idx, x.shape[ax])
        out = x.index_select(ax, i.reshape(-1).to(x.device))
        return out.reshape((*x.shape[:ax], *idx.shape, *x.shape[ax + 1:]))
    return fn


def _gather_elements(a):
    axis = a.get("axis", 0)

    def fn(x, idx):
        ax = norm_axis(a, axis, x.dim())
        return torch.gather(x, ax, _wrap_index(idx, x.shape[ax]))
    return fn


def _gather_nd(a):
    b = a.get("batch_dims", 0)

    def fn(x, idx):
        idx = idx.to(torch.int64)
        k = idx.shape[-1]
        batch = x.shape[:b]
        xb = x.reshape(math.prod(batch), *x.shape[b:])
        ib = idx.reshape(math.prod(batch), -1, k)
        sizes = torch.tensor(x.shape[b:b + k], device=x.device)
        ib = torch.where(ib < 0, ib + sizes, ib)
        rows = torch.arange(xb.shape[0], device=x.device).reshape(-1, 1).expand(-1, ib.shape[1])
        out = xb[(rows, *ib.unbind(-1))]
        return out.reshape(*idx.shape[:-1], *x.shape[b + k:])
    return fn


def _scatter_elements(a):
    axis, red = a.get("axis", 0), a.get("reduction", "none")

    def fn(x, idx, upd):
        ax = norm_axis(a, axis, x.dim())
        i = _wrap_index(idx, x.shape[ax])
        if red == "none":
            return x.scatter(ax, i, upd)
        return x.scatter_reduce(ax, i, upd, {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[red])
    return fn


def _scatter_nd(a):
    red = a.get("reduction", "none")
    if red not in ("none", "add"):
        raise Unsupported(f"ScatterND with reduction {red!r}")

    def fn(x, idx, upd):
        idx = idx.to(torch.int64)
        k = idx.shape[-1]
        out = x.clone()
        flat_idx = idx.reshape(-1, k)
        sizes = torch.tensor(x.shape[:k], device=x.device)
        flat_idx = torch.where(flat_idx < 0, flat_idx + sizes, flat_idx)
        u = upd.reshape(flat_idx.shape[0], *x.shape[k:])
        key = tuple(flat_idx.unbind(-1))
        if red == "none":
            out[key] = u
        else:
            out.index_put_(key, u, accumulate=True)
        return out
    return fn


def _shape(a):
    start, end = a.get("start", 0), a.get("end")
    return lambda x: torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


def _size(a):
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _constant_of_shape(a):
    value = a.get("value")
    v = tensor_from_proto(value) if value is not None else torch.zeros(1, dtype=torch.float32)

    def fn(shape):
        return torch.full(ints(shape), v.reshape(-1)[0].item(), dtype=v.dtype, device=shape.device)
    return fn


def _cast(a):
    dt = onnx_dtype_to_torch(a["to"])
    return lambda x: x.to(dt)


def _expand(a):
    return lambda x, shape: x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))


def _tile(a):
    return lambda x, reps: x.repeat(*ints(reps))


def _range(a):
    def fn(start, limit, delta):
        n = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
        return start + torch.arange(n, dtype=start.dtype, device=start.device) * delta
    return fn


def _dropout(a):
    def fn(x, ratio=None, training=None):
        return x, torch.ones_like(x, dtype=torch.bool)
    return fn


def _pad(a):
    mode = a.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise Unsupported(f"Pad mode {mode!r}")
    if a.opset < 11:
        a.require("pads")  # required before opset 11

    def fn(x, pads=None, value=None, axes=None):
        p = ints(pads) if pads is not None else list(a["pads"])
        v = value.reshape(-1)[0].item() if value is not None and value.numel() else a.get("value", 0.0)
        rank = x.dim()
        ax = [d % rank for d in ints(axes)] if axes is not None else list(range(rank))
        if len(p) != 2 * len(ax):
            raise a.error(f"{len(p)} pads for {len(ax)} axes")
        begins, ends = [0] * rank, [0] * rank
        for i, d in enumerate(ax):
            begins[d], ends[d] = p[i], p[len(ax) + i]
        if mode == "constant":
            tp = []
            for d in reversed(range(rank)):
                tp += [begins[d], ends[d]]
            return F.pad(x, tp, value=v) if any(tp) else x
        for d in range(rank):  # crop (negative pads) first, then index along each padded axis
            if begins[d] < 0 or ends[d] < 0:
                x = x.narrow(d, -min(begins[d], 0), x.shape[d] + min(begins[d], 0) + min(ends[d], 0))
        for d in range(rank):
            b, e = max(begins[d], 0), max(ends[d], 0)
            if not b and not e:
                continue
            size = x.shape[d]
            i = torch.arange(-b, size + e, device=x.device)
            if mode == "edge":
                i = i.clamp(0, size - 1)
            elif mode == "wrap":
                i = i % size
            else:  # reflect, without repeating the edge
                if size == 1:
                    i = torch.zeros_like(i)
                else:
                    period = 2 * (size - 1)
                    i = i % period
                    i = torch.where(i >= size, period - i, i)
            x = x.index_select(d, i)
        return x
    return fn


def _depth_to_space(a):
    bs, mode = a["blocksize"], a.get("mode", "DCR")

    def fn(x):
        n, c, h, w = x.shape
        if mode == "DCR":
            y = x.reshape(n, bs, bs, c // bs ** 2, h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // bs ** 2, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // bs ** 2, h * bs, w * bs)
    return fn


def _space_to_depth(a):
    bs = a["blocksize"]

    def fn(x):
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * bs * bs, h // bs, w // bs)
    return fn


def _trilu(a):
    upper = a.get("upper", 1)

    def fn(x, k=None):
        kk = int(k.item()) if k is not None else 0
        return torch.triu(x, kk) if upper else torch.tril(x, kk)
    return fn


def _nonzero(a):
    return lambda x: torch.nonzero(x).t().contiguous()


def _one_hot(a):
    axis = a.get("axis", -1)

    def fn(idx, depth, values):
        d = int(depth.reshape(-1)[0].item())
        i = idx.to(torch.int64)
        i = torch.where(i < 0, i + d, i)
        hot = (i.unsqueeze(-1) == torch.arange(d, device=idx.device))
        out = torch.where(hot, values[1], values[0])
        return out.movedim(-1, axis % out.dim())
    return fn


def _compress(a):
    axis = a.get("axis")

    def fn(x, cond):
        keep = torch.nonzero(cond.reshape(-1).to(torch.bool)).reshape(-1).to(x.device)
        if axis is None:
            return x.reshape(-1).index_select(0, keep[keep < x.numel()])
        ax = norm_axis(a, axis, x.dim())
        return x.index_select(ax, keep[keep < x.shape[ax]])
    return fn


def _reverse_sequence(a):
    batch_axis, time_axis = a.get("batch_axis", 1), a.get("time_axis", 0)

    def fn(x, lens):
        steps = torch.arange(x.shape[time_axis], device=x.device)
        lens = lens.to(torch.int64).to(x.device)
        # per batch entry b, time t < len[b] reads t' = len[b] - 1 - t; later steps stay
        idx = torch.where(steps[None, :] < lens[:, None], lens[:, None] - 1 - steps[None, :], steps[None, :])
        if time_axis == 0:
            idx = idx.t()
        shape = [1] * x.dim()
        shape[batch_axis], shape[time_axis] = x.shape[batch_axis], x.shape[time_axis]
        idx = idx.reshape(shape).expand_as(x)
        return torch.gather(x, time_axis, idx)
    return fn


def _unique(a):
    axis, sort = a.get("axis"), bool(a.get("sorted", 1))

    def fn(x):
        flat = x.reshape(-1) if axis is None else x
        dim = None if axis is None else norm_axis(a, axis, x.dim())
        y, inverse, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True, dim=dim)
        n = flat.shape[0 if dim is None else dim]
        first = torch.full((y.shape[0 if dim is None else dim],), n, dtype=torch.int64, device=x.device)
        first = first.scatter_reduce(0, inverse, torch.arange(n, device=x.device), "amin")
        if not sort:  # in order of first occurrence
            order = torch.argsort(first)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel(), device=x.device)
            y = y.index_select(0 if dim is None else dim, order)
            first, counts, inverse = first[order], counts[order], rank[inverse]
        return y, first, inverse, counts
    return fn


def _eye_like(a):
    k = a.get("k", 0)

    def fn(x):
        dt = onnx_dtype_to_torch(a["dtype"]) if "dtype" in a else x.dtype
        rows, cols = x.shape
        i = torch.arange(rows, device=x.device)[:, None]
        j = torch.arange(cols, device=x.device)[None, :]
        return (j - i == k).to(dt)
    return fn


def _center_crop_pad(a):
    axes_attr = a.get("axes")

    def fn(x, shape):
        target = ints(shape)
        axes = [norm_axis(a, d, x.dim()) for d in axes_attr] if axes_attr is not None else list(range(x.dim()))
        for d, t in zip(axes, target):
            size = x.shape[d]
            if t < size:
                x = x.narrow(d, (size - t) // 2, t)
            elif t > size:
                before = (t - size) // 2
                pads = [0, 0] * (x.dim() - 1 - d) + [before, t - size - before]
                x = F.pad(x, pads)
        return x
    return fn


OPS = {
    "EyeLike": _eye_like, "CenterCropPad": _center_crop_pad,
    "Unique": _unique, "Compress": _compress, "ReverseSequence": _reverse_sequence,
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
    "GatherElements": _gather_elements, "GatherND": _gather_nd, "ScatterElements": _scatter_elements,
    "Scatter": _scatter_elements, "ScatterND": _scatter_nd, "Shape": _shape, "Size": _size,
    "ConstantOfShape": _constant_of_shape, "Cast": _cast, "CastLike": lambda a: (lambda x, y: x.to(y.dtype)),
    "Expand": _expand, "Tile": _tile, "Range": _range, "Dropout": _dropout, "Pad": _pad,
    "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth, "Trilu": _trilu, "NonZero": _nonzero,
    "OneHot": _one_hot,
}
