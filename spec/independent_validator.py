"""A second validator, written from SPEC.md 7-9 alone (no code of the `mrcformat` package): its own
msgpack parser and its own protobuf wire-format walk for the graph rules, no ONNX library.

    python spec/independent_validator.py FILE...   # prints "FILE: ok" or "FILE: <code> at <where>"

`check(data)` returns None for a valid file, else the (code, where) of the first rule broken in the
order of SPEC.md 9.2. The conformance tests run it on every vector and on mutated files next to the
reference reader: two implementations that must agree on every file, valid or not.
"""
from __future__ import annotations

import math
import struct
import sys
import zlib

__all__ = ["Reject", "check"]

MAGIC = b"\x89MRC\r\n\x1a\n"
DTYPES = {"float32": (4, 1), "float16": (2, 10), "bfloat16": (2, 16), "float64": (8, 11), "int8": (1, 3),
          "uint8": (1, 2), "int16": (2, 5), "int32": (4, 6), "int64": (8, 7), "bool": (1, 9)}  # itemsize, ONNX type
KINDS = ("indices", "raw", "graph", "scales")
TOP = ("sampler", "seed", "groups", "tensors", "indices", "graph", "sections", "metadata")
GROUP = ("mu", "sigma", "block_size", "index_bits", "num_values", "layout", "hashing")
CODED, RAW = ("name", "shape", "encoding", "group"), ("name", "shape", "encoding", "dtype", "section")
SECTION = ("kind", "offset", "length", "crc32")


class Reject(Exception):
    def __init__(self, code: str, where):
        super().__init__(f"{code} at {where}")
        self.code, self.where = code, where


def check(data: bytes) -> tuple[str, object] | None:
    try:
        _check(bytes(data))
    except Reject as r:
        return r.code, r.where
    return None


# ---------------------------------------------------------------------------------------- msgpack (7.2)

class _Msgpack:
    def __init__(self, b: bytes):
        self.b, self.p = b, 0

    def take(self, k: int) -> bytes:
        if k < 0 or self.p + k > len(self.b):
            raise Reject("header-decode", 24)
        out = self.b[self.p:self.p + k]
        self.p += k
        return out

    def uint(self, k: int) -> int:
        return int.from_bytes(self.take(k), "big")

    def value(self, depth: int):
        t = self.uint(1)
        if t <= 0x7F:
            return t
        if t >= 0xE0:
            return t - 256
        if 0x80 <= t <= 0x8F:
            return self.map(t & 0x0F, depth)
        if 0x90 <= t <= 0x9F:
            return self.array(t & 0x0F, depth)
        if 0xA0 <= t <= 0xBF:
            return self.str(t & 0x1F)
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if t in simple:
            return simple[t]
        if 0xCC <= t <= 0xCF:
            return self.uint(1 << (t - 0xCC))
        if 0xD0 <= t <= 0xD3:
            k = 1 << (t - 0xD0)
            return int.from_bytes(self.take(k), "big", signed=True)
        if 0xD9 <= t <= 0xDB:
            return self.str(self.uint(1 << (t - 0xD9)))
        if t in (0xDC, 0xDD):
            return self.array(self.uint(2 if t == 0xDC else 4), depth)
        if t in (0xDE, 0xDF):
            return self.map(self.uint(2 if t == 0xDE else 4), depth)
        raise Reject("header-decode", 24)  # 0xC1, bin, ext, float

    def str(self, k: int) -> str:
        try:
            return self.take(k).decode("utf-8")
        except UnicodeDecodeError:
            raise Reject("header-decode", 24) from None

    def array(self, k: int, depth: int) -> list:
        if depth + 1 > 64 or k > len(self.b) - self.p:
            raise Reject("header-decode", 24)
        return [self.value(depth + 1) for _ in range(k)]

    def map(self, k: int, depth: int) -> dict:
        if depth + 1 > 64 or 2 * k > len(self.b) - self.p:
            raise Reject("header-decode", 24)
        out = {}
        for _ in range(k):
            key = self.value(depth + 1)
            if not isinstance(key, str) or key in out:
                raise Reject("header-decode", 24)
            out[key] = self.value(depth + 1)
        return out


def _header(raw: bytes) -> dict:
    m = _Msgpack(raw)
    if m.uint(1) not in (*range(0x80, 0x90), 0xDE, 0xDF):
        raise Reject("header-decode", 24)
    m.p = 0
    h = m.value(0)
    if m.p != len(raw):
        raise Reject("header-decode", 24)
    return h


# ---------------------------------------------------------------------------------------- fields (7.3)

def _is_int(v) -> bool:
    return type(v) is int


class _Map:
    def __init__(self, obj: dict, path: str):
        self.obj, self.path = obj, path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def unknown(self, known, strict: bool) -> None:
        for k in self.obj:
            if strict and k not in known:
                raise Reject("unknown-field", self.at(k))

    def get(self, key: str, ok, nil: bool = False):
        if key not in self.obj:
            raise Reject("missing-field", self.at(key))
        v = self.obj[key]
        if v is None and nil:
            return None
        if not ok(v):
            raise Reject("field-type", self.at(key))
        return v

    def int(self, key: str, lo=None, hi=None, code="field-value", hi_code=None, nil: bool = False):
        v = self.get(key, _is_int, nil)
        if v is not None and lo is not None and v < lo:
            raise Reject(code, self.at(key))
        if v is not None and hi is not None and v > hi:
            raise Reject(hi_code or code, self.at(key))
        return v


def _entry(obj, where: str) -> _Map:
    """An entry of `groups`, `tensors` or `sections`: a map, else field-type at the entry."""
    if not isinstance(obj, dict):
        raise Reject("field-type", where)
    return _Map(obj, where)


def _sigma_ok(bits: int) -> bool:
    exp, man = ((bits >> 7) & 0xFF) - 127, bits & 0x7F
    return not bits & 0x8000 and exp >= -64 and (exp < 64 or (exp == 64 and man == 0))


def _bf16(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def _fields(h: dict, minor: int):
    strict, v11 = minor <= 2, minor >= 1
    top = _Map(h, "")
    top.unknown(TOP + (("graph_size",) if v11 else ()), strict)
    if top.get("sampler", lambda v: isinstance(v, str)) != "normal16":
        raise Reject("unknown-sampler", "sampler")
    top.int("seed", 0, 2**64 - 1)
    groups = top.get("groups", lambda v: isinstance(v, list))
    if len(groups) > 65536:
        raise Reject("limit", "groups")
    tensors = top.get("tensors", lambda v: isinstance(v, list))
    if len(tensors) > 65536:
        raise Reject("limit", "tensors")
    indices = top.int("indices", nil=True)
    graph = top.int("graph", nil=True)
    sections = top.get("sections", lambda v: isinstance(v, list))
    if "metadata" not in h:
        raise Reject("missing-field", "metadata")
    md = h["metadata"]
    if not isinstance(md, dict) or len(md) > 4096:
        raise Reject("metadata", "metadata")
    for k, v in md.items():
        if not 1 <= len(k.encode("utf-8")) <= 256:
            raise Reject("metadata", "metadata")
        if not isinstance(v, str):
            raise Reject("metadata", f"metadata.{k}")
    graph_size = None
    if v11 and "graph_size" in h:
        graph_size = top.int("graph_size", 1, 2**31 - 1)
        if graph is None:
            raise Reject("field-value", "graph_size")
    gs = []
    for gi, g in enumerate(groups):
        f = _entry(g, f"groups[{gi}]")
        f.unknown(GROUP + (("scales",) if v11 else ()), strict)
        mu = f.int("mu", 0, 2**32 - 1)
        if (mu >> 23) & 0xFF == 0xFF:
            raise Reject("coding-parameter", f.at("mu"))
        sigma = f.int("sigma", 0, 0xFFFF)
        if not _sigma_ok(sigma):
            raise Reject("coding-parameter", f.at("sigma"))
        bsz = f.int("block_size", 1, 4096, "block-size")
        bits = f.int("index_bits", 1, 32, "index-width")
        n = f.int("num_values", 1, 2**31 - 1, "field-value", "limit")
        lay = _Map(f.get("layout", lambda v: isinstance(v, dict)), f.at("layout"))
        kind = lay.get("kind", lambda v: isinstance(v, str))
        if kind not in ("contiguous", "affine"):
            raise Reject("field-value", lay.at("kind"))
        lay.unknown(("kind",) if kind == "contiguous" else ("kind", "a", "c"), strict)
        if kind == "affine":
            a = lay.int("a", 0, n - 1, "layout-parameter")
            lay.int("c", 0, n - 1, "layout-parameter")
            if math.gcd(a, n) != 1:
                raise Reject("layout-parameter", lay.path)
        hashing = f.get("hashing", lambda v: isinstance(v, bool))
        scales = None
        if v11 and "scales" in g:
            scales = f.int("scales")
            if hashing:
                raise Reject("scales", f.at("scales"))
        gs.append({"mu": mu, "sigma": sigma, "B": bsz, "w": bits, "n": n, "hashing": hashing, "scales": scales})
    ts, names = [], set()
    for ti, t in enumerate(tensors):
        f = _entry(t, f"tensors[{ti}]")
        enc = f.get("encoding", lambda v: isinstance(v, str))
        if enc not in ("coded", "raw"):
            raise Reject("unknown-encoding", f.at("encoding"))
        f.unknown(CODED if enc == "coded" else RAW, strict)
        name = f.get("name", lambda v: isinstance(v, str))
        size = len(name.encode("utf-8"))
        if size == 0:
            raise Reject("field-value", f.at("name"))
        if size > 1024:
            raise Reject("limit", f.at("name"))
        if name in names:
            raise Reject("duplicate-name", f.at("name"))
        names.add(name)
        shape = f.get("shape", lambda v: isinstance(v, list))
        if len(shape) > 8:
            raise Reject("limit", f.at("shape"))
        for k, d in enumerate(shape):
            if not _is_int(d):
                raise Reject("field-type", f"{f.path}.shape[{k}]")
            if not 0 <= d <= 2**31 - 1:
                raise Reject("shape", f"{f.path}.shape[{k}]")
        numel = math.prod(shape)
        if numel > 2**31 - 1:
            raise Reject("shape", f.at("shape"))
        if enc == "coded":
            ts.append({"name": name, "shape": shape, "numel": numel, "coded": True, "group": f.int("group")})
        else:
            dtype = f.get("dtype", lambda v: isinstance(v, str))
            if dtype not in DTYPES:
                raise Reject("unknown-dtype", f.at("dtype"))
            ts.append({"name": name, "shape": shape, "numel": numel, "coded": False, "dtype": dtype,
                       "section": f.int("section")})
    ss = []
    for si, s in enumerate(sections):
        f = _entry(s, f"sections[{si}]")
        f.unknown(SECTION, strict)
        kind = f.get("kind", lambda v: isinstance(v, str))
        if kind not in KINDS:
            raise Reject("field-value", f.at("kind"))
        ss.append({"kind": kind, "off": f.int("offset", 0, 2**64 - 1), "len": f.int("length", 0, 2**64 - 1),
                   "crc": f.int("crc32", 0, 2**32 - 1)})
    return gs, ts, ss, indices, graph, graph_size


# ---------------------------------------------------------------------------------------- the file (7.1-7.5)

def _check(d: bytes) -> None:
    n = len(d)
    if n < 8 or d[:8] != MAGIC:
        raise Reject("truncated", n) if n < 8 and d == MAGIC[:n] else Reject("bad-magic", 0)
    if n < 24:
        raise Reject("truncated", n)
    major, minor, H, hcrc, reserved = struct.unpack_from("<HHIII", d, 8)
    if major != 1:
        raise Reject("unsupported-version", 8)
    if reserved:
        raise Reject("reserved", 20)
    if not 1 <= H <= 16 * 2**20 or 24 + H > n:
        raise Reject("header-size", 12)
    if zlib.crc32(d[24:24 + H]) != hcrc:
        raise Reject("checksum", 16)
    groups, tensors, sections, isec, gsec, graph_size = _fields(_header(d[24:24 + H]), minor)
    # step 9
    end = 24 + H
    for si, s in enumerate(sections):
        if s["off"] != -(-end // 64) * 64:
            raise Reject("section-layout", f"sections[{si}].offset")
        if s["off"] + s["len"] > n:
            raise Reject("truncated", s["off"])
        for p in range(end, s["off"]):
            if d[p]:
                raise Reject("padding", p)
        if zlib.crc32(d[s["off"]:s["off"] + s["len"]]) != s["crc"]:
            raise Reject("checksum", s["off"])
        end = s["off"] + s["len"]
    if n > end:
        raise Reject("trailing-bytes", end)
    # step 10
    used: set[int] = set()

    def claim(si: int, kind: str, who: str) -> None:
        if not 0 <= si < len(sections) or si in used or sections[si]["kind"] != kind:
            raise Reject("section-reference", who)
        used.add(si)

    if bool(groups) != (isec is not None):
        raise Reject("section-reference", "indices")
    if isec is not None:
        claim(isec, "indices", "indices")
    if gsec is not None:
        claim(gsec, "graph", "graph")
    for ti, t in enumerate(tensors):
        if not t["coded"]:
            claim(t["section"], "raw", f"tensors[{ti}].section")
        elif not 0 <= t["group"] < len(groups):
            raise Reject("group-reference", f"tensors[{ti}].group")
    for gi, g in enumerate(groups):
        if g["scales"] is not None:
            claim(g["scales"], "scales", f"groups[{gi}].scales")
    for si in range(len(sections)):
        if si not in used:
            raise Reject("section-reference", f"sections[{si}]")
    # step 11
    for gi, g in enumerate(groups):
        m = sum(t["numel"] for t in tensors if t["coded"] and t["group"] == gi)
        if m == 0:
            raise Reject("hashing", f"groups[{gi}]")
        if m > 2**32 - 1:
            raise Reject("limit", f"groups[{gi}]")
        if (not g["hashing"] and g["n"] != m) or (g["hashing"] and not g["n"] <= m <= 256 * g["n"]):
            raise Reject("hashing", f"groups[{gi}].num_values")
    # step 12
    if isec is not None:
        s = sections[isec]
        lengths = [-(-(-(-g["n"] // g["B"]) * g["w"]) // 8) for g in groups]
        if s["len"] != sum(lengths):
            raise Reject("index-payload", f"sections[{isec}].length")
        pos = s["off"]
        for g, length in zip(groups, lengths):
            used_bits = (-(-g["n"] // g["B"]) * g["w"]) % 8
            if used_bits and d[pos + length - 1] >> used_bits:
                raise Reject("padding", pos + length - 1)
            pos += length
    for gi, g in enumerate(groups):
        if g["scales"] is None:
            continue
        s = sections[g["scales"]]
        if s["len"] == 0 or s["len"] % 2:
            raise Reject("section-length", f"sections[{g['scales']}].length")
        count = s["len"] // 2
        if g["n"] % count:
            raise Reject("scales", f"groups[{gi}].scales")
        for k in range(count):
            r = struct.unpack_from("<H", d, s["off"] + 2 * k)[0]
            prod = _bf16(r) * _bf16(g["sigma"])  # exact in float64: 16 significant bits
            if not _sigma_ok(r) or not 2.0**-64 <= prod <= 2.0**64:
                raise Reject("coding-parameter", f"groups[{gi}].scales[{k}]")
    for t in tensors:
        if t["coded"]:
            continue
        s, (itemsize, _) = sections[t["section"]], DTYPES[t["dtype"]]
        if s["len"] != t["numel"] * itemsize:
            raise Reject("section-length", f"sections[{t['section']}].length")
        if t["dtype"] == "bool":
            for p in range(s["off"], s["off"] + s["len"]):
                if d[p] > 1:
                    raise Reject("raw-value", p)
    if gsec is not None:
        s = sections[gsec]
        where = f"sections[{gsec}]"
        graph = d[s["off"]:s["off"] + s["len"]]
        if graph_size is not None:
            z = zlib.decompressobj()
            try:
                graph = z.decompress(graph, graph_size + 1)
            except zlib.error:
                raise Reject("graph", where) from None
            if len(graph) != graph_size or not z.eof or z.unused_data or z.unconsumed_tail:
                raise Reject("graph", where)
        _graph_rules(graph, tensors, minor, where)


# ---------------------------------------------------------------------------------------- graph (7.6)

class _Bad(Exception):
    pass


# onnx.proto of ONNX 1.23.2 (IR version 14): message -> {field number: kind}. A kind is a message name, 'len'
# (string/bytes), 'var' (varint, enum), 'f32' or 'f64' (fixed width); '*' marks a repeated field (a scalar one
# packed or not); a non-repeated message field given twice is the merge of both.
ONNX_SCHEMA = {
    'ModelProto': {1: 'var', 2: 'len', 3: 'len', 4: 'len', 5: 'var', 6: 'len', 7: 'GraphProto',
        8: 'OperatorSetIdProto*', 14: 'StringStringEntryProto*', 20: 'TrainingInfoProto*', 25: 'FunctionProto*',
        26: 'DeviceConfigurationProto*'},
    'GraphProto': {1: 'NodeProto*', 2: 'len', 5: 'TensorProto*', 10: 'len', 11: 'ValueInfoProto*',
        12: 'ValueInfoProto*', 13: 'ValueInfoProto*', 14: 'TensorAnnotation*', 15: 'SparseTensorProto*',
        16: 'StringStringEntryProto*'},
    'NodeProto': {1: 'len', 2: 'len', 3: 'len', 4: 'len', 5: 'AttributeProto*', 6: 'len', 7: 'len', 8: 'len',
        9: 'StringStringEntryProto*', 10: 'NodeDeviceConfigurationProto*'},
    'AttributeProto': {1: 'len', 2: 'f32', 3: 'var', 4: 'len', 5: 'TensorProto', 6: 'GraphProto', 7: 'f32*',
        8: 'var*', 9: 'len', 10: 'TensorProto*', 11: 'GraphProto*', 13: 'len', 14: 'TypeProto', 15: 'TypeProto*',
        20: 'var', 21: 'len', 22: 'SparseTensorProto', 23: 'SparseTensorProto*'},
    'TensorProto': {1: 'var*', 2: 'var', 3: 'Segment', 4: 'f32*', 5: 'var*', 6: 'len', 7: 'var*', 8: 'len',
        9: 'len', 10: 'f64*', 11: 'var*', 12: 'len', 13: 'StringStringEntryProto*', 14: 'var',
        16: 'StringStringEntryProto*'},
    'Segment': {1: 'var', 2: 'var'},
    'StringStringEntryProto': {1: 'len', 2: 'len'},
    'TypeProto': {1: 'Tensor', 4: 'Sequence', 5: 'Map', 6: 'len', 7: 'Opaque', 8: 'SparseTensor', 9: 'Optional'},
    'Tensor': {1: 'var', 2: 'TensorShapeProto'},
    'TensorShapeProto': {1: 'Dimension*'},
    'Dimension': {1: 'var', 2: 'len', 3: 'len'},
    'Sequence': {1: 'TypeProto'},
    'Map': {1: 'var', 2: 'TypeProto'},
    'Opaque': {1: 'len', 2: 'len'},
    'SparseTensor': {1: 'var', 2: 'TensorShapeProto'},
    'Optional': {1: 'TypeProto'},
    'SparseTensorProto': {1: 'TensorProto', 2: 'TensorProto', 3: 'var*'},
    'NodeDeviceConfigurationProto': {1: 'len', 2: 'ShardingSpecProto*', 3: 'var'},
    'ShardingSpecProto': {1: 'len', 2: 'var*', 3: 'IntIntListEntryProto*', 4: 'ShardedDimProto*'},
    'IntIntListEntryProto': {1: 'var', 2: 'var*'},
    'ShardedDimProto': {1: 'var', 2: 'SimpleShardedDimProto*'},
    'SimpleShardedDimProto': {1: 'var', 2: 'len', 3: 'var'},
    'ValueInfoProto': {1: 'len', 2: 'TypeProto', 3: 'len', 4: 'StringStringEntryProto*'},
    'TensorAnnotation': {1: 'len', 2: 'StringStringEntryProto*'},
    'OperatorSetIdProto': {1: 'len', 2: 'var'},
    'TrainingInfoProto': {1: 'GraphProto', 2: 'GraphProto', 3: 'StringStringEntryProto*',
        4: 'StringStringEntryProto*'},
    'FunctionProto': {1: 'len', 4: 'len', 5: 'len', 6: 'len', 7: 'NodeProto*', 8: 'len', 9: 'OperatorSetIdProto*',
        10: 'len', 11: 'AttributeProto*', 12: 'ValueInfoProto*', 13: 'len', 14: 'StringStringEntryProto*'},
    'DeviceConfigurationProto': {1: 'len', 2: 'var', 3: 'len'},
}


def _kind(msg: str, num: int) -> tuple[str | None, bool]:
    """(kind without '*', repeated?) of field `num` of message `msg`; (None, False) if undefined."""
    k = ONNX_SCHEMA[msg].get(num)
    return (k.rstrip("*"), k.endswith("*")) if k else (None, False)


MAX_PROTO_DEPTH = 101  # the ModelProto and 100 levels of embedded messages or groups (protobuf's default limit)


def _validate(b: bytes, msg: str, depth: int = 1) -> None:
    """Raise _Bad unless `b` parses as `msg`: well-formed wire format, every embedded message of a known
    field parsed (recursively) as its type, packed scalars whole; a known field of another wire type and
    an unknown field are skipped (their wire format still well-formed)."""
    p = 0
    while p < len(b):
        key, p = _varint(b, p)
        num, wt = key >> 3, key & 7
        if num == 0 or key > 0xFFFFFFFF:
            raise _Bad
        kind = _kind(msg, num)[0]
        if wt == 0:
            _, p = _varint(b, p)
        elif wt in (1, 5):
            p += 8 if wt == 1 else 4
        elif wt == 2:
            k, p = _varint(b, p)
            v, p = b[p:p + k], p + k
            if p > len(b):
                raise _Bad
            if kind in ONNX_SCHEMA:
                if depth + 1 > MAX_PROTO_DEPTH:
                    raise _Bad
                _validate(v, kind, depth + 1)
            elif kind == "var" and _kind(msg, num)[1]:
                q = 0
                while q < len(v):
                    _, q = _varint(v, q)
            elif kind in ("f32", "f64") and _kind(msg, num)[1] and len(v) % (4 if kind == "f32" else 8):
                raise _Bad
        elif wt == 3:
            p = _skip_group(b, p, num, depth + 1)
        else:
            raise _Bad
        if p > len(b):
            raise _Bad


def _skip_group(b: bytes, p: int, num: int, depth: int) -> int:
    if depth > MAX_PROTO_DEPTH:
        raise _Bad
    while True:
        key, p = _varint(b, p)
        n2, wt = key >> 3, key & 7
        if n2 == 0 or key > 0xFFFFFFFF:
            raise _Bad
        if wt == 4:
            if n2 != num:
                raise _Bad
            return p
        if wt == 0:
            _, p = _varint(b, p)
        elif wt in (1, 5):
            p += 8 if wt == 1 else 4
        elif wt == 2:
            k, p = _varint(b, p)
            p += k
        elif wt == 3:
            p = _skip_group(b, p, n2, depth + 1)
        else:
            raise _Bad
        if p > len(b):
            raise _Bad


def _varint(b: bytes, p: int) -> tuple[int, int]:
    x = shift = 0
    for i in range(10):
        if p >= len(b):
            raise _Bad
        byte = b[p]
        p += 1
        x |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return x & (2**64 - 1), p
    raise _Bad


def _fields_of(b: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message (already `_validate`d); value: int or bytes."""
    out, p = [], 0
    while p < len(b):
        key, p = _varint(b, p)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise _Bad
        if wt == 0:
            v, p = _varint(b, p)
        elif wt == 1 or wt == 5:
            k = 8 if wt == 1 else 4
            if p + k > len(b):
                raise _Bad
            v, p = int.from_bytes(b[p:p + k], "little"), p + k
        elif wt == 2:
            k, p = _varint(b, p)
            if p + k > len(b):
                raise _Bad
            v, p = b[p:p + k], p + k
        elif wt == 3:  # a group (an unknown field): skip to its end
            p = _skip_group(b, p, num, 1)
            continue
        else:
            raise _Bad
        out.append((num, wt, v))
    return out


class _Msg:
    """A parsed protobuf message: embedded singular messages merge (their bytes concatenate)."""

    def __init__(self, b: bytes):
        self.f = _fields_of(b)

    def msgs(self, num: int) -> list[_Msg]:
        return [_Msg(v) for n, wt, v in self.f if n == num and wt == 2]

    def msg(self, num: int) -> _Msg | None:
        parts = [v for n, wt, v in self.f if n == num and wt == 2]
        return _Msg(b"".join(parts)) if parts else None

    def strs(self, num: int) -> list[str]:
        return [v.decode("utf-8", "replace") for n, wt, v in self.f if n == num and wt == 2]

    def str(self, num: int) -> str:
        s = self.strs(num)
        return s[-1] if s else ""

    def ints(self, num: int) -> list[int]:
        out = []
        for n, wt, v in self.f:
            if n == num and wt == 0:
                out.append(v)
            elif n == num and wt == 2:  # packed
                p = 0
                while p < len(v):
                    x, p = _varint(v, p)
                    out.append(x)
        return [x - 2**64 if x >= 2**63 else x for x in out]

    def count(self, num: int) -> int:
        """Elements of a repeated field, packed or not (0: absent or empty)."""
        c = 0
        for n, wt, v in self.f:
            if n == num:
                c += 1 if wt != 2 else (len(v) > 0)
        return c


def _tensors_anywhere(b: bytes, msg: str = "ModelProto") -> list[_Msg]:
    """Every TensorProto reachable from `b` (a `msg`) through message fields of the schema, at any depth
    (rule 2's "anywhere"); non-repeated message fields given twice are merged first."""
    out, stack = [], [(b, msg)]
    while stack:
        data, name = stack.pop()
        if name == "TensorProto":
            out.append(_Msg(data))
            continue
        singular: dict[int, bytes] = {}
        for num, wt, v in _fields_of(data):
            kind, repeated = _kind(name, num)
            if wt == 2 and kind in ONNX_SCHEMA:
                if repeated:
                    stack.append((v, kind))
                else:
                    singular[num] = singular.get(num, b"") + v
        stack += [(v, _kind(name, num)[0]) for num, v in singular.items()]
    return out


def _has_data(t: _Msg) -> bool:
    return bool(any(t.count(k) for k in (4, 5, 6, 7, 9, 10, 11, 13)) or _external(t))


def _external(t: _Msg) -> bool:
    loc = [x for x in t.ints(14) if x in (0, 1)]
    return (bool(loc) and loc[-1] == 1) or bool(t.msgs(13))


def _subgraphs(node: _Msg) -> list[_Msg]:
    out = []
    for a in node.msgs(5):
        g = a.msg(6)
        out += ([g] if g is not None else []) + a.msgs(11)
    return out


def _graphs(root: _Msg) -> list[_Msg]:
    out, stack = [], [root]
    while stack:
        g = stack.pop()
        out.append(g)
        for node in g.msgs(1):
            stack += _subgraphs(node)
    return out


def _graph_rules(b: bytes, tensors: list[dict], minor: int, where: str) -> None:
    try:
        _validate(b, "ModelProto")
        model = _Msg(b)
        top = model.msg(7)
        if top is None:
            raise Reject("graph", where)
        every = _tensors_anywhere(b)
        if any(_external(t) for t in every):
            raise Reject("external-data", where)
        files = {t["name"]: t for t in tensors}

        def sparse_names(g: _Msg) -> list[str]:
            return [sp.msg(1).str(8) for sp in g.msgs(15) if sp.msg(1) is not None]

        if minor == 0:
            if any(t.str(8) in files for t in top.msgs(5)) or any(x in files for x in sparse_names(top)):
                raise Reject("graph", where)
        else:
            seen = set()
            for g in _graphs(top):
                claims = [t for t in g.msgs(5) if t.str(8) in files]
                if any(x in files for x in sparse_names(g)):
                    raise Reject("graph", where)
                for node in g.msgs(1):
                    outs = node.strs(2)
                    if node.str(4) == "Constant" and node.str(7) in ("", "ai.onnx") and outs and outs[0] in files:
                        attrs = node.msgs(5)
                        if len(attrs) != 1 or attrs[0].str(1) != "value" or attrs[0].msg(5) is None:
                            raise Reject("graph", where)
                        claims.append((outs[0], attrs[0].msg(5)))
                for c in claims:
                    name, t = c if isinstance(c, tuple) else (c.str(8), c)
                    ft = files[name]
                    dtype = DTYPES[ft["dtype"]][1] if not ft["coded"] else 1
                    stub_type = (t.ints(2)[-1:] or [0])[0]
                    widening = minor >= 2 and not ft["coded"] and ft["dtype"] in ("float16", "bfloat16") and stub_type == 1
                    if _has_data(t) or name in seen or (stub_type != dtype and not widening) or t.ints(1) != list(ft["shape"]):
                        raise Reject("graph", where)
                    seen.add(name)
        defined = set(files) | {t.str(8) for t in top.msgs(5)} | set(sparse_names(top)) | {""}
        defined |= {v.str(1) for v in top.msgs(11)}
        for node in top.msgs(1):
            if any(x not in defined for x in node.strs(1)):
                raise Reject("graph", where)
            defined |= set(node.strs(2))
    except _Bad:
        raise Reject("graph", where) from None


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path, "rb") as fh:
            r = check(fh.read())
        print(f"{path}: ok" if r is None else f"{path}: {r[0]} at {r[1]}")
