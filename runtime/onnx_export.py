"""Export a `.mrc` file to ONNX: plain (weights decoded in numpy and stored as initializers) or
self-decoding (onnxruntime regenerates the weights itself; see `selfdecode`).

Needs numpy, msgpack and onnx; never imports torch.
"""
from __future__ import annotations

import os

from collections.abc import Iterable

import numpy as np

from mrcformat.container import Container, Tensor
from mrcformat.decoder import decode_group
from mrcformat.errors import GraphError, LimitError
from mrcformat.onnx_graphs import all_graphs
from mrcformat.atomic import atomic_write_bytes
from mrcformat.reader import load

__all__ = [
    "decoded_arrays",
    "export",
    "graph_model",
    "load_container",
    "raw_initializer",
    "referenced_names",
    "serialize",
    "to_onnx_model",

]

# header dtype name -> onnx.TensorProto data type
_ONNX_DTYPES = {
    "float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "bool": 9, "float16": 10,
    "float64": 11, "bfloat16": 16,
}
_PROTOBUF_LIMIT = 2**31 - 1


def load_container(src: str | os.PathLike | Container) -> Container:
    """`src` as a Container: read (and fully checked) from a path, or passed through."""
    if isinstance(src, Container):
        return src
    return load(src)


def graph_model(c: Container):
    """The file's stored graph as an onnx.ModelProto (a fresh copy); GraphError if there is none."""
    import onnx

    if c.graph is None:
        raise GraphError("the file has no graph section, so there is no ONNX model to export "
                         "(decode the tensors with mrcformat.decode instead)", "graph")
    try:
        model = onnx.ModelProto.FromString(bytes(c.graph))
    except Exception as e:  # protobuf DecodeError and friends
        raise GraphError(f"graph section is not an ONNX ModelProto: {e}", "graph") from e
    if not model.HasField("graph"):
        raise GraphError("ONNX model has no graph", "graph")
    return model


def referenced_names(graph) -> set[str]:
    """Every value name read by a node of `graph` or of its subgraphs, plus the graph outputs."""
    names: set[str] = set()
    for g in all_graphs(graph):
        for node in g.node:
            names.update(node.input)
        names.update(o.name for o in g.output)
    names.discard("")
    return names


def raw_initializer(name: str, dtype: str, data: np.ndarray):
    """TensorProto for a raw tensor: little-endian raw_data with the header's dtype (bfloat16 as BFLOAT16)."""
    from onnx import TensorProto

    arr = np.asarray(data)
    arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")  # keeps 0-d arrays 0-d
    t = TensorProto()
    t.name = name
    t.data_type = _ONNX_DTYPES[dtype]
    t.dims.extend(int(d) for d in arr.shape)
    t.raw_data = arr.tobytes()
    return t


def decoded_arrays(c: Container, wanted: set[str]) -> Iterable[tuple[Tensor, np.ndarray]]:
    """(tensor, array) for the wanted tensors in header order, decoding each needed group once
    (coded: float32; raw: the stored array, bfloat16 as uint16 bits)."""
    current: dict[str, np.ndarray] = {}
    current_group = None
    for t in c.tensors:
        if t.name not in wanted:
            continue
        if t.encoding == "raw":
            yield t, t.data
            continue
        if t.group != current_group:  # keep one group at a time (a group seen again is decoded again)
            current = flat = None  # drop the previous group before decoding the next
            flat, pos, current = decode_group(c, t.group), 0, {}
            for m in c.group_members(t.group):
                current[m.name] = flat[pos:pos + m.numel].reshape(m.shape)
                pos += m.numel
            current_group = t.group
        yield t, current[t.name]


def to_onnx_model(container: str | os.PathLike | Container, *, self_decoding: bool = False):
    """The file as an onnx.ModelProto ready for onnxruntime.

    Plain: the stored graph with an initializer for every file tensor it reads (coded tensors decoded
    by the numpy reference decoder, raw tensors with their stored dtype). Self-decoding: see
    `mrcformat_runtime.selfdecode.self_decoding_model`. Raises GraphError if the file has no graph.
    """
    c = load_container(container)
    if self_decoding:
        from .selfdecode import self_decoding_model

        return self_decoding_model(c)
    model = graph_model(c)
    wanted = referenced_names(model.graph) & {t.name for t in c.tensors}
    # tensors listed as graph inputs (IR < 4 style) stay there: the initializer becomes their default
    model.graph.initializer.extend(raw_initializer(t.name, t.dtype, arr) for t, arr in decoded_arrays(c, wanted))
    return model


def serialize(model) -> bytes:
    size = model.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise LimitError(f"the ONNX model would be {size} bytes, over protobuf's 2 GiB limit; "
                         "use the self-decoding export or load it with mrcformat_runtime.ort.session", "graph")
    return model.SerializeToString()


def export(src: str | os.PathLike | Container, dst: str | os.PathLike, *, self_decoding: bool = False) -> int:
    """Write the file's model as ONNX to `dst` (atomically); returns the number of bytes written."""
    return atomic_write_bytes(dst, serialize(to_onnx_model(src, self_decoding=self_decoding)))
