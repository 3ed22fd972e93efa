"""The memory budget of the runtime loaders (`max_decoded_bytes`): what a load allocates, counted before it does.

The reader already refuses a file larger than the budget, or whose tensors decode to more than it
(`mrcformat.limits.DEFAULT_MAX_DECODED_BYTES`). A loader allocates more than the decoded tensors, so each
checks its own total here before decoding anything:

* torch (`load_state_dict`, `load_module`): the file's bytes, the decoded tensors (coded float32; raw
  tensors copied into torch), plus for `load_module` the constants the graph creates.
* onnxruntime (`session`): the file's bytes, the decoded tensors, onnxruntime's own copy of them (it
  copies external initializers while it builds the session) and a transient copy while it optimises
  (3x in all; measured peaks 2.5-2.7x), the serialized model, and twice the constants the graph creates,
  which onnxruntime constant-folds at session creation (a 4 KB file with a ConstantOfShape of 2^28
  floats made onnxruntime allocate 1.1 GiB). See bench/results/peak_memory_budget.md.
* plain export: the decoded tensors, the ONNX model holding a copy, its serialized bytes.

Graph constants: every top-level node whose inputs are all constants (initializers, file tensors,
outputs of such nodes; Constant and ConstantOfShape included) is folded at load, and its outputs' sizes
come from ONNX shape inference (with data propagation, so a shape computed from constants is known).
Outputs whose size shape inference cannot give are listed in `GraphCost.unknown`; `ort.session` then
turns constant folding off, so nothing of unknown size is allocated at load.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mrcformat.container import WIDENS, Container
from mrcformat.errors import LimitError

__all__ = ["GraphCost", "check", "check_export_budget", "decoded_bytes", "estimate", "graph_constants", "read_container",
           "session_bytes", "torch_bytes"]

# What an onnxruntime session load needs beside the tensors: ONNX shape inference's first use and the
# session's own structures (measured: 19 MiB peak for a load refused just before the session, 29 MiB over
# the counted tensors for sessions that were built). Runs of onnxruntime vary by several MiB.
SESSION_OVERHEAD = 48 << 20

_RAW_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
                 "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1}


def read_container(src, budget: int | None) -> tuple[Container, int]:
    """`src` (a path, the file's bytes, or a Container) as a checked Container and the bytes the file takes in
    memory; a path is read with the budget (`fileread.read_file`), the reader bounds the decoded size by it."""
    from mrcformat.fileread import read_file
    from mrcformat.reader import from_bytes

    if isinstance(src, Container):
        return src, sum(t.data.nbytes for t in src.tensors if t.data is not None) + len(src.graph or b"")
    data = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else read_file(src, max_bytes=budget)
    return from_bytes(data, max_decoded_bytes=budget), len(data)


def decoded_bytes(c: Container, names: set[str] | None = None) -> int:
    """Bytes of the decoded tensors (all, or those in `names`): coded ones float32, raw in their dtype.
    A coded group is decoded whole even when only some of its tensors are wanted."""
    total = 0
    groups = set()
    for t in c.tensors:
        if names is not None and t.name not in names:
            continue
        if t.encoding == "coded":
            groups.add(t.group)
        elif t.dtype in WIDENS and tuple(c.version) >= (1, 2):
            total += t.numel * 4  # it may fill a float32 stub, widened (SPEC 7.6): counted at that size
        else:
            total += t.numel * _RAW_ITEMSIZE.get(t.dtype, 8)
    return total + sum(4 * c.group_weights(g) for g in groups)


@dataclass
class GraphCost:
    """Bytes of the constants a graph creates at load, and the folded outputs of unknown size."""
    bytes: int = 0
    unknown: list[str] = field(default_factory=list)


def _elem_size(elem_type: int) -> int:
    import onnx

    try:
        return max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:  # noqa: BLE001  # undefined, string or an unknown code: count a wide element
        return 8


def graph_constants(model, c: Container) -> GraphCost:
    """What the graph's constant-foldable top-level nodes allocate (see the module docstring)."""
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    const = {i.name for i in g.initializer} | {s.values.name for s in g.sparse_initializer}
    known = {vi.name for vi in list(g.input) + list(g.value_info)}
    for t in c.tensors:  # the file tensors become initializers: give shape inference their types
        const.add(t.name)
        if t.name not in known:
            dtype = onnx.TensorProto.FLOAT if t.encoding == "coded" else _onnx_type(t.dtype)
            g.value_info.append(onnx.helper.make_tensor_value_info(t.name, dtype, list(t.shape)))
    folded: list[str] = []
    for node in g.node:
        if all(not i or i in const for i in node.input):
            outs = [o for o in node.output if o]
            const.update(outs)
            folded += outs
    cost = GraphCost()
    if not folded:
        return cost
    try:
        inferred = onnx.shape_inference.infer_shapes(work, check_type=False, strict_mode=False, data_prop=True)
        types = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    except Exception:  # noqa: BLE001  # shape inference refuses the graph: every size unknown
        types = {}
    for name in folded:
        tt = types.get(name)
        if tt is None or not tt.HasField("tensor_type") or not tt.tensor_type.HasField("shape"):
            cost.unknown.append(name)
            continue
        dims = tt.tensor_type.shape.dim
        if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            cost.unknown.append(name)
            continue
        n = 1
        for d in dims:
            n *= d.dim_value
        cost.bytes += n * _elem_size(tt.tensor_type.elem_type)
    return cost


def _onnx_type(dtype: str) -> int:
    from .onnx_model import ONNX_DTYPES

    return ONNX_DTYPES.get(dtype, 0)


def session_bytes(c: Container, file_bytes: int, model, wanted: set[str]) -> tuple[int, GraphCost]:
    """What `ort.session` allocates: the file; the decoded tensors three times (ours, onnxruntime's copy,
    and one transient copy while it optimises: constant folding or pre-packing; measured peaks 2.5-2.7x
    the decoded size, bench/results/peak_memory_budget.md); the stored graph twice (our ModelProto and
    its serialized bytes); the folded graph constants twice (the folded tensor and the initializer made
    of it: measured 2.1x); and SESSION_OVERHEAD for the machinery (ONNX shape inference, the session)."""
    consts = graph_constants(model, c)
    return (SESSION_OVERHEAD + file_bytes + 3 * decoded_bytes(c, wanted) + 2 * len(c.graph or b"") + 2 * consts.bytes,
            consts)


def torch_bytes(c: Container, file_bytes: int, model=None) -> int:
    """What `load_state_dict` (model None) or `load_module` (the graph's ModelProto) allocates."""
    if model is None:
        return file_bytes + decoded_bytes(c)
    return file_bytes + decoded_bytes(c) + len(c.graph or b"") + graph_constants(model, c).bytes


def estimate(path, loader: str) -> int:
    """The bytes `loader` ("session", "load_state_dict", "load_module") would count for the file at `path`."""
    import onnx

    from mrcformat.fileread import read_file
    from mrcformat.reader import from_bytes

    data = read_file(path)
    c = from_bytes(data, max_decoded_bytes=None)
    model = onnx.ModelProto.FromString(bytes(c.graph)) if c.graph is not None else None
    if loader == "session":
        from .onnx_model import graph_stubs, wanted_names

        return session_bytes(c, len(data), model, wanted_names(c, model, graph_stubs(c, model)))[0]
    return torch_bytes(c, len(data), model if loader == "load_module" else None)


def check(needed: int, budget: int | None, what: str) -> None:
    """LimitError (before anything is allocated) when `needed` bytes exceed the budget."""
    if budget is not None and needed > budget:
        raise LimitError(f"{what} would allocate about {needed} bytes, over the memory budget of {budget} bytes "
                         "(pass max_decoded_bytes=... to raise it, None for no limit; CLI: --max-decoded-bytes)",
                         "tensors")


def check_export_budget(c: Container, file_bytes: int, budget: int | None, *, self_decoding: bool = False,
                        two_step: bool = False) -> None:
    """The plain export holds the decoded tensors, the model's copy of them and its serialized bytes;
    the self-decoding one only the file's indices (a few times the file); the two-step form both the
    indices and the raw tensors the network keeps."""
    if two_step:
        raw = {t.name for t in c.tensors if t.encoding != "coded"}
        check(4 * file_bytes + 3 * decoded_bytes(c, raw), budget, "the two-step export")
    elif self_decoding:
        check(4 * file_bytes, budget, "the self-decoding export")
    else:
        check(file_bytes + 3 * decoded_bytes(c), budget, "the plain export")
