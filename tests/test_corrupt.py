"""Corrupt-file matrix: each case breaks exactly one rule of a valid file and checks that the
strict reader raises that rule's error class at a sensible place, and that the validator
reports the same problem (first, and as the only one unless the case says otherwise).

Files are built by `rebuild(header, sections)`: it re-encodes a (modified) header dict and lays
the section bytes out again with correct offsets, lengths and CRCs, so only the intended rule
is broken. Byte-level cases (magic, preamble, CRC, padding, truncation) edit a valid file.
"""
from __future__ import annotations

import copy
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import numpy as np
import pytest
from spec_helpers import DELETE, both, setp
from strategies import identity_graph, make_group

from mrcformat import errors as E
from mrcformat import from_bytes, to_bytes, validate_bytes, validate_file
from mrcformat.container import MAGIC, PREAMBLE_SIZE, Container, Tensor
from mrcformat.layout import Layout
from mrcformat.limits import ALIGNMENT, HEADER_MAX
from mrcformat.validate import ReadError

# ------------------------------------------------------------------------------------------ helpers


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def preamble(header: bytes, version=(1, 0), reserved: int = 0, hlen: int | None = None, crc: int | None = None) -> bytes:
    return MAGIC + struct.pack("<HHIII", version[0], version[1], len(header) if hlen is None else hlen,
                               zlib.crc32(header) if crc is None else crc, reserved)


def split(data: bytes) -> tuple[dict, list[bytes]]:
    """A valid file -> (header dict, section payloads in section-table order)."""
    hlen = struct.unpack_from("<I", data, 12)[0]
    h = msgpack.unpackb(data[PREAMBLE_SIZE:PREAMBLE_SIZE + hlen], raw=False)
    return h, [data[s["offset"]:s["offset"] + s["length"]] for s in h["sections"]]


def header_of(data: bytes) -> dict:
    """Lenient look at a (possibly invalid) file's header, to compute expected offsets."""
    hlen = struct.unpack_from("<I", data, 12)[0]
    return msgpack.unpackb(data[PREAMBLE_SIZE:PREAMBLE_SIZE + hlen], raw=False, strict_map_key=False)


def rebuild(header: dict, sections: list[bytes], *, version=(1, 0), reserved: int = 0,
            header_bytes: bytes | None = None, place: Callable[[list[int]], list[int]] | None = None,
            fix: bool = True, trailing: bytes = b"", encode: Callable[[dict], bytes] | None = None) -> bytes:
    """Lay out a file from a header dict and section payloads.

    With `fix`, every dict entry of header["sections"] gets the offset, length and CRC-32 of its
    payload (iterated to a fixpoint, since offsets change the header's length). `place` may move
    the offsets (to break the layout rules); `encode` replaces msgpack.packb (to write what packb
    cannot), `header_bytes` replaces the encoded header verbatim (offsets are then left alone).
    Sections are written last-to-first, so where they overlap the earlier section's bytes win
    (and the header's bytes win over any section).
    """
    h = copy.deepcopy(header)
    for _ in range(16):
        if header_bytes is not None:
            hb = header_bytes
        else:
            hb = encode(h) if encode else msgpack.packb(h, use_bin_type=True)
        pos, offs = PREAMBLE_SIZE + len(hb), []
        for s in sections:
            pos = _align(pos)
            offs.append(pos)
            pos += len(s)
        if place is not None:
            offs = place(offs)
        if header_bytes is not None or not fix:
            break
        changed = False
        entries = h.get("sections") if isinstance(h.get("sections"), list) else []
        for entry, off, s in zip(entries, offs, sections):
            if isinstance(entry, dict):
                want = {"offset": off, "length": len(s), "crc32": zlib.crc32(s)}
                if any(entry.get(k) != v for k, v in want.items()):
                    entry.update(want)
                    changed = True
        if not changed:
            break
    else:  # pragma: no cover
        raise RuntimeError("layout did not converge")
    end = max([PREAMBLE_SIZE + len(hb)] + [o + len(s) for o, s in zip(offs, sections)])
    out = bytearray(end)
    out[:PREAMBLE_SIZE] = preamble(hb, version, reserved)
    out[PREAMBLE_SIZE:PREAMBLE_SIZE + len(hb)] = hb
    hend = PREAMBLE_SIZE + len(hb)
    for off, s in reversed(list(zip(offs, sections))):
        start = max(off, hend)  # a section placed over the header must not clobber it
        out[start:off + len(s)] = s[start - off:]
    return bytes(out) + trailing


def pack_map(pairs: list[tuple]) -> bytes:
    """msgpack map from key/value pairs, duplicates allowed (msgpack.packb cannot make those)."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True) for k, v in pairs)


def base_container() -> Container:
    """Two groups (plain contiguous; hashing affine), float32 and bool raw tensors, a graph, metadata.

    Sections: 0 indices (5 bytes), 1 raw 'b' (12 bytes), 2 raw 'm' (4 bytes), 3 graph.
    """
    rng = np.random.default_rng(7)
    g0 = make_group(10, block_size=4, index_bits=5, rng=rng)  # 3 blocks x 5 bits: 15 bits in 2 bytes
    g1 = make_group(8, block_size=3, index_bits=7, rng=rng, layout=Layout("affine", 3, 1), hashing=True,
                    mu=0.5, sigma=0.25)
    g0.indices[-1] &= 0b1111  # keep the test below meaningful: bit 7 of byte 1 is an unused bit
    tensors = [
        Tensor("w0", (2, 5), "coded", group=0),
        Tensor("w1", (4, 5), "coded", group=1),
        Tensor("b", (3,), "raw", dtype="float32", data=np.arange(3, dtype=np.float32)),
        Tensor("m", (2, 2), "raw", dtype="bool", data=np.array([[1, 0], [0, 1]], dtype=np.uint8)),
    ]
    return Container(seed=1234, groups=[g0, g1], tensors=tensors, graph=identity_graph(tensors[:3]),
                     metadata={"k": "v", "author": "test"})


BASE = to_bytes(base_container())
BASE_H, BASE_S = split(BASE)
OFF = [s["offset"] for s in BASE_H["sections"]]  # section offsets of the valid file
HLEN = struct.unpack_from("<I", BASE, 12)[0]


def with_bytes(data: bytes, pos: int, value: bytes) -> bytes:
    return data[:pos] + value + data[pos + len(value):]


def set_preamble(**kw) -> bytes:
    major, minor, hlen, crc, reserved = struct.unpack_from("<HHIII", BASE, 8)
    vals = {"major": major, "minor": minor, "hlen": hlen, "crc": crc, "reserved": reserved} | kw
    return MAGIC + struct.pack("<HHIII", vals["major"], vals["minor"], vals["hlen"], vals["crc"], vals["reserved"]) + BASE[24:]


def header_case(mutate: Callable[[dict, list[bytes]], object], **kw) -> Callable[[], bytes]:
    """A file whose header (and/or section payloads) `mutate` edits in place; then laid out again."""
    def build() -> bytes:
        h, secs = copy.deepcopy(BASE_H), list(BASE_S)
        mutate(h, secs)
        return rebuild(h, secs, **kw)
    return build


def graph_case(graph: bytes) -> Callable[[], bytes]:
    def mutate(h, secs):
        secs[3] = graph
    return header_case(mutate)


def onnx_model(nodes, initializers=()) -> bytes:
    from onnx import TensorProto, helper

    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for n in nodes for o in n.output]
    g = helper.make_graph(nodes, "g", [], outs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def external_data_graph() -> bytes:
    from onnx import TensorProto, helper

    t = helper.make_tensor("ext", TensorProto.FLOAT, [2], [0.0, 0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    return onnx_model([helper.make_node("Add", ["w0", "ext"], ["y"])], [t])


def duplicate_initializer_graph() -> bytes:
    from onnx import TensorProto, helper

    t = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0, 1.0, 2.0])
    return onnx_model([helper.make_node("Identity", ["b"], ["y"])], [t])


def undefined_input_graph() -> bytes:
    from onnx import helper

    return onnx_model([helper.make_node("Identity", ["w0"], ["y"]), helper.make_node("Add", ["y", "nowhere"], ["z"])])


def duplicate_key_header() -> bytes:
    pairs = list(BASE_H.items())
    return pack_map(pairs + [("seed", BASE_H["seed"])])


def nested_duplicate_key_header() -> bytes:
    h = copy.deepcopy(BASE_H)
    h["metadata"] = {}
    raw = msgpack.packb(h, use_bin_type=True)
    empty = msgpack.packb("metadata") + b"\x80"
    assert raw.count(empty) == 1
    return raw.replace(empty, msgpack.packb("metadata") + pack_map([("k", "a"), ("k", "b")]))


_set, _do = setp, both  # header edits shared with the vector builder (spec/make_vectors.py)


def _secs(fn):
    def mutate(h, secs):
        secs[:] = fn(secs)
    return mutate


def _add_unreferenced_section(h, secs):
    h["sections"].append({"kind": "raw", "offset": 0, "length": 0, "crc32": 0})
    secs.append(b"\x01\x02")


def _no_sections_but_indices(h, secs):
    h["sections"], h["graph"] = [], None
    h["tensors"] = [t for t in h["tensors"] if t["encoding"] == "coded"]
    secs.clear()


def _swap_first_two(offs):
    len0, len1 = len(BASE_S[0]), len(BASE_S[1])
    first = offs[0]
    return [_align(first + len1), first] + offs[2:] if _align(first + len1) + len0 <= offs[2] else offs


# ------------------------------------------------------------------------------------------ the matrix


@dataclass
class Case:
    id: str
    build: Callable[[], bytes]
    error: type
    where: object                      # expected `where`, or a function of the built file -> expected where
    single: bool = True                # the validator reports exactly this one problem


def sec_off(i: int, plus: int = 0):
    return lambda data: header_of(data)["sections"][i]["offset"] + plus


CASES = [
    # --- preamble
    Case("bad-magic", lambda: b"\x89MRX" + BASE[4:], E.BadMagicError, 0),
    Case("not-an-mrc-file", lambda: b"PK\x03\x04" + b"\0" * 60, E.BadMagicError, 0),
    Case("major-2", lambda: set_preamble(major=2), E.UnsupportedVersionError, 8),
    Case("major-0", lambda: set_preamble(major=0), E.UnsupportedVersionError, 8),
    Case("reserved-nonzero", lambda: set_preamble(reserved=1), E.ReservedError, 20),
    Case("empty-file", lambda: b"", E.TruncatedError, 0),
    Case("truncated-in-magic", lambda: BASE[:5], E.TruncatedError, 5),
    Case("truncated-in-preamble", lambda: BASE[:12], E.TruncatedError, 12),
    Case("header-length-0", lambda: set_preamble(hlen=0), E.HeaderSizeError, 12),
    Case("header-length-beyond-file", lambda: set_preamble(hlen=len(BASE)), E.HeaderSizeError, 12),
    Case("header-length-over-cap", lambda: set_preamble(hlen=HEADER_MAX + 1), E.HeaderSizeError, 12),
    Case("truncated-in-header", lambda: BASE[:PREAMBLE_SIZE + HLEN // 2], E.HeaderSizeError, 12),
    Case("header-crc-wrong", lambda: set_preamble(crc=zlib.crc32(BASE[24:24 + HLEN]) ^ 1), E.ChecksumError, 16),
    # --- header encoding
    Case("header-not-msgpack", header_case(lambda h, s: None, header_bytes=b"\xc1"), E.HeaderDecodeError, 24),
    Case("header-not-a-map", header_case(lambda h, s: None, header_bytes=msgpack.packb([1, 2])), E.HeaderDecodeError, 24),
    Case("header-trailing-garbage",
         header_case(lambda h, s: None, header_bytes=msgpack.packb(BASE_H, use_bin_type=True) + b"\xc0"),
         E.HeaderDecodeError, 24),
    Case("header-truncated-msgpack",
         header_case(lambda h, s: None, header_bytes=msgpack.packb(BASE_H, use_bin_type=True)[:-3]),
         E.HeaderDecodeError, 24),
    Case("duplicate-map-key", lambda: rebuild(BASE_H, BASE_S, header_bytes=duplicate_key_header()),
         E.HeaderDecodeError, 24),
    Case("duplicate-nested-map-key", lambda: rebuild(BASE_H, BASE_S, header_bytes=nested_duplicate_key_header()),
         E.HeaderDecodeError, 24),
    Case("msgpack-ext-type", header_case(_set("metadata.k", msgpack.ExtType(5, b"x"))), E.HeaderDecodeError, 24),
    Case("msgpack-bin-value", header_case(_set("sampler", b"normal16")), E.HeaderDecodeError, 24),
    Case("non-string-map-key", header_case(_set("metadata", {7: "v"})), E.HeaderDecodeError, 24),
    # --- section layout (all CRCs and lengths right)
    Case("overlapping-sections", header_case(lambda h, s: None, place=lambda o: [o[0], o[0] + 1] + o[2:]),
         E.SectionLayoutError, "sections[1].offset"),
    Case("out-of-order-sections", header_case(lambda h, s: None, place=_swap_first_two),
         E.SectionLayoutError, "sections[0].offset"),
    Case("gap-between-sections", header_case(lambda h, s: None, place=lambda o: o[:2] + [x + 64 for x in o[2:]]),
         E.SectionLayoutError, "sections[2].offset"),
    Case("unaligned-section", header_case(lambda h, s: None, place=lambda o: o[:1] + [x + 8 for x in o[1:]]),
         E.SectionLayoutError, "sections[1].offset"),
    Case("section-overlaps-header", header_case(lambda h, s: None, place=lambda o: [o[0] - 64] + o[1:]),
         E.SectionLayoutError, "sections[0].offset"),
    Case("nonzero-alignment-padding", lambda: with_bytes(BASE, OFF[0] + len(BASE_S[0]) + 3, b"\x01"),
         E.PaddingError, OFF[0] + len(BASE_S[0]) + 3),
    Case("trailing-bytes", lambda: BASE + b"\0", E.TrailingBytesError, len(BASE)),
    Case("trailing-padding", lambda: BASE + b"\0" * (64 - len(BASE) % 64), E.TrailingBytesError, len(BASE)),
    Case("truncated-in-indices", lambda: BASE[:OFF[0] + 2], E.TruncatedError, OFF[0]),
    Case("truncated-in-raw", lambda: BASE[:OFF[1] + 5], E.TruncatedError, OFF[1]),
    Case("truncated-in-graph", lambda: BASE[:OFF[3] + len(BASE_S[3]) // 2], E.TruncatedError, OFF[3]),
    Case("truncated-in-padding", lambda: BASE[:OFF[1] - 1], E.TruncatedError, OFF[1]),
    Case("section-crc-wrong", lambda: with_bytes(BASE, OFF[1] + 4, bytes([BASE[OFF[1] + 4] ^ 0x40])),
         E.ChecksumError, OFF[1]),
    Case("section-crc-field-wrong", header_case(_set("sections.2.crc32", 0), fix=False), E.ChecksumError, OFF[2]),
    Case("section-beyond-file", header_case(_set("sections.3.length", 10**6), fix=False), E.TruncatedError, OFF[3]),
    Case("section-kind-unknown", header_case(_set("sections.3.kind", "weights")),
         E.FieldValueError, "sections[3].kind"),
    # --- shapes and limits
    Case("negative-dim", header_case(_set("tensors.0.shape", [-1, 5])), E.ShapeError, "tensors[0].shape[0]"),
    Case("huge-dim", header_case(_set("tensors.2.shape", [2**31])), E.ShapeError, "tensors[2].shape[0]"),
    Case("element-count-overflow", header_case(_set("tensors.0.shape", [65536, 65536])), E.ShapeError, "tensors[0].shape"),
    Case("rank-over-8", header_case(_set("tensors.0.shape", [1] * 9)), E.LimitError, "tensors[0].shape"),
    Case("dim-not-integer", header_case(_set("tensors.0.shape", [2, "5"])), E.FieldTypeError, "tensors[0].shape[1]"),
    Case("float-in-header", header_case(_set("tensors.0.shape", [2, 5.0])), E.HeaderDecodeError, 24),
    Case("zero-product-shape", header_case(_set("tensors.0.shape", [2**31 - 1, 2, 0])),
         E.HashingError, "groups[0]"),  # element count 0: valid shapes; group 0 is then empty
    # --- group coding parameters
    Case("index-bits-0", header_case(_set("groups.0.index_bits", 0)), E.IndexWidthError, "groups[0].index_bits"),
    Case("index-bits-33", header_case(_set("groups.0.index_bits", 33)), E.IndexWidthError, "groups[0].index_bits"),
    Case("block-size-0", header_case(_set("groups.0.block_size", 0)), E.BlockSizeError, "groups[0].block_size"),
    Case("block-size-4097", header_case(_set("groups.1.block_size", 4097)), E.BlockSizeError, "groups[1].block_size"),
    Case("num-values-0", header_case(_set("groups.0.num_values", 0)), E.FieldValueError, "groups[0].num_values"),
    Case("num-values-over-cap", header_case(_set("groups.0.num_values", 2**31)), E.LimitError, "groups[0].num_values"),
    Case("name-over-cap", header_case(_set("tensors.0.name", "n" * 1025)), E.LimitError, "tensors[0].name"),
    Case("sigma-negative", header_case(_set("groups.0.sigma", 0x8000 | BASE_H["groups"][0]["sigma"])),
         E.CodingParameterError, "groups[0].sigma"),
    Case("sigma-zero", header_case(_set("groups.0.sigma", 0)), E.CodingParameterError, "groups[0].sigma"),
    Case("sigma-nan", header_case(_set("groups.0.sigma", 0x7FC0)), E.CodingParameterError, "groups[0].sigma"),
    Case("sigma-inf", header_case(_set("groups.0.sigma", 0x7F80)), E.CodingParameterError, "groups[0].sigma"),
    Case("sigma-too-small", header_case(_set("groups.0.sigma", 0x0080)), E.CodingParameterError, "groups[0].sigma"),
    Case("sigma-too-large", header_case(_set("groups.0.sigma", ((127 + 64) << 7) | 1)),
         E.CodingParameterError, "groups[0].sigma"),
    Case("mu-nan", header_case(_set("groups.1.mu", 0x7FC00000)), E.CodingParameterError, "groups[1].mu"),
    Case("mu-inf", header_case(_set("groups.1.mu", 0xFF800000)), E.CodingParameterError, "groups[1].mu"),
    Case("affine-gcd-not-1", header_case(_set("groups.1.layout.a", 2)), E.LayoutParameterError, "groups[1].layout"),
    Case("affine-c-out-of-range", header_case(_set("groups.1.layout.c", 8)), E.LayoutParameterError, "groups[1].layout.c"),
    Case("affine-a-negative", header_case(_set("groups.1.layout.a", -3)), E.LayoutParameterError, "groups[1].layout.a"),
    Case("layout-kind-missing", header_case(_set("groups.0.layout", {})), E.MissingFieldError, "groups[0].layout.kind"),
    Case("layout-kind-not-a-string", header_case(_set("groups.0.layout.kind", 1)), E.FieldTypeError, "groups[0].layout.kind"),
    Case("layout-kind-unknown", header_case(_set("groups.0.layout.kind", "strided")),
         E.FieldValueError, "groups[0].layout.kind"),
    Case("num-values-without-hashing", header_case(_set("groups.0.num_values", 11)),
         E.HashingError, "groups[0].num_values"),
    Case("hashing-ratio-over-256",
         header_case(_do(_set("groups.1.num_values", 1), _set("groups.1.layout", {"kind": "contiguous"}),
                         _set("tensors.1.shape", [257]))),
         E.HashingError, "groups[1].num_values"),
    Case("hashing-more-values-than-weights", header_case(_set("groups.1.num_values", 23)),
         E.HashingError, "groups[1].num_values"),
    Case("group-without-tensors", header_case(lambda h, s: h["groups"].append(copy.deepcopy(h["groups"][0]))),
         E.HashingError, "groups[2]"),
    Case("group-not-a-map", header_case(_set("groups.0", 5)), E.FieldTypeError, "groups[0]"),
    # --- index payload
    Case("index-payload-too-short", header_case(_secs(lambda s: [s[0][:-1]] + s[1:])),
         E.IndexPayloadError, "sections[0].length"),
    Case("index-payload-too-long", header_case(_secs(lambda s: [s[0] + b"\0"] + s[1:])),
         E.IndexPayloadError, "sections[0].length"),
    Case("index-unused-bits-nonzero", header_case(_secs(lambda s: [s[0][:1] + bytes([s[0][1] | 0x80]) + s[0][2:]] + s[1:])),
         E.PaddingError, sec_off(0, 1)),
    # --- tensors
    Case("unknown-encoding", header_case(_set("tensors.0.encoding", "sparse")), E.UnknownEncodingError, "tensors[0].encoding"),
    Case("encoding-not-a-string", header_case(_set("tensors.0.encoding", 1)), E.FieldTypeError, "tensors[0].encoding"),
    Case("unknown-raw-dtype", header_case(_set("tensors.2.dtype", "complex64")), E.UnknownDTypeError, "tensors[2].dtype"),
    Case("duplicate-tensor-names", header_case(_set("tensors.1.name", "w0")), E.DuplicateNameError, "tensors[1].name"),
    Case("empty-tensor-name", header_case(_set("tensors.0.name", "")), E.FieldValueError, "tensors[0].name"),
    Case("raw-section-length-mismatch", header_case(_set("tensors.2.shape", [4])),
         E.SectionLengthError, "sections[1].length"),
    Case("bool-byte-not-0-or-1", header_case(_secs(lambda s: s[:2] + [b"\x01\x02\x00\x01"] + s[3:])),
         E.RawValueError, sec_off(2, 1)),
    Case("coded-tensor-missing-group", header_case(_set("tensors.0.group", 2)), E.GroupReferenceError, "tensors[0].group",
         single=False),  # group 0 then has too few weights
    Case("group-index-negative", header_case(_set("tensors.0.group", -1)), E.GroupReferenceError, "tensors[0].group",
         single=False),
    # --- section references
    Case("section-referenced-twice", header_case(_set("tensors.3.section", 1)),
         E.SectionReferenceError, "tensors[3].section", single=False),
    Case("unreferenced-section", header_case(_add_unreferenced_section), E.SectionReferenceError, "sections[4]"),
    Case("section-wrong-kind", header_case(_set("sections.3.kind", "raw")), E.SectionReferenceError, "graph", single=False),
    Case("indices-section-out-of-range", header_case(_set("indices", 9)), E.SectionReferenceError, "indices", single=False),
    Case("raw-section-negative", header_case(_set("tensors.2.section", -1)), E.SectionReferenceError, "tensors[2].section",
         single=False),
    Case("indices-missing-with-groups", header_case(_set("indices", None)), E.SectionReferenceError, "indices",
         single=False),
    Case("indices-without-sections", header_case(_no_sections_but_indices), E.SectionReferenceError, "indices"),
    # --- top-level fields, sampler, metadata
    Case("unknown-sampler", header_case(_set("sampler", "uniform16")), E.UnknownSamplerError, "sampler"),
    Case("missing-field-seed", header_case(_set("seed", DELETE)), E.MissingFieldError, "seed"),
    Case("missing-field-group-layout", header_case(_set("groups.0.layout", DELETE)), E.MissingFieldError, "groups[0].layout"),
    Case("missing-field-section-crc", header_case(_set("sections.1.crc32", DELETE), fix=False),
         E.MissingFieldError, "sections[1].crc32"),
    Case("seed-negative", header_case(_set("seed", -1)), E.FieldValueError, "seed"),
    Case("seed-wrong-type", header_case(_set("seed", "1234")), E.FieldTypeError, "seed"),
    Case("unknown-field-minor-0", header_case(_set("compression", "zstd")), E.UnknownFieldError, "compression"),
    Case("unknown-group-field-minor-0", header_case(_set("groups.0.temperature", 1)),
         E.UnknownFieldError, "groups[0].temperature"),
    Case("metadata-value-not-string", header_case(_set("metadata.k", 1)), E.MetadataError, "metadata.k"),
    Case("metadata-key-not-string", header_case(_set("metadata", {b"": "v"})), E.HeaderDecodeError, 24),
    Case("metadata-key-over-cap", header_case(_set("metadata", {"k" * 257: "v"})), E.MetadataError, "metadata"),
    Case("metadata-key-empty", header_case(_set("metadata", {"": "v"})), E.MetadataError, "metadata"),
    Case("metadata-not-a-map", header_case(_set("metadata", ["k", "v"])), E.MetadataError, "metadata"),
    Case("metadata-missing", header_case(_set("metadata", DELETE)), E.MissingFieldError, "metadata"),
    # --- graph
    Case("graph-external-data", graph_case(external_data_graph()), E.ExternalDataError, "sections[3]"),
    Case("graph-not-modelproto", graph_case(b"\xff" * 16), E.GraphError, "sections[3]"),
    Case("graph-undefined-input", graph_case(undefined_input_graph()), E.GraphError, "sections[3]"),
    Case("graph-initializer-duplicates-tensor", graph_case(duplicate_initializer_graph()), E.GraphError, "sections[3]"),
]


def test_base_file_is_valid():
    assert validate_bytes(BASE) == []
    c = from_bytes(BASE)
    assert [t.name for t in c.tensors] == ["w0", "w1", "b", "m"]
    assert [s["kind"] for s in BASE_H["sections"]] == ["indices", "raw", "raw", "graph"]
    # the helper reproduces the writer's bytes exactly: rebuild itself breaks nothing
    assert rebuild(BASE_H, BASE_S) == BASE


def test_matrix_is_large_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 30
    assert len({c.error for c in CASES}) >= 25  # nearly every error class is exercised


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corrupt(case: Case):
    data = case.build()
    assert data != BASE
    where = case.where(data) if callable(case.where) else case.where
    with pytest.raises(case.error) as info:
        from_bytes(data)
    err = info.value
    assert type(err) is case.error, f"{type(err).__name__}: {err}"
    assert err.where == where, str(err)
    assert err.message and err.code == case.error.code
    d = err.to_dict()
    assert d["code"] == case.error.code and d["where"] == where and d["error"] == case.error.__name__
    problems = validate_bytes(data)
    assert problems, "validator accepted a file the reader rejects"
    first = problems[0]
    assert type(first) is case.error and first.where == where, [str(p) for p in problems]
    if case.single:
        assert len(problems) == 1, [str(p) for p in problems]
    for p in problems:
        assert isinstance(p, E.MrcError)
        assert isinstance(p.where, (int, str, type(None)))


def _newer_minor_header(h, secs):
    h["compression"] = "none"
    h["groups"][0]["temperature"] = 15
    h["groups"][1]["layout"]["stride_hint"] = 3
    h["tensors"][0]["doc"] = "a coded tensor"
    h["tensors"][2]["quant"] = {"scale": 1}
    h["sections"][1]["note"] = "raw"


@pytest.mark.parametrize("minor", [3, 7, 65535])  # 1.2 is implemented: its minor is strict
def test_unknown_fields_accepted_at_newer_minor(minor):
    data = header_case(_newer_minor_header, version=(1, minor))()
    c = from_bytes(data)
    assert c.version == (1, minor)
    assert validate_bytes(data) == []
    assert [t.name for t in c.tensors] == ["w0", "w1", "b", "m"]
    # the same fields at minor 0 are errors, every one of them reported
    problems = validate_bytes(header_case(_newer_minor_header)())
    assert [type(p) for p in problems] == [E.UnknownFieldError] * 6
    assert {p.where for p in problems} == {"compression", "groups[0].temperature", "groups[1].layout.stride_hint",
                                           "tensors[0].doc", "tensors[2].quant", "sections[1].note"}


def test_floats_are_refused_even_in_unknown_fields_of_a_newer_minor():
    """SPEC.md 7.2: no float anywhere in the header, whatever the minor (a header-decode error)."""
    data = header_case(_do(_newer_minor_header, _set("tensors.0.doc", 1.5)), version=(1, 3))()
    with pytest.raises(E.HeaderDecodeError):
        from_bytes(data)
    assert [type(p) for p in validate_bytes(data)] == [E.HeaderDecodeError]


def test_newer_minor_still_checks_known_rules():
    data = header_case(_do(_newer_minor_header, _set("groups.0.index_bits", 0)), version=(1, 3))()
    with pytest.raises(E.IndexWidthError):
        from_bytes(data)


def test_validator_reports_all_problems():
    data = header_case(_do(_set("groups.0.sigma", 0), _set("tensors.3.dtype", "complex64"), _set("metadata.k", 3),
                           _set("compression", 1)))()
    problems = validate_bytes(data)
    got = {(type(p), p.where) for p in problems}
    assert got == {(E.UnknownFieldError, "compression"), (E.CodingParameterError, "groups[0].sigma"),
                   (E.UnknownDTypeError, "tensors[3].dtype"), (E.MetadataError, "metadata.k")}
    with pytest.raises(type(problems[0])):
        from_bytes(data)


def test_non_map_entries_are_one_problem_each():
    data = header_case(_do(_set("groups.1", [1]), _set("tensors.2", "b"), _set("sections.0", None)))()
    problems = validate_bytes(data)
    assert [(type(p), p.where) for p in problems] == [  # SPEC.md 9.2 step 8: groups, tensors, then sections
        (E.FieldTypeError, "groups[1]"), (E.FieldTypeError, "tensors[2]"), (E.FieldTypeError, "sections[0]")]


def _with_deep_value(path: str, depth: int) -> bytes:
    """The base file with header field `path` set to a list nested `depth` deep (built as bytes:
    Python's own deepcopy/packb would hit the recursion limit first)."""
    h = copy.deepcopy(BASE_H)
    _set(path, "@@deep@@")(h, [])
    deep = b"\x91" * depth + msgpack.packb("x")
    return rebuild(h, BASE_S, encode=lambda h: msgpack.packb(h, use_bin_type=True).replace(msgpack.packb("@@deep@@"), deep))


def test_nesting_depth_cap():
    """SPEC.md 7.2: at most 64 nested arrays/maps, the header map counted; deeper is header-decode,
    also far past Python's recursion limit and msgpack's own stack."""
    # groups.0.layout.kind sits at depth 4 (header, groups, group, layout); a value there nested k deep
    # reaches depth 4 + k
    for k, cls in [(60, E.FieldTypeError), (61, E.HeaderDecodeError), (1000, E.HeaderDecodeError),
                   (5000, E.HeaderDecodeError)]:
        data = _with_deep_value("groups.0.layout.kind", k)
        with pytest.raises(cls):
            from_bytes(data)
        assert type(validate_bytes(data)[0]) is cls
    for path in ("metadata.k", "tensors.0.encoding"):
        assert type(validate_bytes(_with_deep_value(path, 3000))[0]) is E.HeaderDecodeError


def test_bytes_key_is_a_header_decode_error():
    h = copy.deepcopy(BASE_H)
    h["@@key@@"] = 1
    data = rebuild(h, BASE_S, encode=lambda h: msgpack.packb(h, use_bin_type=True).replace(
        msgpack.packb("@@key@@"), msgpack.packb(b"", use_bin_type=True)))
    with pytest.raises(E.HeaderDecodeError) as info:
        from_bytes(data)
    assert info.value.where == PREAMBLE_SIZE
    problems = validate_bytes(data)
    assert [type(p) for p in problems] == [E.HeaderDecodeError]
    json.dumps([p.to_dict() for p in problems])


def test_memoryview_and_bytearray_inputs():
    assert validate_bytes(bytearray(BASE)) == []
    assert validate_bytes(memoryview(BASE)) == []
    assert from_bytes(memoryview(bytearray(BASE))).seed == 1234
    assert type(validate_bytes(memoryview(BASE[:30]))[0]) is E.HeaderSizeError


def test_validate_file(tmp_path):
    good, bad, empty = tmp_path / "good.mrc", tmp_path / "bad.mrc", tmp_path / "empty.mrc"
    good.write_bytes(BASE)
    bad.write_bytes(BASE + b"\0")
    empty.write_bytes(b"")
    assert validate_file(good) == []
    assert [type(p) for p in validate_file(str(bad))] == [E.TrailingBytesError]
    assert [type(p) for p in validate_file(empty)] == [E.TruncatedError]
    for missing in (tmp_path / "missing.mrc", tmp_path):  # not there; a directory
        problems = validate_file(missing)
        assert len(problems) == 1 and isinstance(problems[0], ReadError) and isinstance(problems[0], E.MrcError)
        assert problems[0].to_dict()["code"] == "read-error"
