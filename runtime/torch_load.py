"""Loading `.mrc` files into torch.

* `load_state_dict(path)`: every tensor of the file, decoded on `device`, by name.
* `load_into(model, path)`: the file's tensors decoded straight into an existing model's parameters
  and buffers (same checks as `model.load_state_dict`), without a second copy of the weights; for users
  who have the model class.
* `load_module(path)`: a working `torch.nn.Module` built from the file's architecture graph (an
  ONNX model without its weights, SPEC.md 7.6) and the decoded tensors, with no user code
  (see `onnx_to_torch.OnnxModule` for the supported operators).

Memory: a group is decoded once into one float32 buffer and its coded tensors are views of it, so
`load_state_dict` and `load_module` hold one copy of the weights (the module's parameters are those
views, not copies of them). `model.load_state_dict(load_state_dict(path))` holds two (the model's own
parameters and the decoded ones) until it returns; `load_into(model, path)` decodes a one-tensor group
straight into the parameter's memory and any other group through one temporary group buffer.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch

from mrcformat import limits as L
from mrcformat.container import Container
from mrcformat.errors import GraphError, MrcError, RuntimeGraphError, UnsupportedGraphError

from . import load_budget  # numpy-only and small: imported here, not inside the first (timed) load
from .torch_decode import decode, decode_group, raw_to_torch

__all__ = ["LoadResult", "load_container", "load_into", "load_module", "load_state_dict"]


def load_container(src: str | os.PathLike | bytes | Container,
                   max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> Container:
    """`src` as a Container: a path or the file's bytes are read (and fully checked)."""
    return load_budget.read_container(src, max_decoded_bytes)[0]


def _checked(src, budget: int | None, what: str, with_graph: bool = False) -> Container:
    """The Container, once the load's allocations (file + decoded tensors [+ graph + its constants])
    fit the budget (`load_budget.torch_bytes`)."""
    c, file_bytes = load_budget.read_container(src, budget)
    model = None
    if with_graph:
        import onnx  # only here: importing onnx takes ~0.9 s, 20x load_state_dict of VGG-16 itself

        if c.graph is None:
            raise GraphError("the file has no graph section; use load_state_dict with your model class", "graph")
        model = onnx.ModelProto.FromString(bytes(c.graph))
    load_budget.check(load_budget.torch_bytes(c, file_bytes, model), budget, what)
    return c


def load_state_dict(path_or_container: str | os.PathLike | bytes | Container, device: torch.device | str = "cpu",
                    *, chunk: int | None = None,
                    max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> dict[str, torch.Tensor]:
    """All tensors of the file by name on `device`: coded ones float32 (bit-identical to the
    numpy reference decoder), raw ones in their stored dtype (bfloat16 -> torch.bfloat16).

    Coded tensors of one group are views of one buffer. To fill a model you already built, use
    `load_into(model, path)` (no second copy); or build the model on the meta device and call
    `model.load_state_dict(load_state_dict(path), assign=True)`, which makes these tensors its parameters.
    `max_decoded_bytes`: memory budget (file + decoded tensors; `load_budget`), LimitError before
    decoding when over it; None: no limit. A bad file raises an MrcError only.
    """
    c = _checked(path_or_container, max_decoded_bytes, "load_state_dict")
    return decode(c, device, chunk=chunk)


def _widened(c: Container, model) -> list[str]:
    """Raw float16 / bfloat16 tensors whose graph stub is float32 (format 1.2, SPEC.md 7.6)."""
    from mrcformat.container import widening_stub

    from .onnx_model import graph_stubs

    return [name for name, s in graph_stubs(c, model).items() if widening_stub(c.tensor(name), s.tensor.data_type)]


class LoadResult(NamedTuple):
    """What `load_into` did not match (like the value of `torch.nn.Module.load_state_dict`)."""
    missing_keys: list[str]
    unexpected_keys: list[str]


def _direct_target(t: torch.Tensor) -> bool:
    """Whether a coded group of one tensor can be decoded straight into `t`'s memory."""
    return t.dtype == torch.float32 and t.is_contiguous() and t.device.type != "meta"


def load_into(model: torch.nn.Module, path_or_container: str | os.PathLike | bytes | Container, *,
              strict: bool = True, chunk: int | None = None,
              max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> LoadResult:
    """Decode the file's tensors into `model`'s parameters and buffers (matched by state_dict name),
    on the device each one lives on; the result equals `model.load_state_dict(load_state_dict(path))`.

    A coded group with a single tensor is decoded straight into the parameter's memory when it is a
    contiguous float32 tensor; a group of several tensors (or a parameter of another dtype or layout)
    is decoded into one temporary buffer, copied, and dropped before the next group. Raw tensors are
    copied (with dtype conversion, as `load_state_dict` does).

    Every name and shape is checked before anything is written: RuntimeError on a shape mismatch, and
    with `strict` (default) on a state_dict entry the file lacks or a file tensor the model lacks.
    Returns the unmatched names. Parameters on the meta device cannot be filled: use
    `model.load_state_dict(load_state_dict(path), assign=True)`.
    `max_decoded_bytes`: the reader's bound on the file and its decoded size (the weights land in the
    model's own memory, so nothing else is counted).
    """
    c = load_container(path_or_container, max_decoded_bytes)
    targets = model.state_dict(keep_vars=True)
    file_names = {t.name for t in c.tensors}
    missing = [k for k in targets if k not in file_names]
    unexpected = [t.name for t in c.tensors if t.name not in targets]
    errors = []
    if strict and unexpected:
        errors.append("Unexpected key(s) in the file: " + ", ".join(repr(k) for k in unexpected) + ".")
    if strict and missing:
        errors.append("Missing key(s) in the file: " + ", ".join(repr(k) for k in missing) + ".")
    for t in c.tensors:
        dest = targets.get(t.name)
        if dest is None:
            continue
        if tuple(dest.shape) != tuple(t.shape):
            errors.append(f"size mismatch for {t.name}: the file has shape {tuple(t.shape)}, "
                          f"the model {tuple(dest.shape)}.")
        elif dest.device.type == "meta":
            errors.append(f"{t.name} is on the meta device; use model.load_state_dict(load_state_dict(path), "
                          "assign=True).")
    if errors:
        raise RuntimeError(f"Error(s) in loading the file into {type(model).__name__}:\n\t" + "\n\t".join(errors))

    members: dict[int, list] = {}
    for t in c.tensors:
        if t.encoding == "coded":
            members.setdefault(t.group, []).append(t)
    with torch.no_grad():
        for gid, ms in members.items():
            dests = [targets.get(m.name) for m in ms]
            if all(d is None for d in dests):
                continue
            if len(ms) == 1 and _direct_target(dests[0]):
                decode_group(c, gid, dests[0].device, out=dests[0].detach().view(-1), chunk=chunk)
                continue
            flat = decode_group(c, gid, next(d for d in dests if d is not None).device, chunk=chunk)
            pos = 0
            for m, d in zip(ms, dests):
                if d is not None:
                    d.copy_(flat[pos:pos + m.numel].view(d.shape))
                pos += m.numel
            flat = None  # this group's buffer goes before the next is decoded
        for t in c.tensors:
            dest = targets.get(t.name)
            if t.encoding == "raw" and dest is not None:
                dest.copy_(raw_to_torch(t, dest.device))
    return LoadResult(missing, unexpected)


def load_module(path_or_container: str | os.PathLike | bytes | Container, device: torch.device | str = "cpu",
                *, chunk: int | None = None,
                max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> torch.nn.Module:
    """The model stored in the file as an eval-mode `torch.nn.Module` on `device`.

    The module's parameters and buffers are the decoded tensors themselves (views of each group's
    buffer, decoded on `device`), not copies. Raises GraphError if the file has no graph section,
    UnsupportedGraphError (also a NotImplementedError) if the graph uses an operator or attribute form
    that `onnx_to_torch` does not support, and RuntimeGraphError for any other graph the converter
    cannot build (a missing attribute, a wrong type). `max_decoded_bytes`: memory budget (file + decoded
    tensors + constants the graph creates; `load_budget`), checked before decoding; None: no limit.
    """
    import onnx

    from .onnx_to_torch import OnnxModule

    c = _checked(path_or_container, max_decoded_bytes, "load_module", with_graph=True)
    model = onnx.ModelProto.FromString(bytes(c.graph))
    tensors = decode(c, device, chunk=chunk)
    for name in _widened(c, model):  # 1.2: a float16 / bfloat16 raw tensor filling a float32 stub
        tensors[name] = tensors[name].float()
    try:
        module = OnnxModule(model, tensors)
    except MrcError:
        raise
    except NotImplementedError as e:
        raise UnsupportedGraphError(f"cannot build a torch module: {e}", "graph") from e
    except Exception as e:  # noqa: BLE001  # the converter meeting a graph it does not expect (KeyError, ...)
        raise RuntimeGraphError(f"cannot build a torch module from the graph: {type(e).__name__}: {e}",
                                "graph") from e
    return module.to(device).eval()
