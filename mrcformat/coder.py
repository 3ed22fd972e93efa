"""Block coder primitive (SPEC.md section 11): candidates of a block, the choice of one, and back.

The encoder scores the K = 2**index_bits candidates of a block with log-importance weights
log q(w) - log p(w); `choose_index` turns those into the index that is stored, and
`regenerate` is the decoder's view of the same block: the candidate for a stored index.
"""
from __future__ import annotations

import numpy as np

from .philox import philox4x32_scalar
from .sampler import values_from_u16
from .streams import DOMAIN_CHOICE, candidate_u16, domain_word, seed_key

__all__ = ["candidates", "regenerate", "choice_uniform", "choose_index"]


def candidates(seed: int, group: int, block: int, block_size: int, mu: float, sigma: float,
               start: int = 0, count: int = 1) -> np.ndarray:
    """Values of candidates start..start+count-1 of one block: float32 [count, block_size]."""
    k = np.arange(start, start + count, dtype=np.uint64)
    u = candidate_u16(seed, group, np.full(count, block, dtype=np.uint64), k, block_size)
    return values_from_u16(u, np.float32(mu), np.float32(sigma)).reshape(count, block_size)


def regenerate(seed: int, group: int, block: int, index: int, block_size: int, mu: float, sigma: float) -> np.ndarray:
    """The candidate a decoder produces for `index` in this block: float32 [block_size]."""
    return candidates(seed, group, block, block_size, mu, sigma, start=index, count=1)[0]


def choice_uniform(seed: int, group: int, block: int, attempt: int = 0) -> float:
    """A uniform double in [0, 1) for the seeded choice: 53 bits of
    Philox(counter=(attempt, 0, block, (2<<24)|group), key=seed), words 0 (high) and 1."""
    x = philox4x32_scalar((attempt, 0, block, domain_word(DOMAIN_CHOICE, group)), seed_key(seed))
    return ((x[0] << 21) | (x[1] >> 11)) / float(1 << 53)


def choose_index(log_weights: np.ndarray, *, greedy: bool = False, seed: int = 0, group: int = 0,
                 block: int = 0, attempt: int = 0) -> int:
    """Pick a candidate index from its log-importance weights.

    greedy: the largest weight (lowest index on ties). Otherwise the MIRACLE rule: sample
    index k with probability softmax(log_weights)[k], by inverting the float64 cumulative sum
    at the seeded uniform `choice_uniform(...)`. Deterministic for given inputs.
    """
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size == 0:
        raise ValueError("no candidates")
    if not np.all(np.isfinite(lw) | (lw == -np.inf)) or np.all(lw == -np.inf):
        raise ValueError("log weights must be finite or -inf, and not all -inf")
    if greedy:
        return int(np.argmax(lw))
    w = np.exp(lw - lw.max())
    cdf = np.cumsum(w)
    u = choice_uniform(seed, group, block, attempt) * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), lw.size - 1))
