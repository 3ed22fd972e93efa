"""Rate-distortion allocation for post-training coding: reverse water-filling on a diagonal importance.

For a pretrained weight w with importance h (expected output distortion h * error^2), the posterior
q = N(m, s^2) against the group's coding distribution p = N(mu, sigma_p^2) minimises

    h * ((m - w)^2 + s^2)  +  lambda * KL(q || p)

in closed form for each Lagrange multiplier lambda:

    s^2 = lambda / (2 h + lambda / sigma_p^2),      m = mu + (1 - s^2 / sigma_p^2) (w - mu)

so important weights get a narrow q near their value (many nats), unimportant ones q -> p (no nats,
the weight falls back to the coding distribution's mean). sigma_p is one per row of the tensor (the
format's group scales, SPEC.md 4.2: pretrained CNNs with folded batch norm have rows whose scales
differ 100x, which one Gaussian per tensor codes badly), each the KL-optimal prior of its row's q's,
sigma_p^2 = mean((m - mu)^2 + s^2), widened to reach the row's largest |m - mu| (a short fixed-point
iteration, then rounded to the bfloat16 the file stores). lambda is found by bisection so that the total KL meets the budget; the
blocks of each group are then sized to carry about `index_bits` bits of KL each, and each group's
lambda is re-solved so that its KL equals exactly what its blocks carry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrcformat import limits as L
from mrcformat.bitpack import packed_length
from mrcformat.layout import num_blocks

__all__ = ["GroupAllocation", "allocate", "equalise_blocks", "group_posterior", "solve_group"]

LN2 = math.log(2.0)


@dataclass
class GroupAllocation:
    mu: np.float32           # coding mean (float32 as stored)
    sigma_p: np.ndarray      # coding scale per row (float32 values of bfloat16s, as the decoder computes them)
    mean: np.ndarray         # q means, float64, the tensor's flat C order
    std: np.ndarray          # q standard deviations, float64
    kl: float                # total KL(q || p) in nats
    num_blocks: int = 0
    block_size: int = 0
    lam: float = 0.0

    @property
    def rows(self) -> int:
        return len(self.sigma_p)

    def value_sigma(self) -> np.ndarray:
        """sigma_p of every value (float64, flat order)."""
        return np.repeat(self.sigma_p.astype(np.float64), self.mean.size // self.rows)


def _bf16(x) -> np.ndarray:
    """Round positive values to bfloat16 (nearest, ties to even; as `float_to_bf16_bits`), as float32."""
    x = np.clip(np.atleast_1d(np.asarray(x, dtype=np.float64)), 2.0 ** -64, 2.0 ** 64).astype(np.float32)
    b = x.view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def group_posterior(w: np.ndarray, h: np.ndarray, mu: float, sp, lam: float, shrink: bool = True):
    """(m, s, kl_total) for one group at multiplier `lam`; `sp` is the prior scale of every value
    (scalar or an array like w). shrink=False keeps q centred on w (m = w; s as above)."""
    sp2 = np.square(sp)
    denom = 2.0 * h * sp2 + lam
    s2 = lam * sp2 / denom
    r = 2.0 * h * sp2 / denom if shrink else 1.0
    d = r * (w - mu)
    s2 = np.maximum(s2, sp2 * 1e-30)
    kl = 0.5 * np.log(sp2 / s2) + (s2 + d * d) / (2.0 * sp2) - 0.5
    return mu + d, np.sqrt(s2), float(np.sum(np.maximum(kl, 0.0)))


# q's means must lie where p's candidates reach: the normal16 table spans +-4.3 sigma, but a block's K
# candidates rarely put a slot beyond ~3 sigma, so an outlier weight forces a wider p (which costs KL,
# and the allocation sees that cost)
REACH = 3.0


def _prior_scales(w: np.ndarray, h: np.ndarray, mu: float, lam: float, rows: int, shrink: bool,
                  iters: int = 8) -> np.ndarray:
    """KL-optimal prior scale of each row (mean of (m - mu)^2 + s^2 over the row, at least its largest
    |m - mu| / REACH), by fixed-point iteration; rounded to bfloat16."""
    wr, hr = (w - mu).reshape(rows, -1), h.reshape(rows, -1)
    sp = np.sqrt(np.maximum(np.mean(wr * wr, axis=1), 1e-30))
    for _ in range(iters):
        m, s, _ = group_posterior(wr, hr, 0.0, sp[:, None], lam, shrink)
        new = np.sqrt(np.maximum(np.mean(m * m + s * s, axis=1), 1e-30))
        new = np.maximum(new, np.max(np.abs(m), axis=1) / REACH)
        done = np.all(np.abs(new - sp) <= 1e-3 * sp)  # far below bfloat16's 2^-8 resolution
        sp = new
        if done:
            break
    return _bf16(sp)


def solve_group(w: np.ndarray, h: np.ndarray, mu: float, lam: float, rows: int = 1,
                shrink: bool = True) -> GroupAllocation:
    sp = _prior_scales(w, h, mu, lam, rows, shrink)
    m, s, kl = group_posterior(w, h, mu, np.repeat(sp.astype(np.float64), w.size // rows), lam, shrink)
    return GroupAllocation(np.float32(mu), sp, m, s, kl, lam=lam)


def _bisect(f, target: float, lo: float = 1e-30, hi: float = 1e30, iters: int = 100, rtol: float = 1e-5) -> float:
    """lambda with f(lambda) = target (to `rtol`) for f decreasing in lambda: regula falsi (Illinois) on
    log f against log lambda, which is nearly linear, so a handful of evaluations suffice."""
    def g(t: float) -> float:
        v = f(math.exp(t))
        return (math.log(v) if v > 0 else -745.0) - math.log(target)

    a, b = math.log(lo), math.log(hi)
    ga, gb = g(a), g(b)
    if ga <= 0:
        return lo
    if gb >= 0:
        return hi
    side = 0
    for _ in range(iters):
        t = (a * gb - b * ga) / (gb - ga)
        if not a < t < b:
            t = 0.5 * (a + b)
        gt = g(t)
        if abs(gt) <= rtol or b - a < 1e-12:
            return math.exp(t)
        if gt > 0:  # f too large: lambda must grow
            a, ga = t, gt
            if side == 1:
                gb *= 0.5
            side = 1
        else:
            b, gb = t, gt
            if side == -1:
                ga *= 0.5
            side = -1
    return math.exp(t)


def allocate(weights: list[np.ndarray], importance: list[np.ndarray], payload_bytes: int, index_bits: int,
             *, mus: list[float] | None = None, rows: list[int] | None = None,
             kl_per_block: float = 1.0, lam_hint: float | None = None, shrink: bool = True) -> list[GroupAllocation]:
    """Posteriors and block counts of every group (one per tensor) whose packed indices fit
    `payload_bytes` (and use all but less than one block of each group's byte rounding of it).

    kl_per_block: KL each block carries, as a fraction of its index width (1.0: index_bits * ln 2).
    rows: prior scales per group (each must divide the group's size; 1: one scale for the group).
    shrink: q's means as the closed form says (True), or kept at the weights (False: see compress_onnx).
    """
    ws = [np.asarray(w, dtype=np.float64).reshape(-1) for w in weights]
    hs = [np.maximum(np.asarray(h, dtype=np.float64).reshape(-1), 0.0) for h in importance]
    mus = [float(np.float32(m)) for m in (mus or [0.0] * len(ws))]
    rows = list(rows or [1] * len(ws))
    ns = [w.size for w in ws]
    min_blocks = [num_blocks(n, L.MAX_BLOCK_SIZE) for n in ns]
    if sum(packed_length(b, index_bits) for b in min_blocks) > payload_bytes:
        raise ValueError(f"a payload of {payload_bytes} bytes is below the minimum for these tensors "
                         f"({sum(packed_length(b, index_bits) for b in min_blocks)} bytes at {index_bits}-bit "
                         f"blocks of at most {L.MAX_BLOCK_SIZE} weights)")
    total_blocks = (8 * payload_bytes) // index_bits
    per_block = index_bits * LN2 * kl_per_block
    target = total_blocks * per_block

    def total_kl(lam: float) -> float:
        return sum(solve_group(w, h, mu, lam, r, shrink).kl for w, h, mu, r in zip(ws, hs, mus, rows))

    if lam_hint is None:  # the multiplier's natural scale: 2 h var(w), where a weight's rate is about 1/2 nat
        lam_hint = 2.0 * float(np.median(np.concatenate(hs))) * float(np.mean(np.concatenate(ws) ** 2)) or 1.0
    lam = _bisect(total_kl, target, *_bracket(lam_hint), rtol=1e-3)  # it only decides the split of the blocks
    sol = [solve_group(w, h, mu, lam, r, shrink) for w, h, mu, r in zip(ws, hs, mus, rows)]
    # blocks in proportion to each group's KL, within [min_blocks, n], then fitted to the bytes by moving
    # block sizes (not block counts) one step at a time: only a block size change alters the bytes
    share = np.array([g.kl for g in sol]) / per_block
    bsz = [_bsz(n, int(b)) for n, b in zip(ns, np.clip(np.floor(share), min_blocks, ns))]
    size = [packed_length(num_blocks(n, z), index_bits) for n, z in zip(ns, bsz)]
    used = sum(size)

    def step(g: int, grow: bool) -> tuple[int, int]:
        """The next block size of group g with a different block count (grow: fewer, larger blocks)."""
        n, z = ns[g], bsz[g]
        now = num_blocks(n, z)
        if grow:
            z = max(z + 1, -(-n // max(1, now - 1)))   # the smallest size with fewer blocks
            z = min(z, L.MAX_BLOCK_SIZE, n)
        else:
            z = max(1, -(-n // (now + 1)))             # the largest size with more blocks
            while z > 1 and num_blocks(n, z) <= now:
                z -= 1
        return z, packed_length(num_blocks(n, z), index_bits)

    while used > payload_bytes:  # over (the min_blocks floor, rounding): take from the richest
        cands = [g for g in range(len(ns)) if bsz[g] < min(L.MAX_BLOCK_SIZE, ns[g])]
        g = max(cands, key=lambda g: num_blocks(ns[g], bsz[g]) - share[g])
        z, b = step(g, grow=True)
        used += b - size[g]
        bsz[g], size[g] = z, b
    while True:  # give blocks to the groups furthest below their share while the bytes allow
        for g in sorted(range(len(ns)), key=lambda g: num_blocks(ns[g], bsz[g]) - share[g]):
            if bsz[g] == 1:
                continue
            z, b = step(g, grow=False)
            if used + b - size[g] <= payload_bytes:
                used += b - size[g]
                bsz[g], size[g] = z, b
                break
        else:
            break
    nb = [num_blocks(n, z) for n, z in zip(ns, bsz)]
    out = []
    for w, h, mu, b, n, r in zip(ws, hs, mus, nb, ns, rows):
        bsz = _bsz(n, int(b))
        real = num_blocks(n, bsz)
        g_target = real * per_block

        def kl_of(x, w=w, h=h, mu=mu, r=r):
            return solve_group(w, h, mu, x, r, shrink).kl

        lam_g = _bisect(kl_of, g_target, lam * 1e-4, lam * 1e4, rtol=1e-3)
        g = solve_group(w, h, mu, lam_g, r, shrink)
        if abs(g.kl - g_target) > 2e-3 * g_target:
            # outside the range near the global multiplier: a group given far more (or fewer) blocks than
            # its share, e.g. the bytes left over put on a small group up to one weight per block
            lam_g = _bisect(kl_of, g_target, rtol=1e-3)
            g = solve_group(w, h, mu, lam_g, r, shrink)
        g.num_blocks, g.block_size = real, bsz
        out.append(g)
    return out


def _bracket(lam: float | None) -> tuple[float, float]:
    """A bisection range around a previous multiplier (a group's own is near the global one)."""
    return (1e-30, 1e30) if lam is None or not math.isfinite(lam) or lam <= 0 else (lam * 1e-6, lam * 1e6)


def _bsz(n: int, blocks: int) -> int:
    return min(L.MAX_BLOCK_SIZE, max(1, -(-n // max(1, blocks))))


def equalise_blocks(a: GroupAllocation, w: np.ndarray, h: np.ndarray, block_of_value: np.ndarray, capacity: float,
                    shrink: bool = False, iters: int = 60) -> np.ndarray:
    """Give every block exactly `capacity` nats of KL: one multiplier per block (vectorised bisection on
    log lambda), the prior scales kept. A block's K = e^capacity candidates follow q well only when its
    KL is about log K; with one multiplier per group, blocks drawn across a tensor whose weights differ in
    importance carry anywhere from 0.75x to 1.3x of it. Updates a.mean, a.std, a.kl in place and returns
    the KL of each block before (nats)."""
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    sp = a.value_sigma()
    nb = int(block_of_value.max()) + 1

    def per_block(lam_v):
        m, s, _ = group_posterior(w, h, float(a.mu), sp, lam_v, shrink)
        kl = 0.5 * np.log(sp * sp / (s * s)) + (s * s + (m - float(a.mu)) ** 2) / (2 * sp * sp) - 0.5
        return np.bincount(block_of_value, weights=np.maximum(kl, 0.0), minlength=nb), m, s

    before, _, _ = per_block(np.full(w.size, a.lam))
    lo = np.full(nb, math.log(a.lam) - 30.0)
    hi = np.full(nb, math.log(a.lam) + 30.0)
    for _ in range(iters):  # KL decreases as lambda grows
        mid = 0.5 * (lo + hi)
        kl, _, _ = per_block(np.exp(mid)[block_of_value])
        over = kl > capacity
        lo = np.where(over, mid, lo)
        hi = np.where(over, hi, mid)
    kl, m, s = per_block(np.exp(0.5 * (lo + hi))[block_of_value])
    a.mean, a.std, a.kl = m, s, float(kl.sum())
    return before
