"""The ONNX pieces every onnxruntime path shares: the file's stored graph as a ModelProto, which file
tensors it needs and where they go (initializer or stub), tensor protos, decoded arrays, serialization.

Plain export (`onnx_export`), self-decoding export (`selfdecode`) and in-memory loading (`ort.session`)
all stand on this module; it imports none of them. Needs numpy, msgpack and onnx; never imports torch.
"""
from __future__ import annotations

import os

from collections.abc import Iterable

import numpy as np

from mrcformat.container import Container, Tensor, widen_to_float32, widening_stub
from mrcformat.decoder import decode_group
from mrcformat.errors import GraphError, LimitError
from mrcformat.onnx_graphs import Stub, all_graphs, find_stubs
from mrcformat.reader import load

__all__ = [
    "ONNX_DTYPES",
    "PROTOBUF_LIMIT",
    "decoded_arrays",
    "fill_stub",
    "stub_array",
    "graph_model",
    "graph_stubs",
    "load_container",
    "put_tensors",
    "raw_initializer",
    "referenced_names",
    "serialize",
    "wanted_names",
]

# header dtype name -> onnx.TensorProto data type
ONNX_DTYPES = {
    "float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "bool": 9, "float16": 10,
    "float64": 11, "bfloat16": 16,
}
PROTOBUF_LIMIT = 2**31 - 1


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


def stub_array(stub: Stub | None, t: Tensor, arr: np.ndarray) -> tuple[str, np.ndarray]:
    """(dtype, values) of file tensor `t` as its stub holds them: a raw float16 / bfloat16 tensor in a
    float32 stub (format 1.2, SPEC.md 7.6) widened exactly to float32; anything else as it is."""
    if stub is not None and widening_stub(t, stub.tensor.data_type):
        return "float32", widen_to_float32(t.dtype, arr)
    return t.dtype, arr


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
    t.data_type = ONNX_DTYPES[dtype]
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


def put_tensors(c: Container, model, stubs: dict[str, Stub], names: set[str]) -> None:
    """Decode the named file tensors (`decoded_arrays`) into `model`: each into its stub, else appended to the
    top graph's initializers (what the plain export does with every tensor the graph reads)."""
    for t, arr in decoded_arrays(c, names):
        if t.name in stubs:
            fill_stub(stubs[t.name], stub_array(stubs[t.name], t, arr)[1])
        else:
            model.graph.initializer.append(raw_initializer(t.name, t.dtype, arr))


def serialize(model) -> bytes:
    """The model's protobuf bytes; LimitError past protobuf's 2 GiB limit (with what to do instead)."""
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise LimitError(f"the ONNX model would be {size} bytes, over protobuf's 2 GiB limit; "
                         "use the self-decoding export or load it with mrcformat_runtime.ort.session", "graph")
    return model.SerializeToString()
