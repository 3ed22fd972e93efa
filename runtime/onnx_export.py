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
from mrcformat.onnx_graphs import Stub, all_graphs, find_stubs
from mrcformat.atomic import atomic_write_bytes
from mrcformat.reader import load

__all__ = [
    "decoded_arrays",
    "export",
    "fill_stub",
    "graph_model",
    "graph_stubs",
    "load_container",
    "raw_initializer",
    "referenced_names",
    "serialize",
    "to_onnx_model",
    "wanted_names",
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


def graph_stubs(c: Container, model) -> dict[str, Stub]:
    """The file tensors that go back into their own place in the graph (format >= 1.1, SPEC.md 7.6),
    by name; the reader has checked there is at most one per tensor."""
    if tuple(c.version) < (1, 1):
        return {}
    stubs, _ = find_stubs(model.graph, frozenset(t.name for t in c.tensors))
    return {s.name: s for s in stubs}


def wanted_names(c: Container, model, stubs: dict[str, Stub] | None = None) -> set[str]:
    """The file tensors the graph needs: the ones it reads by name and the ones with a stub."""
    stubs = graph_stubs(c, model) if stubs is None else stubs
    return (referenced_names(model.graph) | set(stubs)) & {t.name for t in c.tensors}


def fill_stub(stub: Stub, data: np.ndarray) -> None:
    """Put a decoded tensor's bytes into its stub (little-endian raw_data; name, type and dims stay)."""
    arr = np.asarray(data)
    stub.tensor.raw_data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


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
    stubs = graph_stubs(c, model)
    wanted = wanted_names(c, model, stubs)
    # tensors listed as graph inputs (IR < 4 style) stay there: the initializer becomes their default
    for t, arr in decoded_arrays(c, wanted):
        if t.name in stubs:
            fill_stub(stubs[t.name], arr)
        else:
            model.graph.initializer.append(raw_initializer(t.name, t.dtype, arr))
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
