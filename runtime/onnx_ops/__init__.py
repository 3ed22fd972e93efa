"""ONNX operator implementations in torch, by kind; `SUPPORTED_OPS` maps op type -> builder.

A builder takes the node's attributes (`common.Attrs`) and returns `fn(*inputs)`; control-flow
builders get compiled subgraphs and return functions that also take the current scope (`fn.scoped`).
"""
from __future__ import annotations

from collections.abc import Callable

from . import control, conv, elementwise, layers, pool, reduce, resize, rnn, tensor
from .common import Attrs, Unsupported, UnsupportedOnnxError, onnx_dtype_to_torch, tensor_from_proto

__all__ = ["SUPPORTED_OPS", "Attrs", "Unsupported", "UnsupportedOnnxError", "onnx_dtype_to_torch",
           "tensor_from_proto"]

SUPPORTED_OPS: dict[str, Callable] = {}
for _module in (elementwise, conv, pool, layers, reduce, tensor, resize, rnn, control):
    SUPPORTED_OPS.update(_module.OPS)
