"""Decoder (SPEC.md section 10): regenerate every tensor from a container.

Two implementations of each step give the same bits: the compiled kernels of `mrcformat.kernels`
(used when built; multi-threaded) and the numpy reference below, which is the fallback and reads
side by side with the spec. `backend=` ("auto", "native", "numpy") chooses per call.

The numpy reference works in slot order, a bounded chunk of blocks at a time: Philox words, 16-bit samples,
mu + sigma * T[u], then a scatter to the values' positions (pi^-1). Without hashing the
values land directly in the output, so a decode holds the output plus one chunk buffer;
with hashing the group's coded values (<= its output size) are kept for the final gather.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from . import kernels
from .container import Container, Group
from .layout import inverse_positions_range
from .sampler import check_coding_parameters, normal_table, values_from_u16
from .streams import candidate_u16, hash_range

__all__ = ["DEFAULT_CHUNK", "apply_scales", "decode_values", "decode_group", "iter_decode", "decode", "value_scales"]

DEFAULT_CHUNK = 1 << 16  # slots (or weights) per chunk: a few MiB of temporaries, cache-friendly


UNIT_SIGMA_BITS = 0x3F80  # bfloat16 1.0


def value_scales(g: Group) -> np.ndarray:
    """float32 [count]: sigma * scale_k for a group with scales (exact: a product of two bfloat16s)."""
    return (g.scales.astype(np.uint32) << 16).view(np.float32) * np.float32(check_coding_parameters(g.mu_bits,
                                                                                                    g.sigma_bits)[1])


def apply_scales(g: Group, out: np.ndarray) -> np.ndarray:
    """v = mu + (sigma * scale_k) * T[u] from out = T[u] (a decode with mu = 0, sigma = 1): one rounding
    for the product, one for the sum (SPEC.md 4.2), in value order, block of values by block."""
    mu = check_coding_parameters(g.mu_bits, g.sigma_bits)[0]
    sv = value_scales(g)
    view = out.reshape(len(sv), -1)
    np.multiply(view, sv[:, None], out=view)
    np.add(out, mu, out=out)
    return out


def decode_values(seed: int, gid: int, g: Group, out: np.ndarray | None = None,
                  chunk: int = DEFAULT_CHUNK, *, backend: str | None = "auto") -> np.ndarray:
    """The group's coded values v[0..num_values) as float32."""
    if g.scales is not None:  # decode T[u] (mu = 0, sigma = 1 is exact), then scale and shift
        unit = dataclasses.replace(g, mu_bits=0, sigma_bits=UNIT_SIGMA_BITS, scales=None)
        return apply_scales(g, decode_values(seed, gid, unit, out, chunk, backend=backend))
    n, bsz = g.num_values, g.block_size
    mu, sigma = check_coding_parameters(g.mu_bits, g.sigma_bits)
    if out is None:
        out = np.empty(n, dtype=np.float32)
    normal_table()  # hash check before any work
    if kernels.backend(backend) == "native":
        return kernels.decode_values_into(seed, gid, g, _checked_out(out, n))
    per = max(1, chunk // bsz)
    vals = np.empty(per * bsz, dtype=np.float32)
    for b0 in range(0, g.num_blocks, per):
        b1 = min(b0 + per, g.num_blocks)
        u = candidate_u16(seed, gid, np.arange(b0, b1), g.indices[b0:b1], bsz)
        p0, p1 = b0 * bsz, min(b1 * bsz, n)  # positions >= n are padding
        v = values_from_u16(u.reshape(-1)[: p1 - p0], mu, sigma, out=vals[: p1 - p0])
        out[inverse_positions_range(g.layout, p0, p1, n)] = v
    return out


def _checked_out(out: np.ndarray, size: int) -> np.ndarray:
    """`out` as a writable C-contiguous float32 vector of `size` elements (what the kernels write into)."""
    if out.dtype != np.float32 or out.size != size or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous float32 array of {size} elements")
    return out.reshape(-1)


def decode_group(c: Container, gid: int, out: np.ndarray | None = None, chunk: int = DEFAULT_CHUNK, *,
                 backend: str | None = "auto") -> np.ndarray:
    """The group's weight vector (its coded tensors' elements, concatenated in header order)."""
    g = c.groups[gid]
    nw = c.group_weights(gid)
    if out is None:
        out = np.empty(nw, dtype=np.float32)
    if not g.hashing:
        return decode_values(c.seed, gid, g, out=out, chunk=chunk, backend=backend)
    values = decode_values(c.seed, gid, g, chunk=chunk, backend=backend)
    if kernels.backend(backend) == "native":
        return kernels.hash_gather_into(c.seed, gid, values, _checked_out(out, nw))
    for t0 in range(0, nw, chunk):
        t1 = min(t0 + chunk, nw)
        index, sign = hash_range(c.seed, gid, t0, t1, g.num_values)
        np.multiply(np.take(values, index), sign, out=out[t0:t1])
    return out


def iter_decode(c: Container, chunk: int = DEFAULT_CHUNK, *, backend: str | None = "auto"
                ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) in header order, decoding each group once, when its first tensor comes."""
    done: dict[int, dict[str, np.ndarray]] = {}
    for t in c.tensors:
        if t.encoding == "raw":
            yield t.name, t.data
            continue
        if t.group not in done:
            done = views = flat = None  # drop the previous group before decoding the next (peak: one group)
            flat = decode_group(c, t.group, chunk=chunk, backend=backend)
            views, pos = {}, 0
            for m in c.group_members(t.group):
                views[m.name] = flat[pos:pos + m.numel].reshape(m.shape)
                pos += m.numel
            done = {t.group: views}  # earlier groups are finished: drop them
        yield t.name, done[t.group][t.name]


def decode(c: Container, chunk: int = DEFAULT_CHUNK, *, backend: str | None = "auto") -> dict[str, np.ndarray]:
    """Every tensor of the file: coded ones as float32, raw ones in their stored dtype
    (bfloat16 as its uint16 bit patterns). `backend`: see `mrcformat.kernels.backend`."""
    return dict(iter_decode(c, chunk=chunk, backend=backend))
