"""Philox4x32-10 counter-based generator (SPEC.md section 3), vectorised in numpy.

Random123's Philox4x32 with 10 rounds. Every output block is a pure function of
(counter, key), so any candidate of any block can be generated independently and
in parallel: there is no sequential generator state anywhere in the format.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1", "PHILOX_ROUNDS",
    "philox4x32", "philox4x32_scalar",
]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF


def philox4x32_scalar(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """Plain-integer Philox4x32-10; the readable reference the vector version is tested against."""
    c0, c1, c2, c3 = (int(x) & _MASK32 for x in counter)
    k0, k1 = (int(x) & _MASK32 for x in key)
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK32)
    return c0, c1, c2, c3


# Round keys depend only on the key, so they are computed once per call as Python ints.
def _round_keys(k0: int, k1: int) -> list[tuple[np.uint64, np.uint64]]:
    keys = []
    for r in range(PHILOX_ROUNDS):
        keys.append((np.uint64((k0 + r * PHILOX_W0) & _MASK32), np.uint64((k1 + r * PHILOX_W1) & _MASK32)))
    return keys


_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_S32 = np.uint64(32)
_LO = np.uint64(_MASK32)


def philox4x32(c0, c1, c2, c3, key: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Philox4x32-10 over broadcastable counter words; returns uint32 array [..., 4].

    Counter words may be numpy arrays or ints (each < 2**32); `key` is two ints. The
    arithmetic runs in uint64 so the 32x32->64 products are exact. `out`, if given,
    is a preallocated uint32 array of the broadcast shape + (4,) and is filled in place.
    """
    x0, x1, x2, x3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3)))
    x0 = x0.astype(np.uint64, copy=True)
    x1 = x1.astype(np.uint64, copy=True)
    x2 = x2.astype(np.uint64, copy=True)
    x3 = x3.astype(np.uint64, copy=True)
    p0 = np.empty_like(x0)
    p1 = np.empty_like(x0)
    for rk0, rk1 in _round_keys(int(key[0]) & _MASK32, int(key[1]) & _MASK32):
        np.multiply(x0, _M0, out=p0)
        np.multiply(x2, _M1, out=p1)
        # new x0 = hi(p1) ^ x1 ^ k0 ; new x2 = hi(p0) ^ x3 ^ k1 ; new x1 = lo(p1) ; new x3 = lo(p0)
        np.right_shift(p1, _S32, out=x0)
        np.bitwise_xor(x0, x1, out=x0)
        np.bitwise_xor(x0, rk0, out=x0)
        np.right_shift(p0, _S32, out=x2)
        np.bitwise_xor(x2, x3, out=x2)
        np.bitwise_xor(x2, rk1, out=x2)
        np.bitwise_and(p1, _LO, out=x1)
        np.bitwise_and(p0, _LO, out=x3)
    if out is None:
        out = np.empty(x0.shape + (4,), dtype=np.uint32)
    out[..., 0] = x0
    out[..., 1] = x1
    out[..., 2] = x2
    out[..., 3] = x3
    return out
