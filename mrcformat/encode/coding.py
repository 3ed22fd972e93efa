"""Coding blocks: score all K = 2^index_bits candidates of each block and pick the index MIRACLE stores.

Candidate k of block b is the spec generator's vector (`mrcformat.coder.candidates`, or its
bit-identical torch twin `mrcformat_runtime.torch_decode.candidates` on CUDA). Its
log-importance weight is

    log w_k = sum_j valid_j [log q_j(x_kj) - log p(x_kj)]
            = sum_j valid_j [-(x_kj - m_j)^2 / (2 s_j^2) - ln s_j + x_kj^2 / (2 sigma_p^2) + ln sigma_p]

(padding slots excluded), in float64. The index is chosen by `mrcformat.coder.choose_index`: the
seeded MIRACLE rule (sample k with probability softmax(log w)) or greedily (largest weight).

`code_blocks` codes many blocks of a group in one call: on CPU the compiled scorer of
`mrcformat.kernels` (numpy fallback) runs over all of them with its threads, on CUDA the batched
torch scorer of `mrcformat_runtime.torch_decode`; with a `CodingGroup` the candidates are shared
out over the processes of a torch.distributed group. `code_block` is one block of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mrcformat.coder import candidates as np_candidates
from mrcformat.coder import choose_index

__all__ = ["BlockChoice", "GENERATORS", "candidate_chunks", "candidate_source", "candidate_scorer", "code_block",
           "code_blocks", "score_candidates"]

GENERATORS = ("auto", "native", "numpy", "torch")


@dataclass
class BlockChoice:
    index: int
    values: torch.Tensor      # float32 [block_size]: the chosen candidate, as a decoder regenerates it
    log_weight: float         # its log-importance weight
    max_log_weight: float


def _check_generator(generator: str) -> None:
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, not {generator!r}")


def candidate_source(device: torch.device | str | None, generator: str = "auto"):
    """A function (seed, group, block, block_size, mu, sigma, start, count) -> float32 tensor [count, B].

    "torch": the runtime's torch generator on `device`; otherwise (and for "auto" on CPU) the
    reference numpy generator. All produce identical bits.
    """
    _check_generator(generator)
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


def candidate_scorer(device: torch.device | str | None, generator: str = "auto"):
    """A function (seed, gid, blocks, block_size, sigma_p, mean, log_std, valid, start, count) -> float64
    numpy array [R, count]: the log-importance weights of candidates start..start+count-1 of each of
    the R blocks (mean/log_std/valid: [R, block_size] tensors), candidates drawn from p = N(0, sigma_p^2).

    "native"/"numpy": `mrcformat.kernels.score_blocks` with that backend; "torch": the batched torch
    scorer on `device`; "auto": torch on CUDA, the kernels (native when built) otherwise.
    """
    _check_generator(generator)
    device = torch.device(device or "cpu")
    if generator == "torch" or (generator == "auto" and device.type == "cuda"):
        from mrcformat_runtime.torch_decode import score_blocks as torch_score

        def score(seed, gid, blocks, block_size, sigma_p, mean, log_std, valid, start, count):
            out = torch_score(seed, gid, torch.as_tensor(np.asarray(blocks), device=device), block_size, 0.0,
                              sigma_p, mean.to(device), log_std.to(device), valid.to(device), sigma_p, start, count)
            return out.cpu().numpy()
        return score

    from mrcformat import kernels

    backend = "auto" if generator == "auto" else generator

    def score(seed, gid, blocks, block_size, sigma_p, mean, log_std, valid, start, count):
        return kernels.score_blocks(seed, gid, blocks, block_size, 0.0, sigma_p, _np(mean), _np(log_std), _np(valid),
                                    sigma_p, start, count, backend_choice=backend)
    return score


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def code_blocks(seed: int, gid: int, blocks: list[int], block_size: int, index_bits: int, sigma_p: float,
                mean: torch.Tensor, log_std: torch.Tensor, valid: torch.Tensor, *, greedy: bool = False,
                scorer=None, gen=None, shard=None) -> list[BlockChoice]:
    """Code blocks `blocks` of group `gid` at once: score every candidate of each under q (mean, log_std:
    [R, block_size], row r for blocks[r]) and p = N(0, sigma_p^2), choose, and regenerate the choice.

    `scorer`/`gen`: from `candidate_scorer`/`candidate_source` (default: by the device of `mean`).
    `shard`: a `distributed.CodingGroup` whose processes share the candidates; every process calls
    this with the same arguments (only the caller's rows matter on other ranks: see CodingGroup).
    The choice depends only on the scores, which depend on no split: any number of processes and
    threads makes the same choices.
    """
    device = mean.device
    scorer = scorer or candidate_scorer(device)
    gen = gen or candidate_source(device)
    k = 1 << index_bits
    if shard is not None and shard.world > 1:
        lw = shard.scores(scorer, seed, gid, blocks, block_size, sigma_p, mean, log_std, valid, k)
    else:
        lw = scorer(seed, gid, blocks, block_size, sigma_p, mean, log_std, valid, 0, k)
    choices = []
    for r, b in enumerate(blocks):
        idx = choose_index(lw[r], greedy=greedy, seed=seed, group=gid, block=int(b))
        values = gen(seed, gid, int(b), block_size, 0.0, sigma_p, idx, 1)[0]
        choices.append(BlockChoice(idx, values.float(), float(lw[r, idx]), float(lw[r].max())))
    return choices


@torch.no_grad()
def code_block(seed: int, gid: int, block: int, block_size: int, index_bits: int, sigma_p: float,
               mean: torch.Tensor, log_std: torch.Tensor, valid: torch.Tensor, *, greedy: bool = False,
               gen=None, scorer=None) -> BlockChoice:
    """Score every candidate of one block under q (mean, log_std per slot) and p = N(0, sigma_p^2)."""
    return code_blocks(seed, gid, [block], block_size, index_bits, sigma_p, mean[None], log_std[None], valid[None],
                       greedy=greedy, scorer=scorer, gen=gen)[0]
