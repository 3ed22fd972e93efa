"""Export a `.mrc` file to ONNX: plain (weights decoded in numpy and stored as initializers) or
self-decoding (onnxruntime regenerates the weights itself; see `selfdecode`).

Needs numpy, msgpack and onnx; never imports torch.
"""
from __future__ import annotations

import os

from mrcformat.atomic import atomic_write_bytes
from mrcformat.container import Container

from .onnx_model import decoded_arrays, fill_stub, graph_model, graph_stubs, load_container, raw_initializer, stub_array, \
    serialize, wanted_names
from .selfdecode import regenerated_weights_model, self_decoding_model

__all__ = ["export", "export_two_step", "network_model", "to_onnx_model"]


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
            fill_stub(stubs[t.name], stub_array(stubs[t.name], t, arr)[1])
        else:
            model.graph.initializer.append(raw_initializer(t.name, t.dtype, arr))
    return model


def export(src: str | os.PathLike | Container, dst: str | os.PathLike, *, self_decoding: bool = False) -> int:
    """Write the file's model as ONNX to `dst` (atomically); returns the number of bytes written."""
    return atomic_write_bytes(dst, serialize(to_onnx_model(src, self_decoding=self_decoding)))


def network_model(container: str | os.PathLike | Container) -> tuple:
    """(model, names): the stored graph with every coded tensor it reads from the top graph declared as a
    float32 graph input of that name (`names`, in header order); raw tensors, and coded ones whose stub sits
    inside a subgraph or a Constant node, are stored as in the plain export. The network half of the
    two-step form (`export_two_step`)."""
    from onnx import helper

    c = load_container(container)
    model = graph_model(c)
    stubs = graph_stubs(c, model)
    wanted = wanted_names(c, model, stubs)
    top = model.graph
    fed = [t for t in c.tensors if t.name in wanted and t.encoding == "coded"
           and (t.name not in stubs or (stubs[t.name].node is None and stubs[t.name].graph is top))]
    fed_names = {t.name for t in fed}
    keep = [i for i in top.initializer if i.name not in fed_names]  # top-graph stubs become inputs
    del top.initializer[:]
    top.initializer.extend(keep)
    declared = {i.name for i in top.input}
    top.input.extend(helper.make_tensor_value_info(t.name, 1, list(t.shape)) for t in fed if t.name not in declared)
    for t, arr in decoded_arrays(c, wanted - fed_names):
        if t.name in stubs:
            fill_stub(stubs[t.name], stub_array(stubs[t.name], t, arr)[1])
        else:
            top.initializer.append(raw_initializer(t.name, t.dtype, arr))
    return model, [t.name for t in fed]


def export_two_step(src: str | os.PathLike | Container, weights_dst: str | os.PathLike,
                    network_dst: str | os.PathLike) -> tuple[int, int]:
    """The two-step form for large models, in two files any onnxruntime opens without our code:
    `weights_dst`, a decoder without inputs whose outputs are the coded tensors the network reads (open it
    with graph optimisations off and run it once: no constant folding, one batch of intermediates at a
    time), and `network_dst`, the network taking those tensors as inputs of the same names next to its
    own (`network_model`). Returns the two sizes in bytes."""
    c = load_container(src)
    network, fed = network_model(c)
    decoder = regenerated_weights_model(c, fed)
    return (atomic_write_bytes(weights_dst, serialize(decoder)), atomic_write_bytes(network_dst, serialize(network)))
