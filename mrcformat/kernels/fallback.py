"""numpy versions of the kernels' operations: what runs when the extension is absent, and the
readable statement of what the native code computes. Decoding's numpy reference is
`mrcformat.decoder` itself; this module holds the scorer."""
from __future__ import annotations

import numpy as np

from ..sampler import values_from_u16
from ..streams import candidate_u16

__all__ = ["score_blocks"]

_CHUNK = 1 << 18  # candidate values per step: bounded temporaries


def score_blocks(seed: int, gid: int, blocks: np.ndarray, block_size: int, mu: float, sigma: float,
                 mean: np.ndarray, log_std: np.ndarray, valid: np.ndarray, sigma_p: float, const: np.ndarray,
                 start: int, count: int, out: np.ndarray) -> np.ndarray:
    """out[r, k - start] = const[r] + 0.5 * sum_j valid_rj [(x/sigma_p)^2 - ((x - mean_rj) / s_rj)^2],
    x = mu + sigma * T[u] (binary32) of candidate k of block blocks[r], in float64."""
    inv_s = np.exp(-log_std)
    per = max(1, _CHUNK // max(1, block_size))
    for r, b in enumerate(blocks):
        for k0 in range(start, start + count, per):
            k1 = min(k0 + per, start + count)
            u = candidate_u16(seed, gid, np.full(k1 - k0, b, dtype=np.uint64), np.arange(k0, k1, dtype=np.uint64),
                              block_size)
            x = values_from_u16(u, np.float32(mu), np.float32(sigma)).astype(np.float64)
            zp = x / sigma_p
            z = (x - mean[r]) * inv_s[r]
            out[r, k0 - start:k1 - start] = const[r] + 0.5 * ((zp * zp - z * z) @ valid[r].astype(np.float64))
    return out
