"""Compiled CPU kernels for the hot loops, with the numpy reference as their fallback.

`_native` (a C extension, `_native.c`) regenerates blocks, applies the hashing trick and scores
candidates; `fallback.py` holds the same operations in numpy. Which one runs:

* `backend()` is "native" when the extension was built and imports, else "numpy";
* the environment variable `MRCFORMAT_KERNELS=numpy` forces the fallback (for comparisons, or to
  rule the kernel out when something looks wrong);
* every entry point takes `backend=` ("auto", "native" or "numpy") to choose per call.

Both give the same float32 bits when decoding (the kernels are integer Philox plus one exactly
rounded binary32 operation per value); scores agree to float64 rounding (the summation order
differs) and the native scores do not depend on the CPU or on the number of threads.

Threads: work is split over blocks (decode), weights (hashing) or (row, candidate range) pieces
(scoring) and run on a shared thread pool; the kernels release the GIL. `threads()` defaults to
the CPUs this process may use; `MRCFORMAT_THREADS=N` or `threads=` per call overrides it.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..layout import Layout
from ..sampler import float_to_f32_bits, normal_table
from . import fallback

try:  # the compiled extension is optional, like msgpack's
    from . import _native
except ImportError:  # pragma: no cover - exercised by a test that hides the module
    _native = None

__all__ = ["BACKENDS", "available", "backend", "isa", "using_isa", "threads", "decode_values_into", "hash_gather_into",
           "score_blocks"]

BACKENDS = ("auto", "native", "numpy")
_LANES = 16                 # candidates per native batch (keep pieces aligned to it)
_MIN_SLOTS_PER_THREAD = 1 << 16
_MIN_VALUES_PER_THREAD = 1 << 18
# Affine groups decode calls in the order of their first value (8 write streams that move forward through
# memory) instead of in slot order (a scattered write per value): always when n and the block size are
# multiples of 8 (the calls are then enumerated directly, faster at every size), else from this many values.
AFFINE_OUTPUT_ORDER_MIN = 1 << 16


def available() -> bool:
    """True when the compiled extension is importable."""
    return _native is not None


def backend(choice: str | None = "auto") -> str:
    """The backend a call with `backend=choice` uses: "native" or "numpy"."""
    choice = choice or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {choice!r}")
    if choice == "numpy":
        return "numpy"
    if choice == "native":
        if _native is None:
            raise RuntimeError("the compiled kernels (mrcformat.kernels._native) are not built; "
                               "reinstall with a C compiler available, or use backend='numpy'")
        return "native"
    if _native is None or os.environ.get("MRCFORMAT_KERNELS", "").lower() == "numpy":
        return "numpy"
    return "native"


def isa(choice: str | None = None) -> str | None:
    """The native code path in use ("avx2" or "generic"; None without the extension). `choice`
    ("generic", "avx2", "auto") switches it process-wide first: for tests and comparisons."""
    if _native is None:
        return None
    if choice is not None:
        _native.set_isa(choice)
    return _native.isa()


@contextlib.contextmanager
def using_isa(choice: str | None):
    """Run a block with the native code path `choice` (None: leave it as it is), then restore it."""
    before = isa()
    try:
        if choice is not None:
            isa(choice)
        yield
    finally:
        if before is not None:
            isa(before)


def threads(n: int | None = None) -> int:
    """Threads a call uses: `n`, else $MRCFORMAT_THREADS, else the CPUs available to this process."""
    if n is None:
        env = os.environ.get("MRCFORMAT_THREADS")
        if env:
            n = int(env)
        else:
            try:
                n = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                n = os.cpu_count() or 1
    return max(1, int(n))


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _run(jobs: list, nthreads: int) -> None:
    """Run the zero-argument callables `jobs`, on the shared pool when there is more than one."""
    global _pool, _pool_size
    if nthreads <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with _pool_lock:
        if _pool is None or _pool_size < nthreads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(nthreads, thread_name_prefix="mrc-kernel"), nthreads
        pool = _pool
    for f in [pool.submit(job) for job in jobs]:
        f.result()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _splits(total: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """[0, total) in at most `parts` nearly equal ranges whose inner bounds are multiples of `align`."""
    parts = max(1, min(parts, _ceil_div(total, align)))
    step = _ceil_div(_ceil_div(total, parts), align) * align
    return [(a, min(a + step, total)) for a in range(0, total, step)]


def _affine_inverse(layout: Layout, n: int) -> tuple[int, int]:
    """(a^-1 mod n, c) of the layout; (1, 0) for contiguous, whose pi^-1 is the identity."""
    if layout.kind == "contiguous" or n == 1:
        return 1, 0
    return pow(layout.a, -1, n), layout.c


def decode_values_into(seed: int, gid: int, g, out: np.ndarray, *, nthreads: int | None = None) -> np.ndarray:
    """Native decode of group `g`'s coded values v[0..num_values) into float32 `out` (SPEC.md 10, steps 1-2).

    `g` is a `mrcformat.container.Group` whose coding parameters were checked by the caller.
    """
    n, bsz = g.num_values, g.block_size
    idx = np.ascontiguousarray(g.indices, dtype=np.uint32)   # index_bits <= 32
    a_inv, c = _affine_inverse(g.layout, n)
    sigma_bits = (int(g.sigma_bits) & 0xFFFF) << 16
    mu_bits = int(g.mu_bits)
    table = normal_table()
    nb = g.num_blocks
    parts = max(1, min(threads(nthreads), (nb * bsz) // _MIN_SLOTS_PER_THREAD))
    if (a_inv, c) != (1, 0) and (n >= AFFINE_OUTPUT_ORDER_MIN or (n % 8 == 0 and bsz % 8 == 0)):
        a = g.layout.a
        jobs = [lambda i0=i0, i1=i1: _native.decode_affine(table, idx, out, seed, gid, bsz, n, mu_bits, sigma_bits,
                                                           a, a_inv, c, i0, i1)
                for i0, i1 in _splits(n, parts)]
    else:
        jobs = [lambda b0=b0, b1=b1: _native.decode_blocks(table, idx, out, seed, gid, bsz, n, mu_bits, sigma_bits,
                                                           b0, b1, a_inv, c)
                for b0, b1 in _splits(nb, parts)]
    _run(jobs, parts)
    return out


def hash_gather_into(seed: int, gid: int, values: np.ndarray, out: np.ndarray, t0: int = 0, *,
                     nthreads: int | None = None) -> np.ndarray:
    """Native hashing trick: out[i] = s(t) * values[h(t)] for weights t = t0 + i (SPEC.md 5.3)."""
    n = values.size
    m = out.size
    parts = max(1, min(threads(nthreads), m // _MIN_SLOTS_PER_THREAD))
    jobs = [lambda a=a, b=b: _native.hash_gather(values, out[a:b], seed, gid, n, t0 + a, t0 + b)
            for a, b in _splits(m, parts, align=2)]
    _run(jobs, parts)
    return out


def score_blocks(seed: int, gid: int, blocks, block_size: int, mu: float, sigma: float, mean, log_std, valid,
                 sigma_p: float, start: int = 0, count: int = 1, *, out: np.ndarray | None = None,
                 backend_choice: str | None = "auto", nthreads: int | None = None) -> np.ndarray:
    """Log-importance weights of candidates start..start+count-1 of each block in `blocks` (SPEC.md 11):

        out[r, k - start] = sum_j valid[r, j] * (log q_rj(x) - log p(x)),  x = candidate k of block blocks[r]

    with q_rj = N(mean[r, j], exp(log_std[r, j])^2), p = N(0, sigma_p^2), and candidates generated with
    coding parameters (mu, sigma) as a decoder regenerates them (the encoder passes mu = 0,
    sigma = sigma_p). mean/log_std/valid: [R, block_size]; the result is float64 [R, count].
    """
    blocks = np.ascontiguousarray(np.asarray(blocks, dtype=np.int64).reshape(-1))
    rows = blocks.size
    mean = np.ascontiguousarray(np.asarray(mean, dtype=np.float64).reshape(rows, block_size))
    log_std = np.asarray(log_std, dtype=np.float64).reshape(rows, block_size)
    v = np.asarray(valid, dtype=bool).reshape(rows, block_size)
    if out is None:
        out = np.empty((rows, count), dtype=np.float64)
    elif out.shape != (rows, count) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {(rows, count)}")
    if rows == 0 or count == 0:
        return out
    if not (0 <= start and start + count <= 1 << 32):
        raise ValueError("candidate indices must lie in [0, 2**32)")
    sp = float(sigma_p)
    const = ((math.log(sp) - log_std) * v).sum(axis=1)
    if backend(backend_choice) == "numpy":
        return fallback.score_blocks(seed, gid, blocks, block_size, mu, sigma, mean, log_std, v, sp, const,
                                     start, count, out)
    a = np.where(v, np.exp(-log_std), 0.0)
    cp = np.where(v, 1.0 / sp, 0.0)
    const = np.ascontiguousarray(const)
    table = normal_table()
    mu_bits = float_to_f32_bits(float(np.float32(mu)))
    sigma_bits = float_to_f32_bits(float(np.float32(sigma)))
    nt = threads(nthreads)
    per_thread = max(1, rows * count * block_size // nt)
    jobs = []
    if per_thread < _MIN_VALUES_PER_THREAD or nt == 1:
        ranges = [(0, rows, start, start + count)]
        nt = 1
    elif rows >= 2 * nt:
        ranges = [(r0, r1, start, start + count) for r0, r1 in _splits(rows, nt * 2)]
    else:  # few rows: split each row's candidates
        pieces = max(1, (2 * nt) // rows)
        ranges = [(r, r + 1, start + a, start + b) for r in range(rows) for a, b in _splits(count, pieces, _LANES)]
    for r0, r1, ka, kb in ranges:
        jobs.append(lambda r0=r0, r1=r1, ka=ka, kb=kb: _native.score_blocks(
            table, out, blocks, mean, a, cp, const, seed, gid, block_size, mu_bits, sigma_bits,
            rows, start, count, r0, r1, ka, kb))
    _run(jobs, nt)
    return out
