"""Export a `.mrc` file to ONNX: plain (weights decoded in numpy and stored as initializers) or
self-decoding (onnxruntime regenerates the weights itself; see `selfdecode`).

Needs numpy, msgpack and onnx; never imports torch.
"""
from __future__ import annotations

import os

from mrcformat.atomic import atomic_write_bytes
from mrcformat.container import Container

from .onnx_model import decoded_arrays, fill_stub, graph_model, graph_stubs, load_container, raw_initializer, \
    serialize, wanted_names
from .selfdecode import self_decoding_model

__all__ = ["export", "to_onnx_model"]


def to_onnx_model(container: str | os.PathLike | Container, *, self_decoding: bool = False):
    """The file as an onnx.ModelProto ready for onnxruntime.

    Plain: the stored graph with an initializer for every file tensor it reads (coded tensors decoded
    by the numpy reference decoder, raw tensors with their stored dtype). Self-decoding: see
    `mrcformat_runtime.selfdecode.self_decoding_model`. Raises GraphError if the file has no graph.
    """
    c = load_container(container)
    if self_decoding:
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


def export(src: str | os.PathLike | Container, dst: str | os.PathLike, *, self_decoding: bool = False) -> int:
    """Write the file's model as ONNX to `dst` (atomically); returns the number of bytes written."""
    return atomic_write_bytes(dst, serialize(to_onnx_model(src, self_decoding=self_decoding)))
