"""Reading `.mrc` files: every rule of SPEC.md sections 6-9 is checked before data is returned, in the
order of SPEC.md 9.2 (so a file with several faults is rejected with the same code by every reader).

`parse` takes a `report` callback: the default raises the first problem (the strict reader);
`mrcformat.validate` passes one that collects them all, so both share one set of rules.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Callable

import msgpack
import numpy as np

from . import limits as L
from .bitpack import padding_bits_are_zero, unpack_indices
from .container import DTYPES, MAGIC, PREAMBLE_SIZE, SAMPLER, SECTION_KINDS, VERSION, Container, Group, Tensor
from .errors import (
    BadMagicError, BlockSizeError, ChecksumError, CodingParameterError, DuplicateNameError, ExternalDataError,
    FieldTypeError, FieldValueError, GraphError, GroupReferenceError, HashingError, HeaderDecodeError,
    HeaderSizeError, IndexPayloadError, IndexWidthError, LayoutParameterError, LimitError, MetadataError,
    MissingFieldError, MrcError, PaddingError, RawValueError, ReservedError, ScalesError, SectionLayoutError,
    SectionLengthError, SectionReferenceError, ShapeError, TrailingBytesError, TruncatedError, UnknownDTypeError,
    UnknownEncodingError, UnknownFieldError, UnknownSamplerError, UnsupportedVersionError,
)
from .layout import Layout
from .sampler import SIGMA_MAX_EXP, SIGMA_MIN_EXP, bf16_bits_to_float, f32_bits_to_float, is_valid_sigma_bits

__all__ = ["parse", "from_bytes", "load", "Report"]


MAX_NESTING_DEPTH = L.MAX_NESTING_DEPTH        # arrays/maps inside the header map, the map itself counted


def _align(n: int) -> int:
    return -(-n // L.ALIGNMENT) * L.ALIGNMENT


Report = Callable[[MrcError], None]


def _raise(err: MrcError) -> None:
    raise err


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _typename(v) -> str:
    return {dict: "a map", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            type(None): "nil"}.get(type(v), type(v).__name__)


_BAD = object()  # a field that was missing or wrong (already reported)


def _path(base: str, key: str) -> str:
    return f"{base}.{key}" if base else str(key)


class _Fields:
    """Typed access to one header map (SPEC.md 9.2, step 8); reports problems with the field path."""

    def __init__(self, obj: dict, path: str, report: Report):
        self.obj, self.path, self.report, self.ok = obj, path, report, True

    def fail(self, err: MrcError) -> object:
        self.ok = False
        self.report(err)
        return _BAD

    def unknown(self, known: tuple[str, ...], strict: bool) -> None:
        """Fields this version does not define: errors at minor <= ours, ignored at a newer minor."""
        if strict:
            for k in self.obj:
                if k not in known:
                    self.fail(UnknownFieldError(f"field {k!r} is not defined in this format version", _path(self.path, k)))

    def get(self, key: str, kind: type, nil_ok: bool = False):
        if key not in self.obj:
            return self.fail(MissingFieldError(f"required field {key!r} is missing", _path(self.path, key)))
        v = self.obj[key]
        if v is None and nil_ok:
            return None
        if not (_is_int(v) if kind is int else isinstance(v, kind)):
            return self.fail(FieldTypeError(f"expected {_typename(kind())}, found {type(v).__name__}", _path(self.path, key)))
        return v

    def int(self, key: str, lo: int | None = None, hi: int | None = None, err=FieldValueError, hi_err=None,
            nil_ok: bool = False):
        v = self.get(key, int, nil_ok)
        if v is _BAD or v is None:
            return v
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            cls = hi_err if hi_err is not None and hi is not None and v > hi else err
            return self.fail(cls(f"{v} is outside {lo}..{hi}", _path(self.path, key)))
        return v


def _decode_header(raw: bytes, report: Report):
    """Step 7 (SPEC.md 9.2): one msgpack map, nothing after it; only nil, bool, int, str, array and map;
    string map keys, none repeated; nesting at most MAX_NESTING_DEPTH. Every violation is `header-decode`
    at the header's offset."""
    def pairs_hook(pairs):
        d = {}
        for k, v in pairs:
            if not isinstance(k, str):
                raise HeaderDecodeError(f"map key of type {_typename(k)}: header map keys must be strings", PREAMBLE_SIZE)
            if k in d:
                raise HeaderDecodeError(f"map key {k!r} appears twice", PREAMBLE_SIZE)
            d[k] = v
        return d

    def ext_hook(code, data):
        raise HeaderDecodeError(f"msgpack extension type {code} is not allowed in the header", PREAMBLE_SIZE)

    try:
        obj = msgpack.unpackb(
            raw, raw=False, strict_map_key=False, use_list=True, object_pairs_hook=pairs_hook,
            ext_hook=ext_hook, max_str_len=len(raw), max_bin_len=0, max_array_len=len(raw),
            max_map_len=len(raw) // 2, max_ext_len=0)
    except HeaderDecodeError as e:
        report(e)
        return None
    except Exception as e:  # msgpack raises several types (ExtraData, StackError, UnicodeDecodeError, ...)
        report(HeaderDecodeError(f"header is not valid msgpack: {type(e).__name__}: {e}", PREAMBLE_SIZE))
        return None
    if not isinstance(obj, dict):
        report(HeaderDecodeError(f"header must be a msgpack map, found {type(obj).__name__}", PREAMBLE_SIZE))
        return None
    stack = [(obj, 1)]  # iterative: a hostile header cannot exhaust Python's recursion
    while stack:
        x, depth = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            report(HeaderDecodeError(f"header nests arrays/maps deeper than {MAX_NESTING_DEPTH} levels", PREAMBLE_SIZE))
            return None
        for v in (x.values() if isinstance(x, dict) else x):
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1))
            elif not (v is None or isinstance(v, (bool, int, str))):
                what = "float" if isinstance(v, float) else "bin" if isinstance(v, bytes) else type(v).__name__
                report(HeaderDecodeError(f"msgpack {what} values are not allowed in the header", PREAMBLE_SIZE))
                return None
    return obj


def parse(data: bytes | memoryview, report: Report = _raise, check_graph: bool = True,
          max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> Container | None:
    """Parse and check a whole file, in the order of SPEC.md 9.2. With the default `report`, the first
    problem is raised.

    Raw tensors are read-only numpy views of `data` (no copy). Returns None only when a
    collecting `report` swallowed a problem that makes the rest unreadable.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n = len(buf)
    if n < 8 or bytes(buf[:8]) != MAGIC:
        if n < 8 and bytes(buf[:n]) == MAGIC[:n]:
            report(TruncatedError(f"file is {n} bytes, shorter than the 24-byte preamble", n))
        else:
            hint = ""
            if n >= 2 and buf[0] == 0x08 and 1 <= buf[1] <= 20:  # protobuf field 1 varint: an ONNX ir_version
                hint = ("; this looks like an ONNX model, not a .mrc file: compress it with "
                        "`mrc compress MODEL.onnx --budget SIZE --calibration INPUTS -o OUT.mrc`")
            report(BadMagicError(f"expected magic {MAGIC.hex()}, found {bytes(buf[:8]).hex()}{hint}", 0))
        return None
    if n < PREAMBLE_SIZE:
        report(TruncatedError(f"file is {n} bytes, shorter than the 24-byte preamble", n))
        return None
    major, minor, hlen, hcrc, reserved = struct.unpack_from("<HHIII", buf, 8)
    if major != VERSION[0]:
        report(UnsupportedVersionError(f"format version {major}.{minor}; this reader implements {VERSION[0]}.x", 8))
        return None
    if reserved != 0:
        report(ReservedError(f"reserved preamble word is {reserved:#x}, must be 0", 20))
    if hlen == 0 or hlen > L.HEADER_MAX:
        report(HeaderSizeError(f"header length {hlen} is outside 1..{L.HEADER_MAX}", 12))
        return None
    hend = PREAMBLE_SIZE + hlen
    if hend > n:
        report(HeaderSizeError(f"header length {hlen} reaches byte {hend}, beyond the file's {n} bytes", 12))
        return None
    raw_header = bytes(buf[PREAMBLE_SIZE:hend])
    crc = zlib.crc32(raw_header)
    if crc != hcrc:
        report(ChecksumError(f"header CRC-32 is {crc:08x}, preamble says {hcrc:08x}", 16))
    obj = _decode_header(raw_header, report)
    if obj is None:
        return None
    strict = minor <= VERSION[1]
    return _parse_header(obj, buf, n, hend, (major, minor), strict, report, check_graph, max_decoded_bytes)


_TOP = ("sampler", "seed", "groups", "tensors", "indices", "graph", "sections", "metadata")
_TOP_1_1 = _TOP + ("graph_size",)
MAX_GRAPH_SIZE = 2**31 - 1  # protobuf's own limit for a message
_GROUP = ("mu", "sigma", "block_size", "index_bits", "num_values", "layout", "hashing")
_GROUP_1_1 = _GROUP + ("scales",)
_TENSOR_CODED = ("name", "shape", "encoding", "group")
_TENSOR_RAW = ("name", "shape", "encoding", "dtype", "section")
_SECTION = ("kind", "offset", "length", "crc32")


def _array(top: _Fields, key: str, cap: int | None) -> list:
    v = top.get(key, list)
    if v is _BAD:
        return []
    if cap is not None and len(v) > cap:
        top.fail(LimitError(f"{len(v)} {key} exceed the cap {cap}", key))
        return []
    return v


def _parse_header(obj: dict, buf, n: int, hend: int, version, strict: bool, report: Report,
                  check_graph: bool, max_decoded_bytes: int | None) -> Container | None:
    v11 = tuple(version) >= (1, 1)
    # --- step 8: every header field, in the order of SPEC.md 7.3's tables: top level, groups, tensors, sections
    top = _Fields(obj, "", report)
    top.unknown(_TOP_1_1 if v11 else _TOP, strict)
    sampler = top.get("sampler", str)
    if sampler is not _BAD and sampler != SAMPLER:
        top.fail(UnknownSamplerError(f"sampler {sampler!r} is not defined; version 1 defines {SAMPLER!r}", "sampler"))
    seed = top.int("seed", 0, 2**64 - 1)
    glist = _array(top, "groups", L.MAX_GROUPS)
    tlist = _array(top, "tensors", L.MAX_TENSORS)
    isec = top.int("indices", nil_ok=True)
    gsec = top.int("graph", nil_ok=True)
    slist = _array(top, "sections", None)
    metadata = _parse_metadata(top)
    graph_size = None
    if v11 and "graph_size" in obj:
        graph_size = top.int("graph_size", 1, MAX_GRAPH_SIZE)
        if graph_size is not _BAD and gsec is None:
            graph_size = top.fail(FieldValueError("graph_size is given but the file has no graph", "graph_size"))
    scale_refs: dict[int, int] = {}
    groups = [_parse_group(gi, g, strict, report, v11, scale_refs) for gi, g in enumerate(glist)]
    tensors = _parse_tensors(tlist, strict, report)
    sections = [_parse_section(si, s, strict, report) for si, s in enumerate(slist)]
    header_ok = top.ok and None not in groups and None not in tensors
    # --- step 9: the file's layout
    if None in sections or not _check_layout(sections, buf, n, hend, report) or not header_ok:
        return None
    # --- step 10: references
    used: dict[int, str] = {}
    nsec = len(sections)

    def claim(si: int, kind: str, who: str) -> bool:
        if not 0 <= si < nsec:
            report(SectionReferenceError(f"section {si} does not exist; the file has {nsec}", who))
            return False
        if si in used:
            report(SectionReferenceError(f"section {si} is already used by {used[si]}", who))
            return False
        if sections[si][0] != kind:
            report(SectionReferenceError(f"section {si} has kind {sections[si][0]!r}, expected {kind!r}", who))
            return False
        used[si] = who
        return True

    ok = True
    if groups and isec is None:
        report(SectionReferenceError("groups exist but no indices section is given", "indices"))
        ok = False
    elif not groups and isec is not None:
        report(SectionReferenceError("an indices section is given but there are no groups", "indices"))
        ok = False
    elif isec is not None:
        ok &= claim(isec, "indices", "indices")
    if gsec is not None:
        ok &= claim(gsec, "graph", "graph")
    for ti, t in enumerate(tensors):
        if t.encoding == "raw":
            ok &= claim(t.section, "raw", f"tensors[{ti}].section")
        elif not 0 <= t.group < len(groups):
            report(GroupReferenceError(f"group {t.group} does not exist; the file has {len(groups)}",
                                       f"tensors[{ti}].group"))
            ok = False
    for gi, si in scale_refs.items():
        ok &= claim(si, "scales", f"groups[{gi}].scales")
    for si in range(nsec):
        if si not in used:
            report(SectionReferenceError(f"section {si} ({sections[si][0]}) is not referenced by anything", f"sections[{si}]"))
            ok = False
    if not ok:
        return None
    # --- step 11: group sizes
    weights = [0] * len(groups)
    for t in tensors:
        if t.encoding == "coded":
            weights[t.group] += t.numel
    for gi, g in enumerate(groups):
        w = weights[gi]
        where = f"groups[{gi}].num_values"
        if w == 0:
            report(HashingError("group has no coded elements (no tensor uses it, or all are empty)", f"groups[{gi}]"))
            ok = False
        elif w > L.MAX_GROUP_WEIGHTS:
            report(LimitError(f"group has {w} elements, over the cap {L.MAX_GROUP_WEIGHTS}", f"groups[{gi}]"))
            ok = False
        elif not g.hashing and g.num_values != w:
            report(HashingError(f"num_values {g.num_values} must equal the group's {w} elements without hashing", where))
            ok = False
        elif g.hashing and not (g.num_values <= w <= L.MAX_HASH_RATIO * g.num_values):
            report(HashingError(f"with hashing, num_values {g.num_values} must satisfy n <= {w} <= {L.MAX_HASH_RATIO}n", where))
            ok = False
    decoded = 4 * sum(weights)  # coded tensors are float32; raw tensors are bounded by the file itself
    if ok and max_decoded_bytes is not None and decoded > max_decoded_bytes:
        report(LimitError(f"the file declares {decoded} bytes of decoded coded tensors, over this reader's limit of "
                          f"{max_decoded_bytes} (pass max_decoded_bytes to raise it)", "tensors"))
        ok = False
    if not ok:
        return None
    # --- step 12: payloads
    if isec is not None:
        _, off, length, _ = sections[isec]
        need = sum(g.payload_length for g in groups)
        if length != need:
            report(IndexPayloadError(f"indices section is {length} bytes; the groups need exactly {need}", f"sections[{isec}].length"))
            return None
        pos = off
        for gi, g in enumerate(groups):
            payload = buf[pos:pos + g.payload_length]
            if not padding_bits_are_zero(payload, g.num_blocks, g.index_bits):
                report(PaddingError(f"unused high bits of group {gi}'s last index byte are not zero", pos + g.payload_length - 1))
                ok = False
            g.indices = unpack_indices(np.frombuffer(payload, dtype=np.uint8), g.num_blocks, g.index_bits)
            pos += g.payload_length
    for gi, si in scale_refs.items():
        ok &= _read_scales(groups[gi], gi, si, sections[si], buf, report)
    for t in tensors:
        if t.encoding == "raw":
            _, off, length, _ = sections[t.section]
            itemsize = np.dtype(DTYPES[t.dtype]).itemsize
            if length != t.numel * itemsize:
                report(SectionLengthError(f"raw tensor {t.name!r} needs {t.numel * itemsize} bytes, section has {length}",
                                          f"sections[{t.section}].length"))
                ok = False
                continue
            arr = np.frombuffer(buf, dtype=DTYPES[t.dtype], count=t.numel, offset=off).reshape(t.shape)
            if t.dtype == "bool" and arr.size and int(arr.max()) > 1:
                first = int(np.argmax(arr.reshape(-1) > 1))
                report(RawValueError(f"bool tensor {t.name!r} holds bytes other than 0 and 1", off + first))
                ok = False
            t.data = arr
    graph = None
    if gsec is not None:
        _, off, length, _ = sections[gsec]
        graph = bytes(buf[off:off + length])
        if graph_size is not None:
            graph = _inflate_graph(graph, graph_size, max_decoded_bytes, f"sections[{gsec}]", report)
            ok &= graph is not None
        if check_graph and graph is not None:
            ok &= _check_graph(graph, tensors, f"sections[{gsec}]", report, version)
    if not ok:
        return None
    return Container(seed=seed, groups=groups, tensors=tensors, graph=graph, metadata=metadata, version=version,
                     graph_deflate=graph_size is not None)


def _parse_metadata(top: _Fields) -> dict[str, str]:
    if "metadata" not in top.obj:
        top.fail(MissingFieldError("required field 'metadata' is missing", "metadata"))
        return {}
    md = top.obj["metadata"]
    if not isinstance(md, dict):
        top.fail(MetadataError(f"metadata must be a map of strings to strings, found {type(md).__name__}", "metadata"))
        return {}
    if len(md) > L.MAX_METADATA_ENTRIES:
        top.fail(MetadataError(f"{len(md)} metadata entries exceed the cap {L.MAX_METADATA_ENTRIES}", "metadata"))
        return {}
    out = {}
    for k, v in md.items():  # keys are strings: step 7 rejects any other key
        if not 0 < len(k.encode("utf-8", "surrogatepass")) <= L.MAX_METADATA_KEY_BYTES:
            top.fail(MetadataError(f"metadata key {k[:40]!r} must be 1..{L.MAX_METADATA_KEY_BYTES} bytes of UTF-8", "metadata"))
        elif not isinstance(v, str):
            top.fail(MetadataError(f"metadata value must be a string, found {type(v).__name__}", f"metadata.{k}"))
        else:
            out[k] = v
    return out


def _parse_section(si: int, s, strict: bool, report: Report) -> tuple | None:
    where = f"sections[{si}]"
    if not isinstance(s, dict):
        report(FieldTypeError(f"expected a map, found {type(s).__name__}", where))
        return None
    f = _Fields(s, where, report)
    f.unknown(_SECTION, strict)
    kind = f.get("kind", str)
    if kind is not _BAD and kind not in SECTION_KINDS:
        f.fail(FieldValueError(f"section kind {kind!r} is not one of {SECTION_KINDS}", f"{where}.kind"))
    off = f.int("offset", 0, 2**64 - 1)
    length = f.int("length", 0, 2**64 - 1)
    crc = f.int("crc32", 0, 2**32 - 1)
    return (kind, off, length, crc) if f.ok else None


def _check_layout(sections: list, buf, n: int, hend: int, report: Report) -> bool:
    """Step 9: each section where SPEC.md 7.1 puts it, inside the file, zero padding before it, its CRC;
    then no byte after the last one."""
    ok, expected, prev_end = True, _align(hend), hend
    for si, (kind, off, length, crc) in enumerate(sections):
        if off != expected:
            if off < prev_end:
                what = "overlaps the header" if si == 0 else f"overlaps or precedes section {si - 1}"
            elif off % L.ALIGNMENT:
                what = "is not 64-byte aligned"
            else:
                what = "leaves unused bytes before it"
            report(SectionLayoutError(f"section starts at {off} and {what}; it must start at {expected}", f"sections[{si}].offset"))
            return False
        if off + length > n:
            report(TruncatedError(f"section {si} ({kind}) spans {off}..{off + length} but the file ends at {n}", off))
            return False
        pad = bytes(buf[prev_end:off])
        if pad.count(0) != len(pad):
            report(PaddingError("alignment padding before a section is not zero", prev_end + next(i for i, b in enumerate(pad) if b)))
            ok = False
        actual = zlib.crc32(buf[off:off + length])
        if actual != crc:
            report(ChecksumError(f"section {si} ({kind}) CRC-32 is {actual:08x}, header says {crc:08x}", off))
            ok = False
        prev_end = off + length
        expected = _align(prev_end)
    if ok and n > prev_end:
        report(TrailingBytesError(f"{n - prev_end} bytes after the end of the last structure", prev_end))
        ok = False
    return ok


def _inflate_graph(data: bytes, size: int, max_decoded_bytes: int | None, where: str, report: Report) -> bytes | None:
    """The graph section of a file with `graph_size` (1.1): one zlib stream (RFC 1950) that inflates to
    exactly `size` bytes and ends at the section's end. Inflation stops at size + 1 bytes (no bomb)."""
    if max_decoded_bytes is not None and size > max_decoded_bytes:
        report(LimitError(f"graph_size {size} is over this reader's limit of {max_decoded_bytes} bytes", "graph_size"))
        return None
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, size + 1)
    except zlib.error as e:
        report(GraphError(f"graph section is not a valid zlib stream: {e}", where))
        return None
    if len(out) != size or not d.eof or d.unused_data or d.unconsumed_tail:
        why = (f"inflates to more than graph_size {size} bytes" if len(out) > size or d.unconsumed_tail else
               f"inflates to {len(out)} bytes, not graph_size {size}" if len(out) != size else
               "has bytes after the end of its zlib stream" if d.unused_data else "ends before its zlib stream does")
        report(GraphError(f"graph section {why}", where))
        return None
    return out


def _read_scales(g: Group, gi: int, si: int, section, buf, report: Report) -> bool:
    """A group's scales section (1.1): count = length / 2 bfloat16 patterns; count divides num_values;
    every scale and every product sigma * scale a valid sigma (SPEC.md 7.5). (Hashing is refused in step 8.)"""
    _, off, length, _ = section
    where = f"groups[{gi}].scales"
    if length == 0 or length % 2:
        report(SectionLengthError(f"a scales section holds 2-byte entries, at least one; it has {length} bytes",
                                  f"sections[{si}].length"))
        return False
    count = length // 2
    if g.num_values % count:
        report(ScalesError(f"{count} scales do not divide the group's {g.num_values} values", where))
        return False
    bits = np.frombuffer(buf, dtype="<u2", count=count, offset=off)
    b = bits.astype(np.uint32)
    exp = ((b >> 7) & 0xFF).astype(np.int64) - 127
    good = ((b & 0x8000) == 0) & (((exp >= SIGMA_MIN_EXP) & (exp < SIGMA_MAX_EXP))
                                  | ((exp == SIGMA_MAX_EXP) & ((b & 0x7F) == 0)))
    with np.errstate(over="ignore", under="ignore"):  # the product of two bfloat16s is exact unless out of range
        prod = (b << 16).view(np.float32) * bf16_bits_to_float(g.sigma_bits)
    good &= (prod >= np.float32(2.0 ** SIGMA_MIN_EXP)) & (prod <= np.float32(2.0 ** SIGMA_MAX_EXP))
    if not np.all(good):
        k = int(np.argmin(good))
        report(CodingParameterError(f"scale {k} (bits 0x{int(bits[k]):04x}) or sigma * scale is not a positive value "
                                    f"in [2^{SIGMA_MIN_EXP}, 2^{SIGMA_MAX_EXP}]", f"{where}[{k}]"))
        return False
    g.scales = bits
    return True


def _parse_group(gi: int, g, strict: bool, report: Report, v11: bool, scale_refs: dict[int, int]) -> Group | None:
    where = f"groups[{gi}]"
    if not isinstance(g, dict):
        report(FieldTypeError(f"expected a map, found {type(g).__name__}", where))
        return None
    f = _Fields(g, where, report)
    f.unknown(_GROUP_1_1 if v11 else _GROUP, strict)
    mu = f.int("mu", 0, 2**32 - 1)
    if mu is not _BAD and not np.isfinite(f32_bits_to_float(mu)):
        mu = f.fail(CodingParameterError(f"mu bits 0x{mu:08x} are not a finite float32", f"{where}.mu"))
    sigma = f.int("sigma", 0, 2**16 - 1)
    if sigma is not _BAD and not is_valid_sigma_bits(sigma):
        sigma = f.fail(CodingParameterError(f"sigma bits 0x{sigma:04x} are not a positive bfloat16 in "
                                            f"[2^{SIGMA_MIN_EXP}, 2^{SIGMA_MAX_EXP}]", f"{where}.sigma"))
    bsize = f.int("block_size", 1, L.MAX_BLOCK_SIZE, BlockSizeError)
    bits = f.int("index_bits", 1, L.MAX_INDEX_BITS, IndexWidthError)
    nv = f.int("num_values", 1, L.MAX_NUM_VALUES, FieldValueError, hi_err=LimitError)
    layout = _parse_layout(f, nv, strict)
    hashing = f.get("hashing", bool)
    if v11 and "scales" in g:
        si = f.int("scales")  # which section: checked with the other references (step 10)
        if si is not _BAD and hashing is True:
            f.fail(ScalesError("a group with scales must not use hashing", f"{where}.scales"))
        elif si is not _BAD:
            scale_refs[gi] = si
    if not f.ok:
        return None
    return Group(mu, sigma, bsize, bits, nv, layout, hashing, np.zeros(0, dtype=np.int64))


def _parse_layout(f: _Fields, nv, strict: bool):
    lay = f.get("layout", dict)
    if lay is _BAD:
        return _BAD
    lf = _Fields(lay, f"{f.path}.layout", f.report)
    kind = lf.get("kind", str)
    if kind is not _BAD and kind not in ("contiguous", "affine"):
        kind = lf.fail(FieldValueError(f"layout kind {kind!r} is not 'contiguous' or 'affine'", f"{lf.path}.kind"))
    layout = _BAD
    if kind == "contiguous":
        lf.unknown(("kind",), strict)
        layout = Layout()
    elif kind == "affine":
        lf.unknown(("kind", "a", "c"), strict)
        hi = nv - 1 if nv is not _BAD else L.MAX_NUM_VALUES - 1
        a = lf.int("a", 0, hi, LayoutParameterError)
        c = lf.int("c", 0, hi, LayoutParameterError)
        if _BAD not in (a, c, nv):
            if math.gcd(a, nv) != 1:
                lf.fail(LayoutParameterError(f"affine layout needs gcd(a, num_values) = 1; gcd({a}, {nv}) = {math.gcd(a, nv)}",
                                             lf.path))
            else:
                layout = Layout("affine", a, c)
    if not lf.ok:
        f.ok = False
        return _BAD
    return layout


def _parse_tensors(tlist: list, strict: bool, report: Report) -> list:
    out, names = [], {}
    for ti, t in enumerate(tlist):
        where = f"tensors[{ti}]"
        if not isinstance(t, dict):
            report(FieldTypeError(f"expected a map, found {type(t).__name__}", where))
            out.append(None)
            continue
        f = _Fields(t, where, report)
        enc = f.get("encoding", str)
        if enc is not _BAD and enc not in ("coded", "raw"):
            f.fail(UnknownEncodingError(f"encoding {enc!r} is not 'coded' or 'raw'", f"{where}.encoding"))
        if not f.ok:
            out.append(None)
            continue
        f.unknown(_TENSOR_CODED if enc == "coded" else _TENSOR_RAW, strict)
        name = f.get("name", str)
        if name is not _BAD:
            size = len(name.encode("utf-8", "surrogatepass"))
            if size == 0:
                name = f.fail(FieldValueError("a tensor name must not be empty", f"{where}.name"))
            elif size > L.MAX_NAME_BYTES:
                name = f.fail(LimitError(f"name is {size} bytes of UTF-8, over the cap {L.MAX_NAME_BYTES}", f"{where}.name"))
            elif name in names:
                name = f.fail(DuplicateNameError(f"name {name!r} is also used by tensors[{names[name]}]", f"{where}.name"))
            else:
                names[name] = ti
        shape = _parse_shape(f, f"{where}.shape")
        if enc == "coded":
            ref, dtype = f.int("group"), "float32"  # which group: checked with the references (step 10)
        else:
            dtype = f.get("dtype", str)
            if dtype is not _BAD and dtype not in DTYPES:
                dtype = f.fail(UnknownDTypeError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}", f"{where}.dtype"))
            ref = f.int("section")
        if not f.ok:
            out.append(None)
        elif enc == "coded":
            out.append(Tensor(name=name, shape=shape, encoding=enc, group=ref, dtype=dtype))
        else:
            out.append(Tensor(name=name, shape=shape, encoding=enc, dtype=dtype, section=ref))
    return out


def _parse_shape(f: _Fields, where: str) -> tuple[int, ...] | object:
    shape = f.get("shape", list)
    if shape is _BAD:
        return _BAD
    if len(shape) > L.MAX_RANK:
        return f.fail(LimitError(f"rank {len(shape)} exceeds the cap {L.MAX_RANK}", where))
    for i, d in enumerate(shape):
        if not _is_int(d):
            return f.fail(FieldTypeError(f"dimension must be an integer, found {type(d).__name__}", f"{where}[{i}]"))
        if d < 0 or d > L.MAX_DIM:
            return f.fail(ShapeError(f"dimension {d} is outside 0..{L.MAX_DIM}", f"{where}[{i}]"))
    if math.prod(shape) > L.MAX_TENSOR_ELEMENTS:
        return f.fail(ShapeError(f"element count {math.prod(shape)} is over the cap {L.MAX_TENSOR_ELEMENTS}", where))
    return tuple(shape)


def _check_graph(graph: bytes, tensors: list[Tensor], where: str, report: Report,
                 version: tuple[int, int] = (1, 0)) -> bool:
    """ONNX graph rules (SPEC.md 7.6), in the order of SPEC.md 9.2 step 12: a ModelProto with a graph,
    no external data anywhere, the minor-0 name rule or the 1.1 stub rules, then the top graph's inputs.
    Needs the `onnx` package (a dependency); without it the graph is not checked and the reader does
    not conform."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency, but the core must not need it
        return True
    from google.protobuf.message import DecodeError

    try:
        model = onnx.ModelProto.FromString(graph)
    except (DecodeError, Exception) as e:
        report(GraphError(f"graph section is not an ONNX ModelProto: {e}", where))
        return False
    if not model.HasField("graph"):
        report(GraphError("ONNX model has no graph", where))
        return False
    ok = True
    for name in _external_data_tensors(model):
        report(ExternalDataError(f"graph tensor {name!r} points to external data; weights must come from this file", where))
        ok = False
    file_names = {t.name for t in tensors}
    inits = {i.name for i in model.graph.initializer} | {s.values.name for s in model.graph.sparse_initializer}
    if version >= (1, 1):
        ok &= _check_stubs(model.graph, tensors, where, report, widening=version >= (1, 2))
    else:
        clash = sorted(file_names & inits)
        if clash:
            report(GraphError(f"graph initializers {clash[:5]} duplicate tensors of the file; their data must be removed",
                              where))
            ok = False
    defined = file_names | inits | {i.name for i in model.graph.input} | {""}
    for node in model.graph.node:
        for name in node.input:
            if name not in defined:
                report(GraphError(f"node {node.name or node.op_type!r} reads {name!r}, which nothing defines", where))
                return False
        defined.update(node.output)
    return ok


def _check_stubs(graph, tensors: list[Tensor], where: str, report: Report, widening: bool = False) -> bool:
    """Format 1.1 stubs (SPEC.md 7.6): every initializer (any depth) named like a file tensor, and every
    Constant producing one, holds no data and has the tensor's type and dims; at most one per tensor.
    `widening` (1.2): a raw float16 or bfloat16 tensor may also fill a float32 stub."""
    from .container import ONNX_DATA_TYPES, widening_stub
    from .onnx_graphs import find_stubs

    by_name = {t.name: t for t in tensors}
    stubs, problems = find_stubs(graph, frozenset(by_name))
    for message, path in problems:
        report(GraphError(f"{message} (at {path})", where))
    ok = not problems
    seen: dict[str, str] = {}
    for s in stubs:
        t = by_name[s.name]
        if s.name in seen:
            report(GraphError(f"file tensor {s.name!r} has two stubs: {seen[s.name]} and {s.path}", where))
            ok = False
        seen[s.name] = s.path
        widened = widening and widening_stub(t, s.tensor.data_type)
        if (s.tensor.data_type != ONNX_DATA_TYPES[t.dtype] and not widened) or tuple(s.tensor.dims) != tuple(t.shape):
            report(GraphError(f"stub for {s.name!r} at {s.path} has data type {s.tensor.data_type} and dims "
                              f"{list(s.tensor.dims)}; the file tensor is {t.dtype} {list(t.shape)}", where))
            ok = False
    return ok


def _external_data_tensors(model) -> list[str]:
    """Every tensor anywhere in the model that points to external data (SPEC.md 7.6: "anywhere"): a walk
    over every field of the ModelProto, functions and their default attributes, training_info and
    subgraphs at any depth included (`onnx_external.external_data_tensors`)."""
    from .onnx_external import external_data_tensors

    return external_data_tensors(model)


def from_bytes(data: bytes | memoryview, check_graph: bool = True,
               max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> Container:
    """Strict read of a whole file held in memory; raises the first MrcError found."""
    c = parse(data, check_graph=check_graph, max_decoded_bytes=max_decoded_bytes)
    assert c is not None  # the raising reporter never lets parse return None
    return c


def load(path: str | os.PathLike, check_graph: bool = True,
         max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> Container:
    """Read and fully check a `.mrc` file. Never executes code from the file.

    Only a regular file is read (ReadError otherwise: missing, a FIFO, a device), its magic is checked
    before the rest is read, and a file larger than `max_decoded_bytes` is refused (`fileread.read_file`)."""
    from .fileread import read_file

    data = read_file(path, max_bytes=max_decoded_bytes)
    return from_bytes(data, check_graph=check_graph, max_decoded_bytes=max_decoded_bytes)
