"""Build the normal16 sampler table (SPEC.md section 4) from its definition.

T[i] = Phi^-1((i + 0.5) / 65536), evaluated with 40 significant decimal digits (mpmath),
rounded to the nearest float32 (ties to even), then that float32 rounded to 16
significant bits (ties to even). Writes little-endian float32 to the given path and
prints the SHA-256. The package ships the result and checks its hash on load.

    python spec/make_table.py mrcformat/_data/normal16.f32
"""
from __future__ import annotations

import hashlib
import sys

import mpmath
import numpy as np

N = 65536


def round_to_16_significant_bits(f32: np.ndarray) -> np.ndarray:
    """Round float32 values to 16 significant bits (drop 8 mantissa bits), ties to even."""
    bits = f32.view(np.uint32).astype(np.uint64)
    low = bits & 0xFF
    kept = bits >> 8
    round_up = (low > 0x80) | ((low == 0x80) & ((kept & 1) == 1))
    kept = kept + round_up.astype(np.uint64)  # a carry into the exponent is the correct rounding
    return (kept << 8).astype(np.uint32).view(np.float32)


def build_table() -> np.ndarray:
    mpmath.mp.dps = 40
    exact = [mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(2 * i + 1) / (2 * N) - 1) for i in range(N)]
    # mpmath -> float64 -> float32 could double-round; go through a decimal string of 40
    # digits into float64 only for values whose float32 rounding is unambiguous. Instead,
    # round exactly: find the float32 neighbours and compare in mpmath.
    f32 = np.empty(N, dtype=np.float32)
    for i, x in enumerate(exact):
        approx = np.float32(float(x))
        lo, hi = approx, approx
        if mpmath.mpf(float(approx)) > x:
            lo = np.nextafter(approx, np.float32(-np.inf))
        else:
            hi = np.nextafter(approx, np.float32(np.inf))
        dlo = x - mpmath.mpf(float(lo))
        dhi = mpmath.mpf(float(hi)) - x
        if dlo < dhi:
            f32[i] = lo
        elif dhi < dlo:
            f32[i] = hi
        else:  # exact tie: even mantissa
            f32[i] = lo if (int(np.float32(lo).view(np.uint32)) & 1) == 0 else hi
    return round_to_16_significant_bits(f32)


def main() -> None:
    table = build_table()
    assert len(np.unique(table)) == N, "table entries must be distinct"
    assert np.all(np.diff(table) > 0), "table must be strictly increasing"
    assert np.array_equal(table, -table[::-1]), "table must be antisymmetric"
    data = table.astype("<f4").tobytes()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "wb") as f:
            f.write(data)
    print(hashlib.sha256(data).hexdigest())


if __name__ == "__main__":
    main()
