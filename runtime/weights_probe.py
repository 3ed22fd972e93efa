"""The weights an exported model regenerates, as the outputs of a model of their own: how every
onnxruntime (Python, onnxruntime-node, onnxruntime-web) is checked to produce the reference bits.

`weights_probe` keeps only the top-graph nodes that compute the file's coded tensors in the plain or the
self-decoding export (the decoder, nothing of the network), so the probe needs no inputs and each runtime
opens it with its default session options: the same constant folding as for the whole model.
"""
from __future__ import annotations

import os

from mrcformat.container import Container
from mrcformat.onnx_graphs import all_graphs

from .onnx_model import graph_stubs, load_container
from .selfdecode import regenerated_weights_model, self_decoding_model_sources

__all__ = ["weights_probe"]


def _plain_sources(c: Container) -> tuple:
    """The plain export and, for each coded tensor it stores in the top graph (an initializer, or a stub
    there: initializer or Constant node), the value that holds it."""
    from .onnx_export import to_onnx_model

    model = to_onnx_model(c)
    coded = {t.name for t in c.tensors if t.encoding == "coded"}
    sources = {t.name: t.name for t in model.graph.initializer if t.name in coded}
    for name, stub in graph_stubs(c, model).items():
        if name in coded and stub.graph is model.graph:
            sources[name] = stub.node.output[0] if stub.node is not None else name
    return model, dict(sorted(sources.items()))


def _subgraph_reads(node) -> set[str]:
    """Every value name read inside the node's subgraphs, at any depth (a superset of what they take from outside)."""
    subs = [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]
    return {i for sub in subs for g in all_graphs(sub) for n in g.node for i in n.input if i}


def weights_probe(container: str | os.PathLike | Container, *, self_decoding: bool) -> tuple:
    """(model, names): the export's decoder with output i = the regenerated coded tensor names[i].

    Plain export: the coded tensors stored in the top graph (stubs inside subgraphs are left out).
    Self-decoding export: every coded tensor the graph uses (a file without a graph: all its coded tensors,
    from `regenerated_weights_model`). Plain export of a file without a graph: GraphError."""
    from onnx import TensorProto, helper

    c = load_container(container)
    if self_decoding and c.graph is None:  # no network: the decoder alone (`regenerated_weights_model`)
        model = regenerated_weights_model(c)
        sources = {t.name: t.name for t in c.tensors if t.encoding == "coded"}
    else:
        model, sources = self_decoding_model_sources(c) if self_decoding else _plain_sources(c)
    g = model.graph
    names = list(sources)
    outs = [f"mrc_probe_{i}" for i in range(len(names))]
    needed = {sources[n] for n in names}
    kept = []
    for node in reversed(g.node):  # nodes are topologically sorted: walk back from the outputs
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_reads(node))  # a Loop body's outer-scope values (Philox's constants)
    kept.reverse()
    kept += [helper.make_node("Identity", [sources[n]], [o]) for n, o in zip(names, outs)]
    inits = [t for t in g.initializer if t.name in needed]
    by_name = {t.name: t for t in c.tensors}
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(by_name[n].shape)) for n, o in zip(names, outs)]
    probe = helper.make_model(helper.make_graph(kept, "mrc_weights_probe", [], outputs, initializer=inits),
                              opset_imports=list(model.opset_import), functions=list(model.functions),
                              producer_name="mrcformat_runtime")
    probe.ir_version = model.ir_version
    return probe, names
