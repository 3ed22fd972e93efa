"""Philox4x32-10 (SPEC.md section 3) in plain torch tensor ops, for CPU and CUDA.

torch has no +, >> or << on uint32 tensors, so every 32-bit word travels in an int64 tensor
holding a value in [0, 2**32), and every step is written so that no intermediate leaves
[0, 2**63): nothing relies on signed overflow. Both Philox multipliers M are odd, so with
h = M >> 1 (< 2**31) the 32x32->64 product of a round is x * M = 2 * s + (x & 1) where

    s  = x * h + (x >> 1)                  <= (2**32-1)(2**31-1) + 2**31-1 < 2**63
    hi = (x * M) >> 32 = s >> 31           (adding x & 1 to an even number carries nothing)
    lo = (x * M) mod 2**32 = 2 * (s & 0x7FFFFFFF) | (x & 1)

where `torch.add(a, b, alpha=h)` fuses the multiply-add: fewer and cheaper tensor ops than a
16-bit split of M. Every value stays exact in int64 on CPU and CUDA.

The result is bit-identical to `mrcformat.philox.philox4x32` (tests check it, and the
Random123 known-answer vectors) on any device.
"""
from __future__ import annotations

import torch

from mrcformat.philox import PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1

__all__ = ["philox4x32", "philox4x32_words", "round_keys"]

_MASK32 = 0xFFFFFFFF
assert PHILOX_M0 & 1 and PHILOX_M1 & 1  # the product split below needs odd multipliers
_H0, _H1 = PHILOX_M0 >> 1, PHILOX_M1 >> 1


def round_keys(key: tuple[int, int]) -> list[tuple[int, int]]:
    """The ten (k0, k1) round keys as Python ints in [0, 2**32)."""
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    return [((k0 + r * PHILOX_W0) & _MASK32, (k1 + r * PHILOX_W1) & _MASK32) for r in range(PHILOX_ROUNDS)]


def _mulhilo(x: torch.Tensor, h: int, t: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> None:
    """hi, lo = (x * M) >> 32, (x * M) mod 2**32 for x in [0, 2**32), M = 2h + 1; t is scratch.

    In-place ops and | for the bit-disjoint sum: int64 add/mul are not vectorised on every CPU.
    """
    torch.bitwise_right_shift(x, 1, out=hi)
    hi.add_(x, alpha=h)                          # s = x * h + (x >> 1) < 2**63
    torch.bitwise_and(hi, 0x7FFFFFFF, out=lo).bitwise_left_shift_(1)
    torch.bitwise_and(x, 1, out=t)
    lo.bitwise_or_(t)                            # lo = 2 * (s mod 2**31) | (x & 1)
    hi.bitwise_right_shift_(31)                  # hi = s >> 31


def philox4x32_words(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
                     key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on four same-shape contiguous int64 tensors of counter words in [0, 2**32).

    The inputs are used as scratch (overwritten); returns the four output words as int64
    tensors in [0, 2**32) (some of them are the input buffers). This is the allocation-lean
    core that the decoder and the candidate generator use.
    """
    t = torch.empty_like(x0)
    h0 = torch.empty_like(x0)
    h1 = torch.empty_like(x0)
    l0 = torch.empty_like(x0)
    l1 = torch.empty_like(x0)
    for k0, k1 in round_keys(key):
        _mulhilo(x0, _H0, t, h0, l0)
        _mulhilo(x2, _H1, t, h1, l1)
        # x0' = hi(M1*x2) ^ x1 ^ k0 ; x1' = lo(M1*x2) ; x2' = hi(M0*x0) ^ x3 ^ k1 ; x3' = lo(M0*x0)
        h1.bitwise_xor_(x1).bitwise_xor_(k0)
        h0.bitwise_xor_(x3).bitwise_xor_(k1)
        # rotate buffers: the old state becomes next round's scratch
        x0, x1, x2, x3, h0, h1, l0, l1 = h1, l1, h0, l0, x0, x1, x2, x3
    return x0, x1, x2, x3


def _as_word_tensor(c, device) -> torch.Tensor:
    if isinstance(c, torch.Tensor):
        return c.to(device=device, dtype=torch.int64)
    return torch.as_tensor(c, dtype=torch.int64, device=device)


def philox4x32(c0, c1, c2, c3, key: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """Philox4x32-10 over broadcastable counter words; returns int64 tensor [..., 4] in [0, 2**32).

    Counter words may be int tensors (any integer dtype, values in [0, 2**32)), numpy arrays
    or Python ints; `key` is two ints (low word first). `device` defaults to the device of
    the first tensor argument, else CPU. Same bits as `mrcformat.philox.philox4x32`.
    """
    if device is None:
        device = next((c.device for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor)), torch.device("cpu"))
    words = torch.broadcast_tensors(*(_as_word_tensor(c, device) for c in (c0, c1, c2, c3)))
    shape = words[0].shape
    xs = [w.reshape(-1).clone() for w in words]  # contiguous private copies (scratch)
    out = philox4x32_words(*xs, key=key)
    return torch.stack(out, dim=-1).reshape(*shape, 4)
