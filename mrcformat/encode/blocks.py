"""Block assignment: which tensors form a group, how many blocks each group gets, and where
every weight's value sits (block, slot) under the group's layout and hashing.

Per-group parameters live in *slot order*: a padded [num_blocks, block_size] matrix whose row b
is block b. `GroupPlan.slot_of_weight[t]` is the flat slot that weight t reads
(pi(h(t)) with hashing, pi(t) without), `sign[t]` its hashing sign.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mrcformat import limits as L
from mrcformat.bitpack import packed_length
from mrcformat.layout import Layout, choose_affine, num_blocks, positions
from mrcformat.streams import hash_words

__all__ = ["GroupPlan", "GroupSpec", "allocate_blocks", "build_plan", "scale_rows"]


def scale_rows(shape: tuple[int, ...], min_run: int = 64) -> int:
    """How many coding scales a tensor gets (SPEC.md 4.2 group scales): one per row (C order, axis 0),
    or per run of rows where rows are short, so that each scale (2 bytes) covers >= `min_run` values."""
    n = int(np.prod(shape, dtype=np.int64))
    rows = int(shape[0]) if len(shape) >= 2 else 1
    while rows > 1 and n // rows < min_run:
        rows = next(d for d in range(rows - 1, 0, -1) if shape[0] % d == 0)
    return max(1, rows)


@dataclass
class GroupSpec:
    """A group before planning: its member tensors (name, shape), hashing ratio (1 = none) and number
    of coding scales (SPEC.md 4.2: value i uses scale i // (num_values / rows); 1 = the group's sigma
    alone; more only for a group of one tensor without hashing, whose values are its elements)."""

    name: str
    members: list[tuple[str, tuple[int, ...]]]
    hash_ratio: float = 1.0
    rows: int = 1

    def __post_init__(self) -> None:
        if self.rows != 1 and (self.rows < 1 or len(self.members) != 1 or self.hash_ratio > 1
                               or self.num_values % self.rows):
            raise ValueError(f"group {self.name!r}: {self.rows} coding scales need one tensor, no hashing and "
                             f"a row count dividing its {self.num_values} values")

    @property
    def num_weights(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) for _, s in self.members)

    @property
    def num_values(self) -> int:
        if self.hash_ratio <= 1:
            return self.num_weights
        return max(1, math.ceil(self.num_weights / self.hash_ratio))

    @property
    def hashing(self) -> bool:
        return self.hash_ratio > 1


@dataclass
class GroupPlan:
    spec: GroupSpec
    gid: int
    index_bits: int
    block_size: int
    layout: Layout
    slot_of_weight: torch.Tensor                 # int64 [num_weights]
    sign: torch.Tensor | None                    # float32 [num_weights] (hashing) or None
    valid: torch.Tensor                          # bool [num_blocks, block_size]: slot holds a value
    value_of_slot: np.ndarray = field(repr=False, default=None)  # int64 [num_values] (slot order)

    @property
    def num_values(self) -> int:
        return self.spec.num_values

    @property
    def num_blocks(self) -> int:
        return num_blocks(self.num_values, self.block_size)

    @property
    def payload_bytes(self) -> int:
        return packed_length(self.num_blocks, self.index_bits)

    @property
    def budget_nats(self) -> float:
        """KL budget of one block: index_bits * ln 2."""
        return self.index_bits * math.log(2.0)


def _block_size_for(n: int, nb: int) -> int:
    return min(L.MAX_BLOCK_SIZE, max(1, math.ceil(n / max(1, nb))))


def allocate_blocks(specs: list[GroupSpec], budget_bytes: int, index_bits: int,
                    allocation: str | dict[str, float] = "sqrt") -> list[int]:
    """Block size of each group so that the packed indices fit `budget_bytes` and use most of it.

    allocation: "sqrt" (blocks proportional to sqrt(values): small, sensitive layers get relatively
    more bits), "size" (proportional to values: equal block sizes) or {group name: weight}.
    Returns the block size per group.
    """
    ns = [s.num_values for s in specs]
    if isinstance(allocation, dict):
        shares = [float(allocation.get(s.name, 0.0)) for s in specs]
    elif allocation == "sqrt":
        shares = [math.sqrt(n) for n in ns]
    elif allocation == "size":
        shares = [float(n) for n in ns]
    else:
        raise ValueError(f"unknown allocation {allocation!r}")
    if sum(shares) <= 0:
        raise ValueError("allocation shares must not all be zero")
    min_blocks = [num_blocks(n, L.MAX_BLOCK_SIZE) for n in ns]
    total = (8 * budget_bytes) // index_bits
    target = [max(mb, min(n, int(total * sh / sum(shares)))) for n, mb, sh in zip(ns, min_blocks, shares)]

    def sizes(tgt):
        bs = [_block_size_for(n, t) for n, t in zip(ns, tgt)]
        return bs, sum(packed_length(num_blocks(n, b), index_bits) for n, b in zip(ns, bs))

    bs, used = sizes(target)
    if sum(packed_length(mb, index_bits) for mb in min_blocks) > budget_bytes:
        raise ValueError(f"budget of {budget_bytes} bytes is below the minimum "
                         f"({sum(packed_length(mb, index_bits) for mb in min_blocks)} bytes at {index_bits} bits/block)")
    while used > budget_bytes:  # shrink the group furthest above its share
        ratios = [(t / sh if sh > 0 else math.inf) if t > mb else -1 for t, sh, mb in zip(target, shares, min_blocks)]
        g = int(np.argmax(ratios))
        target[g] -= max(1, target[g] // 200)
        bs, used = sizes(target)
    # Grow: raise every group's block count in proportion to its share (a common level t / share) while
    # the budget allows. A group's block size, hence the bytes used, changes only when its target reaches
    # ceil(n / (bs - 1)); so the groups are visited in the order of the level (t - 1) / share at which the
    # step to that target is taken (ties: lowest group first), and a group whose next step does not fit is
    # done for good (the bytes used only grow). Same block sizes as raising the lowest group's target by
    # one at a time, without the millions of steps that took minutes on a 3 M-weight model.
    def step(g: int) -> int | None:
        """The target at which group g's block size next drops; None when it cannot grow (block size 1)."""
        if shares[g] <= 0 or bs[g] <= 1:
            return None
        return min(ns[g], -(-ns[g] // (bs[g] - 1)))

    def length(g: int, b: int) -> int:
        return packed_length(num_blocks(ns[g], b), index_bits)

    heap = []
    for g in range(len(specs)):
        t = step(g)
        if t is not None:
            heapq.heappush(heap, ((t - 1) / shares[g], g, t))
    while heap:
        _, g, t = heapq.heappop(heap)
        nb = _block_size_for(ns[g], t)
        grown = used - length(g, bs[g]) + length(g, nb)
        if grown > budget_bytes:
            continue
        bs[g], used = nb, grown
        t = step(g)
        if t is not None:
            heapq.heappush(heap, ((t - 1) / shares[g], g, t))
    return bs


def build_plan(specs: list[GroupSpec], block_sizes: list[int], index_bits: int, seed: int,
               layout: str = "affine") -> list[GroupPlan]:
    """Layouts, hashing and the weight -> slot maps of every group."""
    plans = []
    for gid, (spec, bsz) in enumerate(zip(specs, block_sizes)):
        n, m = spec.num_values, spec.num_weights
        lay = choose_affine(n, seed, gid) if layout == "affine" else Layout()
        pos = positions(lay, 0, n, n)                       # slot position of each value
        value_of_slot = np.empty(n, dtype=np.int64)
        value_of_slot[pos] = np.arange(n, dtype=np.int64)
        if spec.hashing:
            idx, sgn = hash_words(seed, gid, np.arange(m, dtype=np.uint64), n)
            slot = pos[idx]
            sign = torch.from_numpy(sgn.astype(np.float32))
        else:
            slot, sign = pos, None
        nb = num_blocks(n, bsz)
        valid = torch.zeros(nb * bsz, dtype=torch.bool)
        valid[:n] = True
        plans.append(GroupPlan(spec, gid, index_bits, bsz, lay, torch.from_numpy(np.ascontiguousarray(slot)),
                               sign, valid.view(nb, bsz), value_of_slot))
    return plans
