"""Coding a group without torch: every block's K = 2^index_bits candidates scored by the compiled
kernel (`mrcformat.kernels.score_blocks`, numpy fallback), the best one kept (greedy choice).

The group's values sit in slot order under its layout (SPEC.md 5): slot pi(i) holds value i. The
stored index is all a decoder needs.
"""
from __future__ import annotations

import numpy as np

from mrcformat import kernels
from mrcformat.coder import choose_index
from mrcformat.layout import Layout, positions

__all__ = ["code_group"]

_SCORE_BYTES = 1 << 26  # float64 scores held at once


def code_group(seed: int, gid: int, mean: np.ndarray, std: np.ndarray, mu: float, value_sigma: np.ndarray,
               block_size: int, index_bits: int, layout: Layout, *, greedy: bool = True, progress=None) -> np.ndarray:
    """Indices (int64 [num_blocks]) of a group whose candidates come from p = N(mu, value_sigma^2)
    (per value: the group's sigma times its row's scale), chosen by the MIRACLE rule for the posterior
    q = N(mean, std^2): the largest log q(x) - log p(x) (greedy), or one sampled by those weights.

    Scores are computed on the unit scale: log q(x) - log p(x) does not change when x, q and p are
    divided by the same sigma_k, so candidates are the table values T[u] (mu = 0, sigma = 1). (For the
    closed-form posterior of `rd_allocation` with shrink=True, the greedy choice is exactly the candidate
    with the least importance-weighted squared error to the weights.)"""
    n = mean.size
    nb = -(-n // block_size)
    pos = positions(layout, 0, n, n)
    sig = np.broadcast_to(np.asarray(value_sigma, dtype=np.float64), (n,))
    slot_mean = np.zeros(nb * block_size)
    slot_logstd = np.zeros(nb * block_size)
    valid = np.zeros(nb * block_size, dtype=bool)
    slot_mean[pos] = (np.asarray(mean, dtype=np.float64) - float(mu)) / sig
    slot_logstd[pos] = np.log(np.asarray(std, dtype=np.float64) / sig)
    valid[pos] = True
    slot_mean = slot_mean.reshape(nb, block_size)
    slot_logstd = slot_logstd.reshape(nb, block_size)
    valid = valid.reshape(nb, block_size)
    k = 1 << index_bits
    rows = max(1, _SCORE_BYTES // (8 * k))
    out = np.empty(nb, dtype=np.int64)
    for b0 in range(0, nb, rows):
        b1 = min(nb, b0 + rows)
        blocks = np.arange(b0, b1, dtype=np.int64)
        lw = kernels.score_blocks(seed, gid, blocks, block_size, 0.0, 1.0, slot_mean[b0:b1], slot_logstd[b0:b1],
                                  valid[b0:b1], 1.0, 0, k)
        if greedy:
            out[b0:b1] = np.argmax(lw, axis=1)
        else:
            out[b0:b1] = [choose_index(lw[r], seed=seed, group=gid, block=int(b)) for r, b in enumerate(blocks)]
        if progress is not None:
            progress(int((b1 - b0) * block_size))
    return out
