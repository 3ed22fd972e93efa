"""Generate the conformance vectors in spec/vectors/ (SPEC.md section 12).

    python spec/make_vectors.py            # (re)write spec/vectors/*.mrc and manifest.json
    python spec/make_vectors.py --check    # exit 1 if the committed vectors differ from a fresh build

Every file is built deterministically from fixed seeds, so a rebuild is byte-identical. The
manifest records each file's SHA-256 and, per tensor, the SHA-256 of its decoded little-endian
bytes (float32 for coded tensors): a conforming decoder reproduces every one. Each invalid file
breaks one rule of SPEC.md 9.2 (the `two_faults_*` files two, to pin the order of checks); the
manifest gives the code and `where` a reader reports, and the build fails unless the reference
reader reports exactly those. `spec/known_answers.json` holds intermediate decoding values.
"""
from __future__ import annotations

import copy
import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path

import msgpack
import numpy as np

from mrcformat import MrcError, decode, from_bytes, to_bytes
from mrcformat.container import DTYPES, MAGIC, Container, Group, Tensor
from mrcformat.layout import Layout, choose_affine, num_blocks
from mrcformat.sampler import float_to_bf16_bits, float_to_f32_bits

HERE = Path(__file__).resolve().parent
OUT = HERE / "vectors"
KNOWN = HERE / "known_answers.json"


def group(rng: np.random.Generator, n: int, bsz: int, bits: int, *, layout: Layout | None = None,
          hashing: bool = False, mu: float = 0.0, sigma: float = 0.05) -> Group:
    nb = num_blocks(n, bsz)
    idx = rng.integers(0, 2**bits, size=nb, dtype=np.uint64).astype(np.int64)
    return Group(float_to_f32_bits(mu), float_to_bf16_bits(sigma), bsz, bits, n, layout or Layout(), hashing, idx)


def mlp_graph(w1: str, b1: str, w2: str, b2: str, hidden: int, nin: int, nout: int) -> bytes:
    """x[N, nin] -> Gemm(w1, b1) -> Relu -> Gemm(w2, b2) -> logits[N, nout]; weights read by name."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Gemm", ["x", w1, b1], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", w2, b2], ["logits"], transB=1),
    ]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", nin])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", nout])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="mrcformat-vectors",
                          producer_version="1", ir_version=8)
    return m.SerializeToString()


def external_data_graph() -> bytes:
    from onnx import TensorProto, helper

    t = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="weights.bin")
    g = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "ext", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[t])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="mrcformat-vectors",
                             producer_version="1", ir_version=8).SerializeToString()


def stub(name: str, shape: list[int], dtype: int = 1):
    """A data-less TensorProto: the place a file tensor fills (SPEC.md 7.6, format 1.1)."""
    from onnx import TensorProto

    t = TensorProto()
    t.name, t.data_type = name, dtype
    t.dims.extend(shape)
    return t


def stubs_graph(*, with_data: bool = False) -> bytes:
    """Weights where exported models keep them (format 1.1 stubs at every kind of place):
    y = If(flag, then: x @ w_then (a Constant), else: Loop 2 times s @ w_loop (a Constant in the body)
    starting from x @ w_else (an initializer of the else branch)) + bias (a top-level initializer).
    with_data: w_then's Constant keeps a value (an invalid stub)."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    then_value = stub("", [4, 3])
    if with_data:
        then_value.float_data.extend([0.0] * 12)
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["w_then"], value=then_value),
         helper.make_node("MatMul", ["x", "w_then"], ["y_then"])],
        "then", [], [helper.make_tensor_value_info("y_then", f, ["N", 3])])
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["w_loop"], value=stub("w_loop_value", [3, 3])),
         helper.make_node("MatMul", ["s", "w_loop"], ["s_next"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("s", f, ["N", 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_next", f, ["N", 3])])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("", TensorProto.INT64, [], [2])),
         helper.make_node("MatMul", ["x", "w_else"], ["s0"]),
         helper.make_node("Loop", ["trips", "", "s0"], ["y_else"], body=body)],
        "else", [], [helper.make_tensor_value_info("y_else", f, ["N", 3])], initializer=[stub("w_else", [4, 3])])
    g = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y_branch"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Add", ["y_branch", "bias"], ["y"])],
        "stubs",
        [helper.make_tensor_value_info("x", f, ["N", 4]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f, ["N", 3])], initializer=[stub("bias", [3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="mrcformat-vectors",
                          producer_version="1", ir_version=8)
    return m.SerializeToString()


def stubs_container(rng: np.random.Generator, *, with_data: bool = False, version=(1, 1)) -> Container:
    return Container(
        seed=11,
        groups=[group(rng, 12, 4, 5, sigma=0.5), group(rng, 12 + 9, 7, 6, layout=choose_affine(21, 11, 1), sigma=0.5)],
        tensors=[Tensor("w_then", (4, 3), "coded", group=0), Tensor("w_else", (4, 3), "coded", group=1),
                 Tensor("w_loop", (3, 3), "coded", group=1),
                 Tensor("bias", (3,), "raw", dtype="float32", data=np.array([0.5, -1.0, 2.0], "<f4"))],
        graph=stubs_graph(with_data=with_data),
        metadata={"model": "If/Loop with weights in Constant nodes and subgraph initializers"}, version=version)


def widening_container(version=(1, 2)) -> Container:
    """1.2 widening stubs: a float16 tensor in a float32 initializer stub and a bfloat16 tensor in a
    float32 Constant stub (y = x * h + b); the float16 values include a subnormal, -0 and infinities."""
    from onnx import TensorProto, helper

    h = np.array([1.5, -0.0, 2.0 ** -24, 65504.0, np.inf, -np.inf, 0.1, -3.0], dtype="<f2")
    b = np.array([0x3F80, 0xC000, 0x0001, 0x7F7F, 0x8000, 0x3E4D, 0x0000, 0x4049], dtype="<u2")  # bfloat16 bits
    def stub(name):
        t = TensorProto(name=name, data_type=TensorProto.FLOAT)
        t.dims.extend([8])
        return t

    stub_h = stub("h")
    nodes = [helper.make_node("Constant", [], ["b"], value=stub("bv")),
             helper.make_node("Mul", ["x", "h"], ["xh"]), helper.make_node("Add", ["xh", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])], initializer=[stub_h])
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="mrcformat-vectors",
                              producer_version="1", ir_version=8).SerializeToString()
    return Container(seed=5, tensors=[Tensor("h", (8,), "raw", dtype="float16", data=h),
                                      Tensor("b", (8,), "raw", dtype="bfloat16", data=b)],
                     graph=graph, version=version)


def mixed_stubs_container(rng: np.random.Generator) -> Container:
    """1.2: coded and raw stubs interleaved in one initializer list, as `mrc compress` writes a conv net
    (coded weights, float16 biases in float32 stubs): y = relu(x @ w1 + b1) @ w2 + b2 with initializers
    [w1 (coded), b1 (float16), w2 (coded), b2 (float32)]."""
    from onnx import TensorProto, helper

    def stub(name, dims):
        t = TensorProto(name=name, data_type=TensorProto.FLOAT)
        t.dims.extend(dims)
        return t

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y0"]),
             helper.make_node("Add", ["y0", "b2"], ["y"])]
    g = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          initializer=[stub("w1", [5, 6]), stub("b1", [6]), stub("w2", [6, 3]), stub("b2", [3])])
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="mrcformat-vectors",
                              producer_version="1", ir_version=8).SerializeToString()
    return Container(seed=13, groups=[group(rng, 30, 8, 7, layout=choose_affine(30, 13, 0), sigma=0.5),
                                      group(rng, 18, 4, 5, sigma=0.5)],
                     tensors=[Tensor("w1", (5, 6), "coded", group=0),
                              Tensor("b1", (6,), "raw", dtype="float16",
                                     data=np.array([0.5, -0.25, 1.0, 0.0, 2.0, -1.5], dtype="<f2")),
                              Tensor("w2", (6, 3), "coded", group=1),
                              Tensor("b2", (3,), "raw", dtype="float32", data=np.array([0.1, -0.2, 0.3], "<f4"))],
                     graph=graph, metadata={"model": "coded and raw stubs side by side"}, version=(1, 2))


def valid_vectors() -> dict[str, tuple[Container, list[str]]]:
    v: dict[str, tuple[Container, list[str]]] = {}
    rng = np.random.default_rng(1)
    v["minimal"] = (Container(seed=1, groups=[group(rng, 64, 16, 8)],
                              tensors=[Tensor("w", (8, 8), "coded", group=0)]),
                    ["one group", "contiguous", "no padding", "index_bits 8"])
    rng = np.random.default_rng(2)
    n = 1000
    v["affine_padding"] = (Container(seed=0xDEADBEEFCAFEF00D, groups=[group(rng, n, 37, 13, layout=choose_affine(n, 7, 0), mu=0.01, sigma=0.125)],
                                     tensors=[Tensor("layer.weight", (40, 25), "coded", group=0)]),
                           ["affine layout", "last block padded", "index_bits 13", "seed above 2^63"])
    rng = np.random.default_rng(3)
    v["multi_tensor_groups"] = (Container(
        seed=2**64 - 1,
        groups=[group(rng, 3 * 5 + 1 + 0 + 7, 5, 1, mu=-0.5, sigma=2.0),
                group(rng, 33, 4, 32, layout=choose_affine(33, 2**64 - 1, 1), sigma=0.0078125)],
        tensors=[Tensor("a", (3, 5), "coded", group=0), Tensor("scalar", (), "coded", group=0),
                 Tensor("empty", (0, 4), "coded", group=0), Tensor("b", (7,), "coded", group=0),
                 Tensor("c", (3, 11), "coded", group=1)]),
        ["several tensors per group", "rank 0 and zero-size tensors", "index_bits 1 and 32", "seed 2^64-1"])
    rng = np.random.default_rng(4)
    v["hashing"] = (Container(
        seed=42,
        groups=[group(rng, 100, 10, 12, hashing=True, sigma=0.03), group(rng, 7, 3, 5, hashing=True, mu=0.25),
                group(rng, 20, 6, 6)],
        tensors=[Tensor("big", (20, 37), "coded", group=0), Tensor("tiny", (7 * 256,), "coded", group=1),
                 Tensor("plain", (4, 5), "coded", group=2)]),
        ["hashing trick", "hashing ratio 7.4 and the maximum 256", "mixed hashed and plain groups"])
    rng = np.random.default_rng(5)
    raws = []
    for dt in sorted(DTYPES):
        npdt = np.dtype(DTYPES[dt])
        data = rng.integers(0, 256, size=6 * npdt.itemsize, dtype=np.uint8).view(npdt).reshape(2, 3)
        if dt == "bool":
            data = data & np.uint8(1)
        if dt in ("float32", "float16", "float64"):
            data = rng.standard_normal((2, 3)).astype(npdt)
        raws.append(Tensor(f"raw_{dt}", (2, 3), "raw", dtype=dt, data=data))
    v["raw_dtypes"] = (Container(seed=5, groups=[group(rng, 10, 4, 3)],
                                 tensors=[Tensor("coded", (10,), "coded", group=0)] + raws,
                                 metadata={"purpose": "every raw dtype", "ünïcödé": "✓"}),
                       ["raw tensors of every dtype", "unicode metadata"])
    v["raw_only"] = (Container(seed=0, tensors=[Tensor("buffer", (3,), "raw", dtype="int64",
                                                       data=np.array([1, -2, 3], dtype="<i8"))]),
                     ["no groups", "no indices section"])
    rng = np.random.default_rng(6)
    nin, hid, nout = 12, 16, 3
    v["mlp_graph"] = (Container(
        seed=2026,
        groups=[group(rng, hid * nin, 64, 10, layout=choose_affine(hid * nin, 2026, 0), sigma=0.25),
                group(rng, nout * hid, 16, 9, layout=choose_affine(nout * hid, 2026, 1), sigma=0.25)],
        tensors=[Tensor("fc1.weight", (hid, nin), "coded", group=0),
                 Tensor("fc1.bias", (hid,), "raw", dtype="float32", data=rng.standard_normal(hid).astype("<f4") * 0.1),
                 Tensor("fc2.weight", (nout, hid), "coded", group=1),
                 Tensor("fc2.bias", (nout,), "raw", dtype="float32", data=np.zeros(nout, "<f4"))],
        graph=mlp_graph("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", hid, nin, nout),
        metadata={"model": "two-layer MLP", "input": "float32 [N, 12]"}),
        ["architecture graph", "raw biases", "affine layouts"])
    rng = np.random.default_rng(7)
    n = 3 * 4096 + 100
    v["large_blocks"] = (Container(seed=77, groups=[group(rng, n, 4096, 16, layout=choose_affine(n, 77, 0), mu=1.0, sigma=0.5)],
                                   tensors=[Tensor("w", (n,), "coded", group=0)]),
                         ["block_size 4096 (the cap)", "index_bits 16"])
    rng = np.random.default_rng(10)
    sc = group(rng, 6 * 40, 24, 11, layout=choose_affine(240, 12, 0), mu=0.25, sigma=0.5)
    sc.scales = np.array([float_to_bf16_bits(x) for x in (0.015625, 1.0, 3.0, 0.0703125, 40.0, 2.0 ** -60)],
                         dtype=np.uint16)
    sc2 = group(rng, 3 * 5, 4, 3, mu=-1.5, sigma=2.0)
    sc2.scales = np.array([float_to_bf16_bits(x) for x in (0.5,)], dtype=np.uint16)
    v["scales"] = (Container(seed=12, groups=[sc, sc2],
                             tensors=[Tensor("conv.weight", (6, 4, 10), "coded", group=0),
                                      Tensor("small", (3, 5), "coded", group=1)],
                             version=(1, 1)),
                   ["format 1.1", "per-row scales of the coding distribution (affine and contiguous layouts)",
                    "a scale near the sigma range's lower end"])
    deflated = stubs_container(np.random.default_rng(9))
    deflated.graph_deflate = True
    v["graph_deflate"] = (deflated, ["format 1.1", "zlib-compressed graph section (graph_size)"])
    v["widening_stubs"] = (widening_container(),
                           ["format 1.2", "a float16 tensor filling a float32 initializer stub and a bfloat16 tensor "
                                          "filling a float32 Constant stub (widened exactly; subnormal, -0, inf)"])
    v["graph_stubs"] = (stubs_container(np.random.default_rng(9)),
                        ["format 1.1", ("graph stubs: Constant in an If branch, Constant in a Loop body nested in an "
                                        "If branch, initializer of a branch, top-level initializer (raw)")])
    v["mixed_stubs"] = (mixed_stubs_container(np.random.default_rng(13)),
                        ["format 1.2", "coded and raw (float16 widened, float32) stubs interleaved in one "
                                       "initializer list; graph opset 17"])
    return v


def invalid_vectors(valid: dict[str, bytes]) -> dict[str, tuple[bytes, str, object]]:
    """Files every reader must reject, each breaking one rule, with the expected code and `where`
    (None: the reference reader's, for the vectors that predate `where` in the manifest)."""
    import struct

    base = valid["mlp_graph.mrc"]
    out: dict[str, tuple[bytes, str, object]] = {}
    out["bad_magic"] = (b"\x89MRX" + base[4:], "bad-magic", None)
    out["major_2"] = (base[:8] + struct.pack("<H", 2) + base[10:], "unsupported-version", None)
    out["header_crc"] = (base[:16] + struct.pack("<I", (struct.unpack_from("<I", base, 16)[0] ^ 1)) + base[20:], "checksum", None)
    out["trailing_bytes"] = (base + b"\0", "trailing-bytes", None)
    out["truncated"] = (base[:-1], "truncated", None)
    flipped = bytearray(base)
    flipped[-1] ^= 0xFF  # inside the graph section: its CRC no longer matches
    out["section_crc"] = (bytes(flipped), "checksum", None)
    rng = np.random.default_rng(8)
    c = Container(seed=3, groups=[group(rng, 2, 1, 4)], tensors=[Tensor("w", (2,), "coded", group=0)],
                  graph=external_data_graph())
    out["external_data"] = (unchecked_bytes(c), "external-data", None)
    out["stub_with_data"] = (unchecked_bytes(stubs_container(np.random.default_rng(9), with_data=True)), "graph", None)
    bad = Container(seed=12, groups=[group(np.random.default_rng(11), 10, 4, 3)],
                    tensors=[Tensor("w", (10,), "coded", group=0)], version=(1, 1))
    bad.groups[0].scales = np.array([float_to_bf16_bits(1.0)] * 3, dtype=np.uint16)
    out["scales_not_dividing"] = (unchecked_bytes(bad), "scales", None)
    bomb = stubs_container(np.random.default_rng(9))
    bomb.graph_deflate = True
    data = bytearray(unchecked_bytes(bomb))
    out["graph_size_mismatch"] = (_with_header(bytes(data), lambda h: h.__setitem__("graph_size", h["graph_size"] - 1)),
                                  "graph", None)
    out["stubs_at_minor_0"] = (unchecked_bytes(stubs_container(np.random.default_rng(9), version=(1, 0))), "graph", None)
    out["widening_stub_at_minor_1"] = (unchecked_bytes(widening_container((1, 1))), "graph", "sections[2]")
    out.update(invalid_header_vectors())
    out.update({k: v for k, v in graph_vectors().items()})
    out.update(precedence_vectors())
    out["unknown_field_minor_0"] = (edit(to_bytes(small_base()), _newer_minor_fields, (1, 0)), "unknown-field", "compression")
    out["float_in_unknown_field_minor_3"] = (edit(to_bytes(small_base()), both(_newer_minor_fields, setp("tensors.0.doc", 0.5)),
                                                  (1, 3)), "header-decode", 24)
    out["unknown_field_minor_1"] = (edit(to_bytes(small_base()), _newer_minor_fields, (1, 1)), "unknown-field", "compression")
    out["unknown_field_minor_2"] = (edit(to_bytes(small_base()), _newer_minor_fields, (1, 2)), "unknown-field", "compression")
    return out


def _with_header(data: bytes, edit) -> bytes:
    """The file with its header edited (same length required: small integer changes), CRC fixed."""
    import struct
    import zlib

    import msgpack

    hlen = struct.unpack_from("<I", data, 12)[0]
    h = msgpack.unpackb(data[24:24 + hlen], raw=False)
    edit(h)
    raw = msgpack.packb(h, use_bin_type=True)
    if len(raw) != hlen:
        raise ValueError("the edit changed the header's length")
    return data[:16] + struct.pack("<I", zlib.crc32(raw)) + data[20:24] + raw + data[24 + hlen:]


def unchecked_bytes(c: Container) -> bytes:
    """Serialise without the writer's final self-check (for deliberately invalid vectors)."""
    from mrcformat import writer

    orig = writer.from_bytes
    writer.from_bytes = lambda data, **kw: None
    try:
        return writer.to_bytes(c)
    finally:
        writer.from_bytes = orig


# --------------------------------------------------------------------------------------------
# Laying out files by hand: a header dict and section payloads, offsets/lengths/CRCs fixed up.

def split_file(data: bytes) -> tuple[tuple[int, int], dict, list[bytes]]:
    """A valid file -> (version, header dict, section payloads in section-table order)."""
    major, minor, hlen = struct.unpack_from("<HHI", data, 8)
    h = msgpack.unpackb(data[24:24 + hlen], raw=False)
    return (major, minor), h, [data[s["offset"]:s["offset"] + s["length"]] for s in h["sections"]]


def assemble(h: dict, payloads: list[bytes], version=(1, 0), *, encode=None, fix: bool = True, place=None,
             reserved: int = 0) -> bytes:
    """Lay out a file: sections at the offsets SPEC.md 7.1 fixes (or `place(offsets)`), each header
    section entry given its payload's offset, length and CRC-32 (unless not `fix`), header CRC right.
    `encode` replaces msgpack.packb (to write what packb would not)."""
    h = copy.deepcopy(h)
    pack = encode or (lambda x: msgpack.packb(x, use_bin_type=True))
    for _ in range(16):  # offsets change the header's length: iterate to a fixpoint
        hb = pack(h)
        pos, offs = 24 + len(hb), []
        for s in payloads:
            pos = -(-pos // 64) * 64
            offs.append(pos)
            pos += len(s)
        if place is not None:
            offs = place(offs)
        if not fix:
            break
        changed = False
        for entry, off, s in zip(h["sections"], offs, payloads):
            want = {"offset": off, "length": len(s), "crc32": zlib.crc32(s)}
            if isinstance(entry, dict) and any(entry.get(k) != v for k, v in want.items()):
                entry.update(want)
                changed = True
        if not changed:
            break
    end = max([24 + len(hb)] + [o + len(s) for o, s in zip(offs, payloads)])
    out = bytearray(end)
    out[:24] = MAGIC + struct.pack("<HHIII", version[0], version[1], len(hb), zlib.crc32(hb), reserved)
    out[24:24 + len(hb)] = hb
    for off, s in reversed(list(zip(offs, payloads))):  # where placed sections overlap, the earlier one's bytes win
        start = max(off, 24 + len(hb))
        out[start:off + len(s)] = s[start - off:]
    return bytes(out)


def _with_duplicate_seed(h: dict) -> bytes:
    """The header with a second `seed` key at its end (a fixmap with one pair more)."""
    raw = msgpack.packb(h, use_bin_type=True)
    assert 0x80 <= raw[0] < 0x8F
    return bytes([raw[0] + 1]) + raw[1:] + msgpack.packb("seed") + msgpack.packb(h["seed"])


def edit(data: bytes, fn, version=None, **kw) -> bytes:
    """The file with fn(header, payloads) applied, laid out again (every CRC right)."""
    v, h, p = split_file(data)
    fn(h, p)
    return assemble(h, p, version or v, **kw)


def with_preamble(data: bytes, **fields) -> bytes:
    """The file with preamble fields (major, minor, hlen, crc, reserved) replaced."""
    names = ("major", "minor", "hlen", "crc", "reserved")
    vals = dict(zip(names, struct.unpack_from("<HHIII", data, 8)))
    vals.update(fields)
    return data[:8] + struct.pack("<HHIII", *(vals[k] for k in names)) + data[24:]


def setp(path: str, value):
    """An edit setting header field `path` ("groups.0.layout.kind"); value DELETE removes it."""
    def fn(h, p):
        *parents, last = path.split(".")
        obj = h
        for k in parents:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        key = int(last) if isinstance(obj, list) else last
        if value is DELETE:
            del obj[key]
        else:
            obj[key] = copy.deepcopy(value)
    return fn


DELETE = object()


def both(*fns):
    def fn(h, p):
        for f in fns:
            f(h, p)
    return fn


def pack_with(marker: str, replacement: bytes):
    """An encoder that writes `replacement` (raw msgpack) where the string `marker` would be."""
    return lambda h: msgpack.packb(h, use_bin_type=True).replace(msgpack.packb(marker), replacement)


def small_base() -> Container:
    """The base of most invalid vectors: two groups (contiguous; affine with hashing), a float32 and a
    bool raw tensor, metadata, no graph. Sections: 0 indices (4 bytes), 1 raw 'b', 2 raw 'm'."""
    rng = np.random.default_rng(20)
    g0 = group(rng, 6, 4, 5)  # 2 blocks x 5 bits: byte 1 has 6 unused bits
    g0.indices[-1] &= 0b11
    g1 = group(rng, 4, 3, 7, layout=Layout("affine", 3, 1), hashing=True, mu=0.5, sigma=0.25)
    return Container(seed=99, groups=[g0, g1],
                     tensors=[Tensor("w0", (2, 3), "coded", group=0), Tensor("w1", (8,), "coded", group=1),
                              Tensor("b", (3,), "raw", dtype="float32", data=np.array([1, 2, 3], "<f4")),
                              Tensor("m", (2, 2), "raw", dtype="bool", data=np.array([[1, 0], [0, 1]], "u1"))],
                     metadata={"k": "v"})


def scales_base() -> Container:
    rng = np.random.default_rng(21)
    g = group(rng, 6, 4, 5)
    g.scales = np.array([float_to_bf16_bits(x) for x in (0.5, 2.0)], dtype=np.uint16)
    return Container(seed=98, groups=[g], tensors=[Tensor("w", (2, 3), "coded", group=0)], version=(1, 1))


def graph_file(graph: bytes, version=(1, 0)) -> bytes:
    """A one-group file (tensor 'w', 4 values) with `graph` stored unchecked."""
    c = Container(seed=3, groups=[group(np.random.default_rng(8), 4, 2, 4)], tensors=[Tensor("w", (4,), "coded", group=0)],
                  graph=graph, version=version)
    return unchecked_bytes(c)


def onnx_model(nodes, inputs=(), initializer=(), sparse=(), outputs=("y",)) -> bytes:
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in inputs],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in outputs],
                          initializer=list(initializer), sparse_initializer=list(sparse))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="mrcformat-vectors",
                             producer_version="1", ir_version=8).SerializeToString()


def graph_vectors() -> dict[str, tuple[bytes, str, object]]:
    import onnx
    from onnx import TensorProto, helper

    ident = helper.make_node("Identity", ["w"], ["y"])
    w_init = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    sparse = helper.make_sparse_tensor(helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0]),
                                       helper.make_tensor("w_idx", TensorProto.INT64, [1], [0]), [4])
    wrong_dims = stub("w", [2, 2])
    ext = helper.make_tensor("k", TensorProto.FLOAT, [1], [0.0])
    ext.ClearField("float_data")
    ext.data_location = TensorProto.EXTERNAL
    ext.external_data.add(key="location", value="elsewhere.bin")
    out_y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    fn = helper.make_function("local", "F", [], ["k"], [helper.make_node("Constant", [], ["k"], value_float=1.0)],
                              [helper.make_opsetid("", 18)])
    fn.attribute_proto.append(helper.make_attribute("k_default", ext))  # a function's default attribute
    with_fn = helper.make_model(helper.make_graph([ident], "g", [], out_y),
                                opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                                functions=[fn], ir_version=8)
    with_ti = onnx.ModelProto.FromString(onnx_model([ident]))
    init = helper.make_graph([], "init", [], [], initializer=[ext])
    with_ti.training_info.append(helper.make_training_info(init, [], init, []))
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=ext)], "b", [],
                               [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    nested = onnx_model([helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch), ident],
                        inputs=["cond"])
    v = {
        "external_data_function_default": (graph_file(with_fn.SerializeToString()), "external-data", "sections[1]"),
        "external_data_training_info": (graph_file(with_ti.SerializeToString()), "external-data", "sections[1]"),
        "external_data_subgraph_constant": (graph_file(nested), "external-data", "sections[1]"),
        "graph_empty": (graph_file(b""), "graph", "sections[1]"),
        "graph_not_onnx": (graph_file(b"\xff" * 8), "graph", "sections[1]"),
        "graph_model_without_graph": (graph_file(onnx.ModelProto(ir_version=8, producer_name="no graph").SerializeToString()),
                                      "graph", "sections[1]"),
        "graph_undefined_input": (graph_file(onnx_model([helper.make_node("Add", ["w", "nowhere"], ["y"])])),
                                  "graph", "sections[1]"),
        "graph_initializer_clash": (graph_file(onnx_model([ident], initializer=[w_init])), "graph", "sections[1]"),
        "graph_sparse_initializer_clash": (graph_file(onnx_model([ident], sparse=[sparse])), "graph", "sections[1]"),
        "graph_sparse_initializer_claim": (graph_file(onnx_model([ident], sparse=[sparse]), (1, 1)), "graph",
                                           "sections[1]"),
        "stub_wrong_dims": (graph_file(onnx_model([ident], initializer=[wrong_dims]), (1, 1)), "graph", "sections[1]"),
        "stub_twice": (graph_file(onnx_model([helper.make_node("Constant", [], ["w"], value=stub("", [4])),
                                              helper.make_node("Identity", ["w"], ["y"])],
                                             initializer=[stub("w", [4])]), (1, 1)), "graph", "sections[1]"),
    }
    return v


def invalid_header_vectors() -> dict[str, tuple[bytes, str, object]]:
    """Faults past the header CRC (every CRC right): one rule each (SPEC.md 9.2 steps 7-12)."""
    base = to_bytes(small_base())
    _, bh, bp = split_file(base)
    sc = to_bytes(scales_base())
    off = [s["offset"] for s in bh["sections"]]
    deep = b"\x91" * 100 + msgpack.packb("x")
    v: dict[str, tuple[bytes, str, object]] = {
        # step 1-6: preamble
        "truncated_preamble": (base[:20], "truncated", 20),
        "reserved_nonzero": (with_preamble(base, reserved=1), "reserved", 20),
        "header_length_zero": (with_preamble(base, hlen=0), "header-size", 12),
        "header_past_end": (with_preamble(base, hlen=len(base)), "header-size", 12),
        # step 7: msgpack
        "header_not_a_map": (assemble(bh, bp, encode=lambda h: msgpack.packb([1, 2])), "header-decode", 24),
        "header_trailing_data": (assemble(bh, bp, encode=lambda h: msgpack.packb(h, use_bin_type=True) + b"\xc0"),
                                 "header-decode", 24),
        "header_float": (edit(base, setp("groups.0.mu", 0.0)), "header-decode", 24),
        "header_bin": (edit(base, setp("sampler", b"normal16")), "header-decode", 24),
        "header_ext": (edit(base, setp("metadata.k", msgpack.ExtType(1, b"v"))), "header-decode", 24),
        "header_int_key": (edit(base, setp("metadata", {7: "v"})), "header-decode", 24),
        "header_duplicate_key": (assemble(bh, bp, encode=_with_duplicate_seed), "header-decode", 24),
        "header_too_deep": (edit(base, setp("metadata.k", "@@deep@@"), encode=pack_with("@@deep@@", deep)),
                            "header-decode", 24),
        "header_bad_utf8": (edit(base, setp("metadata.k", "@@utf8@@"), encode=pack_with("@@utf8@@", b"\xa2\xc3\x28")),
                            "header-decode", 24),
        # step 8: header fields
        "missing_field": (edit(base, setp("seed", DELETE)), "missing-field", "seed"),
        "field_type": (edit(base, setp("seed", "99")), "field-type", "seed"),
        "unknown_sampler": (edit(base, setp("sampler", "uniform16")), "unknown-sampler", "sampler"),
        "seed_negative": (edit(base, setp("seed", -1)), "field-value", "seed"),
        "too_many_tensors": (edit(base, setp("tensors", [None] * 65537)), "limit", "tensors"),
        "metadata_not_a_map": (edit(base, setp("metadata", ["k", "v"])), "metadata", "metadata"),
        "metadata_key_257_bytes": (edit(base, setp("metadata", {"k" * 257: "v"})), "metadata", "metadata"),
        "metadata_value_not_string": (edit(base, setp("metadata.k", 1)), "metadata", "metadata.k"),
        "graph_size_without_graph": (edit(sc, setp("graph_size", 100)), "field-value", "graph_size"),
        "mu_out_of_range": (edit(base, setp("groups.1.mu", 2**32)), "field-value", "groups[1].mu"),
        "mu_nan": (edit(base, setp("groups.1.mu", 0x7FC00000)), "coding-parameter", "groups[1].mu"),
        "sigma_out_of_range": (edit(base, setp("groups.0.sigma", 0x10000)), "field-value", "groups[0].sigma"),
        "sigma_zero": (edit(base, setp("groups.0.sigma", 0)), "coding-parameter", "groups[0].sigma"),
        "sigma_above_2_64": (edit(base, setp("groups.0.sigma", 0x5F81)), "coding-parameter", "groups[0].sigma"),
        "block_size_4097": (edit(base, setp("groups.0.block_size", 4097)), "block-size", "groups[0].block_size"),
        "index_bits_33": (edit(base, setp("groups.0.index_bits", 33)), "index-width", "groups[0].index_bits"),
        "num_values_0": (edit(base, setp("groups.0.num_values", 0)), "field-value", "groups[0].num_values"),
        "num_values_over_cap": (edit(base, setp("groups.0.num_values", 2**31)), "limit", "groups[0].num_values"),
        "layout_kind_unknown": (edit(base, setp("groups.0.layout.kind", "strided")), "field-value",
                                "groups[0].layout.kind"),
        "layout_kind_missing": (edit(base, setp("groups.0.layout", {})), "missing-field", "groups[0].layout.kind"),
        "affine_c_out_of_range": (edit(base, setp("groups.1.layout.c", 4)), "layout-parameter", "groups[1].layout.c"),
        "affine_gcd": (edit(base, setp("groups.1.layout.a", 2)), "layout-parameter", "groups[1].layout"),
        "scales_with_hashing": (edit(sc, setp("groups.0.hashing", True)), "scales", "groups[0].scales"),
        "unknown_encoding": (edit(base, setp("tensors.0.encoding", "sparse")), "unknown-encoding", "tensors[0].encoding"),
        "name_empty": (edit(base, setp("tensors.0.name", "")), "field-value", "tensors[0].name"),
        "name_1025_bytes": (edit(base, setp("tensors.0.name", "é" * 512 + "n")), "limit", "tensors[0].name"),
        "duplicate_name": (edit(base, setp("tensors.1.name", "w0")), "duplicate-name", "tensors[1].name"),
        "rank_9": (edit(base, setp("tensors.0.shape", [1] * 7 + [2, 3])), "limit", "tensors[0].shape"),
        "dim_negative": (edit(base, setp("tensors.0.shape", [-2, -3])), "shape", "tensors[0].shape[0]"),
        "element_count_over_cap": (edit(base, setp("tensors.0.shape", [65536, 65536])), "shape", "tensors[0].shape"),
        "unknown_dtype": (edit(base, setp("tensors.2.dtype", "complex64")), "unknown-dtype", "tensors[2].dtype"),
        "section_kind_unknown": (edit(base, setp("sections.1.kind", "weights")), "field-value", "sections[1].kind"),
        "section_crc_out_of_range": (edit(base, setp("sections.1.crc32", 2**32), fix=False), "field-value",
                                     "sections[1].crc32"),
        # step 9: layout
        "section_gap": (edit(base, lambda h, p: None, place=lambda o: o[:1] + [x + 64 for x in o[1:]]),
                        "section-layout", "sections[1].offset"),
        "section_overlap": (edit(base, lambda h, p: None, place=lambda o: [o[0], o[0] + 2] + o[2:]),
                            "section-layout", "sections[1].offset"),
        "padding_nonzero": (base[:off[0] + 4 + 3] + b"\x01" + base[off[0] + 4 + 4:], "padding", off[0] + 4 + 3),
        # step 10: references
        "indices_missing": (edit(base, setp("indices", None)), "section-reference", "indices"),
        "section_out_of_range": (edit(base, setp("tensors.2.section", 3)), "section-reference", "tensors[2].section"),
        "section_wrong_kind": (edit(base, setp("indices", 1)), "section-reference", "indices"),
        "section_referenced_twice": (edit(base, setp("tensors.3.section", 1)), "section-reference", "tensors[3].section"),
        "group_out_of_range": (edit(base, setp("tensors.1.group", 2)), "group-reference", "tensors[1].group"),
        "section_unreferenced": (edit(base, lambda h, p: (h["sections"].append({"kind": "raw"}), p.append(b"\0"))),
                                 "section-reference", "sections[3]"),
        # step 11: group sizes
        "group_without_tensors": (edit(base, setp("tensors.0.group", 1)), "hashing", "groups[0]"),
        "group_weights_over_cap": (edit(base, both(setp("groups.1.num_values", 2**31 - 1), setp("groups.1.layout", {"kind": "contiguous"}),
                                                   setp("tensors.1.shape", [2**31 - 1]),
                                                   lambda h, p: h["tensors"].insert(2, {"name": "w2", "shape": [2**31 - 1, 1],
                                                                                       "encoding": "coded", "group": 1}),
                                                   lambda h, p: h["tensors"].insert(3, {"name": "w3", "shape": [2],
                                                                                       "encoding": "coded", "group": 1}))),
                                   "limit", "groups[1]"),
        "num_values_mismatch": (edit(base, setp("tensors.0.shape", [7])), "hashing", "groups[0].num_values"),
        "hashing_ratio_257": (edit(base, both(setp("groups.1.num_values", 1), setp("groups.1.layout", {"kind": "contiguous"}),
                                              setp("tensors.1.shape", [257]))), "hashing", "groups[1].num_values"),
        # step 12: payloads
        "index_payload_short": (edit(base, lambda h, p: p.__setitem__(0, p[0][:-1])), "index-payload", "sections[0].length"),
        "index_unused_bits": (edit(base, lambda h, p: p.__setitem__(0, p[0][:1] + bytes([p[0][1] | 0x80]) + p[0][2:])),
                              "padding", off[0] + 1),
        "scales_odd_length": (edit(sc, lambda h, p: p.__setitem__(1, p[1] + b"\0")), "section-length", "sections[1].length"),
        "scale_value_zero": (edit(sc, lambda h, p: p.__setitem__(1, p[1][:2] + b"\0\0")), "coding-parameter",
                             "groups[0].scales[1]"),
        "raw_length_mismatch": (edit(base, setp("tensors.2.shape", [4])), "section-length", "sections[1].length"),
        "bool_byte_2": (edit(base, lambda h, p: p.__setitem__(2, b"\x01\x00\x02\x01")), "raw-value", off[2] + 2),
    }
    return v


def precedence_vectors() -> dict[str, tuple[bytes, str, object]]:
    """Files with two faults: the one SPEC.md 9.2 checks first decides the code."""
    base = to_bytes(small_base())
    off = split_file(base)[1]["sections"][1]["offset"]
    broken_section = edit(base, setp("groups.0.block_size", 0))
    broken_section = broken_section[:off] + bytes([broken_section[off] ^ 1]) + broken_section[off + 1:]
    bad_header = assemble(*split_file(base)[1:], encode=lambda h: b"\xc1")
    return {
        "two_faults_checksum_first": (with_preamble(bad_header, crc=0), "checksum", 16),
        "two_faults_unknown_field_first": (edit(base, both(setp("seed", "x"), setp("compression", "zstd"))),
                                           "unknown-field", "compression"),
        "two_faults_groups_before_tensors": (edit(base, both(setp("tensors.0.encoding", "sparse"),
                                                             setp("groups.1.index_bits", 0))),
                                             "index-width", "groups[1].index_bits"),
        "two_faults_fields_before_layout": (broken_section, "block-size", "groups[0].block_size"),
        "two_faults_references_before_sizes": (edit(base, both(setp("tensors.1.group", 5), setp("tensors.0.shape", [7]))),
                                               "group-reference", "tensors[1].group"),
    }


def _newer_minor_fields(h, p):
    h["compression"] = "none"
    h["groups"][0]["temperature"] = 15
    h["groups"][1]["layout"]["stride_hint"] = [3, {"x": None}]
    h["tensors"][0]["doc"] = "a coded tensor"
    h["tensors"][2]["quant"] = {"scale": 1, "zero": True}
    h["sections"][1]["note"] = "raw"


def extra_valid_vectors() -> dict[str, tuple[bytes | Container, list[str]]]:
    """Edge cases a decoder must accept (SPEC.md 12)."""
    from onnx import helper

    v: dict[str, tuple[bytes | Container, list[str]]] = {}
    rng = np.random.default_rng(30)
    groups = [group(rng, 3, w % 3 + 1, w, sigma=0.5) for w in range(1, 33)]
    v["index_widths"] = (Container(seed=30, groups=groups,
                                   tensors=[Tensor(f"w{w}", (3,), "coded", group=w - 1) for w in range(1, 33)]),
                         ["every index width 1..32", "block sizes 1, 2 and 3"])
    rng = np.random.default_rng(31)

    def g(n, bsz, bits, mu_bits, sigma_bits, layout=None, hashing=False):
        idx = rng.integers(0, 2**bits, size=num_blocks(n, bsz), dtype=np.uint64).astype(np.int64)
        return Group(mu_bits, sigma_bits, bsz, bits, n, layout or Layout(), hashing, idx)

    f32, bf16 = float_to_f32_bits, float_to_bf16_bits
    v["edge_groups"] = (Container(seed=31, groups=[
        g(1, 1, 4, f32(0.25), bf16(0.5), Layout("affine", 0, 0)),
        g(5, 2, 6, f32(0.0), bf16(0.125), Layout("affine", 2, 1), hashing=True),
        g(6, 4, 5, f32(-0.5), bf16(1.0), hashing=True),
        g(4, 4, 7, 0x80000000, 0x1F80),
        g(4, 3, 7, 0x00000001, 0x5F80),
        g(4, 2, 3, 0x007FFFFF, 0x1F80)],
        tensors=[Tensor("affine_n1", (), "coded", group=0), Tensor("hashed_affine", (3, 4), "coded", group=1),
                 Tensor("ratio_1", (2, 3), "coded", group=2), Tensor("mu_neg_zero_sigma_min", (4,), "coded", group=3),
                 Tensor("mu_subnormal_sigma_max", (2, 2), "coded", group=4),
                 Tensor("mu_max_subnormal", (4,), "coded", group=5)]),
        ["affine layout with n = 1 (a = c = 0), block_size 1", "hashing with an affine layout",
         "hashing ratio exactly 1", "sigma 2^-64 and 2^64", "mu = -0.0, the smallest and the largest subnormal mu"])
    rng = np.random.default_rng(32)
    c = Container(seed=32, groups=[group(rng, 6, 4, 5)],
                  tensors=[Tensor("w", (2, 3), "coded", group=0),
                           Tensor("empty", (0, 3), "raw", dtype="float32", data=np.zeros((0, 3), "<f4")),
                           Tensor("scalar", (), "raw", dtype="int64", data=np.array(-7, "<i8")),
                           Tensor("flag", (), "raw", dtype="bool", data=np.array(1, "u1"))],
                  graph=onnx_model([helper.make_node("Identity", ["w"], ["y"])]))
    ver, h, p = split_file(to_bytes(c))
    order = [4, 2, 1, 0, 3]  # graph, raw scalar, raw empty, indices, raw flag (written: indices, empty, scalar, flag, graph)
    remap = {old: new for new, old in enumerate(order)}
    h["sections"], p = [h["sections"][o] for o in order], [p[o] for o in order]
    h["indices"], h["graph"] = remap[h["indices"]], remap[h["graph"]]
    for t in h["tensors"]:
        if t["encoding"] == "raw":
            t["section"] = remap[t["section"]]
    v["section_order"] = (assemble(h, p, ver), ["sections in a non-default order (graph first)",
                                                "a zero-length raw tensor (zero-length section)", "rank-0 raw tensors"])
    v["no_sections"] = (Container(seed=0, metadata={"note": "no tensors, no sections"}),
                        ["no groups, no tensors, no sections: the file ends at the header"])
    v["minor_3_unknown_fields"] = (edit(to_bytes(small_base()), _newer_minor_fields, (1, 3)),
                                   ["format 1.3 (newer minor): unknown fields at every level, ignored"])
    return v


def known_answers() -> dict:
    """Intermediate values of SPEC.md 4.2 and 5.3 for chosen inputs (spec/known_answers.json): the
    Philox counter and output, the 16-bit sample u, T[u] and the candidate value; hashing's h and s."""
    from mrcformat.philox import philox4x32_scalar
    from mrcformat.sampler import normal_table
    from mrcformat.streams import candidate_u16, hash_words, seed_key

    table = normal_table()
    cands = []
    cases = [  # seed, group, block, index, slot, mu bits, sigma bits, scale bits (or None)
        (0, 0, 0, 0, 0, 0x00000000, 0x3F80, None),
        (1, 0, 0, 5, 1, 0x3DCCCCCD, 0x3D4D, None),
        (42, 3, 7, 123, 7, 0xBF000000, 0x3E00, None),
        (42, 3, 7, 123, 8, 0xBF000000, 0x3E00, None),
        (2**64 - 1, 2**24 - 1, 2**32 - 1, 2**32 - 1, 4095, 0x80000000, 0x1F80, None),
        (0xDEADBEEFCAFEF00D, 65535, 1000, 2**31 + 17, 13, 0x3C23D70A, 0x5F80, None),
        (12, 0, 3, 77, 2, 0x3E800000, 0x3F00, 0x4040),
    ]
    for seed, g, b, k, j, mu_bits, sigma_bits, scale_bits in cases:
        counter = (j >> 3, k, b, (0 << 24) | g)
        out = philox4x32_scalar(counter, seed_key(seed))
        u = int(candidate_u16(seed, g, np.array([b]), np.array([k]), j + 1)[0, j])
        mu = np.float32(np.uint32(mu_bits).view(np.float32))
        sigma = np.float32(np.uint32(sigma_bits << 16).view(np.float32))
        if scale_bits is not None:
            sigma = np.float32(sigma * np.float32(np.uint32(scale_bits << 16).view(np.float32)))
        value = np.float32(mu + np.float32(sigma * table[u]))
        entry = {"seed": seed, "group": g, "block": b, "index": k, "slot": j,
                 "philox_counter": [f"{x:08x}" for x in counter], "philox_output": [f"{x:08x}" for x in out],
                 "u": u, "table_u_bits": f"{int(table[u:u + 1].view(np.uint32)[0]):08x}",
                 "mu_bits": f"{mu_bits:08x}", "sigma_bits": f"{sigma_bits:04x}",
                 "value_bits": f"{int(np.array([value], '<f4').view('<u4')[0]):08x}"}
        if scale_bits is not None:
            entry["scale_bits"] = f"{scale_bits:04x}"
        cands.append(entry)
    hashes = []
    for seed, g, n, t in [(0, 0, 1, 0), (42, 0, 100, 0), (42, 0, 100, 1), (42, 0, 100, 739),
                          (2**64 - 1, 7, 2**31 - 1, 2**32 - 2), (0xDEADBEEFCAFEF00D, 2**24 - 1, 12345, 99999)]:
        counter = (t >> 1, 0, 0, (1 << 24) | g)
        out = philox4x32_scalar(counter, seed_key(seed))
        h, s = hash_words(seed, g, np.array([t], dtype=np.uint64), n)
        hashes.append({"seed": seed, "group": g, "num_values": n, "t": t,
                       "philox_counter": [f"{x:08x}" for x in counter], "philox_output": [f"{x:08x}" for x in out],
                       "h": int(h[0]), "s": int(s[0])})
    return {"description": "Intermediate values of the decoding algorithm (SPEC.md 4.2, 4.3 and 5.3); hex strings are "
                           "u32 words or bit patterns. candidates: Philox counter/output for slot j of candidate k of "
                           "block b of group g, the 16-bit sample u, T[u], and mu + sigma_k * T[u] (sigma_k = sigma * "
                           "scale when scale_bits is given). hashing: h(t) and s(t) of weight t for num_values n.",
            "candidates": cands, "hashing": hashes}


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def build() -> tuple[dict[str, bytes], dict]:
    files: dict[str, bytes] = {}
    manifest: dict = {"format_version": "1.2", "sampler": "normal16", "valid": {}, "invalid": {}}
    valid = {**valid_vectors(), **extra_valid_vectors()}
    for name, (c, features) in valid.items():
        data = to_bytes(c) if isinstance(c, Container) else c
        files[f"{name}.mrc"] = data
        tensors = {}
        parsed = from_bytes(data)
        for tname, arr in decode(parsed).items():
            t = parsed.tensor(tname)
            le = np.ascontiguousarray(arr).astype(np.dtype(arr.dtype).newbyteorder("<"), copy=False)
            tensors[tname] = {"shape": list(arr.shape), "dtype": t.dtype, "encoding": t.encoding,
                              "sha256": sha256(le.tobytes())}
        manifest["valid"][f"{name}.mrc"] = {"sha256": sha256(data), "size": len(data), "features": features,
                                            "tensors": tensors}
    for name, (data, code, where) in invalid_vectors(files).items():
        try:
            from_bytes(data)
        except MrcError as e:
            if e.code != code or (where is not None and e.where != where):
                raise RuntimeError(f"invalid/{name}: the reference reader reports {e.code} at {e.where!r}, "
                                   f"the vector expects {code} at {where!r}") from e
            where = e.where
        else:
            raise RuntimeError(f"invalid/{name}: the reference reader accepts it")
        files[f"invalid/{name}.mrc"] = data
        manifest["invalid"][f"invalid/{name}.mrc"] = {"sha256": sha256(data), "code": code, "where": where}
    return files, manifest


def known_answers_text() -> str:
    """One JSON object per line, so a diff shows which answer changed."""
    ka = known_answers()
    rows = ",\n".join(f'  "{k}": [\n' + ",\n".join("    " + json.dumps(e) for e in ka[k]) + "\n  ]"
                      for k in ("candidates", "hashing"))
    return "{\n  \"description\": " + json.dumps(ka["description"]) + ",\n" + rows + "\n}\n"


def main() -> int:
    files, manifest = build()
    text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        bad = [n for n, d in files.items() if not (OUT / n).is_file() or (OUT / n).read_bytes() != d]
        if (OUT / "manifest.json").read_text(encoding="utf-8") != text:
            bad.append("manifest.json")
        if not KNOWN.is_file() or KNOWN.read_text(encoding="utf-8") != known_answers_text():
            bad.append("known_answers.json")
        print("vectors up to date" if not bad else f"stale: {bad}")
        return 1 if bad else 0
    (OUT / "invalid").mkdir(parents=True, exist_ok=True)
    for n, d in files.items():
        (OUT / n).write_bytes(d)
    (OUT / "manifest.json").write_text(text, encoding="utf-8")
    KNOWN.write_text(known_answers_text(), encoding="utf-8")
    print(f"wrote {len(files)} files to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
