"""Writing `.mrc` files (SPEC.md sections 6-7): canonical header, aligned sections, atomic save."""
from __future__ import annotations

import os
import struct
import zlib

import msgpack
import numpy as np

from . import limits as L
from .atomic import atomic_write_bytes
from .bitpack import pack_indices
from .container import DTYPES, MAGIC, PREAMBLE_SIZE, SAMPLER, Container
from .reader import from_bytes

__all__ = ["to_bytes", "save"]

def _align(n: int) -> int:
    return -(-n // L.ALIGNMENT) * L.ALIGNMENT


def _section_payloads(c: Container) -> tuple[list[tuple[str, bytes]], int | None, int | None, dict[int, int],
                                             dict[int, int]]:
    """Sections in file order: indices first, then scales in group order, raw tensors in tensor order,
    then the graph."""
    sections: list[tuple[str, bytes]] = []
    indices_section = graph_section = None
    raw_section: dict[int, int] = {}
    if c.groups:
        payload = b"".join(pack_indices(g.indices, g.index_bits) for g in c.groups)
        indices_section = len(sections)
        sections.append(("indices", payload))
    scales_section: dict[int, int] = {}
    for gi, g in enumerate(c.groups):
        if g.scales is not None:
            scales_section[gi] = len(sections)
            sections.append(("scales", np.ascontiguousarray(g.scales, dtype="<u2").tobytes()))
    for ti, t in enumerate(c.tensors):
        if t.encoding == "raw":
            arr = np.ascontiguousarray(t.data, dtype=DTYPES[t.dtype])
            raw_section[ti] = len(sections)
            sections.append(("raw", arr.tobytes()))
    if c.graph is not None:
        graph_section = len(sections)
        graph = bytes(c.graph)
        sections.append(("graph", zlib.compress(graph, 9) if c.graph_deflate else graph))
    return sections, indices_section, graph_section, raw_section, scales_section


def _header_object(c: Container, sections: list[tuple[str, bytes]], offsets: list[int],
                   indices_section: int | None, graph_section: int | None, raw_section: dict[int, int],
                   scales_section: dict[int, int]) -> dict:
    groups = []
    for gi, g in enumerate(c.groups):
        entry = {"mu": g.mu_bits, "sigma": g.sigma_bits, "block_size": g.block_size, "index_bits": g.index_bits,
                 "num_values": g.num_values, "layout": g.layout.to_header(), "hashing": bool(g.hashing)}
        if gi in scales_section:
            entry["scales"] = scales_section[gi]
        groups.append(entry)
    tensors = []
    for ti, t in enumerate(c.tensors):
        entry: dict = {"name": t.name, "shape": [int(d) for d in t.shape], "encoding": t.encoding}
        if t.encoding == "coded":
            entry["group"] = t.group
        else:
            entry["dtype"] = t.dtype
            entry["section"] = raw_section[ti]
        tensors.append(entry)
    secs = [{"kind": kind, "offset": off, "length": len(data), "crc32": zlib.crc32(data)}
            for (kind, data), off in zip(sections, offsets)]
    return {
        "sampler": SAMPLER, "seed": int(c.seed), "groups": groups, "tensors": tensors,
        "indices": indices_section, "graph": graph_section, "sections": secs,
        "metadata": dict(sorted(c.metadata.items())),
        **({"graph_size": len(c.graph)} if c.graph_deflate and c.graph is not None else {}),
    }


def to_bytes(c: Container) -> bytes:
    """Serialise; the result is checked by the strict reader before it is returned."""
    sections, isec, gsec, rsec, ssec = _section_payloads(c)
    offsets = [0] * len(sections)
    for _ in range(8):  # offsets change the header's length, which moves the offsets: iterate to a fixpoint
        header = msgpack.packb(_header_object(c, sections, offsets, isec, gsec, rsec, ssec), use_bin_type=True)
        pos, new = PREAMBLE_SIZE + len(header), []
        for _, data in sections:
            pos = _align(pos)
            new.append(pos)
            pos += len(data)
        if new == offsets:
            break
        offsets = new
    else:  # pragma: no cover - offsets only grow, so this converges in a few steps
        raise RuntimeError("section offsets did not converge")
    out = bytearray(MAGIC)
    out += struct.pack("<HHIII", c.version[0], c.version[1], len(header), zlib.crc32(header), 0)
    out += header
    for off, (_, data) in zip(offsets, sections):
        out += b"\0" * (off - len(out))
        out += data
    blob = bytes(out)
    from_bytes(blob, max_decoded_bytes=None)  # never write a file our own reader would reject
    return blob


def save(c: Container, path: str | os.PathLike) -> int:
    """Atomically write `c` to `path` (temporary file in the same folder, fsync, rename).

    A crash leaves either the old file or the new one, never a partial file. Returns the size.
    """
    return atomic_write_bytes(path, to_bytes(c))
