"""Loading `.mrc` files into torch.

* `load_state_dict(path)`: every tensor of the file, decoded on `device`, by name; for users who
  have the model class: `model.load_state_dict(load_state_dict("m.mrc"))`.
* `load_module(path)`: a working `torch.nn.Module` built from the file's architecture graph (an
  ONNX model without its weights, SPEC.md 7.6) and the decoded tensors, with no user code
  (see `onnx_to_torch.OnnxModule` for the supported operators).
"""
from __future__ import annotations

import os

import torch

from mrcformat.container import Container
from mrcformat.errors import GraphError
from mrcformat.reader import from_bytes, load

from .torch_decode import decode

__all__ = ["load_container", "load_state_dict", "load_module"]


def load_container(src: str | os.PathLike | bytes | Container) -> Container:
    """`src` as a Container: a path or the file's bytes are read (and fully checked)."""
    if isinstance(src, Container):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        return from_bytes(bytes(src))
    return load(src)


def load_state_dict(path_or_container: str | os.PathLike | bytes | Container, device: torch.device | str = "cpu",
                    *, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the file by name on `device`: coded ones float32 (bit-identical to the
    numpy reference decoder), raw ones in their stored dtype (bfloat16 -> torch.bfloat16)."""
    return decode(load_container(path_or_container), device, chunk=chunk)


def load_module(path_or_container: str | os.PathLike | bytes | Container, device: torch.device | str = "cpu",
                *, chunk: int | None = None) -> torch.nn.Module:
    """The model stored in the file as an eval-mode `torch.nn.Module` on `device`.

    Raises GraphError if the file has no graph section, and NotImplementedError (when building)
    if the graph uses an operator that `onnx_to_torch` does not support.
    """
    import onnx

    from .onnx_to_torch import OnnxModule

    c = load_container(path_or_container)
    if c.graph is None:
        raise GraphError("the file has no graph section; use load_state_dict with your model class", "graph")
    model = onnx.ModelProto.FromString(bytes(c.graph))
    return OnnxModule(model, decode(c, device, chunk=chunk)).to(device).eval()
