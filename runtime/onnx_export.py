"""Export a `.mrc` file to ONNX: plain (weights decoded in numpy and stored as initializers) or
self-decoding (onnxruntime regenerates the weights itself; see `selfdecode`).

Needs numpy, msgpack and onnx; never imports torch.
"""
from __future__ import annotations

import os

from mrcformat.atomic import atomic_write_bytes
from mrcformat.container import Container

from .onnx_model import graph_model, graph_stubs, load_container, put_tensors, serialize, wanted_names
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
    put_tensors(c, model, stubs, wanted)
    return model


def export(src: str | os.PathLike | Container, dst: str | os.PathLike, *, self_decoding: bool = False) -> int:
    """Write the file's model as ONNX to `dst` (atomically); returns the number of bytes written."""
    return atomic_write_bytes(dst, serialize(to_onnx_model(src, self_decoding=self_decoding)))


def network_model(container: str | os.PathLike | Container) -> tuple:
    """(model, names): the stored graph with every coded tensor it needs declared as a float32 input of
    the top graph under its own name (`names`, in header order); raw tensors are stored as in the plain
    export. A coded tensor's stub, at any depth, is taken out of the graph (the initializer, or the
    Constant node that produced the name), so a subgraph that read it reads the graph input of that name
    from its outer scope instead. The network half of the two-step form (`export_two_step`)."""
    from onnx import helper

    c = load_container(container)
    model = graph_model(c)
    stubs = graph_stubs(c, model)
    wanted = wanted_names(c, model, stubs)
    top = model.graph
    fed = [t for t in c.tensors if t.name in wanted and t.encoding == "coded"]
    fed_names = {t.name for t in fed}
    # take the fed tensors' stubs out, deleted in place: rebuilding a list would copy its messages and
    # detach the graph's other stubs (and subgraphs) from the references `graph_stubs` handed out
    graphs = {id(stubs[t.name].graph): stubs[t.name].graph for t in fed if t.name in stubs}
    graphs.setdefault(id(top), top)  # a 1.0 file's top graph may name a coded tensor in its initializers
    for g in graphs.values():
        for k in reversed(range(len(g.initializer))):
            if g.initializer[k].name in fed_names:
                del g.initializer[k]
        for k in reversed(range(len(g.node))):
            nd = g.node[k]
            if nd.op_type == "Constant" and nd.output and nd.output[0] in fed_names:
                del g.node[k]
    # the raw tensors fill their stubs after the deletions: the stubs are still the graph's own messages
    put_tensors(c, model, stubs, wanted - fed_names)
    # a fed tensor is a float32 input of its file shape, also where the graph already declared an input of
    # that name (IR < 4 style, or a declaration the stub shadowed inside a subgraph): the tensor decides
    declared = {i.name: i for i in top.input}
    for t in fed:
        info = helper.make_tensor_value_info(t.name, 1, list(t.shape))
        if t.name in declared:
            declared[t.name].type.CopyFrom(info.type)
        else:
            top.input.append(info)
    return model, [t.name for t in fed]


def export_two_step(src: str | os.PathLike | Container, weights_dst: str | os.PathLike,
                    network_dst: str | os.PathLike) -> tuple[int, int]:
    """The two-step form for large models, in two files any onnxruntime opens without our code:
    `weights_dst`, a decoder without inputs whose outputs are the coded tensors the network reads (open it
    with graph optimisations off and run it once: no constant folding, one batch of intermediates at a
    time), and `network_dst`, the network taking those tensors as inputs of the same names next to its
    own (`network_model`). Returns the two sizes in bytes. ValueError if the graph reads no coded tensor.
    Both files are written atomically, the weights file first."""
    c = load_container(src)
    network, fed = network_model(c)
    if not fed:  # a model without outputs: onnxruntime refuses to open it
        raise ValueError("the graph reads no coded tensor, so the two-step form has nothing to decode: "
                         "export the whole model as one file (plain or self-decoding)")
    decoder = regenerated_weights_model(c, fed)
    return (atomic_write_bytes(weights_dst, serialize(decoder)), atomic_write_bytes(network_dst, serialize(network)))
