"""Decoding `.mrc` containers with torch, on CPU or CUDA (SPEC.md sections 3-5 and 10).

Bit-identical to the numpy reference `mrcformat.decoder` on every device: the Philox words come
from `torch_philox` (exact integer arithmetic in int64), a 16-bit sample u selects T[u] from the
normal16 table, and a value is `T[u] * sigma` then `+ mu`, both in float32 (the product is exact
because sigma is a bfloat16 value, so there is one rounding in total).

Two kinds of API live here:

* candidate generation, shared with the encoder (which scores all 2**index_bits candidates of
  a block): `candidate_u16`, `candidate_values`, `candidates`, `candidates_batch`. They are
  vectorised over (block, index) pairs, accept an `out=` tensor and a `chunk=` bound on the
  temporaries, and run wherever `device` says. Their signatures are stable.
* decoding: `decode_values`, `decode_group`, `iter_decode`, `decode`. A group's index array is
  moved to the device once; each chunk of blocks is generated in one batch and scattered on the
  device, with no host round trip per block or per chunk.

Memory: generating S slots needs about 17 bytes of temporaries per slot (Philox state and
scratch, 9 int64 per counter of S/8, and the 16-bit samples as int64) besides the float32 result, so a chunk
bounds the working set; the defaults are 2**17 slots on CPU (cache sized) and 2**22 on CUDA.
"""
from __future__ import annotations

import dataclasses

import math
import threading
from typing import Iterator

import numpy as np
import torch

from mrcformat import kernels
from mrcformat.container import Container, Group, Tensor
from mrcformat.decoder import UNIT_SIGMA_BITS, value_scales
from mrcformat.sampler import check_coding_parameters
from mrcformat.sampler import normal_table as _np_normal_table
from mrcformat.streams import DOMAIN_CANDIDATE, DOMAIN_HASH, SAMPLES_PER_CALL, domain_word, seed_key

from .torch_philox import philox4x32_words

__all__ = [
    "DEFAULT_CHUNK_CPU", "DEFAULT_CHUNK_CUDA", "default_chunk", "normal_table",
    "candidate_u16", "candidate_values", "candidates", "candidates_batch", "score_blocks",
    "decode_values", "decode_group", "iter_decode", "decode", "raw_to_torch",
]

DEFAULT_CHUNK_CPU = 1 << 17    # slots per batch on CPU: temporaries stay in cache
DEFAULT_CHUNK_CUDA = 1 << 22   # slots per batch on CUDA: ~70 MiB of temporaries, few launches


def _device(device) -> torch.device:
    d = torch.device("cpu" if device is None else device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def default_chunk(device) -> int:
    """Slots generated per batch when `chunk` is not given."""
    return DEFAULT_CHUNK_CPU if _device(device).type == "cpu" else DEFAULT_CHUNK_CUDA


_tables: dict[torch.device, torch.Tensor] = {}
_tables_lock = threading.Lock()


def normal_table(device=None) -> torch.Tensor:
    """The normal16 table T as a float32[65536] tensor on `device`, built once per device
    (from `mrcformat.sampler.normal_table()`, which checks its SHA-256). Do not modify it."""
    d = _device(device)
    t = _tables.get(d)
    if t is None:
        with _tables_lock:
            t = _tables.get(d)
            if t is None:
                t = torch.from_numpy(np.array(_np_normal_table(), dtype=np.float32)).to(d)
                _tables[d] = t
    return t


def _int64_vector(x, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.int64).reshape(-1)
    return torch.as_tensor(np.asarray(x, dtype=np.int64).reshape(-1), device=device)


def _pairs(blocks, indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    b = _int64_vector(blocks, device)
    k = _int64_vector(indices, device)
    if b.numel() != k.numel():
        b, k = torch.broadcast_tensors(b, k)
    return b, k


def _u16_rows(seed: int, group: int, blocks: torch.Tensor, indices: torch.Tensor, block_size: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """16-bit samples as int64 [R, block_size] (a view into a [R, 8*ceil(B/8)] buffer) for
    the (block, index) pairs of two int64 [R] tensors on one device."""
    dev = blocks.device
    rows = blocks.numel()
    calls = -(-block_size // SAMPLES_PER_CALL)
    # fresh counter buffers: philox4x32_words overwrites its inputs
    x0 = torch.arange(calls, dtype=torch.int64, device=dev).repeat(rows)
    x1 = torch.empty(rows, calls, dtype=torch.int64, device=dev)
    x1.copy_(indices[:, None])
    x2 = torch.empty(rows, calls, dtype=torch.int64, device=dev)
    x2.copy_(blocks[:, None])
    x3 = torch.full((rows * calls,), domain_word(DOMAIN_CANDIDATE, group), dtype=torch.int64, device=dev)
    words = philox4x32_words(x0, x1.view(-1), x2.view(-1), x3, seed_key(seed))
    # lane j&7 of a call: word (j&7)>>1, low half for even lanes, high half for odd ones
    if out is None or calls * SAMPLES_PER_CALL != block_size:
        buf = torch.empty(rows * calls, 4, 2, dtype=torch.int64, device=dev)
    else:
        buf = out.view(rows * calls, 4, 2)
    for w, x in enumerate(words):
        torch.bitwise_and(x, 0xFFFF, out=buf[:, w, 0])
        torch.bitwise_right_shift(x, 16, out=buf[:, w, 1])
    u = buf.view(rows, calls * SAMPLES_PER_CALL)[:, :block_size]
    if out is not None and u.data_ptr() != out.data_ptr():
        out.copy_(u)
        return out
    return u


def _rows_per_batch(block_size: int, chunk: int | None, device: torch.device) -> int:
    """Rows (candidates) per batch so that at most `chunk` slots are generated (8 per Philox call)."""
    padded = SAMPLES_PER_CALL * -(-max(1, block_size) // SAMPLES_PER_CALL)
    return max(1, (chunk or default_chunk(device)) // padded)


# torch runs an elementwise CPU op on several threads only above 32768 elements (its grain
# size). On a busy CPU those parallel regions cost far more than they give (measured: 2-20x
# slower decodes on a shared 2-core machine), so on CPU the per-slot steps after Philox run
# in pieces of at most this many elements; Philox itself works on chunk/8 <= 2**14 counters.
_CPU_PIECE = 1 << 15


def _pieces(rows: int, row_len: int, device: torch.device):
    """(r0, r1) row ranges of at most _CPU_PIECE elements on CPU; one range elsewhere."""
    step = rows if device.type != "cpu" else max(1, _CPU_PIECE // max(1, row_len))
    for r0 in range(0, rows, step):
        yield r0, min(r0 + step, rows)


def candidate_u16(seed: int, group: int, blocks, indices, block_size: int, *, device=None,
                  chunk: int | None = None) -> torch.Tensor:
    """16-bit samples of candidates: int64 tensor [R, block_size] with values in [0, 65536).

    Row r is candidate `indices[r]` of block `blocks[r]` (ints, sequences, numpy arrays or
    tensors, broadcast to a common length R). Same numbers as `mrcformat.streams.candidate_u16`
    (which returns uint16); they index `normal_table(device)` directly. `device` defaults to
    the device of `blocks` if it is a tensor, else CPU.
    """
    dev = _device(device if device is not None else (blocks.device if isinstance(blocks, torch.Tensor) else None))
    b, k = _pairs(blocks, indices, dev)
    out = torch.empty(b.numel(), block_size, dtype=torch.int64, device=dev)
    per = _rows_per_batch(block_size, chunk, dev)
    for r0 in range(0, b.numel(), per):
        r1 = min(r0 + per, b.numel())
        _u16_rows(seed, group, b[r0:r1], k[r0:r1], block_size, out=out[r0:r1])
    return out


def _f32(x) -> np.float32:
    return np.float32(x)


def _params(mu, sigma, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # 0-dim float32 tensors, so that both operations run in float32 on every device
    return (torch.tensor(_f32(mu), dtype=torch.float32, device=device),
            torch.tensor(_f32(sigma), dtype=torch.float32, device=device))


def _values_into(u: torch.Tensor, table: torch.Tensor, mu_t: torch.Tensor, sigma_t: torch.Tensor,
                 out: torch.Tensor) -> torch.Tensor:
    """out = T[u] * sigma + mu in float32 (two roundings-free steps then one rounding); u flat."""
    torch.index_select(table, 0, u, out=out)
    out.mul_(sigma_t)
    out.add_(mu_t)
    return out


def candidate_values(seed: int, group: int, blocks, indices, block_size: int, mu: float, sigma: float, *,
                     device=None, out: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """Values of candidates: float32 [R, block_size]; row r = candidate `indices[r]` of block `blocks[r]`.

    `blocks`/`indices` broadcast to a common length R. Each value is `T[u] * sigma + mu` in
    float32 (`mu`, `sigma` are converted to float32; sigma should be a bfloat16 value, as in a
    file, for the product to be exact). `out`, if given, is a float32 tensor of R*block_size
    elements on `device` (any shape, contiguous) and is filled and returned reshaped to
    [R, block_size]. `chunk` bounds the slots generated per internal batch.
    """
    dev = _device(device if device is not None else (blocks.device if isinstance(blocks, torch.Tensor) else None))
    b, k = _pairs(blocks, indices, dev)
    rows = b.numel()
    if out is None:
        out = torch.empty(rows, block_size, dtype=torch.float32, device=dev)
    else:
        if out.dtype != torch.float32 or out.numel() != rows * block_size or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 tensor of {rows * block_size} elements")
        out = out.view(rows, block_size)
    table = normal_table(dev)
    mu_t, sigma_t = _params(mu, sigma, dev)
    per = _rows_per_batch(block_size, chunk, dev)
    for r0 in range(0, rows, per):
        r1 = min(r0 + per, rows)
        u = _u16_rows(seed, group, b[r0:r1], k[r0:r1], block_size)
        for q0, q1 in _pieces(r1 - r0, block_size, dev):
            _values_into(u[q0:q1].reshape(-1), table, mu_t, sigma_t, out[r0 + q0:r0 + q1].view(-1))
    return out


def candidates(seed: int, group: int, block: int, block_size: int, mu: float, sigma: float,
               start: int = 0, count: int = 1, device=None, *, out: torch.Tensor | None = None,
               chunk: int | None = None) -> torch.Tensor:
    """Values of candidates start..start+count-1 of one block: float32 [count, block_size].

    The torch twin of `mrcformat.coder.candidates` (same arguments first, same bits).
    """
    dev = _device(device)
    k = torch.arange(start, start + count, dtype=torch.int64, device=dev)
    return candidate_values(seed, group, torch.full((count,), int(block), dtype=torch.int64, device=dev), k,
                            block_size, mu, sigma, device=dev, out=out, chunk=chunk)


def candidates_batch(seed: int, group: int, blocks, block_size: int, mu: float, sigma: float,
                     start: int = 0, count: int = 1, device=None, *, out: torch.Tensor | None = None,
                     chunk: int | None = None) -> torch.Tensor:
    """Candidates start..start+count-1 of every block in `blocks`: float32 [len(blocks), count, block_size].

    out[i, j] == candidates(seed, group, blocks[i], ..., start, count)[j]. For all 2**bits
    candidates of many blocks, call it on slices of candidates (start/count) or of blocks to
    bound memory (the result itself is 4 * len(blocks) * count * block_size bytes).
    """
    dev = _device(device if device is not None else (blocks.device if isinstance(blocks, torch.Tensor) else None))
    b = _int64_vector(blocks, dev)
    nb = b.numel()
    k = torch.arange(start, start + count, dtype=torch.int64, device=dev)
    bb = b[:, None].expand(nb, count).reshape(-1)
    kk = k[None, :].expand(nb, count).reshape(-1)
    res = candidate_values(seed, group, bb, kk, block_size, mu, sigma, device=dev, out=out, chunk=chunk)
    return res.view(nb, count, block_size)


def score_blocks(seed: int, group: int, blocks, block_size: int, mu: float, sigma: float, mean: torch.Tensor,
                 log_std: torch.Tensor, valid: torch.Tensor, sigma_p: float, start: int = 0, count: int = 1, *,
                 chunk: int | None = None) -> torch.Tensor:
    """Log-importance weights of candidates start..start+count-1 of every block in `blocks`, batched over
    blocks on the device of `mean`: float64 [R, count], the torch twin of `mrcformat.kernels.score_blocks`

        out[r, k - start] = sum_j valid[r, j] * (log N(x; mean[r, j], exp(log_std[r, j])^2) - log N(x; 0, sigma_p^2))

    with x the candidate's float32 values (coding parameters mu, sigma). Same values as the kernels to
    float64 rounding (the slots are summed pairwise, in a fixed order: a score does not depend on the batch). Each batch generates about `chunk` slots
    (default `default_chunk(device)`) for all rows at once: a round's blocks cost one batch of launches.
    """
    dev = mean.device
    b = _int64_vector(blocks, dev)
    rows = b.numel()
    m = mean.to(torch.float64).reshape(rows, block_size)
    ls = log_std.to(torch.float64).reshape(rows, block_size)
    v = valid.to(torch.bool).reshape(rows, block_size)
    sp = float(sigma_p)
    a = torch.where(v, torch.exp(-ls), torch.zeros_like(ls))
    cp = v.to(torch.float64) / sp
    const = ((math.log(sp) - ls) * v).sum(dim=1)
    out = torch.empty(rows, count, dtype=torch.float64, device=dev)
    if rows == 0 or count == 0:
        return out
    per = max(1, (chunk or default_chunk(dev)) // max(1, rows * block_size))   # candidates per batch
    for k0 in range(start, start + count, per):
        k1 = min(k0 + per, start + count)
        k = torch.arange(k0, k1, dtype=torch.int64, device=dev)
        x = candidate_values(seed, group, b[:, None].expand(rows, k1 - k0).reshape(-1),
                             k[None, :].expand(rows, k1 - k0).reshape(-1), block_size, mu, sigma, device=dev,
                             chunk=chunk).view(rows, k1 - k0, block_size).to(torch.float64)
        zp = x * cp[:, None, :]
        z = (x - m[:, None, :]) * a[:, None, :]
        out[:, k0 - start:k1 - start] = const[:, None] + 0.5 * _pairwise_sum(zp * zp - z * z)
    return out


def _pairwise_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in a fixed pairwise order (elementwise adds only), so that a
    candidate's score has the same bits whatever the batch it was computed in; a library
    reduction may pick its order by the tensor's shape."""
    while t.shape[-1] > 1:
        if t.shape[-1] % 2:
            t = torch.cat([t, torch.zeros_like(t[..., :1])], dim=-1)
        t = t[..., 0::2] + t[..., 1::2]
    return t[..., 0]


# ----------------------------------------------------------------------------- decoding

def _inverse_positions(layout, p0: int, p1: int, n: int, device: torch.device) -> torch.Tensor:
    """pi^-1(p) for p in [p0, p1) as int64 on device (see mrcformat.layout.inverse_positions_range).

    pi^-1(p0 + j) = (pi^-1(p0) + j * a^-1) mod n; j, a^-1 < n < 2**31 keep it exact in int64.
    """
    a_inv = pow(layout.a, -1, n) if n > 1 else 0
    i0 = ((p0 - layout.c) % n) * a_inv % n
    p = torch.arange(p1 - p0, dtype=torch.int64, device=device)
    return p.mul_(a_inv).add_(i0).remainder_(n)


BACKENDS = ("auto", "native", "torch")


def _use_native(backend: str | None, dev: torch.device) -> bool:
    """On CPU the compiled kernels decode straight into the tensor's memory (the same bits); "torch"
    forces the tensor-op decoder, which is what runs on CUDA."""
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if dev.type != "cpu" or backend == "torch":
        return False
    return kernels.backend("native" if backend == "native" else "auto") == "native"


def decode_values(seed: int, gid: int, g: Group, device=None, *, out: torch.Tensor | None = None,
                  chunk: int | None = None, backend: str | None = "auto") -> torch.Tensor:
    """The group's coded values v[0..num_values) as a float32 tensor on `device`."""
    dev = _device(device)
    if g.scales is not None:  # T[u] first (mu = 0, sigma = 1 is exact), then scale and shift (SPEC.md 4.2)
        unit = dataclasses.replace(g, mu_bits=0, sigma_bits=UNIT_SIGMA_BITS, scales=None)
        out = decode_values(seed, gid, unit, dev, out=out, chunk=chunk, backend=backend)
        sv = torch.from_numpy(value_scales(g)).to(dev)
        view = out.view(len(sv), -1)
        view.mul_(sv[:, None])                  # two separate ops: no fused multiply-add
        out.add_(torch.tensor(float(check_coding_parameters(g.mu_bits, g.sigma_bits)[0]), dtype=torch.float32,
                              device=dev))
        return out
    n, bsz = g.num_values, g.block_size
    mu, sigma = check_coding_parameters(g.mu_bits, g.sigma_bits)
    if out is None:
        out = torch.empty(n, dtype=torch.float32, device=dev)
    if _use_native(backend, dev):
        _np_normal_table()  # hash check before any work
        kernels.decode_values_into(seed, gid, g, _np_view(out, n))
        return out
    table = normal_table(dev)
    mu_t, sigma_t = _params(mu, sigma, dev)
    indices = torch.from_numpy(np.ascontiguousarray(g.indices, dtype=np.int64)).to(dev)  # once per group
    contiguous = g.layout.kind == "contiguous"
    per = _rows_per_batch(bsz, chunk, dev)
    vals = None if contiguous else torch.empty(min(per * bsz, n), dtype=torch.float32, device=dev)
    for b0 in range(0, g.num_blocks, per):
        b1 = min(b0 + per, g.num_blocks)
        blocks = torch.arange(b0, b1, dtype=torch.int64, device=dev)
        u = _u16_rows(seed, gid, blocks, indices[b0:b1], bsz)
        for q0, q1 in _pieces(b1 - b0, bsz, dev):
            p0, p1 = (b0 + q0) * bsz, min((b0 + q1) * bsz, n)  # positions >= n are padding
            uq = u[q0:q1].reshape(-1)[: p1 - p0]
            if contiguous:
                _values_into(uq, table, mu_t, sigma_t, out[p0:p1])
            else:
                v = _values_into(uq, table, mu_t, sigma_t, vals[: p1 - p0])
                out.scatter_(0, _inverse_positions(g.layout, p0, p1, n, dev), v)
    return out


def _hash_gather(seed: int, gid: int, values: torch.Tensor, t0: int, t1: int, out: torch.Tensor) -> None:
    """out[0:t1-t0] = values[index(w)] * sign(w) for weights w in [t0, t1) (SPEC.md 3.2 hashing)."""
    dev = values.device
    c0, c1 = t0 >> 1, ((t1 - 1) >> 1) + 1
    m = c1 - c0
    x0 = torch.arange(c0, c1, dtype=torch.int64, device=dev)
    x1 = torch.zeros(m, dtype=torch.int64, device=dev)
    x2 = torch.zeros(m, dtype=torch.int64, device=dev)
    x3 = torch.full((m,), domain_word(DOMAIN_HASH, gid), dtype=torch.int64, device=dev)
    w0, w1, w2, w3 = philox4x32_words(x0, x1, x2, x3, seed_key(seed))
    # weight 2c + l uses word 2l (index) and word 2l+1 (sign) of counter c
    off = t0 & 1
    r = torch.stack((w0, w2), dim=1).view(-1)[off: off + (t1 - t0)]
    s = torch.stack((w1, w3), dim=1).view(-1)[off: off + (t1 - t0)]
    index = r.mul_(values.numel()).bitwise_right_shift_(32)  # < 2**32 * 2**31: exact in int64
    sign = s.bitwise_and_(1).to(torch.float32).mul_(-2.0).add_(1.0)
    torch.index_select(values, 0, index, out=out)
    out.mul_(sign)


def _empty_f32(n: int, dev: torch.device) -> torch.Tensor:
    """An uninitialised float32 [n] tensor; on the CPU numpy's memory (it asks Linux for transparent huge
    pages on large arrays, torch's allocator does not): a fresh decode writes every page once, and 4 KiB
    page faults were a third of VGG-16's load_state_dict in a fresh process."""
    if dev.type == "cpu":
        return torch.from_numpy(np.empty(n, dtype=np.float32))
    return torch.empty(n, dtype=torch.float32, device=dev)


def _np_view(t: torch.Tensor, size: int) -> np.ndarray:
    """The numpy view of a contiguous float32 CPU tensor of `size` elements (the kernels write into it)."""
    if t.dtype != torch.float32 or t.numel() != size or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"out must be a contiguous float32 CPU tensor of {size} elements")
    return t.detach().view(-1).numpy()


def decode_group(c: Container, gid: int, device=None, *, out: torch.Tensor | None = None,
                 chunk: int | None = None, backend: str | None = "auto") -> torch.Tensor:
    """The group's weight vector (its coded tensors' elements, concatenated in header order),
    float32 [group_weights] on `device`; the same bits as `mrcformat.decoder.decode_group`.

    `chunk`: slots generated per batch (default `default_chunk(device)`); a hashing group's
    gather then runs over chunk // 4 weights per batch (a Philox call serves 2 weights, not 8 slots).
    """
    dev = _device(device)
    g = c.groups[gid]
    nw = c.group_weights(gid)
    if out is None:
        out = _empty_f32(nw, dev)
    if not g.hashing:
        return decode_values(c.seed, gid, g, dev, out=out, chunk=chunk, backend=backend)
    values = decode_values(c.seed, gid, g, dev, chunk=chunk, backend=backend)
    if _use_native(backend, dev):
        kernels.hash_gather_into(c.seed, gid, values.numpy(), _np_view(out, nw))
        return out
    step = max(1, (chunk or default_chunk(dev)) // 4)  # 2 weights per Philox call vs 8 slots: same working set
    for t0 in range(0, nw, step):
        t1 = min(t0 + step, nw)
        _hash_gather(c.seed, gid, values, t0, t1, out[t0:t1])
    return out


_RAW_TORCH = {
    "float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
}


def raw_to_torch(t: Tensor, device=None) -> torch.Tensor:
    """A raw tensor's data as a torch tensor of its dtype (bfloat16 -> torch.bfloat16, bool ->
    torch.bool), on `device`. The data is copied (raw arrays are read-only views of the file)."""
    dev = _device(device)
    arr = np.asarray(t.data)
    if t.dtype == "bfloat16":
        x = torch.from_numpy(np.array(arr, dtype="=u2").view(np.int16)).view(torch.bfloat16)
    elif t.dtype == "bool":
        x = torch.from_numpy(np.array(arr, dtype=np.uint8)) != 0
    else:
        x = torch.from_numpy(np.array(arr, dtype=arr.dtype.newbyteorder("="))).to(_RAW_TORCH[t.dtype])
    return x.reshape(t.shape).to(dev)


def iter_decode(c: Container, device=None, *, chunk: int | None = None,
                backend: str | None = "auto") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) in header order; each group is decoded once, when its first tensor
    comes, and coded tensors are views of the group's weight vector."""
    dev = _device(device)
    done: dict[int, dict[str, torch.Tensor]] = {}
    for t in c.tensors:
        if t.encoding == "raw":
            yield t.name, raw_to_torch(t, dev)
            continue
        if t.group not in done:
            done = views = flat = None  # drop the previous group before decoding the next (peak: one group)
            flat = decode_group(c, t.group, dev, chunk=chunk, backend=backend)
            views, pos = {}, 0
            for m in c.group_members(t.group):
                views[m.name] = flat[pos:pos + m.numel].view(m.shape)
                pos += m.numel
            done = {t.group: views}
        yield t.name, done[t.group][t.name]


def decode(c: Container, device=None, *, chunk: int | None = None,
           backend: str | None = "auto") -> dict[str, torch.Tensor]:
    """Every tensor of the file on `device`: coded ones float32, raw ones in their stored dtype
    (bfloat16 as torch.bfloat16, bool as torch.bool). `backend`: "auto" (the compiled kernels on CPU
    when built, tensor ops otherwise), "native" or "torch"."""
    return dict(iter_decode(c, device, chunk=chunk, backend=backend))
