"""A model's calling convention as the encoder sees it: batches, inputs and (nested) outputs.

A model may take one tensor, several positional tensors or keyword tensors, and return a tensor,
a tuple/list or a dict of them, nested. The encoder needs the same rules in four places (the
training step, the teacher, the architecture export and its onnxruntime check), so they live here:

* inputs: a tensor is passed as `model(x)`, a tuple or list as `model(*x)`, a dict as `model(**x)`;
* a batch is `(inputs, target)` when the run has labels, otherwise the whole batch is the inputs;
* outputs are flattened depth first (dict values in insertion order, as torch.onnx.export does)
  and named: a single tensor "output", a tuple's items "output", "output1", ..., a dict's items by
  their keys, deeper levels joined with ".".
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = ["batch_size", "call", "example_args", "has_labels", "input_leaves", "input_names", "named_leaves",
           "split_batch", "to_device"]


def call(model, inputs: Any):
    """`model` applied to `inputs` by the rules above."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def to_device(obj: Any, device: torch.device):
    """Every tensor in `obj` (any nesting) moved to `device`; a bare tensor exactly as `obj.to(device)`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, obj)


def batch_size(inputs: Any) -> int:
    """Length of axis 0 of the first tensor in `inputs` (the examples in a batch)."""
    for t in pytree.tree_leaves(inputs):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    raise ValueError("the batch holds no tensor with a batch axis")


def has_labels(batch: Any) -> bool:
    """Whether a batch looks like (inputs, class labels): two items, the second a 1-d integer tensor
    as long as the first input's batch axis (the DataLoader-of-TensorDataset(x, y) convention)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        return False
    y = batch[1]
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or y.is_complex():
        return False
    try:
        return batch_size(batch[0]) == y.shape[0]
    except ValueError:
        return False


def split_batch(batch: Any, labelled: bool) -> tuple[Any, Any]:
    """(inputs, target) of a batch; target None without labels. A one-item tuple/list without labels
    is that item's positional call (a TensorDataset of one tensor gives [x])."""
    if labelled:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"a labelled run needs (inputs, target) batches, got {type(batch).__name__}"
                             + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""))
        return batch[0], batch[1]
    if isinstance(batch, list):
        batch = tuple(batch)
    return batch, None


def named_leaves(outputs: Any) -> list[tuple[str, Any]]:
    """(name, leaf) of every leaf of `outputs`, depth first, named as the module doc says."""
    if isinstance(outputs, torch.Tensor):
        return [("output", outputs)]
    leaves, spec = pytree.tree_flatten_with_path(outputs)
    out = []
    for path, leaf in leaves:
        parts = []
        for depth, k in enumerate(path):
            if isinstance(k, pytree.MappingKey):
                parts.append(str(k.key))
            elif isinstance(k, pytree.SequenceKey):
                parts.append(("output" if k.idx == 0 else f"output{k.idx}") if depth == 0 else str(k.idx))
            else:
                parts.append(str(k))
        out.append((".".join(parts) or "output", leaf))
    return out


def input_leaves(inputs: Any) -> list[tuple[str, torch.Tensor]]:
    """(graph input name, tensor) of every tensor in `inputs`, in the order an export flattens them:
    positional inputs "input", "input1", ..., keyword inputs by their keys; a nested input (a streaming
    state (h, c)) gives "<name>.0", "<name>.1", ... Non-tensor inputs are constants of the graph."""
    if isinstance(inputs, dict):
        items = [(str(k), v) for k, v in inputs.items()]
    elif isinstance(inputs, (tuple, list)):
        items = [("input" if i == 0 else f"input{i}", v) for i, v in enumerate(inputs)]
    else:
        items = [("input", inputs)]
    out = []
    for base, v in items:
        if isinstance(v, torch.Tensor):
            out.append((base, v))
            continue
        leaves = [t for t in pytree.tree_leaves(v) if isinstance(t, torch.Tensor)]
        out.extend((f"{base}.{j}", t) for j, t in enumerate(leaves))
    return out


def input_names(inputs: Any) -> list[str]:
    """The graph input names of `inputs` (`input_leaves`)."""
    return [n for n, _ in input_leaves(inputs)]


def example_args(inputs: Any):
    """`inputs` as torch.onnx.export's `args`: a tensor, a tuple, or a tuple ending in the kwargs dict."""
    if isinstance(inputs, dict):
        return (dict(inputs),)
    if isinstance(inputs, list):
        return tuple(inputs)
    return inputs
