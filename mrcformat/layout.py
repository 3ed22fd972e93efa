"""Block layout (SPEC.md section 5): which block slot holds each coded value.

A group has n coded values v[0..n) split into nb = ceil(n / B) blocks of B slots.
Value i sits at position p = pi(i) in [0, n); block p // B, slot p % B. Slots at
positions >= n (the tail of the last block) are padding: generated, never used.

Layouts:
  contiguous   pi(i) = i
  affine       pi(i) = (a * i + c) mod n, with gcd(a, n) = 1, 0 <= a, c < n
The affine map is integer-only, bijective and computable per element in parallel.
Encoders pick a so that a block's members are spread over the tensor (see
`choose_affine`); decoders only read a and c from the header.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .philox import philox4x32_scalar
from .streams import DOMAIN_LAYOUT, domain_word, seed_key

__all__ = ["Layout", "CONTIGUOUS", "num_blocks", "positions", "inverse_positions", "inverse_positions_range", "choose_affine"]

GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class Layout:
    kind: str = "contiguous"  # "contiguous" | "affine"
    a: int = 1
    c: int = 0

    def to_header(self) -> dict:
        if self.kind == "contiguous":
            return {"kind": "contiguous"}
        return {"kind": "affine", "a": self.a, "c": self.c}


CONTIGUOUS = Layout()


def num_blocks(num_values: int, block_size: int) -> int:
    return -(-num_values // block_size)


def positions(layout: Layout, start: int, stop: int, n: int) -> np.ndarray:
    """pi(i) for i in [start, stop) as int64 (a*i < 2**62 because n < 2**31)."""
    i = np.arange(start, stop, dtype=np.int64)
    if layout.kind == "contiguous":
        return i
    i *= layout.a
    i += layout.c
    np.remainder(i, n, out=i)
    return i


def inverse_positions(layout: Layout, n: int) -> np.ndarray:
    """pi^-1(p) for p in [0, n): the value index stored at each slot position."""
    return inverse_positions_range(layout, 0, n, n)


def choose_affine(n: int, seed: int, group: int) -> Layout:
    """Informative encoder rule: stride s near n * golden ratio (jittered by Philox), coprime to n.

    Block members are then the Weyl sequence i = s * (p - c) mod n, which spreads every block
    over the whole tensor. a = s^-1 mod n.
    """
    if n <= 2:
        return Layout("affine", 1 % n if n > 1 else 0, 0)
    x = philox4x32_scalar((0, 0, 0, domain_word(DOMAIN_LAYOUT, group)), seed_key(seed))
    jitter = (x[0] * max(1, n // 64)) >> 32
    s = (int(round(n * GOLDEN)) + jitter) % n
    s = max(s, 1)
    while math.gcd(s, n) != 1:
        s = s + 1 if s + 1 < n else 1
    c = (x[1] * n) >> 32
    return Layout("affine", pow(s, -1, n), c)


def inverse_positions_range(layout: Layout, p0: int, p1: int, n: int) -> np.ndarray:
    """pi^-1(p) for p in [p0, p1) with p1 <= n: value indices of a run of slot positions."""
    p = np.arange(p0, p1, dtype=np.int64)
    if layout.kind == "contiguous":
        return p
    a_inv = pow(layout.a, -1, n) if n > 1 else 0
    p -= layout.c
    np.remainder(p, n, out=p)
    p *= a_inv
    np.remainder(p, n, out=p)
    return p
