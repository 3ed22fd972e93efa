"""Plain ONNX export: the stored graph with initializers decoded by the numpy reference decoder."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrcformat_runtime import onnx_model
from mrcformat_runtime.onnx_export import export, to_onnx_model
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
