"""Index bit packing (SPEC.md section 6): fixed-width fields, least significant bit first.

Index b of a group occupies stream bits [b*w, (b+1)*w); stream bit m is bit (m % 8) of
byte (m // 8); bit 0 of the index is its lowest stream bit. A group's payload is
ceil(nb*w / 8) bytes and the unused high bits of its last byte are zero.

Both directions work on 64-bit little-endian windows (an index of <= 32 bits plus a shift
of <= 7 spans at most 5 bytes), so memory stays at a few bytes per index for any width.
"""
from __future__ import annotations

import numpy as np

__all__ = ["packed_length", "pack_indices", "unpack_indices", "padding_bits_are_zero"]


def packed_length(count: int, width: int) -> int:
    return -(-count * width // 8)


def pack_indices(indices: np.ndarray, width: int) -> bytes:
    if not 1 <= width <= 32:
        raise ValueError("index width must be 1..32")
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1)
    if idx.size and int(idx.max()) >> width:
        raise ValueError(f"an index does not fit in {width} bits")
    n = packed_length(idx.size, width)
    if width in (8, 16, 32):
        return idx.astype(f"<u{width // 8}").tobytes()
    bitpos = np.arange(idx.size, dtype=np.uint64) * np.uint64(width)
    byte = (bitpos >> np.uint64(3)).astype(np.intp)
    shifted = idx << (bitpos & np.uint64(7))
    out = np.zeros(n + 8, dtype=np.float64)
    for k in range(5):  # fields never overlap, so a sum of bytes is their OR; float64 sums of bytes are exact
        part = ((shifted >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.float64)
        out += np.bincount(byte + k, weights=part, minlength=n + 8)
    return out[:n].astype(np.uint8).tobytes()


def unpack_indices(payload: bytes | memoryview | np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of pack_indices; the payload must be exactly packed_length(count, width) bytes."""
    buf = payload if isinstance(payload, np.ndarray) else np.frombuffer(payload, dtype=np.uint8)
    if buf.size != packed_length(count, width):
        raise ValueError("payload length does not match count and width")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if width in (8, 16, 32):
        return buf.view(f"<u{width // 8}").astype(np.int64)
    padded = np.zeros(buf.size + 8, dtype=np.uint8)
    padded[: buf.size] = buf
    bitpos = np.arange(count, dtype=np.int64) * width
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)[bitpos >> 3]
    words = np.ascontiguousarray(windows).view("<u8").reshape(-1)
    words >>= (bitpos & 7).astype(np.uint64)
    words &= np.uint64((1 << width) - 1)
    return words.astype(np.int64)


def padding_bits_are_zero(payload: bytes | memoryview, count: int, width: int) -> bool:
    used = count * width
    if used % 8 == 0 or not len(payload):
        return True
    last = payload[len(payload) - 1]
    return (last >> (used % 8)) == 0
