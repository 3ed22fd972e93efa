"""Coding one block: score all K = 2^index_bits candidates and pick the index MIRACLE stores.

Candidate k of block b is the spec generator's vector (`mrcformat.coder.candidates`, or its
bit-identical torch twin `mrcformat_runtime.torch_decode.candidates` on CUDA). Its
log-importance weight is

    log w_k = sum_j valid_j [log q_j(x_kj) - log p(x_kj)]
            = sum_j valid_j [-(x_kj - m_j)^2 / (2 s_j^2) - ln s_j + x_kj^2 / (2 sigma_p^2) + ln sigma_p]

(padding slots excluded), computed in float64 in chunks of candidates. The index is chosen
by `mrcformat.coder.choose_index`: the seeded MIRACLE rule (sample k with probability
softmax(log w)) or greedily (largest weight).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mrcformat.coder import candidates as np_candidates
from mrcformat.coder import choose_index

__all__ = ["BlockChoice", "candidate_chunks", "candidate_source", "code_block", "score_candidates"]


@dataclass
class BlockChoice:
    index: int
    values: torch.Tensor      # float32 [block_size]: the chosen candidate, as a decoder regenerates it
    log_weight: float         # its log-importance weight
    max_log_weight: float


def candidate_source(device: torch.device | str | None, generator: str = "auto"):
    """A function (seed, group, block, block_size, mu, sigma, start, count) -> float32 tensor [count, B].

    "numpy": the reference numpy generator (fastest on CPU); "torch": the runtime's torch generator
    on `device`; "auto": torch on CUDA, numpy otherwise. All produce identical bits.
    """
    device = torch.device(device or "cpu")
    use_torch = generator == "torch" or (generator == "auto" and device.type == "cuda")
    if use_torch:
        from mrcformat_runtime.torch_decode import candidates as torch_candidates

        def gen(seed, group, block, block_size, mu, sigma, start, count):
            return torch_candidates(seed, group, block, block_size, mu, sigma, start, count, device=device)
        return gen

    def gen(seed, group, block, block_size, mu, sigma, start, count):
        return torch.from_numpy(np_candidates(seed, group, block, block_size, mu, sigma, start, count)).to(device)
    return gen


def candidate_chunks(gen, seed: int, gid: int, block: int, block_size: int, index_bits: int, sigma_p: float,
                     chunk: int = 1 << 21):
    """Yield (first index, candidates [count, block_size]) over all 2^index_bits candidates of a block,
    about `chunk` values at a time (bounded memory for any block size)."""
    total = 1 << index_bits
    per = max(1, min(total, chunk // max(1, block_size)))
    for k0 in range(0, total, per):
        yield k0, gen(seed, gid, block, block_size, 0.0, sigma_p, k0, min(per, total - k0))


def score_candidates(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, valid: torch.Tensor,
                     sigma_p: float) -> torch.Tensor:
    """log q(x) - log p(x) summed over valid slots, for candidates x [count, B] (float64 result)."""
    x = x.double()
    m, ls, v = mean.double(), log_std.double(), valid.double()
    z = (x - m) * torch.exp(-ls)
    zp = x / sigma_p
    per_slot = -0.5 * z * z + 0.5 * zp * zp                    # [count, B]
    const = float(((np.log(sigma_p) - ls) * v).sum())
    return per_slot @ v + const


@torch.no_grad()
def code_block(seed: int, gid: int, block: int, block_size: int, index_bits: int, sigma_p: float,
               mean: torch.Tensor, log_std: torch.Tensor, valid: torch.Tensor, *, greedy: bool = False,
               chunk: int = 1 << 21, gen=None) -> BlockChoice:
    """Score every candidate of one block under q (mean, log_std per slot) and p = N(0, sigma_p^2)."""
    gen = gen or candidate_source(mean.device)
    scores = torch.empty(1 << index_bits, dtype=torch.float64, device=mean.device)
    for k0, x in candidate_chunks(gen, seed, gid, block, block_size, index_bits, sigma_p, chunk):
        scores[k0:k0 + len(x)] = score_candidates(x, mean, log_std, valid, sigma_p)
    lw = scores.cpu().numpy()
    k = choose_index(lw, greedy=greedy, seed=seed, group=gid, block=block)
    values = gen(seed, gid, block, block_size, 0.0, sigma_p, k, 1)[0]
    return BlockChoice(k, values.float(), float(lw[k]), float(lw.max()))
