"""Index bit packing (SPEC.md section 6): fixed-width fields, least significant bit first.

Index b of a group occupies stream bits [b*w, (b+1)*w); stream bit m is bit (m % 8) of
byte (m // 8); bit 0 of the index is its lowest stream bit. A group's payload is
ceil(nb*w / 8) bytes and the unused high bits of its last byte are zero.
"""
from __future__ import annotations

import numpy as np

__all__ = ["packed_length", "pack_indices", "unpack_indices", "padding_bits_are_zero"]


def packed_length(count: int, width: int) -> int:
    return -(-count * width // 8)


def pack_indices(indices: np.ndarray, width: int) -> bytes:
    idx = np.asarray(indices, dtype=np.uint64)
    if idx.size and int(idx.max()) >> width:
        raise ValueError(f"an index does not fit in {width} bits")
    bits = ((idx[:, None] >> np.arange(width, dtype=np.uint64)[None, :]) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_indices(payload: bytes | memoryview | np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of pack_indices; the payload must be exactly packed_length(count, width) bytes."""
    buf = np.frombuffer(payload, dtype=np.uint8) if not isinstance(payload, np.ndarray) else payload
    if buf.size != packed_length(count, width):
        raise ValueError("payload length does not match count and width")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if width in (8, 16, 32):
        return buf[: count * width // 8].view(f"<u{width // 8}").astype(np.int64)
    bits = np.unpackbits(buf, bitorder="little", count=count * width).reshape(count, width)
    weights = (np.uint64(1) << np.arange(width, dtype=np.uint64))
    return (bits.astype(np.uint64) @ weights).astype(np.int64)


def padding_bits_are_zero(payload: bytes | memoryview, count: int, width: int) -> bool:
    used = count * width
    if used % 8 == 0 or not len(payload):
        return True
    last = payload[len(payload) - 1]
    return (last >> (used % 8)) == 0
