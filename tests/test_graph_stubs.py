"""SPEC.md 7.6 (format 1.1): file tensors filling stubs at their own place in the graph, any depth."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import mrcformat as m
from mrcformat.errors import GraphError
from mrcformat.onnx_graphs import find_stubs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spec"))
from make_vectors import stubs_container, stubs_graph  # noqa: E402

ort = pytest.importorskip("onnxruntime")
from mrcformat_runtime.onnx_export import to_onnx_model  # noqa: E402
from mrcformat_runtime.ort import session  # noqa: E402


def _container(**kw):
    return stubs_container(np.random.default_rng(9), **kw)


def _reference(d: dict, x: np.ndarray, flag: bool) -> np.ndarray:
    y = x @ d["w_then"] if flag else (x @ d["w_else"]) @ d["w_loop"] @ d["w_loop"]
    return y + d["bias"]


def _run_form(path: Path, form: str, feeds: dict, tmp_path: Path) -> np.ndarray:
    """The first output of the file's `form` export ("plain", "self_decoding" or "two_step", the last with
    its decoder run once, optimisations off, and its outputs fed to the network) in onnxruntime."""
    from mrcformat_runtime.onnx_export import export, export_two_step

    fed = {}
    if form == "two_step":
        export_two_step(path, tmp_path / "w.onnx", tmp_path / "n.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        dec = ort.InferenceSession(str(tmp_path / "w.onnx"), opts, providers=["CPUExecutionProvider"])
        fed = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
        model = tmp_path / "n.onnx"
    else:
        model = tmp_path / "m.onnx"
        export(path, model, self_decoding=form == "self_decoding")
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {**fed, **feeds})[0]


def test_find_stubs_names_every_place():
    model = onnx.ModelProto.FromString(stubs_graph())
    stubs, problems = find_stubs(model.graph, {"w_then", "w_else", "w_loop", "bias"})
    assert problems == []
    where = {s.name: (s.kind, s.path) for s in stubs}
    assert where["bias"] == ("initializer", "graph/initializer[0]")
    assert where["w_then"][0] == "constant" and ".then_branch/" in where["w_then"][1]
    assert where["w_else"][0] == "initializer" and where["w_else"][1].endswith(".else_branch/initializer[0]")
    assert where["w_loop"][0] == "constant" and ".else_branch/" in where["w_loop"][1] and ".body/" in where["w_loop"][1]


@pytest.mark.parametrize("self_decoding", [False, True])
@pytest.mark.parametrize("flag", [True, False])
def test_stubbed_weights_run_in_onnxruntime(tmp_path, flag, self_decoding):
    path = tmp_path / "s.mrc"
    m.save(_container(), path)
    d = m.decode(m.load(path))
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    y = session(path, self_decoding=self_decoding).run(None, {"x": x, "flag": np.array(flag)})[0]
    np.testing.assert_array_equal(y, _reference(d, x, flag).astype(np.float32))


def test_assembled_model_keeps_the_graph_node_for_node():
    c = m.from_bytes(m.to_bytes(_container()))
    out = to_onnx_model(c)
    onnx.checker.check_model(out, full_check=True)
    original = onnx.ModelProto.FromString(stubs_graph())
    d = m.decode(c)
    # the only difference: the stubs now hold the decoded data
    stubs, _ = find_stubs(original.graph, set(d))
    for s in stubs:
        s.tensor.raw_data = np.ascontiguousarray(d[s.name], dtype="<f4").tobytes()
    assert out.SerializeToString() == original.SerializeToString()


def _graph_variant(edit) -> bytes:
    model = onnx.ModelProto.FromString(stubs_graph())
    edit(model)
    return model.SerializeToString()


def _then(model):
    return next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")


@pytest.mark.parametrize("edit, message", [
    (lambda mo: _then(mo).node[0].attribute[0].t.float_data.extend([0.0] * 12), "holds data"),
    (lambda mo: _then(mo).node[0].attribute[0].t.dims.__setitem__(0, 5), "dims"),
    (lambda mo: setattr(_then(mo).node[0].attribute[0].t, "data_type", 10), "data type"),
    (lambda mo: mo.graph.initializer.add().CopyFrom(mo.graph.initializer[0]), "two stubs"),
    (lambda mo: _then(mo).node[0].attribute.add().CopyFrom(onnx.helper.make_attribute("value_float", 1.0)),
     "lone `value`"),
    (lambda mo: _then(mo).initializer.add().CopyFrom(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "bias")),
     "holds data"),
])
def test_bad_stubs_are_graph_errors(edit, message):
    c = _container()
    c.graph = _graph_variant(edit)
    from spec_helpers import unchecked_bytes
    with pytest.raises(GraphError, match=message):
        m.from_bytes(unchecked_bytes(c))


def test_stubs_are_not_allowed_at_minor_0():
    from spec_helpers import unchecked_bytes
    with pytest.raises(GraphError, match="duplicate tensors of the file"):
        m.from_bytes(unchecked_bytes(_container(version=(1, 0))))


def test_files_without_stubs_are_still_written_as_1_0():
    c = m.load(Path(__file__).resolve().parents[1] / "spec" / "vectors" / "mlp_graph.mrc")
    assert c.version == (1, 0)
    assert m.to_bytes(c)[8:12] == b"\x01\x00\x00\x00"


@pytest.mark.parametrize("flag", [True, False])
def test_two_step_form_feeds_stubs_at_any_depth(tmp_path, flag):
    """`export_two_step` on a graph whose coded weights all sit in subgraphs (a Constant in an If branch, an
    initializer of the other branch, a Constant in a Loop body): the decoder outputs every coded tensor, the
    network holds none of their data (its subgraphs read them from its inputs), and the pair gives the
    reference outputs. Before, only top-graph stubs were fed: this decoder had no outputs at all and
    onnxruntime refused it."""
    from mrcformat_runtime.onnx_export import export_two_step

    c = m.from_bytes(m.to_bytes(_container()))
    d = m.decode(c)
    weights, network = tmp_path / "w.onnx", tmp_path / "n.onnx"
    export_two_step(c, weights, network)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    dec = ort.InferenceSession(str(weights), opts, providers=["CPUExecutionProvider"])
    fed = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
    assert sorted(fed) == ["w_else", "w_loop", "w_then"]
    for name, arr in fed.items():
        assert arr.dtype == np.float32 and arr.tobytes() == np.asarray(d[name]).tobytes(), name
    net_model = onnx.load(str(network))
    onnx.checker.check_model(net_model, full_check=True)
    stubs, _ = find_stubs(net_model.graph, set(fed))
    assert stubs == []  # no place in the network claims a fed tensor any more
    net = ort.InferenceSession(str(network), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    y = net.run(None, {**fed, "x": x, "flag": np.array(flag)})[0]
    np.testing.assert_array_equal(y, _reference(d, x, flag).astype(np.float32))


def test_two_step_form_types_a_declared_input_by_the_tensor(tmp_path):
    """Fuzzing seed 32728: a top-graph input already named like a fed tensor (here `w_else`, shape [2],
    shadowed inside the else branch by the stub) takes the tensor's float32 type and shape in the network;
    kept as declared, onnxruntime refused the network while the plain export ran."""
    from mrcformat_runtime.onnx_export import export_two_step

    c = _container()
    model = onnx.ModelProto.FromString(c.graph)
    model.graph.input.append(onnx.helper.make_tensor_value_info("w_else", onnx.TensorProto.FLOAT, [2]))
    c.graph = model.SerializeToString()
    c = m.from_bytes(m.to_bytes(c))
    d = m.decode(c)
    export_two_step(c, tmp_path / "w.onnx", tmp_path / "n.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    dec = ort.InferenceSession(str(tmp_path / "w.onnx"), opts, providers=["CPUExecutionProvider"])
    fed = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
    net = ort.InferenceSession(str(tmp_path / "n.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in net.get_inputs() if i.name == "w_else"] == [[4, 3]]
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    y = net.run(None, {**fed, "x": x, "flag": np.array(False)})[0]
    np.testing.assert_array_equal(y, _reference(d, x, False).astype(np.float32))


@pytest.mark.parametrize("form", ["plain", "self_decoding", "two_step"])
@pytest.mark.parametrize("raw_dtype", ["float32", "float16"])
@pytest.mark.parametrize("coded_first", [True, False])
def test_raw_and_coded_stubs_side_by_side(tmp_path, form, raw_dtype, coded_first):
    """A coded initializer stub and a raw one in the same graph, in either order (a compressed YOLOv8n,
    nudenet's 320n.onnx: conv weights coded, biases raw float16 in float32 stubs). The self-decoding
    export took the coded stub out of the initializer list first, which rebuilt the list from copies, and
    then filled the raw stub in a detached copy: onnxruntime refused the model ("data field count (0)
    does not match expected count from shape"). Every form now gives the reference outputs."""
    from onnx import TensorProto, helper

    from mrcformat.layout import choose_affine
    from make_vectors import group

    def stub(name, dims):
        t = TensorProto(name=name, data_type=TensorProto.FLOAT)
        t.dims.extend(dims)
        return t

    stubs = [stub("w", [6, 5]), stub("b", [5])]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
                          initializer=stubs if coded_first else stubs[::-1])
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    bias = np.array([0.5, -1.0, 2.0, 0.25, -0.125], dtype="<f2" if raw_dtype == "float16" else "<f4")
    c = m.Container(seed=3, groups=[group(np.random.default_rng(4), 30, 8, 6, layout=choose_affine(30, 3, 0),
                                          sigma=0.5)],
                    tensors=[m.Tensor("w", (6, 5), "coded", group=0),
                             m.Tensor("b", (5,), "raw", dtype=raw_dtype, data=bias)],
                    graph=graph, version=(1, 2) if raw_dtype == "float16" else (1, 1))
    path = tmp_path / "m.mrc"
    m.save(c, path)
    d = m.decode(m.load(path))
    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    want = x @ d["w"] + d["b"].astype(np.float32)
    y = _run_form(path, form, {"x": x}, tmp_path)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_self_decoding_export_with_a_name_that_is_not_utf8():
    """Fuzzing seed 15000556: a graph name with invalid UTF-8 (SPEC 7.6 does not check strings as UTF-8;
    python protobuf returns such a proto2 string as bytes) made the self-decoding export fail with a
    TypeError while choosing its name prefix. Now the export is written, and onnxruntime runs it as it
    runs the plain export."""
    from onnx import TensorProto, helper

    from mrcformat.layout import choose_affine
    from mrcformat_runtime.onnx_export import to_onnx_model
    from make_vectors import group

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["xx_in"]), helper.make_node("Relu", ["xx_in"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString()
    graph = graph.replace(b"xx_in", b"xx\xff\xfen")
    c = m.Container(seed=3, groups=[group(np.random.default_rng(4), 30, 8, 6, layout=choose_affine(30, 3, 0))],
                    tensors=[m.Tensor("w", (6, 5), "coded", group=0)], graph=graph)
    c = m.from_bytes(m.to_bytes(c))
    model = to_onnx_model(c, self_decoding=True)  # raised TypeError
    assert b"xx\xff\xfen" in model.SerializeToString()  # the name is kept as it was
    plain = to_onnx_model(c)
    x = np.random.default_rng(5).standard_normal((2, 6)).astype(np.float32)
    try:
        want = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime may refuse the name; then both forms are refused
        with pytest.raises(Exception):
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(got.run(None, {"x": x})[0], want.run(None, {"x": x})[0])


def test_self_decoding_export_refuses_two_default_opsets():
    """Fuzzing seed 2973: a graph importing the default operator set twice (18 and 1). onnxruntime ran the
    plain export but resolved the self-decoding export's decoder nodes against the other version and refused
    it ("No Op registered for Expand"); the export now says what is wrong instead."""
    from onnx import helper

    from mrcformat_runtime.onnx_export import to_onnx_model

    c = _container()
    model = onnx.ModelProto.FromString(c.graph)
    model.opset_import.append(helper.make_opsetid("", 1))
    c.graph = model.SerializeToString()
    c = m.from_bytes(m.to_bytes(c))
    with pytest.raises(GraphError, match="default ONNX operator set 2 times"):
        to_onnx_model(c, self_decoding=True)


def test_self_decoding_export_refuses_a_graph_without_outputs():
    """Fuzzing seed 5776: a graph whose outputs were all removed. onnxruntime opens the plain export (nothing
    to run) but failed inside its initialisation on the self-decoding one ("OrtValue indexes should have been
    populated"); the export now says why it refuses."""
    from mrcformat_runtime.onnx_export import to_onnx_model

    c = _container()
    model = onnx.ModelProto.FromString(c.graph)
    del model.graph.output[:]
    c.graph = model.SerializeToString()
    c = m.from_bytes(m.to_bytes(c))
    with pytest.raises(GraphError, match="no outputs"):
        to_onnx_model(c, self_decoding=True)


@pytest.mark.parametrize("form", ["plain", "self_decoding", "two_step"])
@pytest.mark.parametrize("flag", [True, False])
def test_a_constant_stub_listed_after_its_consumer(tmp_path, form, flag):
    """Fuzzing seed 33718: the then-branch's Constant stub listed after the MatMul that reads it, in an If
    whose domain is spelled "ai.onnx". onnxruntime opens the plain export of that graph (with the domain
    spelled "" it refuses it: "Nodes in a graph must be topologically sorted"); the self-decoding export
    turned the stub into an Identity in the same place, and onnxruntime refused it even so. The stub is
    now deleted and its Identity goes to the front of the graph, so that form opens in both spellings."""

    def swap(model):
        then = _then(model)
        first, second = onnx.NodeProto(), onnx.NodeProto()
        first.CopyFrom(then.node[1])
        second.CopyFrom(then.node[0])
        assert second.op_type == "Constant" and first.op_type == "MatMul"
        del then.node[:]
        then.node.extend([first, second])
        model.graph.node[0].domain = "ai.onnx"

    c = _container()
    c.graph = _graph_variant(swap)
    path = tmp_path / "m.mrc"
    m.save(c, path)
    d = m.decode(m.load(path))
    x = np.random.default_rng(6).standard_normal((5, 4)).astype(np.float32)
    y = _run_form(path, form, {"x": x, "flag": np.array(flag)}, tmp_path)
    np.testing.assert_array_equal(y, _reference(d, x, flag).astype(np.float32))


def test_self_decoding_export_of_a_graph_without_coded_tensors_is_the_plain_model():
    """Fuzzing seed 63954: the widening vector's graph (raw tensors only) set to IR version 1, with a graph
    input `b` of shape [2] shadowing the Constant stub of `b`. onnxruntime opens the plain export; the
    self-decoding export moved the graph to IR 8 and opset 18 for a decoder it did not hold, where onnxruntime
    refused it ("Shape of initializer b does not match"). With nothing to decode it is now the plain model."""
    from make_vectors import widening_container

    c = widening_container()
    model = onnx.ModelProto.FromString(c.graph)
    model.ir_version = 1
    model.graph.input.append(onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2]))
    c.graph = model.SerializeToString()
    c = m.from_bytes(m.to_bytes(c))
    plain, sd = to_onnx_model(c), to_onnx_model(c, self_decoding=True)
    assert sd.SerializeToString() == plain.SerializeToString()
    x = np.arange(8, dtype=np.float32)
    ort.InferenceSession(sd.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
