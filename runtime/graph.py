"""Architecture graphs for `.mrc` files (SPEC.md section 7.6): an ONNX model without the file's tensors.

`strip_weights` removes named initializers from any ONNX model (needs only `onnx`).
`export_architecture` exports a torch module with torch.onnx.export and strips its weights, so that
every weight is read by name from the file (needs torch).

How names are kept (torch.onnx.export can rename or merge initializers):
* the module is exported with its own values (buffers can be shapes or scales that the trace reads:
  a Resize scale, a window; values refilled at random would bake other shapes into the graph) and
  keep_initializers_as_inputs=True, which switches off the exporter's merging of initializers with
  equal contents (an untrained BatchNorm has weight == running_var == 1, which would come out as one
  initializer and an Identity node); the initializers are then taken out of graph.input again;
* the TorchScript exporter (dynamo=False) runs with do_constant_folding=False and
  training=PRESERVE on the copy in eval mode: Conv+BatchNorm is not fused and the gate reordering
  of LSTM/GRU weights stays in the graph as Slice/Concat nodes reading the original parameters,
  so every initializer keeps its state_dict name;
* if an initializer still has another name (a future exporter), it is mapped back to the file name
  by exact contents when exactly one file tensor has them, and its readers are renamed;
* a name that the graph never reads (BatchNorm's num_batches_tracked, an unused parameter) is fine:
  the file keeps it, the graph ignores it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

__all__ = ["strip_weights", "export_architecture", "with_graph", "OPSET"]

OPSET = 18


def _load(onnx_model):
    import onnx

    if isinstance(onnx_model, (bytes, bytearray, memoryview)):
        return onnx.ModelProto.FromString(bytes(onnx_model))
    m = onnx.ModelProto()
    m.CopyFrom(onnx_model)
    return m


def strip_weights(onnx_model_bytes, names: Iterable[str]) -> bytes:
    """The ONNX model with the initializers called `names` removed (also from graph.input, where an
    old exporter lists initializers as inputs): the graph for a `.mrc` file holding those tensors.
    Accepts serialized bytes or a ModelProto; returns serialized bytes."""
    model = _load(onnx_model_bytes)
    drop = set(names)
    g = model.graph
    kept = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept)
    inputs = [i for i in g.input if i.name not in drop]
    del g.input[:]
    g.input.extend(inputs)
    return model.SerializeToString()


def _rename_reads(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for o in graph.output:
        if o.name == old:
            o.name = new


def export_architecture(model, example_input, names: Sequence[str] | None = None, *, opset: int = OPSET,
                        input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                        dynamic_batch: bool = True, dynamic_axes: dict | None = None) -> bytes:
    """ONNX graph (bytes) of `model` in eval mode, without the initializers called `names`.

    `names` defaults to every key of `model.state_dict()`; pass the tensor names of the `.mrc` file
    (they must be state_dict keys for the mapping below). `example_input` is a tensor or a tuple of
    tensors. Graph inputs are named `input_names` (default "input", "input1", ...), outputs
    `output_names` (default "output", ...), and axis 0 of every input and output is a dynamic
    "batch" axis unless dynamic_batch=False. `dynamic_axes` ({input or output name: {axis: label}
    or [axes]}, as torch.onnx.export takes it) marks more axes; its entries are added to the batch
    axes. A trailing dict in `example_input` passes keyword arguments (torch.onnx.export's rule).
    The model itself is not modified. Raises ValueError if a name is read by the graph under a name
    that cannot be mapped back.
    """
    import copy
    import io
    import warnings

    import numpy as np
    import torch

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    sd_names = list(model.state_dict().keys())
    names = list(sd_names if names is None else names)
    work = copy.deepcopy(model).eval()
    probe = {k: v.detach().cpu() for k, v in work.state_dict().items()}
    kwargs = args[-1] if args and isinstance(args[-1], dict) else {}
    positional = args[:-1] if kwargs or (args and isinstance(args[-1], dict)) else args
    in_names = list(input_names or [("input" if i == 0 else f"input{i}") for i in range(len(positional))]
                    + list(kwargs))
    with torch.no_grad():
        res = work(*positional, **kwargs)
    n_out = len(torch.utils._pytree.tree_leaves(res))
    out_names = list(output_names or [("output" if i == 0 else f"output{i}") for i in range(n_out)])
    dyn = {n: {0: "batch"} for n in in_names + out_names} if dynamic_batch else {}
    for n, axes in (dynamic_axes or {}).items():
        marked = dict(axes) if isinstance(axes, dict) else {int(a): f"{n}_{int(a)}" for a in axes}
        dyn[n] = {**dyn.get(n, {}), **marked}
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(work, args, f, dynamo=False, opset_version=opset, input_names=in_names,
                          output_names=out_names, dynamic_axes=dyn or None, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE, keep_initializers_as_inputs=True)
    from onnx import numpy_helper

    onnx_model = _load(f.getvalue())
    g = onnx_model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]   # initializers are not inputs
    del g.input[:]
    g.input.extend(graph_inputs)
    wanted = set(names)
    for name in names:
        if name in inits or name not in probe:
            continue
        ref = probe[name]
        if not ref.is_floating_point():
            continue
        ref_np = ref.numpy()
        hit = [t for n, t in inits.items() if n not in wanted and tuple(t.dims) == tuple(ref_np.shape)
               and np.array_equal(numpy_helper.to_array(t), ref_np)]
        twins = [k for k, v in probe.items() if k != name and k in wanted and v.dtype == ref.dtype
                 and v.shape == ref.shape and torch.equal(v, ref)]
        if len(hit) > 1 or (hit and twins):
            raise ValueError(f"tensor {name!r} matches several exported initializers {[t.name for t in hit]} "
                             f"or other tensors {twins}: its name cannot be mapped back")
        if hit:
            old = hit[0].name
            _rename_reads(g, old, name)
            hit[0].name = name
            inits[name] = inits.pop(old)
    # an Identity node that aliases a file tensor under another file tensor's name: read the file's one
    for node in list(g.node):
        if node.op_type == "Identity" and node.output[0] in wanted and node.input[0] in wanted:
            g.node.remove(node)
    return strip_weights(onnx_model, wanted)


def with_graph(container, model, example_input, **kwargs):
    """A copy of `container` whose graph is `export_architecture(model, example_input, names)` with
    the container's tensor names (its tensors must be named like the model's state_dict)."""
    names = [t.name for t in container.tensors]
    return dataclasses.replace(container, graph=export_architecture(model, example_input, names, **kwargs))
