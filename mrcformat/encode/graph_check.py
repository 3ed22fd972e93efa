"""The architecture graph of a `compress` run, exported and checked before any training.

A run can take hours; a model whose graph cannot be exported, or whose exported graph computes
something else, must fail before the first step, not after the coding. `export_checked` exports
the starting model with `mrcformat_runtime.graph.export_architecture` (weights stripped, buffers
as they are, a dynamic batch axis on every input and output plus the axes the user marks), puts
the model's own tensors back in, runs it once in onnxruntime on the example inputs and on every
check batch (another batch size: the dynamic axes really work) and compares with the torch model.
The graph depends only on the architecture, so this export is the one the file stores.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from .signature import call, example_args, input_leaves, input_names, named_leaves

__all__ = ["GraphCheckError", "export_checked", "graph_outputs"]


class GraphCheckError(ValueError):
    """The architecture cannot be exported, or its graph does not compute what the model computes."""


def graph_outputs(model: nn.Module, inputs: Any) -> tuple[list[str], list[np.ndarray]]:
    """Names and values of the tensor outputs of `model` (eval mode, no grad) on `inputs`."""
    with torch.no_grad():
        leaves = [(n, t) for n, t in named_leaves(call(model, inputs)) if isinstance(t, torch.Tensor)]
    return [n for n, _ in leaves], [t.detach().cpu().numpy() for _, t in leaves]


def _feeds(inputs: Any, wanted: set[str]) -> dict[str, np.ndarray]:
    return {n: v.detach().cpu().numpy() for n, v in input_leaves(inputs) if n in wanted}


def _in_signature_order(model: nn.Module, inputs: Any) -> Any:
    """Keyword inputs in the order of `model.forward`'s parameters (the order the exporter gives them)."""
    if not isinstance(inputs, dict):
        return inputs
    params = list(inspect.signature(model.forward).parameters)
    rank = {name: i for i, name in enumerate(params)}
    return dict(sorted(inputs.items(), key=lambda kv: rank.get(kv[0], len(params))))


def _with_tensors(graph: bytes, state: dict[str, torch.Tensor]) -> bytes:
    """`graph` with the model's tensors as initializers (what a decoder would supply)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto.FromString(graph)
    have = {t.name for t in m.graph.initializer}
    for name, t in state.items():
        if name in have or t.dtype == torch.bfloat16:
            continue
        m.graph.initializer.append(numpy_helper.from_array(t.detach().cpu().numpy(), name))
    return m.SerializeToString()


def export_checked(model: nn.Module, example_inputs: Any, *, dynamic_axes: dict | None = None,
                   check_inputs: tuple = (), check: bool = True, rtol: float = 1e-3) -> bytes:
    """The weightless ONNX graph of `model` (every state_dict name stripped), checked as the module doc says.

    example_inputs: a tensor, a tuple/list of positional inputs or a dict of keyword inputs
    (`signature.call`). dynamic_axes: {input or output name: {axis: label} or [axes]} on top of the
    batch axes. Raises GraphCheckError naming what failed.
    """
    from mrcformat_runtime.graph import export_architecture

    work = copy.deepcopy(model).cpu().eval()
    example_inputs = _in_signature_order(work, example_inputs)
    check_inputs = tuple(_in_signature_order(work, c) for c in check_inputs)
    in_names = input_names(example_inputs)
    try:
        out_names, _ = graph_outputs(work, example_inputs)
    except Exception as e:  # noqa: BLE001 - the user's model on the user's input: say which step failed
        raise GraphCheckError(f"the model does not run on the example input: {type(e).__name__}: {e}") from e
    unknown = set(dynamic_axes or {}) - set(in_names) - set(out_names)
    if unknown:
        raise GraphCheckError(f"dynamic_axes names {sorted(unknown)}, which are not inputs {in_names} "
                              f"or outputs {out_names}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = export_architecture(work, example_args(example_inputs), list(work.state_dict()),
                                        input_names=in_names, output_names=out_names, dynamic_axes=dynamic_axes)
    except Exception as e:  # noqa: BLE001
        raise GraphCheckError(f"the architecture cannot be exported to ONNX: {type(e).__name__}: {e}") from e
    if not check:
        return graph
    try:
        import onnxruntime as ort
    except ImportError:
        warnings.warn("onnxruntime is not installed: the architecture graph is not checked before training")
        return graph
    full = _with_tensors(graph, work.state_dict())
    try:
        sess = ort.InferenceSession(full, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise GraphCheckError(f"onnxruntime refuses the exported architecture: {e}") from e
    wanted = {i.name for i in sess.get_inputs()}
    graph_out = [o.name for o in sess.get_outputs()]
    for inputs in (example_inputs, *check_inputs):
        names, expected = graph_outputs(work, inputs)
        try:
            got = sess.run(None, _feeds(inputs, wanted))
        except Exception as e:  # noqa: BLE001
            shapes = [tuple(t.shape) for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
            raise GraphCheckError(f"the exported architecture fails in onnxruntime on inputs of shapes {shapes} "
                                  f"(dynamic axes: {dynamic_axes or 'batch only'}): {e}") from e
        if len(got) != len(expected):
            raise GraphCheckError(f"the graph has outputs {graph_out}, the model {names}")
        for name, g, e in zip(names, got, expected):
            g = np.asarray(g)
            if g.shape != e.shape:
                raise GraphCheckError(f"output {name!r}: the graph gives shape {g.shape}, the model {e.shape}")
            if e.dtype.kind == "f":
                scale = float(np.abs(e).max()) if e.size else 0.0
                err = float(np.abs(g.astype(np.float64) - e).max()) if e.size else 0.0
                if not err <= rtol * max(scale, 1e-3):
                    raise GraphCheckError(f"output {name!r}: the graph differs from the model by {err:.3g} "
                                          f"(outputs up to {scale:.3g})")
            elif not np.array_equal(g, e):
                raise GraphCheckError(f"output {name!r}: the graph differs from the model")
    return graph
