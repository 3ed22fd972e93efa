"""mrcformat: the `.mrc` container for MIRACLE-compressed neural networks and its reference codec.

Needs only numpy and msgpack (plus onnx, if present, to check stored graphs). Training and
encoding live in `mrcformat.encode` (torch), which this package never imports.
"""
from .coder import candidates, choose_index, regenerate
from .container import Container, Group, Tensor
from .reader import from_bytes, load
from .writer import save, to_bytes
from .decoder import decode, decode_group, iter_decode
from .errors import MrcError
from .layout import Layout
from .validate import validate_bytes, validate_file

__version__ = "0.1.0"
__all__ = [
    "Container", "Group", "Tensor", "Layout", "MrcError", "load", "save", "from_bytes", "to_bytes",
    "decode", "decode_group", "iter_decode", "candidates", "regenerate", "choose_index", "validate_bytes",
    "validate_file", "__version__",
]
