"""A small ONNX interpreter as a torch.nn.Module: runs a `.mrc` file's architecture graph in torch.

`OnnxModule(model, tensors)` takes an ONNX ModelProto (the stored graph, whose weights were
removed) and the file's decoded tensors by name, and runs the top-level nodes in order with torch
ops. No code generation, no tracing: what it supports is the list in `SUPPORTED_OPS`, which covers
what torch.onnx.export emits for CNNs (Conv, pooling, BatchNormalization, Gemm/MatMul, activations),
shape arithmetic (Shape/Gather/Concat/Reshape/Slice/...) and recurrent layers (LSTM, GRU with
default activations, run with torch's fused kernels). An unsupported operator raises
NotImplementedError when the module is built, not in the middle of a forward pass.

File tensors become parameters (floating point, requires_grad=False) or buffers of the module, so
`.to(device)` moves them; `tensor(name)` returns one by its file name.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OnnxModule", "SUPPORTED_OPS", "onnx_dtype_to_torch"]

_INT64_MAX = 2**63 - 1

_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


def onnx_dtype_to_torch(code: int) -> torch.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise NotImplementedError(f"ONNX tensor data type {code} is not supported") from None


def _tensor_from_proto(t) -> torch.Tensor:
    from onnx import numpy_helper

    if t.data_type == 16:  # bfloat16: numpy_helper gives float32 values (or raw uint16)
        arr = np.array(numpy_helper.to_array(t), dtype=np.float32)
        return torch.from_numpy(arr).to(torch.bfloat16)
    return torch.from_numpy(np.array(numpy_helper.to_array(t)))


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode("utf-8") for x in v]
        out[a.name] = v
    return out


def _ints(x: torch.Tensor | None) -> list[int] | None:
    return None if x is None else [int(v) for v in x.reshape(-1).tolist()]


# ----------------------------------------------------------------------------- operators
# Each builder takes the node's attributes and returns fn(*inputs) -> output or tuple of outputs.

def _unary(f):
    return lambda a: (lambda x: f(x))


def _binary(f):
    return lambda a: (lambda x, y: f(x, y))


def _div(x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _pads(a: dict, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads [b1..bn, e1..en] for the spatial axes, auto_pad resolved."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(a.get("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for i in range(n):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def _apply_pads(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads become the torch `padding` argument; others are applied with F.pad."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return x, pads[:n]
    torch_pads = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[n + i]]
    return F.pad(x, torch_pads, value=value), [0] * n


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv(a):
    def fn(x, w, b=None):
        n = w.dim() - 2
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        strides = list(a.get("strides", [1] * n))
        dil = list(a.get("dilations", [1] * n))
        x, pad = _apply_pads(x, _pads(a, x, kernel, strides, dil))
        return _CONV[n](x, w, b, stride=strides, padding=pad, dilation=dil, groups=a.get("group", 1))
    return fn


def _maxpool(a):
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    if a.get("storage_order", 0):
        raise NotImplementedError("MaxPool storage_order=1")

    def fn(x):
        x, pad = _apply_pads(x, _pads(a, x, kernel, strides, dil), value=-math.inf)
        return _MAXPOOL[n](x, kernel, strides, pad, dil, ceil_mode=bool(a.get("ceil_mode", 0)))
    return fn


def _avgpool(a):
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    if any(d != 1 for d in a.get("dilations", [1] * n)):
        raise NotImplementedError("AveragePool with dilations")
    include = bool(a.get("count_include_pad", 0))

    def fn(x):
        pads = _pads(a, x, kernel, strides, [1] * n)
        if pads[:n] != pads[n:] or any(2 * p > k for p, k in zip(pads[:n], kernel)):
            if not include:
                raise NotImplementedError("AveragePool with asymmetric pads and count_include_pad=0")
            x, pad = _apply_pads(x, pads)
        else:
            pad = pads[:n]
        return _AVGPOOL[n](x, kernel, strides, pad, ceil_mode=bool(a.get("ceil_mode", 0)),
                           count_include_pad=include)
    return fn


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
        raise NotImplementedError("BatchNormalization with training_mode=1")
    eps = a.get("epsilon", 1e-5)
    return lambda x, s, b, mean, var: F.batch_norm(x, mean, var, s, b, False, 0.0, eps)


def _flatten(a):
    axis = a.get("axis", 1)

    def fn(x):
        ax = axis + x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:ax]), -1)
    return fn


def _reshape(a):
    allowzero = a.get("allowzero", 0)

    def fn(x, shape):
        s = _ints(shape)
        if not allowzero:
            s = [x.shape[i] if d == 0 else d for i, d in enumerate(s)]
        return x.reshape(s)
    return fn


def _transpose(a):
    perm = a.get("perm")
    return lambda x: x.permute(*(perm if perm is not None else range(x.dim() - 1, -1, -1)))


def _squeeze(a):
    def fn(x, axes=None):
        ax = a.get("axes") if axes is None else _ints(axes)
        if ax is None:
            return x.squeeze()
        return x.squeeze(tuple(d % x.dim() for d in ax)) if ax else x
    return fn


def _unsqueeze(a):
    def fn(x, axes=None):
        ax = a.get("axes") if axes is None else _ints(axes)
        rank = x.dim() + len(ax)
        for d in sorted(d % rank for d in ax):
            x = x.unsqueeze(d)
        return x
    return fn


def _concat(a):
    axis = a["axis"]
    return lambda *xs: torch.cat([x for x in xs if x is not None], dim=axis)


def _slice(a):
    def fn(x, starts, ends, axes=None, steps=None):
        st, en = _ints(starts), _ints(ends)
        ax = _ints(axes) if axes is not None else list(range(len(st)))
        sp = _ints(steps) if steps is not None else [1] * len(st)
        for s, e, d, k in zip(st, en, ax, sp):
            d %= x.dim()
            lo, hi, step = slice(s, e, k).indices(x.shape[d])
            if k > 0:
                x = x[(slice(None),) * d + (slice(lo, hi, step),)]
            else:
                idx = torch.arange(lo, hi, step, device=x.device, dtype=torch.int64)
                x = x.index_select(d, idx)
        return x
    return fn


def _gather(a):
    axis = a.get("axis", 0)

    def fn(x, idx):
        ax = axis % x.dim()
        i = idx.to(torch.int64)
        i = torch.where(i < 0, i + x.shape[ax], i)
        out = x.index_select(ax, i.reshape(-1).to(x.device))
        return out.reshape((*x.shape[:ax], *idx.shape, *x.shape[ax + 1:]))
    return fn


def _shape(a):
    start, end = a.get("start", 0), a.get("end")
    return lambda x: torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


def _constant_of_shape(a):
    value = a.get("value")
    v = _tensor_from_proto(value) if value is not None else torch.zeros(1, dtype=torch.float32)

    def fn(shape):
        return torch.full(_ints(shape), v.reshape(-1)[0].item(), dtype=v.dtype, device=shape.device)
    return fn


def _cast(a):
    dt = onnx_dtype_to_torch(a["to"])
    return lambda x: x.to(dt)


def _softmax(f):
    return lambda a: (lambda x: f(x, dim=a.get("axis", -1)))


def _reduce(f):
    def build(a):
        def fn(x, axes=None):
            ax = a.get("axes") if axes is None else _ints(axes)
            keep = bool(a.get("keepdims", 1))
            if not ax:
                if a.get("noop_with_empty_axes", 0):
                    return x
                ax = list(range(x.dim()))
            return f(x, dim=tuple(ax), keepdim=keep)
        return fn
    return build


def _clip(a):
    lo_a, hi_a = a.get("min"), a.get("max")

    def fn(x, lo=None, hi=None):
        lo = lo_a if lo is None else lo
        hi = hi_a if hi is None else hi
        if lo is not None:
            x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype, device=x.device))
        if hi is not None:
            x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype, device=x.device))
        return x
    return fn


def _expand(a):
    return lambda x, shape: x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _dropout(a):
    def fn(x, ratio=None, training=None):
        return x, torch.ones_like(x, dtype=torch.bool)
    return fn


def _gelu(a):
    approx = a.get("approximate", "none")
    return lambda x: F.gelu(x, approximate=approx)


# --- recurrent layers: ONNX gate order -> torch gate order, torch's fused kernels

_LSTM_ORDER = [0, 2, 3, 1]   # ONNX i, o, f, c  ->  torch i, f, g(=c), o
_GRU_ORDER = [1, 0, 2]       # ONNX z, r, h     ->  torch r, z, n(=h)


def _regate(w: torch.Tensor, order: list[int]) -> torch.Tensor:
    parts = w.chunk(len(order), 0)
    return torch.cat([parts[i] for i in order], 0)


def _rnn(kind: str):
    def build(a):
        order, defaults = ((_LSTM_ORDER, ["Sigmoid", "Tanh", "Tanh"]) if kind == "LSTM"
                           else (_GRU_ORDER, ["Sigmoid", "Tanh"]))
        direction = a.get("direction", "forward")
        acts = a.get("activations")
        ndirs = 2 if direction == "bidirectional" else 1
        if acts is not None and [s.lower() for s in acts] != [s.lower() for s in defaults] * ndirs:
            raise NotImplementedError(f"{kind} with activations {acts}")
        if a.get("clip") is not None:
            raise NotImplementedError(f"{kind} with clip")
        if a.get("input_forget", 0):
            raise NotImplementedError("LSTM with input_forget=1")
        if kind == "GRU" and not a.get("linear_before_reset", 0):
            raise NotImplementedError("GRU with linear_before_reset=0 (torch computes linear_before_reset=1)")
        batch_first = bool(a.get("layout", 0))
        hidden = a["hidden_size"]

        def fn(x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
            if p is not None:
                raise NotImplementedError("LSTM peepholes")
            if batch_first:
                x = x.transpose(0, 1)
                h0 = None if h0 is None else h0.transpose(0, 1)
                c0 = None if c0 is None else c0.transpose(0, 1)
            seq, batch = x.shape[0], x.shape[1]
            if seq_lens is not None and bool((seq_lens != seq).any()):
                raise NotImplementedError(f"{kind} with sequence_lens shorter than the sequence")
            ndir = w.shape[0]
            zeros = x.new_zeros(ndir, batch, hidden)
            h0 = zeros if h0 is None else h0
            c0 = zeros if c0 is None else c0
            params = []
            for d in range(ndir):
                params += [_regate(w[d], order), _regate(r[d], order)]
                if b is not None:
                    bi, bh = b[d].chunk(2, 0)
                    params += [_regate(bi, order), _regate(bh, order)]
            hx = [h0, c0] if kind == "LSTM" else h0
            if direction == "reverse":
                x = x.flip(0)
            f = torch.lstm if kind == "LSTM" else torch.gru
            res = f(x, hx, params, b is not None, 1, 0.0, False, ndir == 2, False)
            y = res[0]
            if direction == "reverse":
                y = y.flip(0)
            y = y.reshape(seq, batch, ndir, hidden).permute(0, 2, 1, 3)
            states = list(res[1:])
            if batch_first:
                y = y.permute(2, 0, 1, 3)
                states = [s.transpose(0, 1) for s in states]
            return (y, *states)
        return fn
    return build


SUPPORTED_OPS: dict[str, Callable[[dict], Callable]] = {
    "Identity": _unary(lambda x: x),
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Erf": _unary(torch.erf), "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Not": _unary(torch.logical_not),
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _binary(torch.pow), "MatMul": _binary(torch.matmul), "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt), "Greater": _binary(torch.gt), "Max": lambda a: (lambda *xs: _fold(torch.maximum, xs)),
    "Min": lambda a: (lambda *xs: _fold(torch.minimum, xs)), "Sum": lambda a: (lambda *xs: _fold(torch.add, xs)),
    "Where": lambda a: (lambda c, x, y: torch.where(c, x, y)),
    "LeakyRelu": lambda a: (lambda x: F.leaky_relu(x, a.get("alpha", 0.01))),
    "Elu": lambda a: (lambda x: F.elu(x, a.get("alpha", 1.0))),
    "HardSigmoid": lambda a: (lambda x: torch.clamp(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1)),
    "Gelu": _gelu,
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "Conv": _conv, "MaxPool": _maxpool, "AveragePool": _avgpool,
    "GlobalAveragePool": lambda a: (lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": lambda a: (lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "BatchNormalization": _batchnorm, "Gemm": _gemm, "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat,
    "Slice": _slice, "Gather": _gather, "Shape": _shape, "ConstantOfShape": _constant_of_shape,
    "Cast": _cast, "Dropout": _dropout, "Clip": _clip, "Expand": _expand,
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax), "ReduceMin": _reduce(torch.amin),
    "LSTM": _rnn("LSTM"), "GRU": _rnn("GRU"),
}


def _fold(f, xs):
    out = xs[0]
    for x in xs[1:]:
        out = f(out, x)
    return out


def _constant_value(a: dict) -> torch.Tensor:
    if "value" in a:
        return _tensor_from_proto(a["value"])
    for key, dt in (("value_float", torch.float32), ("value_floats", torch.float32),
                    ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dt)
    raise NotImplementedError(f"Constant with attribute {sorted(a)}")


class OnnxModule(nn.Module):
    """Runs an ONNX graph with torch ops; weights come from `tensors` (file name -> tensor).

    forward(*inputs) takes the graph inputs in order (the ones not supplied by `tensors` or
    initializers) and returns the output tensor, or a tuple if the graph has several outputs.
    """

    def __init__(self, model, tensors: dict[str, torch.Tensor]):
        super().__init__()
        import onnx

        if isinstance(model, (bytes, bytearray, memoryview)):
            model = onnx.ModelProto.FromString(bytes(model))
        for imp in model.opset_import:
            if imp.domain not in ("", "ai.onnx"):
                raise NotImplementedError(f"operator set domain {imp.domain!r} is not supported")
        g = model.graph
        self._names: dict[str, str] = {}   # value name -> attribute name
        self._weights = nn.Module()
        # initializers named like a file tensor are format 1.1 stubs (no data): the file tensor fills them
        const = {t.name: _tensor_from_proto(t) for t in g.initializer if t.name not in tensors}
        for name, t in tensors.items():
            self._store(name, t, parameter=t.is_floating_point())
        for name, t in const.items():
            if name not in self._names:
                self._store(name, t, parameter=False)
        supplied = set(self._names)
        self.input_names = [i.name for i in g.input if i.name not in supplied]
        self.output_names = [o.name for o in g.output]
        self._steps: list[tuple[Callable, list[str], list[str]]] = []
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                raise NotImplementedError(f"operator {node.domain}.{node.op_type} is not supported")
            a = _attrs(node)
            if node.op_type == "Constant":
                if node.output[0] not in tensors:  # else a 1.1 stub, filled by the file tensor
                    self._store(node.output[0], _constant_value(a), parameter=False)
                continue
            if node.op_type not in SUPPORTED_OPS:
                raise NotImplementedError(f"ONNX operator {node.op_type!r} (node {node.name!r}) is not supported")
            if any(attr.type in (5, 10) for attr in node.attribute):  # GRAPH / GRAPHS: control flow
                raise NotImplementedError(f"ONNX operator {node.op_type!r} with subgraphs is not supported")
            self._steps.append((SUPPORTED_OPS[node.op_type](a), list(node.input), list(node.output)))

    def _store(self, name: str, t: torch.Tensor, parameter: bool) -> None:
        key = f"t{len(self._names)}"
        if parameter:
            self._weights.register_parameter(key, nn.Parameter(t, requires_grad=False))
        else:
            self._weights.register_buffer(key, t)
        self._names[name] = key

    def tensor(self, name: str) -> torch.Tensor:
        """A weight or constant of the graph by its ONNX / file name."""
        return getattr(self._weights, self._names[name])

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        env: dict[str, torch.Tensor | None] = {"": None}
        env.update(zip(self.input_names, inputs))
        w = self._weights
        names = self._names
        for fn, ins, outs in self._steps:
            args = [env[n] if n in env else getattr(w, names[n]) for n in ins]
            while args and args[-1] is None:
                args.pop()
            res = fn(*args)
            if isinstance(res, tuple):
                for n, r in zip(outs, res):
                    if n:
                        env[n] = r
            else:
                env[outs[0]] = res
        outs = [env[n] if n in env else getattr(w, names[n]) for n in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)
