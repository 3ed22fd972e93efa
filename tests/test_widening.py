"""Format 1.2 widening stubs (SPEC.md 7.6): a raw float16 / bfloat16 tensor filling a float32 stub is handed
to every runtime as float32, converted exactly, and ONNX compression stores the uncoded float32 tensors that
way where the outputs do not move."""
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import mrcformat  # noqa: E402
from mrcformat.container import widen_to_float32  # noqa: E402

VECTOR = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "widening_stubs.mrc"


def _want(x: np.ndarray) -> np.ndarray:
    c = mrcformat.load(VECTOR)
    h = widen_to_float32("float16", c.tensor("h").data)
    b = widen_to_float32("bfloat16", c.tensor("b").data)
    with np.errstate(invalid="ignore", over="ignore"):
        return x * h + b


def test_widening_is_exact():
    h = np.array([1.5, -0.0, 2.0 ** -24, 65504.0, np.inf], dtype=np.float16)
    w = widen_to_float32("float16", h)
    assert w.dtype == np.float32 and np.array_equal(w.astype(np.float16), h) and np.signbit(w[1])
    b = np.array([0x3F80, 0x8000, 0x0001], dtype=np.uint16)
    assert widen_to_float32("bfloat16", b).view(np.uint32).tolist() == [0x3F800000, 0x80000000, 0x00010000]
    with pytest.raises(ValueError):
        widen_to_float32("int8", np.zeros(2, np.int8))


@pytest.mark.parametrize("how", ["session", "session_inline", "export", "self_decoding", "load_module"])
def test_every_loader_hands_the_widened_values(how, tmp_path):
    from mrcformat_runtime.onnx_export import export
    from mrcformat_runtime.ort import session

    x = np.linspace(-2, 2, 8, dtype=np.float32)
    if how == "load_module":
        torch = pytest.importorskip("torch")
        from mrcformat_runtime.torch_load import load_module

        with torch.no_grad():
            got = load_module(VECTOR)(torch.from_numpy(x)).numpy()
    else:
        if how.startswith("session"):
            sess = session(VECTOR, external_min_bytes=None if how == "session_inline" else 1)
        else:
            out = tmp_path / "m.onnx"
            export(VECTOR, out, self_decoding=how == "self_decoding")
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _want(x))


def test_a_1_1_file_with_a_widening_stub_is_refused():
    from mrcformat.errors import GraphError

    bad = VECTOR.parent / "invalid" / "widening_stub_at_minor_1.mrc"
    with pytest.raises(GraphError):
        mrcformat.load(bad)


def _tiny_onnx(path: Path, bias_scale: float = 1.0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    b = (rng.normal(size=(8,)) * bias_scale).astype(np.float32)
    g = (1 + rng.normal(size=(64,)) * 0.1).astype(np.float32)   # 64 values: float16 candidate
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y0"]),
             helper.make_node("Reshape", ["y0", "shape"], ["y1"]), helper.make_node("Tile", ["y1", "reps"], ["y2"]),
             helper.make_node("Mul", ["y2", "g"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(g, "g"),
             numpy_helper.from_array(np.array([-1, 8], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 8], np.int64), "reps")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return [{"x": rng.normal(size=(4, 16)).astype(np.float32)} for _ in range(6)]


def test_onnx_compression_stores_uncoded_float_tensors_as_float16(tmp_path):
    from mrcformat.encode.onnx_compress import analyse, compress_onnx
    from mrcformat_runtime.ort import session

    path = tmp_path / "t.onnx"
    feeds = _tiny_onnx(path)
    an = analyse(str(path), feeds, importance="tensor", min_elements=64, progress=False)
    assert [s.name for s in an.sites] == ["w"] and [s.name for s in an.half] == ["g"]   # b: under 32 values
    assert 0 < an.half_distortion <= 1e-6 and any("float16" in n for n in an.notes)
    out = tmp_path / "t.mrc"
    compress_onnx(an, out, "8bpw", index_bits=8, progress=False)
    c = mrcformat.load(out)
    assert c.version == (1, 2) and mrcformat.validate_file(out) == []
    assert c.tensor("g").dtype == "float16" and np.array_equal(c.tensor("g").data, an.half[0].array.astype("<f2"))
    graph = onnx.ModelProto.FromString(c.graph)
    g_init = next(t for t in graph.graph.initializer if t.name == "g")
    assert g_init.data_type == onnx.TensorProto.FLOAT and not g_init.raw_data     # a float32 stub, no data
    y = session(out).run(None, feeds[0])[0]
    assert y.shape == (4, 64) and np.isfinite(y).all()
    plain = analyse(str(path), feeds, importance="tensor", min_elements=64, progress=False, half=False)
    assert plain.half == [] and compress_onnx(plain, tmp_path / "p.mrc", "8bpw", index_bits=8,
                                              progress=False).file_bytes > out.stat().st_size


def test_float16_is_refused_where_it_would_move_the_outputs(tmp_path, monkeypatch):
    from mrcformat.encode import onnx_compress

    path = tmp_path / "t.onnx"
    feeds = _tiny_onnx(path)
    monkeypatch.setattr(onnx_compress, "HALF_MAX_DISTORTION", 0.0)
    an = onnx_compress.analyse(str(path), feeds, importance="tensor", min_elements=64, progress=False)
    assert an.half == [] and any("stay float32" in n for n in an.notes)
    out = tmp_path / "t.mrc"
    onnx_compress.compress_onnx(an, out, "8bpw", index_bits=8, progress=False)
    assert mrcformat.load(out).version == (1, 1)


def test_cli_float16_switch(tmp_path):
    from click.testing import CliRunner

    from mrcformat.cli import main

    path = tmp_path / "t.onnx"
    feeds = _tiny_onnx(path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(feeds):
        np.savez(calib / f"{i}.npz", **f)
    sizes = {}
    for flag in ("--float16", "--no-float16"):
        out = tmp_path / f"{flag}.mrc"
        res = CliRunner().invoke(main, ["compress", str(path), "--budget", "8bpw", "--calibration", str(calib), "-o",
                                        str(out), "--index-bits", "8", "--importance", "tensor", flag, "--quiet"])
        assert res.exit_code == 0, res.output
        c = mrcformat.load(out)
        sizes[flag] = out.stat().st_size
        assert [t.dtype for t in c.tensors if t.encoding == "raw"] == (["float16"] if flag == "--float16" else [])
    assert sizes["--float16"] < sizes["--no-float16"]
