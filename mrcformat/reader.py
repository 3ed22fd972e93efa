"""Reading `.mrc` files: every rule of SPEC.md sections 6-9 is checked before data is returned.

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
    FieldTypeError, FieldValueError, GraphError, HashingError, HeaderDecodeError, HeaderSizeError,
    IndexPayloadError, IndexWidthError, LayoutParameterError, LimitError, MetadataError,
    MissingFieldError, MrcError, PaddingError, ScalesError, SectionLayoutError, SectionLengthError,
    SectionReferenceError, ShapeError, TrailingBytesError, TruncatedError, UnknownDTypeError,
    UnknownEncodingError, UnknownFieldError, UnknownSamplerError, UnsupportedVersionError,
)
from .layout import Layout
from .sampler import SIGMA_MAX_EXP, SIGMA_MIN_EXP, bf16_bits_to_float, check_coding_parameters

__all__ = ["parse", "from_bytes", "load", "Report"]


def _align(n: int) -> int:
    return -(-n // L.ALIGNMENT) * L.ALIGNMENT


Report = Callable[[MrcError], None]


def _raise(err: MrcError) -> None:
    raise err


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _Fields:
    """Typed access to one header map; reports problems with the field path."""

    def __init__(self, obj, path: str, report: Report, known: tuple[str, ...], strict_unknown: bool):
        self.obj, self.path, self.report, self.ok, self.is_map = obj, path, report, True, True
        if not isinstance(obj, dict):
            self.ok = self.is_map = False
            report(FieldTypeError(f"expected a map, found {type(obj).__name__}", path))
            self.obj = {}
            return
        if strict_unknown:
            for k in obj:
                if k not in known:
                    self.ok = False
                    report(UnknownFieldError(f"field {k!r} is not defined in this format version", f"{path}.{k}" if path else str(k)))

    def _p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, check: Callable[[object], bool], kind: str, optional_nil: bool = False):
        if not self.is_map:  # already reported as a whole; its fields are not missing one by one
            return None
        if key not in self.obj:
            self.ok = False
            self.report(MissingFieldError(f"required field {key!r} is missing", self._p(key)))
            return None
        v = self.obj[key]
        if v is None and optional_nil:
            return None
        if not check(v):
            self.ok = False
            self.report(FieldTypeError(f"expected {kind}, found {type(v).__name__}", self._p(key)))
            return None
        return v

    def int(self, key: str, lo: int, hi: int, err=FieldValueError, optional_nil: bool = False):
        v = self.get(key, _is_int, "an integer", optional_nil)
        if v is not None and not lo <= v <= hi:
            self.ok = False
            self.report(err(f"{v} is outside {lo}..{hi}", self._p(key)))
            return None
        return v


def _decode_header(raw: bytes, report: Report):
    def pairs_hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise HeaderDecodeError(f"map key {k!r} appears twice", PREAMBLE_SIZE)
            d[k] = v
        return d

    def ext_hook(code, data):
        raise HeaderDecodeError(f"msgpack extension type {code} is not allowed in the header", PREAMBLE_SIZE)

    try:
        obj = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True, object_pairs_hook=pairs_hook,
            ext_hook=ext_hook, max_str_len=len(raw), max_bin_len=0, max_array_len=L.MAX_TENSORS * 2 + 16,
            max_map_len=L.MAX_METADATA_ENTRIES + 16, max_ext_len=0)
    except HeaderDecodeError as e:
        report(e)
        return None
    except Exception as e:  # msgpack raises several types (ExtraData, StackError, UnicodeDecodeError, ...)
        report(HeaderDecodeError(f"header is not valid msgpack: {type(e).__name__}: {e}", PREAMBLE_SIZE))
        return None
    if not isinstance(obj, dict):
        report(HeaderDecodeError(f"header must be a msgpack map, found {type(obj).__name__}", PREAMBLE_SIZE))
        return None
    return obj


def _check_string(s, max_bytes: int) -> bool:
    return isinstance(s, str) and 0 < len(s.encode("utf-8", "surrogatepass")) <= max_bytes


def parse(data: bytes | memoryview, report: Report = _raise, check_graph: bool = True,
          max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> Container | None:
    """Parse and check a whole file. With the default `report`, the first problem is raised.

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
        report(FieldValueError(f"reserved preamble word is {reserved:#x}, must be 0", 20))
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


def _parse_header(obj: dict, buf, n: int, hend: int, version, strict: bool, report: Report,
                  check_graph: bool, max_decoded_bytes: int | None) -> Container | None:
    v11 = tuple(version) >= (1, 1)
    top = _Fields(obj, "", report, _TOP_1_1 if v11 else _TOP, strict)
    sampler = top.get("sampler", lambda v: isinstance(v, str), "a string")
    if sampler is not None and sampler != SAMPLER:
        report(UnknownSamplerError(f"sampler {sampler!r} is not defined; version 1 defines {SAMPLER!r}", "sampler"))
    seed = top.int("seed", 0, 2**64 - 1)
    glist = top.get("groups", lambda v: isinstance(v, list), "an array") or []
    tlist = top.get("tensors", lambda v: isinstance(v, list), "an array") or []
    slist = top.get("sections", lambda v: isinstance(v, list), "an array") or []
    if len(glist) > L.MAX_GROUPS:
        report(LimitError(f"{len(glist)} groups exceed the cap {L.MAX_GROUPS}", "groups"))
        glist = []
    if len(tlist) > L.MAX_TENSORS:
        report(LimitError(f"{len(tlist)} tensors exceed the cap {L.MAX_TENSORS}", "tensors"))
        tlist = []
    nsec = len(slist)
    isec = top.int("indices", 0, max(nsec - 1, 0), SectionReferenceError, optional_nil=True)
    gsec = top.int("graph", 0, max(nsec - 1, 0), SectionReferenceError, optional_nil=True)
    metadata = _parse_metadata(top, report)
    graph_size = None
    if v11 and top.is_map and "graph_size" in top.obj:
        graph_size = top.int("graph_size", 1, MAX_GRAPH_SIZE, LimitError)
        if graph_size is not None and gsec is None:
            report(FieldValueError("graph_size is given but the file has no graph", "graph_size"))
            graph_size = None

    sections = _parse_sections(slist, buf, n, hend, strict, report)
    scale_refs: dict[int, int] = {}
    groups = [_parse_group(i, g, strict, report, v11, nsec, scale_refs) for i, g in enumerate(glist)]
    tensors = _parse_tensors(tlist, len(groups), nsec, strict, report)
    if seed is None or sections is None or any(x is None for x in groups + tensors) or not top.ok:
        return None
    # --- cross references
    used: dict[int, str] = {}

    def claim(si: int, kind: str, who: str) -> bool:
        if not 0 <= si < len(sections):  # e.g. indices=0 in a file with no sections
            report(SectionReferenceError(f"section {si} does not exist; the file has {len(sections)}", who))
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
    if not groups and isec is not None:
        report(SectionReferenceError("an indices section is given but there are no groups", "indices"))
        ok = False
    if isec is not None and not claim(isec, "indices", "indices"):
        ok = False
    if gsec is not None and not claim(gsec, "graph", "graph"):
        ok = False
    for ti, t in enumerate(tensors):
        if t.encoding == "raw" and not claim(t.section, "raw", f"tensors[{ti}].section"):
            ok = False
    for gi, si in scale_refs.items():
        if not claim(si, "scales", f"groups[{gi}].scales"):
            ok = False
    for si in range(nsec):
        if si not in used:
            report(SectionReferenceError(f"section {si} ({sections[si][0]}) is not referenced by anything", f"sections[{si}]"))
            ok = False
    # group membership and hashing ratios
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
    # --- payloads
    if isec is not None:
        _, off, length = sections[isec]
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
        ok &= _read_scales(groups[gi], gi, sections[si], buf, report)
    for ti, t in enumerate(tensors):
        if t.encoding == "raw":
            _, off, length = sections[t.section]
            itemsize = np.dtype(DTYPES[t.dtype]).itemsize
            if length != t.numel * itemsize:
                report(SectionLengthError(f"raw tensor {t.name!r} needs {t.numel * itemsize} bytes, section has {length}",
                                          f"sections[{t.section}].length"))
                ok = False
                continue
            arr = np.frombuffer(buf, dtype=DTYPES[t.dtype], count=t.numel, offset=off).reshape(t.shape)
            if t.dtype == "bool" and arr.size and int(arr.max()) > 1:
                report(FieldValueError(f"bool tensor {t.name!r} holds bytes other than 0 and 1", off))
                ok = False
            t.data = arr
    graph = None
    if gsec is not None:
        _, off, length = sections[gsec]
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


def _parse_metadata(top: _Fields, report: Report) -> dict[str, str]:
    md = top.get("metadata", lambda v: isinstance(v, dict), "a map")
    if md is None:
        return {}
    if len(md) > L.MAX_METADATA_ENTRIES:
        report(MetadataError(f"{len(md)} metadata entries exceed the cap {L.MAX_METADATA_ENTRIES}", "metadata"))
        return {}
    out = {}
    for k, v in md.items():
        if not _check_string(k, L.MAX_METADATA_KEY_BYTES):
            report(MetadataError(f"metadata key {k!r} must be a non-empty string of at most {L.MAX_METADATA_KEY_BYTES} bytes", "metadata"))
            top.ok = False
        elif not isinstance(v, str):
            report(MetadataError(f"metadata value must be a string, found {type(v).__name__}", f"metadata.{k}"))
            top.ok = False
        else:
            out[k] = v
    return out


def _parse_sections(slist: list, buf, n: int, hend: int, strict: bool, report: Report):
    out, ok, expected = [], True, _align(hend)
    prev_end = hend
    for si, s in enumerate(slist):
        f = _Fields(s, f"sections[{si}]", report, _SECTION, strict)
        kind = f.get("kind", lambda v: isinstance(v, str), "a string")
        off = f.int("offset", 0, 2**64 - 1)
        length = f.int("length", 0, 2**64 - 1)
        crc = f.int("crc32", 0, 2**32 - 1)
        if kind is not None and kind not in SECTION_KINDS:
            report(FieldValueError(f"section kind {kind!r} is not one of {SECTION_KINDS}", f"sections[{si}].kind"))
            f.ok = False
        if not f.ok:
            ok = False
        if off is None or length is None:
            break  # its extent is unknown, so the sections after it cannot be checked against it
        if off != expected:
            if off < prev_end:
                what = "overlaps the header" if si == 0 else f"overlaps or precedes section {si - 1}"
            elif off % L.ALIGNMENT:
                what = "is not 64-byte aligned"
            else:
                what = "leaves unused bytes before it"
            report(SectionLayoutError(f"section starts at {off} and {what}; it must start at {expected}", f"sections[{si}].offset"))
            ok = False
            break
        if off + length > n:
            report(TruncatedError(f"section {si} ({kind}) spans {off}..{off + length} but the file ends at {n}", off))
            ok = False
            break
        pad = bytes(buf[prev_end:off])
        if pad.count(0) != len(pad):
            report(PaddingError("alignment padding before a section is not zero", prev_end + next(i for i, b in enumerate(pad) if b)))
            ok = False
        actual = zlib.crc32(buf[off:off + length])
        if crc is not None and actual != crc:
            report(ChecksumError(f"section {si} ({kind}) CRC-32 is {actual:08x}, header says {crc:08x}", off))
            ok = False
        out.append((kind, off, length))
        prev_end = off + length
        expected = _align(prev_end)
    if ok:
        end = prev_end
        if n > end:
            report(TrailingBytesError(f"{n - end} bytes after the end of the last structure", end))
            ok = False
    return out if ok else None


def _inflate_graph(data: bytes, size: int, max_decoded_bytes: int | None, where: str, report: Report) -> bytes | None:
    """The graph section of a file with `graph_size` (1.1): one zlib stream (RFC 1950) that inflates to
    exactly `size` bytes and ends at the section's end. Inflation stops at size + 1 bytes (no bomb)."""
    import zlib

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


def _read_scales(g: Group, gi: int, section, buf, report: Report) -> bool:
    """A group's scales section (1.1): count = length / 2 bfloat16 patterns; count divides num_values;
    no hashing; every scale and every product sigma * scale a valid sigma (SPEC.md 7.3)."""
    _, off, length = section
    where = f"groups[{gi}].scales"
    if length == 0 or length % 2:
        report(SectionLengthError(f"a scales section holds 2-byte entries, at least one; it has {length} bytes", where))
        return False
    count = length // 2
    if g.num_values % count:
        report(ScalesError(f"{count} scales do not divide the group's {g.num_values} values", where))
        return False
    if g.hashing:
        report(ScalesError("a group with scales must not use hashing", where))
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


def _parse_group(gi: int, g, strict: bool, report: Report, v11: bool = False, nsec: int = 0,
                 scale_refs: dict | None = None) -> Group | None:
    where = f"groups[{gi}]"
    f = _Fields(g, where, report, _GROUP_1_1 if v11 else _GROUP, strict)
    if v11 and f.is_map and "scales" in f.obj:
        si = f.int("scales", 0, max(nsec - 1, 0), SectionReferenceError)
        if si is not None and scale_refs is not None:
            scale_refs[gi] = si
    mu = f.int("mu", 0, 2**32 - 1)
    sigma = f.int("sigma", 0, 2**16 - 1)
    bsize = f.int("block_size", 1, L.MAX_BLOCK_SIZE, BlockSizeError)
    bits = f.int("index_bits", 1, L.MAX_INDEX_BITS, IndexWidthError)
    nv = f.int("num_values", 1, L.MAX_NUM_VALUES, LimitError)
    hashing = f.get("hashing", lambda v: isinstance(v, bool), "a boolean")
    lay = f.get("layout", lambda v: isinstance(v, dict), "a map")
    layout = None
    if lay is not None:
        kind = lay.get("kind")
        if kind == "contiguous":
            lf = _Fields(lay, f"{where}.layout", report, ("kind",), strict)
            layout = Layout() if lf.ok else None
        elif kind == "affine":
            lf = _Fields(lay, f"{where}.layout", report, ("kind", "a", "c"), strict)
            a = lf.int("a", 0, L.MAX_NUM_VALUES - 1, LayoutParameterError)
            c = lf.int("c", 0, L.MAX_NUM_VALUES - 1, LayoutParameterError)
            if lf.ok and nv is not None:
                if not (a < nv and c < nv and math.gcd(a, nv) == 1):
                    report(LayoutParameterError(f"affine layout needs 0 <= a, c < {nv} and gcd(a, {nv}) = 1; got a={a}, c={c}",
                                                f"{where}.layout"))
                else:
                    layout = Layout("affine", a, c)
        else:
            shown = repr(kind) if isinstance(kind, str) or kind is None else f"of type {type(kind).__name__}"
            report(FieldValueError(f"layout kind {shown} is not 'contiguous' or 'affine'", f"{where}.layout.kind"))
    if mu is not None and sigma is not None:
        try:
            check_coding_parameters(mu, sigma, where)
        except MrcError as e:
            report(e)
            return None
    if None in (mu, sigma, bsize, bits, nv, hashing, layout) or not f.ok:
        return None
    return Group(mu, sigma, bsize, bits, nv, layout, hashing, np.zeros(0, dtype=np.int64))


def _parse_tensors(tlist: list, ngroups: int, nsec: int, strict: bool, report: Report) -> list:
    out, names = [], {}
    for ti, t in enumerate(tlist):
        where = f"tensors[{ti}]"
        enc = t.get("encoding") if isinstance(t, dict) else None
        if isinstance(t, dict) and enc not in ("coded", "raw"):
            if isinstance(enc, str) or enc is None and "encoding" in t:
                report(UnknownEncodingError(f"encoding {enc!r} is not 'coded' or 'raw'", f"{where}.encoding"))
            elif "encoding" not in t:
                report(MissingFieldError("required field 'encoding' is missing", f"{where}.encoding"))
            else:
                report(FieldTypeError(f"expected a string, found {type(enc).__name__}", f"{where}.encoding"))
            out.append(None)
            continue
        f = _Fields(t, where, report, _TENSOR_CODED if enc == "coded" else _TENSOR_RAW, strict)
        name = f.get("name", lambda v: isinstance(v, str), "a string")
        if name is not None and not _check_string(name, L.MAX_NAME_BYTES):
            report(FieldValueError(f"name must be 1..{L.MAX_NAME_BYTES} bytes of UTF-8", f"{where}.name"))
            name = None
        if name is not None:
            if name in names:
                report(DuplicateNameError(f"name {name!r} is also used by tensors[{names[name]}]", f"{where}.name"))
                name = None
            else:
                names[name] = ti
        shape = _parse_shape(f.get("shape", lambda v: isinstance(v, list), "an array"), f"{where}.shape", report)
        if enc == "coded":
            ref = f.int("group", 0, max(ngroups - 1, 0), SectionReferenceError)
            if ref is not None and ngroups == 0:
                report(SectionReferenceError("coded tensor refers to a group but the file has none", f"{where}.group"))
                ref = None
            dtype = "float32"
        else:
            dtype = f.get("dtype", lambda v: isinstance(v, str), "a string")
            if dtype is not None and dtype not in DTYPES:
                report(UnknownDTypeError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}", f"{where}.dtype"))
                dtype = None
            ref = f.int("section", 0, max(nsec - 1, 0), SectionReferenceError)
            if ref is not None and nsec == 0:
                report(SectionReferenceError("raw tensor refers to a section but the file has none", f"{where}.section"))
                ref = None
        if None in (name, shape, ref, dtype) or not f.ok:
            out.append(None)
            continue
        if enc == "coded":
            out.append(Tensor(name=name, shape=shape, encoding=enc, group=ref, dtype=dtype))
        else:
            out.append(Tensor(name=name, shape=shape, encoding=enc, dtype=dtype, section=ref))
    return out


def _parse_shape(shape, where: str, report: Report) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if len(shape) > L.MAX_RANK:
        report(LimitError(f"rank {len(shape)} exceeds the cap {L.MAX_RANK}", where))
        return None
    numel = 1
    for i, d in enumerate(shape):
        if not _is_int(d):
            report(FieldTypeError(f"dimension must be an integer, found {type(d).__name__}", f"{where}[{i}]"))
            return None
        if d < 0 or d > L.MAX_DIM:
            report(ShapeError(f"dimension {d} is outside 0..{L.MAX_DIM}", f"{where}[{i}]"))
            return None
        numel *= d
        if numel > L.MAX_TENSOR_ELEMENTS:
            report(ShapeError(f"element count overflows the cap {L.MAX_TENSOR_ELEMENTS}", where))
            return None
    return tuple(shape)


def _check_graph(graph: bytes, tensors: list[Tensor], where: str, report: Report,
                 version: tuple[int, int] = (1, 0)) -> bool:
    """ONNX graph rules (SPEC.md 7.6). Needs the `onnx` package; without it the graph is not checked."""
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
    inits = {i.name for i in model.graph.initializer}
    if version >= (1, 1):
        ok &= _check_stubs(model.graph, tensors, where, report)
    else:
        clash = sorted(file_names & inits)
        if clash:
            report(GraphError(f"graph initializers {clash[:5]} duplicate tensors of the file; their data must be removed",
                              where))
            ok = False
    defined = file_names | inits | {i.name for i in model.graph.input} | {""}
    defined |= {s.values.name for s in model.graph.sparse_initializer}
    for node in model.graph.node:
        for name in node.input:
            if name not in defined:
                report(GraphError(f"node {node.name or node.op_type!r} reads {name!r}, which nothing defines", where))
                return False
        defined.update(node.output)
    return ok


def _check_stubs(graph, tensors: list[Tensor], where: str, report: Report) -> bool:
    """Format 1.1 stubs (SPEC.md 7.6): every initializer (any depth) named like a file tensor, and every
    Constant producing one, holds no data and has the tensor's type and dims; at most one per tensor."""
    from .container import ONNX_DATA_TYPES
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
        if s.tensor.data_type != ONNX_DATA_TYPES[t.dtype] or tuple(s.tensor.dims) != tuple(t.shape):
            report(GraphError(f"stub for {s.name!r} at {s.path} has data type {s.tensor.data_type} and dims "
                              f"{list(s.tensor.dims)}; the file tensor is {t.dtype} {list(t.shape)}", where))
            ok = False
    return ok


def _external_data_tensors(model) -> list[str]:
    """Every tensor anywhere in the model that points to external data: initializers and sparse
    initializers of every graph, tensor and sparse-tensor attributes of every node, at any depth, in the
    main graph, in model-local functions and in training_info graphs (SPEC.md 7.6: "anywhere")."""
    import onnx

    from .onnx_graphs import all_graphs

    def external(t) -> bool:
        return t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0

    roots = [model.graph] if not isinstance(model, onnx.GraphProto) else [model]
    if isinstance(model, onnx.ModelProto):
        for ti in model.training_info:
            roots += [ti.initialization, ti.algorithm]
    node_lists = [g.node for root in roots for g in all_graphs(root)]
    tensors = []
    for root in roots:
        for g in all_graphs(root):
            tensors += list(g.initializer)
            tensors += [x for sp in g.sparse_initializer for x in (sp.values, sp.indices)]
    if isinstance(model, onnx.ModelProto):
        for f in model.functions:
            node_lists.append(f.node)
            for node in f.node:  # subgraphs held by a function's nodes
                for a in node.attribute:
                    for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                        for g in all_graphs(sub):
                            node_lists.append(g.node)
                            tensors += list(g.initializer)
                            tensors += [x for sp in g.sparse_initializer for x in (sp.values, sp.indices)]
    for nodes in node_lists:
        for node in nodes:
            for a in node.attribute:
                if a.HasField("t"):
                    tensors.append(a.t)
                tensors.extend(a.tensors)
                if a.HasField("sparse_tensor"):
                    tensors += [a.sparse_tensor.values, a.sparse_tensor.indices]
                for sp in a.sparse_tensors:
                    tensors += [sp.values, sp.indices]
    return [t.name or "<unnamed>" for t in tensors if external(t)]


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
