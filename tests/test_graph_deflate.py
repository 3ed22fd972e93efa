"""SPEC.md 7.3/7.5 (format 1.1): a zlib-compressed graph section, exact and bounded."""
from __future__ import annotations

import struct
import zlib

import msgpack
import numpy as np
import pytest

import mrcformat as m
from mrcformat.errors import FieldValueError, GraphError, LimitError, UnknownFieldError

pytest.importorskip("onnx")
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spec"))
from make_vectors import stubs_container  # noqa: E402


def _deflated():
    c = stubs_container(np.random.default_rng(9))
    c.graph_deflate = True
    return c


def _edit(data: bytes, edit_header=None, section: bytes | None = None) -> bytes:
    """Rewrite the header (CRC fixed, sections moved as the writer would) and/or the graph section."""
    hlen = struct.unpack_from("<I", data, 12)[0]
    h = msgpack.unpackb(data[24:24 + hlen], raw=False)
    if edit_header:
        edit_header(h)
    secs = h["sections"]
    payloads = [data[s["offset"]:s["offset"] + s["length"]] for s in secs]
    if section is not None:
        payloads[h["graph"]] = section
    for _ in range(4):
        raw = msgpack.packb(h, use_bin_type=True)
        pos = 24 + len(raw)
        for s, p in zip(secs, payloads):
            pos = -(-pos // 64) * 64
            s["offset"], s["length"], s["crc32"] = pos, len(p), zlib.crc32(p)
            pos += len(p)
    raw = msgpack.packb(h, use_bin_type=True)
    out = bytearray(data[:12] + struct.pack("<II", len(raw), zlib.crc32(raw)) + data[20:24] + raw)
    for s, p in zip(secs, payloads):
        out += b"\0" * (s["offset"] - len(out)) + p
    return bytes(out)


def test_deflated_graph_round_trips_and_is_smaller():
    plain = m.to_bytes(stubs_container(np.random.default_rng(9)))
    data = m.to_bytes(_deflated())
    assert len(data) < len(plain)
    c = m.from_bytes(data)
    assert c.graph_deflate and c.graph == m.from_bytes(plain).graph
    assert m.to_bytes(c) == data  # the reader's container writes the same bytes


def test_graph_size_needs_minor_1():
    data = m.to_bytes(_deflated())
    with pytest.raises(UnknownFieldError):
        m.from_bytes(data[:10] + struct.pack("<H", 0) + data[12:])


@pytest.mark.parametrize("section, match", [
    (zlib.compress(b"\0" * 10_000_000), "inflates to more than"),      # a bomb: stops at graph_size + 1
    (zlib.compress(b"x" * 10), "inflates to 10 bytes"),
    (b"not zlib at all", "not a valid zlib stream"),
])
def test_bad_streams_are_graph_errors(section, match):
    data = _edit(m.to_bytes(_deflated()), section=section)
    with pytest.raises(GraphError, match=match):
        m.from_bytes(data)


def test_trailing_and_truncated_streams():
    good = zlib.compress(m.from_bytes(m.to_bytes(_deflated())).graph, 9)
    with pytest.raises(GraphError, match="after the end"):
        m.from_bytes(_edit(m.to_bytes(_deflated()), section=good + b"\0"))
    with pytest.raises(GraphError):
        m.from_bytes(_edit(m.to_bytes(_deflated()), section=good[:-3]))


def test_graph_size_is_bounded_by_the_reader_limit():
    data = m.to_bytes(_deflated())
    with pytest.raises(LimitError, match="graph_size"):
        m.from_bytes(data, max_decoded_bytes=200)  # the tensors (132 bytes) fit, the graph (681) does not


def test_graph_size_without_graph():
    from mrcformat.container import Container

    c = Container(seed=1, version=(1, 1))
    data = m.to_bytes(c)
    with pytest.raises(FieldValueError, match="no graph"):
        m.from_bytes(_edit(data, edit_header=lambda h: h.__setitem__("graph_size", 5)))
