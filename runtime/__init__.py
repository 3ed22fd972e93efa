"""mrcformat_runtime: loading `.mrc` files into onnxruntime and PyTorch, plain and self-decoding ONNX export.

Importing this package (or `mrcformat_runtime.ort`, `.onnx_model`, `.onnx_export`, `.selfdecode`) never imports torch:
the onnxruntime side needs only numpy, msgpack, onnx and onnxruntime. Everything here is resolved
lazily (module-level `__getattr__`): the names in `_LAZY` on first use, and any submodule by its name
(`mrcformat_runtime.torch_decode`, ...), so the torch side is imported only when it is asked for.
"""
from __future__ import annotations

import importlib
import importlib.util

__all__ = ["export", "export_two_step", "load_into", "load_module", "load_state_dict", "regenerated_weights_model",
           "self_decoding_model", "session", "to_onnx_model"]

# public name -> (submodule, attribute)
_LAZY = {
    "export": ("onnx_export", "export"),
    "export_two_step": ("onnx_export", "export_two_step"),
    "to_onnx_model": ("onnx_export", "to_onnx_model"),
    "session": ("ort", "session"),
    "self_decoding_model": ("selfdecode", "self_decoding_model"),
    "regenerated_weights_model": ("selfdecode", "regenerated_weights_model"),
    # torch side (imports torch when first used)
    "load_state_dict": ("torch_load", "load_state_dict"),
    "load_module": ("torch_load", "load_module"),
    "load_into": ("torch_load", "load_into"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
