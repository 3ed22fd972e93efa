"""ONNX operator implementations in torch, by kind; `SUPPORTED_OPS` maps op type -> builder.

A builder takes the node's attributes (`common.Attrs`) and returns `fn(*inputs)`; control-flow
builders get compiled subgraphs and return functions that also take the current scope (`fn.scoped`).
"""
from __future__ import annotations

from collections.abc import Callable

from . import (
    control,
    conv,
    detection,
    elementwise,
    layers,
    pool,
    quantize,
    reduce,
    resize,
    rnn,
    sequence,
    spectral,
    tensor,
)
from .common import Attrs, Unsupported, UnsupportedOnnxError, onnx_dtype_to_torch, tensor_from_proto

__all__ = ["MAX_OUTPUTS", "SUPPORTED_OPS", "Attrs", "Unsupported", "UnsupportedOnnxError", "onnx_dtype_to_torch",
           "tensor_from_proto"]

SUPPORTED_OPS: dict[str, Callable] = {}
for _module in (elementwise, conv, pool, layers, reduce, tensor, sequence, quantize, resize, rnn, control,
                detection, spectral):
    SUPPORTED_OPS.update(_module.OPS)

# outputs an implementation computes, where more than one (None: as many as the node names)
MAX_OUTPUTS: dict[str, int | None] = {
    "Split": None, "If": None, "Loop": None, "Scan": None, "TopK": 2, "MaxPool": 2, "Dropout": 2,
    "LSTM": 3, "GRU": 2, "RNN": 2, "Unique": 4,
}
