"""The in-memory model of a `.mrc` file (SPEC.md section 7) and its format constants.

`writer.py` turns a Container into bytes, `reader.py` turns bytes back into a Container
after checking every rule of the spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bitpack import packed_length
from .layout import Layout, num_blocks
from .sampler import check_coding_parameters

__all__ = ["MAGIC", "VERSION", "WRITE_VERSION", "PREAMBLE_SIZE", "SAMPLER", "DTYPES", "ONNX_DATA_TYPES",
           "SECTION_KINDS", "WIDENS", "Group", "Tensor", "Container", "widen_to_float32", "widening_stub"]

MAGIC = b"\x89MRC\r\n\x1a\n"
VERSION = (1, 2)        # the version this reader implements
WRITE_VERSION = (1, 0)  # what a Container is written as unless it uses a 1.1 (graph stubs, scales) or 1.2 feature
PREAMBLE_SIZE = 24
SAMPLER = "normal16"
# dtype name in the header -> numpy little-endian dtype string (bfloat16 travels as its uint16 bits)
DTYPES = {
    "float32": "<f4", "float16": "<f2", "float64": "<f8", "bfloat16": "<u2",
    "int8": "i1", "uint8": "u1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "bool": "u1",
}
SECTION_KINDS = ("indices", "raw", "graph", "scales")
# dtype name in the header -> onnx.TensorProto data type (a graph stub's type must match its tensor's)
ONNX_DATA_TYPES = {
    "float32": 1, "uint8": 2, "int8": 3, "int16": 5, "int32": 6, "int64": 7, "bool": 9, "float16": 10,
    "float64": 11, "bfloat16": 16,
}
# Raw dtypes that may fill a float32 graph stub from 1.2 on (SPEC.md 7.6), widened exactly to float32
WIDENS = ("float16", "bfloat16")


def widening_stub(t: "Tensor", stub_data_type: int) -> bool:
    """Whether file tensor `t` fills a stub of ONNX type `stub_data_type` by widening (SPEC.md 7.6, 1.2):
    a raw float16 / bfloat16 tensor in a float32 stub."""
    return t.encoding == "raw" and t.dtype in WIDENS and stub_data_type == ONNX_DATA_TYPES["float32"]


def widen_to_float32(dtype: str, data: np.ndarray) -> np.ndarray:
    """A raw float16 / bfloat16 tensor's values as float32, exactly (SPEC.md 7.6, 1.2): float16 by IEEE
    conversion, bfloat16 (held as its uint16 bit patterns) by shifting the bits into the high half."""
    a = np.asarray(data)
    if dtype == "float16":
        return a.astype(np.float32)
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"{dtype} tensors do not widen to float32")


@dataclass
class Group:
    """One coding unit: coding distribution N(mu, sigma^2), block layout and chosen indices."""

    mu_bits: int                 # float32 bit pattern of mu
    sigma_bits: int              # bfloat16 bit pattern of sigma
    block_size: int
    index_bits: int
    num_values: int
    layout: Layout
    hashing: bool
    indices: np.ndarray          # int64 [num_blocks], each < 2**index_bits
    scales: np.ndarray | None = None  # 1.1: uint16 bfloat16 bits [count]; value i's scale is sigma * scales[i div (n/count)]

    @property
    def num_blocks(self) -> int:
        return num_blocks(self.num_values, self.block_size)

    @property
    def payload_length(self) -> int:
        return packed_length(self.num_blocks, self.index_bits)

    @property
    def scale_run(self) -> int:
        """Values per scale (n / count), or n without scales."""
        return self.num_values // len(self.scales) if self.scales is not None else self.num_values

    @property
    def mu(self) -> np.float32:
        return check_coding_parameters(self.mu_bits, self.sigma_bits)[0]

    @property
    def sigma(self) -> np.float32:
        return check_coding_parameters(self.mu_bits, self.sigma_bits)[1]


@dataclass
class Tensor:
    """A named tensor: `coded` (float32, regenerated from a group) or `raw` (stored bytes)."""

    name: str
    shape: tuple[int, ...]
    encoding: str                # "coded" | "raw"
    group: int | None = None     # coded only
    dtype: str = "float32"       # raw: key of DTYPES; coded: always float32
    data: np.ndarray | None = None  # raw only: array of DTYPES[dtype] with `shape`
    section: int | None = None   # raw only, set by the reader: index of the tensor's section

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Container:
    seed: int
    groups: list[Group] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    graph: bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    version: tuple[int, int] = WRITE_VERSION
    graph_deflate: bool = False  # 1.1: store the graph zlib-compressed (header field graph_size); set by the reader

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def group_members(self, g: int) -> list[Tensor]:
        return [t for t in self.tensors if t.encoding == "coded" and t.group == g]

    def group_weights(self, g: int) -> int:
        return sum(t.numel for t in self.group_members(g))
