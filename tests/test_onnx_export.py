"""Plain ONNX export: the stored graph with initializers decoded by the numpy reference decoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrcformat_runtime import onnx_model
from mrcformat_runtime.onnx_export import export, export_two_step, to_onnx_model
from onnx import TensorProto, helper
from strategies import containers, identity_graph, make_group

from mrcformat import Container, Tensor, decode, from_bytes, save, to_bytes
from mrcformat.errors import GraphError, MrcError


def _session(model_or_bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _identity_outputs(c: Container) -> list[str]:
    """Names of the tensors `identity_graph` made outputs out0, out1, ... of (as `containers` builds it)."""
    return [t.name for t in c.tensors if t.encoding == "coded" or t.dtype == "float32"]


def _assert_identity_outputs_match(c: Container, outs: list[np.ndarray]) -> None:
    ref = decode(c)
    names = _identity_outputs(c)
    assert len(outs) == len(names)
    for name, got in zip(names, outs):
        want = np.asarray(ref[name])
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name  # bit for bit, NaN payloads included


@given(containers(with_graph=True))
def test_plain_export_matches_numpy_decode(c):
    if c.graph is None:
        with pytest.raises(GraphError):
            to_onnx_model(c)
        return
    c = from_bytes(to_bytes(c))  # what a reader hands over: read-only views of the file bytes
    model = to_onnx_model(c)
    onnx.checker.check_model(model)
    names = _identity_outputs(c)
    assert {i.name for i in model.graph.initializer} == set(names)  # only what the graph reads
    if names:  # onnxruntime refuses a graph without outputs
        _assert_identity_outputs_match(c, _session(model).run(None, {}))


def _run_two_step(weights: bytes, network: bytes, feeds: dict) -> tuple[dict, list[np.ndarray]]:
    """The two-step form as a user runs it: the decoder once with optimisations off, then the network."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    dec = ort.InferenceSession(weights, so, providers=["CPUExecutionProvider"])
    fed = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
    return fed, _session(network).run(None, {**fed, **feeds})


@settings(deadline=None)
@given(containers(with_graph=True))
def test_two_step_form_matches_numpy_decode(tmp_path_factory, c):
    """export_two_step on random files: the decoder regenerates every coded tensor the graph reads, bit for bit,
    and the network fed them returns the reference bits (the identity graph passes them through)."""
    if c.graph is None:
        return
    c = from_bytes(to_bytes(c))
    d = tmp_path_factory.mktemp("two")
    coded = [n for n in _identity_outputs(c) if c.tensor(n).encoding == "coded"]
    if not coded:
        with pytest.raises(ValueError, match="reads no coded tensor"):
            export_two_step(c, d / "w.onnx", d / "n.onnx")
        assert not (d / "w.onnx").exists() and not (d / "n.onnx").exists()
        return
    export_two_step(c, d / "w.onnx", d / "n.onnx")
    network = onnx.load(str(d / "n.onnx"))
    onnx.checker.check_model(network)
    assert not {i.name for i in network.graph.initializer} & set(coded)  # the network carries no coded data
    fed, outs = _run_two_step((d / "w.onnx").read_bytes(), (d / "n.onnx").read_bytes(), {})
    assert list(fed) == coded  # header order
    ref = decode(c)
    for name, got in fed.items():
        assert got.dtype == np.float32 and got.tobytes() == np.asarray(ref[name]).tobytes(), name
    _assert_identity_outputs_match(c, outs)


def _graph_files(coded: bool) -> list[str]:
    """Every conformance vector and example with a graph (and, if `coded`, at least one coded tensor)."""
    root = Path(__file__).resolve().parents[1]
    out = []
    for p in sorted(root.glob("spec/vectors/*.mrc")) + sorted(root.glob("examples/*.mrc")):
        c = from_bytes(p.read_bytes())
        if c.graph is not None and (not coded or any(t.encoding == "coded" for t in c.tensors)):
            out.append(str(p.relative_to(root)))
    return out


_GRAPH_FILES = _graph_files(coded=True)


def _feeds(model, rng) -> list[dict]:
    """Random inputs for a graph's inputs (symbolic dimensions: 3); a bool input is run with both values."""
    feeds = [{}]
    for i in model.graph.input:
        tt = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 3 for d in tt.shape.dim]
        if tt.elem_type == TensorProto.BOOL:
            feeds = [{**f, i.name: np.array(v).reshape(shape)} for f in feeds for v in (True, False)]
        else:
            assert tt.elem_type == TensorProto.FLOAT, i.name
            feeds = [{**f, i.name: rng.standard_normal(shape).astype(np.float32)} for f in feeds]
    return feeds


@pytest.mark.parametrize("rel", _graph_files(coded=False))
def test_self_decoding_export_runs_like_the_plain_export(rel):
    """Every conformance vector and example with a graph: the self-decoding export, opened with default
    options (its decoder folded), gives the plain export's outputs bit for bit. The decoder's weights are
    checked on their own elsewhere (test_node_runtimes); this runs the whole model, whose raw stubs the
    export must fill as well (the mixed_stubs vector: coded and raw stubs in one initializer list)."""
    root = Path(__file__).resolve().parents[1]
    c = from_bytes((root / rel).read_bytes())
    plain = to_onnx_model(c)
    selfd = _session(to_onnx_model(c, self_decoding=True))
    for feeds in _feeds(plain, np.random.default_rng(4)):
        want = _session(plain).run(None, feeds)
        got = selfd.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.tobytes() == w.tobytes()


@pytest.mark.parametrize("rel", _GRAPH_FILES)
def test_two_step_form_runs_like_the_plain_export(rel, tmp_path):
    """Every conformance vector and example with a graph (weights at the top, in If branches, in a Loop body,
    in Constant nodes, a deflated graph): the two-step pair gives the plain export's outputs. Fed weights are
    not pre-packed, so matrix kernels may round the last bits apart."""
    root = Path(__file__).resolve().parents[1]
    c = from_bytes((root / rel).read_bytes())
    export_two_step(c, tmp_path / "w.onnx", tmp_path / "n.onnx")
    plain = to_onnx_model(c)
    for feeds in _feeds(plain, np.random.default_rng(3)):
        _, got = _run_two_step((tmp_path / "w.onnx").read_bytes(), (tmp_path / "n.onnx").read_bytes(), feeds)
        want = _session(plain).run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(w).max())))


def test_two_step_form_refuses_a_graph_without_coded_tensors(tmp_path):
    """widening_stubs' graph reads only raw tensors: a decoder without outputs, which onnxruntime refuses to
    open, is not written; the error says why and what to do instead."""
    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ValueError, match="reads no coded tensor.*one file"):
        export_two_step(root / "spec/vectors/widening_stubs.mrc", tmp_path / "w.onnx", tmp_path / "n.onnx")
    assert list(tmp_path.iterdir()) == []


def _small_container(graph: bool = True) -> Container:
    rng = np.random.default_rng(7)
    groups = [make_group(60, block_size=8, index_bits=10, rng=rng),
              make_group(20, block_size=5, index_bits=3, rng=rng, hashing=True, sigma=0.5)]
    tensors = [Tensor("w", (6, 10), "coded", group=0), Tensor("h", (40,), "coded", group=1),
               Tensor("b", (3,), "raw", dtype="float32", data=np.array([1.5, -2.0, 0.25], dtype=np.float32)),
               Tensor("unused", (2,), "raw", dtype="int64", data=np.array([3, 4], dtype=np.int64))]
    c = Container(seed=99, groups=groups, tensors=tensors)
    if graph:
        c.graph = identity_graph(tensors[:3])
    return c


def test_export_to_file_and_reload(tmp_path):
    c = _small_container()
    src = tmp_path / "m.mrc"
    save(c, src)
    dst = tmp_path / "m.onnx"
    n = export(src, dst)
    assert n == dst.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    assert model.SerializeToString() == to_onnx_model(c).SerializeToString()
    assert "unused" not in {i.name for i in model.graph.initializer}
    _assert_identity_outputs_match(c, _session(dst.read_bytes()).run(None, {}))
    # overwriting an existing file works and is atomic (same size, same bytes)
    assert export(c, dst) == n and dst.read_bytes() == model.SerializeToString()


def test_error_without_graph(tmp_path):
    c = _small_container(graph=False)
    with pytest.raises(GraphError) as e:
        to_onnx_model(c)
    assert isinstance(e.value, MrcError) and "no graph" in str(e.value)
    with pytest.raises(GraphError):
        export(c, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(GraphError):
        to_onnx_model(c, self_decoding=True)


@settings(max_examples=5)
@given(st.sampled_from(["float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool", "bfloat16"]))
def test_raw_dtypes_keep_their_type(dtype):
    """Raw tensors keep their stored dtype (bfloat16 as BFLOAT16) and bytes."""
    rng = np.random.default_rng(1)
    npdt = {"bfloat16": np.uint16, "bool": np.uint8}.get(dtype, None) or np.dtype(dtype)
    data = (rng.integers(0, 2, size=6) if dtype == "bool" else rng.integers(0, 100, size=6)).astype(npdt).reshape(2, 3)
    if dtype == "bfloat16":
        data = (np.array([1.0, -2.5, 3.0, 0.5, 7.0, -0.125], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
        data = data.reshape(2, 3)
    t = Tensor("r", (2, 3), "raw", dtype=dtype, data=data)
    to = TensorProto.FLOAT if dtype == "bfloat16" else onnx_model.ONNX_DTYPES[dtype]
    g = helper.make_graph([helper.make_node("Cast", ["r"], ["y"], to=to)], "g", [],
                          [helper.make_tensor_value_info("y", to, [2, 3])])
    c = Container(seed=0, tensors=[t], graph=helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
                  .SerializeToString())
    model = to_onnx_model(c)
    init = model.graph.initializer[0]
    assert init.data_type == onnx_model.ONNX_DTYPES[dtype] and init.raw_data == data.tobytes()
    y, = _session(model).run(None, {})
    if dtype == "bfloat16":
        assert y.tobytes() == (data.astype(np.uint32) << 16).view(np.float32).tobytes()
    else:
        assert y.tobytes() == data.astype(y.dtype).tobytes()


@pytest.mark.parametrize("external_min_bytes", [None, 0, 100])
def test_ort_session_plain_and_external_initializers(tmp_path, external_min_bytes):
    """ort.session: weights handed to onnxruntime in the model or as external initializers, same results."""
    from mrcformat_runtime import ort as mort

    c = _small_container()
    save(c, tmp_path / "m.mrc")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = mort.session(tmp_path / "m.mrc", sess_options=so, external_min_bytes=external_min_bytes)
    _assert_identity_outputs_match(c, sess.run(None, {}))
    selfd = mort.session(c, self_decoding=True, providers=["CPUExecutionProvider"])
    _assert_identity_outputs_match(c, selfd.run(None, {}))


@settings(max_examples=15)
@given(containers(max_groups=2, with_graph=True))
def test_ort_session_plain_and_self_decoding_give_the_reference_bits(c):
    """`mrcformat_runtime.ort.session`: numpy-decoded and onnxruntime-decoded weights are the same bits."""
    from mrcformat_runtime.ort import session

    if c.graph is None or not _identity_outputs(c):
        return
    for self_decoding in (False, True):
        _assert_identity_outputs_match(c, session(c, self_decoding=self_decoding).run(None, {}))


def _gemm_after_conv(height: int, opset: int) -> Container:
    """x[1,1,height,8] -> Conv 3x3 (w1) -> Flatten -> Gemm(w2 [144, 10], b2): Gemm's inner dimension is
    4 * (height - 2) * 6, which matches w2 only at height 8; the graph imports opset `opset`."""
    rng = np.random.default_rng(11)
    groups = [make_group(36, block_size=6, index_bits=5, rng=rng), make_group(1440, block_size=24, index_bits=6, rng=rng)]
    tensors = [Tensor("w1", (4, 1, 3, 3), "coded", group=0), Tensor("w2", (144, 10), "coded", group=1),
               Tensor("b2", (10,), "raw", dtype="float32", data=rng.normal(size=10).astype("<f4"))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, height, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return Container(seed=3, groups=groups, tensors=tensors, graph=model.SerializeToString())


def test_self_decoding_export_refuses_a_contradiction_that_its_opset_conversion_surfaces(tmp_path):
    """Fuzz seed 14975: an opset-9 graph whose declared input height makes Gemm's inner dimension disagree with
    the weight. Gemm-9 does not check it, so onnxruntime opens the plain export; the self-decoding export needs
    opset 18, where Gemm-13 unifies the dimension and onnxruntime refused the exported model. The export now
    says so (GraphError naming the conversion) instead of writing that model; plain and two-step still work."""
    bad = _gemm_after_conv(height=20, opset=9)
    _session(to_onnx_model(bad))  # the stored opset: opens
    with pytest.raises(GraphError, match=r"opset 9.*opset 18.*Gemm") as e:
        to_onnx_model(bad, self_decoding=True)
    assert e.value.code == "graph"
    export_two_step(bad, tmp_path / "w.onnx", tmp_path / "n.onnx")
    _session(onnx.load(tmp_path / "n.onnx"))
    # the same graph with a consistent height converts and opens, and so does the contradiction at opset 18,
    # which the stored graph states itself (onnxruntime's own message, not the export's concern)
    good = _gemm_after_conv(height=8, opset=9)
    sd = _session(to_onnx_model(good, self_decoding=True))
    x = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(sd.run(None, {"x": x})[0], _session(to_onnx_model(good)).run(None, {"x": x})[0])
    to_onnx_model(_gemm_after_conv(height=20, opset=18), self_decoding=True)


def test_self_decoding_export_ignores_a_stale_declared_output_shape():
    """ddddocr's common.onnx (opset 12) declares its output [1, -1] where the model gives [columns, 1, classes].
    After the conversion to opset 18, ONNX infers the Reshape's rank through Shape/Gather/Unsqueeze/Concat
    and its strict mode reports the clash with the declaration, which onnxruntime merges leniently (the model
    opens and runs). The conversion check leaves declared shapes out, so such a graph still exports."""
    rng = np.random.default_rng(5)
    c = Container(seed=4, groups=[make_group(6, block_size=3, index_bits=4, rng=rng)],
                  tensors=[Tensor("w", (6,), "coded", group=0)])
    nodes = [helper.make_node("Mul", ["x", "w"], ["t"]),
             helper.make_node("Shape", ["t"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["g0"], axis=0),
             helper.make_node("Unsqueeze", ["g0"], ["u0"], axes=[0]),
             helper.make_node("Concat", ["u0", "tail"], ["shape"], axis=0),
             helper.make_node("Reshape", ["t", "shape"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array(0, np.int64), "i0"),
             onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "tail")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, -1])], inits)
    c.graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)], ir_version=7).SerializeToString()
    x = rng.normal(size=(5, 4, 6)).astype(np.float32)
    plain = _session(to_onnx_model(c)).run(None, {"x": x})[0]
    sd = _session(to_onnx_model(c, self_decoding=True)).run(None, {"x": x})[0]
    assert plain.shape == (5, 1, 24)
    np.testing.assert_array_equal(sd, plain)
