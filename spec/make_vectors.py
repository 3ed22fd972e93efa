"""Generate the conformance vectors in spec/vectors/ (SPEC.md section 12).

    python spec/make_vectors.py            # (re)write spec/vectors/*.mrc and manifest.json
    python spec/make_vectors.py --check    # exit 1 if the committed vectors differ from a fresh build

Every file is built deterministically from fixed seeds, so a rebuild is byte-identical. The
manifest records each file's SHA-256 and, per tensor, the SHA-256 of its decoded little-endian
bytes (float32 for coded tensors): a conforming decoder reproduces every one.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from mrcformat import decode, from_bytes, to_bytes
from mrcformat.container import DTYPES, Container, Group, Tensor
from mrcformat.layout import Layout, choose_affine, num_blocks
from mrcformat.sampler import float_to_bf16_bits, float_to_f32_bits

HERE = Path(__file__).resolve().parent
OUT = HERE / "vectors"


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
    v["graph_stubs"] = (stubs_container(np.random.default_rng(9)),
                        ["format 1.1", "graph stubs: Constant in an If branch, Constant in a Loop body nested in an "
                         "If branch, initializer of a branch, top-level initializer (raw)"])
    return v


def invalid_vectors(valid: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    """Files every reader must reject, each breaking one rule, with the expected error code."""
    import struct

    base = valid["mlp_graph.mrc"]
    out: dict[str, tuple[bytes, str]] = {}
    out["bad_magic"] = (b"\x89MRX" + base[4:], "bad-magic")
    out["major_2"] = (base[:8] + struct.pack("<H", 2) + base[10:], "unsupported-version")
    out["header_crc"] = (base[:16] + struct.pack("<I", (struct.unpack_from("<I", base, 16)[0] ^ 1)) + base[20:], "checksum")
    out["trailing_bytes"] = (base + b"\0", "trailing-bytes")
    out["truncated"] = (base[:-1], "truncated")
    flipped = bytearray(base)
    flipped[-1] ^= 0xFF  # inside the graph section: its CRC no longer matches
    out["section_crc"] = (bytes(flipped), "checksum")
    rng = np.random.default_rng(8)
    c = Container(seed=3, groups=[group(rng, 2, 1, 4)], tensors=[Tensor("w", (2,), "coded", group=0)],
                  graph=external_data_graph())
    out["external_data"] = (unchecked_bytes(c), "external-data")
    out["stub_with_data"] = (unchecked_bytes(stubs_container(np.random.default_rng(9), with_data=True)), "graph")
    bad = Container(seed=12, groups=[group(np.random.default_rng(11), 10, 4, 3)],
                    tensors=[Tensor("w", (10,), "coded", group=0)], version=(1, 1))
    bad.groups[0].scales = np.array([float_to_bf16_bits(1.0)] * 3, dtype=np.uint16)
    out["scales_not_dividing"] = (unchecked_bytes(bad), "scales")
    bomb = stubs_container(np.random.default_rng(9))
    bomb.graph_deflate = True
    data = bytearray(unchecked_bytes(bomb))
    out["graph_size_mismatch"] = (_with_header(bytes(data), lambda h: h.__setitem__("graph_size", h["graph_size"] - 1)),
                                  "graph")
    out["stubs_at_minor_0"] = (unchecked_bytes(stubs_container(np.random.default_rng(9), version=(1, 0))), "graph")
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


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def build() -> tuple[dict[str, bytes], dict]:
    files: dict[str, bytes] = {}
    manifest: dict = {"format_version": "1.1", "sampler": "normal16", "valid": {}, "invalid": {}}
    for name, (c, features) in valid_vectors().items():
        data = to_bytes(c)
        files[f"{name}.mrc"] = data
        tensors = {}
        for tname, arr in decode(from_bytes(data)).items():
            t = next(t for t in c.tensors if t.name == tname)
            le = np.ascontiguousarray(arr).astype(np.dtype(arr.dtype).newbyteorder("<"), copy=False)
            tensors[tname] = {"shape": list(arr.shape), "dtype": t.dtype, "encoding": t.encoding,
                              "sha256": sha256(le.tobytes())}
        manifest["valid"][f"{name}.mrc"] = {"sha256": sha256(data), "size": len(data), "features": features,
                                            "tensors": tensors}
    for name, (data, code) in invalid_vectors(files).items():
        files[f"invalid/{name}.mrc"] = data
        manifest["invalid"][f"invalid/{name}.mrc"] = {"sha256": sha256(data), "code": code}
    return files, manifest


def main() -> int:
    files, manifest = build()
    text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        bad = [n for n, d in files.items() if not (OUT / n).is_file() or (OUT / n).read_bytes() != d]
        if (OUT / "manifest.json").read_text(encoding="utf-8") != text:
            bad.append("manifest.json")
        print("vectors up to date" if not bad else f"stale: {bad}")
        return 1 if bad else 0
    (OUT / "invalid").mkdir(parents=True, exist_ok=True)
    for n, d in files.items():
        (OUT / n).write_bytes(d)
    (OUT / "manifest.json").write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
