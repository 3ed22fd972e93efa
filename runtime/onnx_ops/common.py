"""What every ONNX operator implementation shares: attributes with typed errors, dtypes, tensor decoding.

An operator *builder* takes the node's `Attrs` and returns `fn(*inputs) -> output | tuple`. Builders
check attributes when the module is built, so a missing required attribute is a `GraphError` naming
the node and attribute, and an unsupported form raises `Unsupported`, which the module collects
(with every other unsupported node) into one `UnsupportedOnnxError` before any work starts.
"""
from __future__ import annotations

import numpy as np
import torch

from mrcformat.errors import GraphError

__all__ = ["Attrs", "Unsupported", "UnsupportedOnnxError", "ints", "onnx_dtype_to_torch", "sqrt", "tensor_from_proto"]

INT64_MAX = 2**63 - 1

_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32, 13: torch.uint64,
    16: torch.bfloat16,
}


class Unsupported(NotImplementedError):
    """Raised by a builder for an operator form this converter does not implement (collected, not shown alone)."""


class UnsupportedOnnxError(NotImplementedError):
    """The graph uses operators (or operator forms) the converter does not implement; `problems` lists
    every one as (subgraph path, node name, op type, reason), all found before any work starts."""

    def __init__(self, problems: list[tuple[str, str, str, str]]):
        self.problems = list(problems)
        ops = sorted({p[2] for p in self.problems})
        lines = [f"  {op_type} (node {name!r}{' in ' + path if path else ''}): {why}"
                 for path, name, op_type, why in self.problems]
        super().__init__(f"the ONNX graph uses {len(ops)} unsupported operator type(s) {ops} "
                         f"at {len(self.problems)} node(s):\n" + "\n".join(lines))

    @property
    def op_types(self) -> list[str]:
        return sorted({p[2] for p in self.problems})


def onnx_dtype_to_torch(code: int) -> torch.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise Unsupported(f"ONNX tensor data type {code} is not supported") from None


def tensor_from_proto(t) -> torch.Tensor:
    from onnx import numpy_helper

    if t.data_type == 16:  # bfloat16: numpy_helper gives float32 values (or raw uint16)
        arr = np.array(numpy_helper.to_array(t), dtype=np.float32)
        return torch.from_numpy(arr).to(torch.bfloat16)
    onnx_dtype_to_torch(t.data_type)  # strings, complex, float8: Unsupported
    return torch.from_numpy(np.array(numpy_helper.to_array(t)))


class Attrs(dict):
    """A node's attributes by name; a missing required one (`a["name"]`) is a GraphError naming the
    node and the attribute, not a KeyError. `opset` is the default-domain opset the model imports."""

    def __init__(self, values: dict, op_type: str, name: str, where: str, opset: int, num_outputs: int = 1):
        super().__init__(values)
        self.op_type, self.name, self.where, self.opset = op_type, name, where, opset
        self.num_outputs = num_outputs  # outputs the node names (trailing empty names dropped)

    def __missing__(self, key: str):
        raise GraphError(f"{self.op_type} node {self.name!r} lacks its required attribute {key!r}",
                         f"graph{self.where}.node[{self.name!r}].{key}")

    def require(self, *keys: str) -> None:
        """GraphError now (when the module is built) if any of `keys` is missing."""
        for k in keys:
            self[k]

    def error(self, message: str) -> GraphError:
        return GraphError(f"{self.op_type} node {self.name!r}: {message}", f"graph{self.where}.node[{self.name!r}]")


def node_attrs(node, where: str, opset: int) -> Attrs:
    from onnx import helper

    out = {}
    for a in node.attribute:
        if a.type in (5, 10):  # GRAPH / GRAPHS: compiled by the module, filled in by it
            out[a.name] = a
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode("utf-8") for x in v]
        out[a.name] = v
    outs = list(node.output)
    while outs and not outs[-1]:
        outs.pop()
    return Attrs(out, node.op_type, node.name or (node.output[0] if node.output else ""), where, opset, len(outs))


def ints(x: torch.Tensor | None) -> list[int] | None:
    """A shape-like tensor's values (called for every Slice/Reshape/...: kept cheap)."""
    if x is None:
        return None
    v = x.tolist() if x.dim() == 1 else x.reshape(-1).tolist()
    return v if x.dtype in (torch.int64, torch.int32) else [int(e) for e in v]


def floats(x: torch.Tensor | None) -> list[float] | None:
    return None if x is None else [float(v) for v in x.reshape(-1).tolist()]


def unary(f):
    return lambda a: (lambda x: f(x))


def binary(f):
    return lambda a: (lambda x, y: f(x, y))


def fold(f, xs):
    out = xs[0]
    for x in xs[1:]:
        out = f(out, x)
    return out


class _Sqrt(torch.autograd.Function):
    """sqrt with gradient 0 at 0 (torch's is inf, and inf * 0 = nan upstream). Same forward bits.
    A magnitude sqrt(re^2 + im^2) of a silent frame is exactly 0 (silero-vad's STFT): with torch's
    sqrt one such frame makes a whole fine-tuning step nan."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.where(y > 0, g / (2 * y), torch.zeros_like(g))


def sqrt(x):
    return _Sqrt.apply(x) if x.requires_grad else torch.sqrt(x)
