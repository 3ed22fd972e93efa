"""The normal16 sampler (SPEC.md section 4): standard normals from a 65,536-entry table.

No transcendental function runs at decode time: a 16-bit random value u selects
T[u] = Phi^-1((u + 0.5) / 65536) rounded to 16 significant bits. With the coding scale
sigma representable in bfloat16 (8 significant bits), sigma * T[u] has at most 24
significant bits and is exact in float32, so mu + sigma * T[u] rounds once and gives
the same bits with or without a fused multiply-add.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import resources

import numpy as np

from .errors import CodingParameterError, TableError

__all__ = [
    "TABLE_SIZE", "TABLE_SHA256", "normal_table", "bf16_bits_to_float", "float_to_bf16_bits",
    "f32_bits_to_float", "float_to_f32_bits", "is_valid_sigma_bits", "values_from_u16",
]

TABLE_SIZE = 65536
TABLE_SHA256 = "d3491d786280f1d05a093074ec8ca8a38ca2a44380c2767c31d54e1baa1ead60"
SIGMA_MIN_EXP = -64  # 2**-64 <= sigma <= 2**64 keeps sigma*T[u] a normal float32 (exact)
SIGMA_MAX_EXP = 64


@functools.cache
def normal_table() -> np.ndarray:
    """The table as read-only float32[65536]; raises TableError if the shipped bytes are altered."""
    data = resources.files("mrcformat").joinpath("_data/normal16.f32").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TABLE_SHA256:
        raise TableError(f"normal16 table SHA-256 is {digest}, expected {TABLE_SHA256}", "mrcformat/_data/normal16.f32")
    table = np.frombuffer(data, dtype="<f4").astype(np.float32)
    table.flags.writeable = False
    return table


def bf16_bits_to_float(bits: int) -> np.float32:
    return np.array([int(bits) << 16], dtype=np.uint32).view(np.float32)[0]


def f32_bits_to_float(bits: int) -> np.float32:
    return np.array([int(bits)], dtype=np.uint32).view(np.float32)[0]


def float_to_f32_bits(x: float) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def float_to_bf16_bits(x: float) -> int:
    """Round a positive finite value to the nearest bfloat16 (ties to even) and return its bits."""
    b = int(np.array([x], dtype=np.float32).view(np.uint32)[0])
    low = b & 0xFFFF
    hi = b >> 16
    if low > 0x8000 or (low == 0x8000 and hi & 1):
        hi += 1
    return hi & 0xFFFF


def is_valid_sigma_bits(bits: int) -> bool:
    """sigma must be a positive normal bfloat16 in [2**-64, 2**64]."""
    if not 0 <= bits <= 0xFFFF or bits & 0x8000:
        return False
    exp = ((bits >> 7) & 0xFF) - 127
    return SIGMA_MIN_EXP <= exp < SIGMA_MAX_EXP or (exp == SIGMA_MAX_EXP and bits & 0x7F == 0)


def check_coding_parameters(mu_bits: int, sigma_bits: int, where: str = "") -> tuple[np.float32, np.float32]:
    """Validate and convert stored (mu float32 bits, sigma bfloat16 bits)."""
    mu = f32_bits_to_float(mu_bits)
    if not np.isfinite(mu):
        raise CodingParameterError(f"mu bits 0x{mu_bits:08x} are not a finite float32", f"{where}.mu")
    if not is_valid_sigma_bits(sigma_bits):
        raise CodingParameterError(
            f"sigma bits 0x{sigma_bits:04x} are not a positive bfloat16 in [2^-64, 2^64]", f"{where}.sigma")
    return mu, bf16_bits_to_float(sigma_bits)


def values_from_u16(u: np.ndarray, mu: np.float32, sigma: np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """mu + sigma * T[u] in float32 (the product is exact, so one rounding in total)."""
    table = normal_table()
    out = np.take(table, u.astype(np.intp, copy=False), out=out)
    np.multiply(out, np.float32(sigma), out=out)
    np.add(out, np.float32(mu), out=out)
    return out
