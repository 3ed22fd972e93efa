"""An ONNX model's float weights, wherever they live, and the graph that remains once they are coded.

Weights sit in initializers of the top graph, in initializers of subgraphs (If/Loop/Scan bodies,
any depth) and in the `value` of Constant nodes (silero-vad keeps all of them there, inside If
branches). `find_weights` lists every float32 tensor of at least `min_elements` elements with the
name a `.mrc` file gives it: an initializer's name, or a Constant's output. `strip` empties those
tensors in place, which turns them into the format's stubs (SPEC.md 7.6, 1.1): the graph keeps every
node, name, opset, dynamic axis and subgraph, and a loader puts the decoded weights back where they
were. Needs `onnx` (not torch, not onnxruntime).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrcformat.onnx_graphs import constant_value, graphs_with_paths

__all__ = ["OnnxInputError", "WeightSite", "find_weights", "load_onnx", "locate", "strip"]

_FLOAT = 1  # onnx.TensorProto.FLOAT
_MRC_MAGIC = b"\x89MRC\r\n\x1a\n"


class OnnxInputError(ValueError):
    """The model given to the ONNX compressor cannot be used (not ONNX, external data outside its folder, ...)."""


@dataclass
class WeightSite:
    """One float32 tensor of the model and where it lives."""

    name: str            # its name in the `.mrc` file: the initializer's name or the Constant's output
    array: np.ndarray    # float32, the tensor's shape
    tensor: Any          # the TensorProto holding it
    kind: str            # "initializer" or "constant"
    path: str            # e.g. "graph/node[3]:If_0.then_branch/node[7]:Constant_12"

    @property
    def numel(self) -> int:
        return int(self.array.size)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def load_onnx(src: str | os.PathLike | bytes):
    """Read an ONNX model (path or bytes) with its external data, refusing data files outside the
    model's own folder (a model must not make us read arbitrary files) and `.mrc` files."""
    import onnx
    from onnx import external_data_helper

    if isinstance(src, (bytes, bytearray, memoryview)):
        data, folder = bytes(src), None
    else:
        path = Path(src)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OnnxInputError(f"{path}: cannot read: {e.strerror or type(e).__name__}") from e
        folder = path.parent
    if data[:8] == _MRC_MAGIC:
        raise OnnxInputError(f"{src}: this is already a .mrc file, not an ONNX model; "
                             "use `mrc info` / `mrc export` on it (or give the original .onnx)")
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:
        raise OnnxInputError(f"{src}: not an ONNX model (protobuf parse failed: {e})") from e
    if not model.HasField("graph"):
        raise OnnxInputError(f"{src}: not an ONNX model (no graph)")
    external = [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]
    if external:
        if folder is None:
            raise OnnxInputError("the model uses external data; pass its path, not its bytes")
        for t in external:
            info = external_data_helper.ExternalDataInfo(t)
            loc = Path(info.location)
            if loc.is_absolute() or not _inside(folder / loc, folder):
                raise OnnxInputError(f"{src}: tensor {t.name!r} points to external data {info.location!r} outside "
                                     f"the model's folder {str(folder)!r}; refusing to read it")
            if not (folder / loc).is_file():
                raise OnnxInputError(f"{src}: tensor {t.name!r}: external data file {info.location!r} not found")
        external_data_helper.load_external_data_for_model(model, str(folder))
    return model


def find_weights(model, min_elements: int = 64, min_ndim: int = 2) -> tuple[list[WeightSite], list[str]]:
    """Every float32 tensor with at least `min_elements` elements and `min_ndim` dimensions, top graph
    and subgraphs, in graph order; and notes on tensors left alone (e.g. a name used twice). Integer
    tensors, shapes, small tensors and (by default) vectors such as biases and normalisation scales are
    not listed: they stay in the graph as they are (few values, each of which matters)."""
    from onnx import numpy_helper

    found: list[WeightSite] = []
    notes: list[str] = []
    for g, path in graphs_with_paths(model.graph):
        for i, t in enumerate(g.initializer):
            if t.data_type == _FLOAT:
                found.append(WeightSite(t.name, None, t, "initializer", f"{path}/initializer[{i}]"))
        for i, node in enumerate(g.node):
            value = constant_value(node)
            if value is not None and value.data_type == _FLOAT and len(node.output):
                found.append(WeightSite(node.output[0], None, value, "constant",
                                        f"{path}/node[{i}]:{node.name or node.op_type}"))
    sites, seen = [], {}
    counts: dict[str, int] = {}
    for s in found:
        counts[s.name] = counts.get(s.name, 0) + 1
    for s in found:
        n = int(np.prod(s.tensor.dims, dtype=np.int64)) if len(s.tensor.dims) else 1
        if n < min_elements or len(s.tensor.dims) < min_ndim:
            continue
        if not s.name or counts[s.name] > 1:
            if s.name not in seen:
                notes.append(f"tensor {s.name!r} ({n} values) is not coded: its name is not unique in the model")
                seen[s.name] = True
            continue
        s.array = np.ascontiguousarray(numpy_helper.to_array(s.tensor), dtype=np.float32)
        if not np.all(np.isfinite(s.array)):
            notes.append(f"tensor {s.name!r} is not coded: it holds non-finite values")
            continue
        sites.append(s)
    return sites, notes


def locate(model, sites: list[WeightSite]):
    """(name, graph, Constant node or None, TensorProto) of each site in `model`, a copy of the model the
    sites were found in (same structure, so the same paths)."""
    wanted = {s.path: s.name for s in sites}
    for g, path in graphs_with_paths(model.graph):
        for i, t in enumerate(g.initializer):
            if (p := f"{path}/initializer[{i}]") in wanted:
                yield wanted[p], g, None, t
        for i, node in enumerate(g.node):
            if (p := f"{path}/node[{i}]:{node.name or node.op_type}") in wanted:
                yield wanted[p], g, node, node.attribute[0].t


def strip(tensors) -> None:
    """Remove the data of these TensorProtos in place, leaving stubs (name, type and dims kept)."""
    for t in tensors:
        for f in ("raw_data", "float_data", "external_data"):
            t.ClearField(f)
        t.ClearField("data_location")
