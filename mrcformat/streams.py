"""Which Philox counter produces which random bits (SPEC.md section 3.2).

Key: the file's 64-bit seed, low word first. Counter word 3 carries a domain tag in its
top 8 bits and the group id in its low 24 bits, so the streams of different purposes and
groups never share a counter. Everything is addressable without sequential state.
"""
from __future__ import annotations

import numpy as np

from .philox import philox4x32

__all__ = [
    "DOMAIN_CANDIDATE", "DOMAIN_HASH", "DOMAIN_CHOICE", "DOMAIN_LAYOUT", "SAMPLES_PER_CALL",
    "seed_key", "domain_word", "candidate_u16", "hash_words", "hash_range",
]

DOMAIN_CANDIDATE = 0  # candidate values of blocks (normative)
DOMAIN_HASH = 1       # hashing trick: value index and sign per weight (normative)
DOMAIN_CHOICE = 2     # encoder's seeded choice among candidates (informative)
DOMAIN_LAYOUT = 3     # encoder's choice of affine layout parameters (informative)
SAMPLES_PER_CALL = 8  # one Philox call = 4 x 32 bits = 8 x 16-bit samples


def seed_key(seed: int) -> tuple[int, int]:
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF


def domain_word(domain: int, group: int) -> int:
    if not 0 <= group < (1 << 24):
        raise ValueError("group id must be < 2**24")
    return (domain << 24) | group


def candidate_u16(seed: int, group: int, blocks: np.ndarray, indices: np.ndarray, block_size: int) -> np.ndarray:
    """16-bit samples of candidates: uint16 [len(blocks), block_size].

    Slot j of candidate k of block b comes from Philox(counter=(j>>3, k, b, group), key=seed),
    lane j&7: word lane>>1, low half for even lanes, high half for odd lanes.
    """
    blocks = np.asarray(blocks, dtype=np.uint64).reshape(-1, 1)
    indices = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    chunks = -(-block_size // SAMPLES_PER_CALL)
    words = philox4x32(np.arange(chunks, dtype=np.uint64)[None, :], indices, blocks,
                       domain_word(DOMAIN_CANDIDATE, group), seed_key(seed))
    # uint32 little-endian words viewed as uint16 give exactly lane order 0..7 per call
    u16 = words.astype("<u4", copy=False).view("<u2").reshape(words.shape[0], chunks * SAMPLES_PER_CALL)
    return u16[:, :block_size]


def hash_words(seed: int, group: int, weights: np.ndarray, num_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashing trick for weight positions w: (value index int64, sign float32 +-1).

    Philox(counter=(w>>1, 0, 0, (1<<24)|group), key=seed); lane l = w&1 uses word 2l for
    the index, floor(word * num_values / 2**32), and bit 0 of word 2l+1 for the sign (1 = negative).
    """
    w = np.asarray(weights, dtype=np.uint64)
    x = philox4x32(w >> np.uint64(1), 0, 0, domain_word(DOMAIN_HASH, group), seed_key(seed))
    lane = (w & np.uint64(1)).astype(np.intp)
    r = np.take_along_axis(x, (2 * lane)[..., None], axis=-1)[..., 0].astype(np.uint64)
    s = np.take_along_axis(x, (2 * lane + 1)[..., None], axis=-1)[..., 0] & np.uint32(1)
    index = ((r * np.uint64(num_values)) >> np.uint64(32)).astype(np.int64)
    sign = (np.float32(1) - np.float32(2) * s.astype(np.float32)).astype(np.float32)
    return index, sign


def hash_range(seed: int, group: int, start: int, stop: int, num_values: int) -> tuple[np.ndarray, np.ndarray]:
    """`hash_words` for the contiguous weight positions [start, stop), without per-lane gathers:
    one Philox call covers positions 2m (words 0, 1) and 2m+1 (words 2, 3)."""
    first = start >> 1
    x = philox4x32(np.arange(first, (stop + 1) >> 1, dtype=np.uint64), 0, 0,
                   domain_word(DOMAIN_HASH, group), seed_key(seed))
    lo = start - 2 * first
    r = x[:, 0::2].reshape(-1)[lo:lo + stop - start].astype(np.uint64)
    s = x[:, 1::2].reshape(-1)[lo:lo + stop - start] & np.uint32(1)
    r *= np.uint64(num_values)
    r >>= np.uint64(32)
    sign = np.float32(1) - np.float32(2) * s.astype(np.float32)
    return r.astype(np.int64), sign
