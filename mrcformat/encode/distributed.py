"""Coding spread over the processes of a torch.distributed group (gloo on CPUs, NCCL on GPUs).

Rank 0 trains and owns the run; the other ranks only score candidates. In each coding round rank 0
broadcasts which round it is and, per group, the posterior rows of the round's blocks; every rank
scores its share of the 2^bits candidates of all those blocks (a contiguous range of indices) and
the shares are gathered. A candidate's score does not depend on which process or range computed
it, so the file is the same for any number of processes (tests: 2 gloo processes give the bytes of 1).

Usage: start N processes (e.g. `torchrun --nproc-per-node N`), `torch.distributed.init_process_group`,
and call `compress(...)` with the same arguments in each: rank 0 returns the result, the others None.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["CodingGroup"]

_STOP, _ROUND = 0, 1


class CodingGroup:
    """The processes that share coding work, and the few collectives they use."""

    def __init__(self, group=None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        if dist.get_backend(group) == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    @classmethod
    def current(cls) -> "CodingGroup | None":
        """The default process group when one is initialised with more than one process, else None."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls()
        return None

    @property
    def coordinator(self) -> bool:
        return self.rank == 0

    def _bcast(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device)
        dist.broadcast(t, src=0, group=self.group)
        return t

    def broadcast_ints(self, values: list[int] | None, n: int) -> list[int]:
        """Rank 0's `values` (n ints) on every rank."""
        t = torch.tensor(values if self.coordinator else [0] * n, dtype=torch.int64)
        return [int(x) for x in self._bcast(t).cpu()]

    def announce(self, round_no: int | None) -> int | None:
        """Rank 0 says which coding round comes next (None: no more); every rank returns it."""
        head = self.broadcast_ints([_ROUND, round_no] if round_no is not None else [_STOP, 0], 2)
        return head[1] if head[0] == _ROUND else None

    def share_rows(self, rows: int, block_size: int, mean=None, log_std=None, valid=None, sigma_p: float = 0.0):
        """Rank 0's posterior rows (mean, log std, valid: [rows, block_size]) and sigma_p on every rank."""
        t = torch.empty(3 * rows * block_size + 1, dtype=torch.float64)
        if self.coordinator:
            t[:-1] = torch.cat([mean.detach().double().reshape(-1).cpu(), log_std.detach().double().reshape(-1).cpu(),
                                valid.detach().double().reshape(-1).cpu()])
            t[-1] = sigma_p
        t = self._bcast(t).cpu()
        m, ls, v = t[:-1].view(3, rows, block_size)
        return m.clone(), ls.clone(), v.bool(), float(t[-1])

    def scores(self, scorer, seed: int, gid: int, blocks, block_size: int, sigma_p: float, mean, log_std, valid,
               count: int) -> np.ndarray:
        """All `count` candidate scores of each block (float64 [R, count]), this rank computing one share."""
        rows = len(blocks)
        piece = -(-count // self.world)
        lo, hi = min(count, self.rank * piece), min(count, (self.rank + 1) * piece)
        local = torch.zeros(rows, piece, dtype=torch.float64)
        if hi > lo:
            local[:, :hi - lo] = torch.from_numpy(np.ascontiguousarray(
                scorer(seed, gid, blocks, block_size, sigma_p, mean, log_std, valid, lo, hi - lo)))
        local = local.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local, group=self.group)
        return torch.cat([p.cpu() for p in parts], dim=1)[:, :count].numpy()
