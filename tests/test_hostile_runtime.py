"""The runtime loaders on graphs the reader accepts but a runtime cannot run, and on files whose load
would go over the memory budget (issue 15, items 2 and 3): only mrcformat.errors classes come out,
nothing is printed, and the budget is checked before anything large is allocated."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from strategies import make_group  # noqa: E402

import mrcformat as m  # noqa: E402
from mrcformat.errors import GraphError, LimitError, MrcError, RuntimeGraphError, UnsupportedGraphError  # noqa: E402
from mrcformat_runtime import load_budget  # noqa: E402
from mrcformat_runtime import ort as mrc_ort  # noqa: E402


def _file(tmp_path, nodes, outputs, *, inputs=(), opsets=(("", 18),), n=16, name="g.mrc", extra_inits=()):
    """A .mrc with one coded tensor `w` (n floats) and the given graph (saved: the reader accepts it)."""
    g = helper.make_graph(nodes, "g", list(inputs), outputs, initializer=list(extra_inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    grp = make_group(n, block_size=4, index_bits=4, rng=np.random.default_rng(0))
    c = m.Container(seed=3, groups=[grp], tensors=[m.Tensor("w", (n,), "coded", group=0)],
                    graph=model.SerializeToString())
    path = tmp_path / name
    m.save(c, path)
    return path


def _out(name, shape=None, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


REFUSED = {  # graphs the reader accepts and onnxruntime refuses (the kinds the fuzzing found)
    "opset-1000": ([helper.make_node("Identity", ["w"], ["y"])], [_out("y")], (("", 1000),)),
    "unknown-domain": ([helper.make_node("Frobnicate", ["w"], ["y"], domain="nowhere")], [_out("y")],
                       (("", 18), ("nowhere", 1))),
    "output-nothing-produces": ([helper.make_node("Identity", ["w"], ["y"])], [_out("y"), _out("ghost")], (("", 18),)),
    "duplicated-node": ([helper.make_node("Identity", ["w"], ["y"]), helper.make_node("Identity", ["w"], ["y"])],
                        [_out("y")], (("", 18),)),
    "shape-that-does-not-fit": ([helper.make_node("Reshape", ["w", "s"], ["x"]), helper.make_node("Add", ["x", "w"], ["y"])],
                                [_out("y")], (("", 18),)),
    "maxpool-without-kernel-shape": ([helper.make_node("Reshape", ["w", "s4"], ["x"]),
                                      helper.make_node("MaxPool", ["x"], ["y"])], [_out("y")], (("", 18),)),
}
_INITS = [helper.make_tensor("s", TensorProto.INT64, [2], [2, 8]),
          helper.make_tensor("s4", TensorProto.INT64, [4], [1, 1, 4, 4])]


def _refused_file(tmp_path, kind):
    nodes, outputs, opsets = REFUSED[kind]
    inits = [i for i in _INITS if any(i.name in nd.input for nd in nodes)]
    return _file(tmp_path, nodes, outputs, opsets=opsets, extra_inits=inits, name=f"{kind}.mrc")


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_session_raises_runtime_graph_error_and_prints_nothing(kind, tmp_path, capfd):
    path = _refused_file(tmp_path, kind)
    capfd.readouterr()
    with pytest.raises(RuntimeGraphError) as e:
        mrc_ort.session(path)
    assert "onnxruntime refused" in str(e.value) and e.value.code == "graph-runtime"
    assert isinstance(e.value.__cause__, Exception)  # onnxruntime's own exception, kept
    assert capfd.readouterr().out == ""  # no "EP Error" banner


def test_session_on_a_gpu_provider_that_is_missing_prints_nothing(tmp_path, capfd):
    """A provider list that cannot be honoured used to print onnxruntime's fallback banner."""
    path = _refused_file(tmp_path, "opset-1000")
    capfd.readouterr()
    with pytest.raises(MrcError):
        mrc_ort.session(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert capfd.readouterr().out == ""


def test_load_module_maxpool_without_kernel_shape_is_a_typed_error(tmp_path):
    torch_load = pytest.importorskip("mrcformat_runtime.torch_load")
    with pytest.raises(GraphError) as e:  # the converter's own GraphError, or RuntimeGraphError from the wrapper
        torch_load.load_module(_refused_file(tmp_path, "maxpool-without-kernel-shape"))
    assert not isinstance(e.value, KeyError) and "kernel_shape" in str(e.value)


def test_load_module_unsupported_operator_is_also_not_implemented(tmp_path):
    torch_load = pytest.importorskip("mrcformat_runtime.torch_load")
    path = _refused_file(tmp_path, "unknown-domain")
    with pytest.raises(UnsupportedGraphError) as e:
        torch_load.load_module(path)
    assert isinstance(e.value, NotImplementedError) and isinstance(e.value, MrcError)


# ------------------------------------------------------------------------------------------ budget


def _constant_of_shape_file(tmp_path, elements: int, name="cos.mrc"):
    """A small file whose graph makes a float constant of `elements` at load (ConstantOfShape)."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [elements])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0), helper.make_node("Identity", ["w"], ["y2"])]
    return _file(tmp_path, nodes, [_out("y", []), _out("y2")], extra_inits=[shape], name=name)


def test_graph_constants_are_counted_from_shape_inference(tmp_path):
    path = _constant_of_shape_file(tmp_path, 1 << 28)
    assert path.stat().st_size < 4096
    c = m.load(path)
    cost = load_budget.graph_constants(onnx.ModelProto.FromString(c.graph), c)
    assert cost.unknown == [] and cost.bytes >= 4 << 28  # the 1 GiB constant (and the reduced scalar)


def test_session_refuses_a_graph_constant_over_the_budget_before_decoding(tmp_path, monkeypatch):
    path = _constant_of_shape_file(tmp_path, 1 << 28)  # 1 GiB made by onnxruntime's constant folding

    def never(*a, **k):
        raise AssertionError("decoded before the budget was checked")

    monkeypatch.setattr(mrc_ort, "decoded_arrays", never)
    with pytest.raises(LimitError) as e:
        mrc_ort.session(path, max_decoded_bytes=256 << 20)
    assert "budget" in str(e.value)
    big = _constant_of_shape_file(tmp_path, 1 << 29, name="cos2.mrc")  # 2 GiB: over the default
    with pytest.raises(LimitError):
        mrc_ort.session(big)


def test_unknown_constant_sizes_turn_constant_folding_off(tmp_path):
    """A size shape inference cannot give (here: a shape through Abs, which it does not propagate):
    onnxruntime must not fold it at load; the session is built and computes it at run time."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [-6])
    nodes = [helper.make_node("Abs", ["shape"], ["s2"]),
             helper.make_node("ConstantOfShape", ["s2"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
             helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0), helper.make_node("Identity", ["w"], ["y2"])]
    path = _file(tmp_path, nodes, [_out("y", []), _out("y2")], extra_inits=[shape])
    c = m.load(path)
    cost = load_budget.graph_constants(onnx.ModelProto.FromString(c.graph), c)
    assert "big" in cost.unknown
    sess = mrc_ort.session(path)
    assert float(sess.run(["y"], {})[0]) == 12.0


def _bomb(tmp_path, weights: int = 1 << 21) -> str:
    # blocks of 4096 slots, hashing 256 weights per value: 8 MiB of float32 from a few hundred bytes
    nvals = weights // 256
    g = make_group(nvals, block_size=4096, index_bits=1, rng=np.random.default_rng(0), hashing=True)
    c = m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (weights,), "coded", group=0)],
                    graph=helper.make_model(helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "b", [],
                                                              [_out("y")]),
                                            opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    path = tmp_path / "bomb.mrc"
    m.save(c, path)
    return path


def test_every_loader_takes_the_budget(tmp_path):
    torch_load = pytest.importorskip("mrcformat_runtime.torch_load")
    path = _bomb(tmp_path)  # 8 MiB decoded
    assert path.stat().st_size < 1024
    for load in (torch_load.load_state_dict, torch_load.load_module, mrc_ort.session):
        with pytest.raises(LimitError):
            load(path, max_decoded_bytes=4 << 20)
    with pytest.raises(LimitError):
        mrc_ort.session(path, max_decoded_bytes=64 << 20)  # 48 MiB overhead + 40 MiB
    # the session counts 3 x 8 MiB for the weights (ours, onnxruntime's, a transient) and 2 x 8 MiB for y,
    # the Identity of them that onnxruntime folds into a constant
    # (and the session's fixed overhead)
    assert load_budget.estimate(path, "session") == pytest.approx((40 << 20) + load_budget.SESSION_OVERHEAD, rel=0.01)
    with pytest.raises(LimitError):
        mrc_ort.session(path, max_decoded_bytes=(36 << 20) + load_budget.SESSION_OVERHEAD)
    assert mrc_ort.session(path, max_decoded_bytes=(41 << 20) + load_budget.SESSION_OVERHEAD) is not None
    assert torch_load.load_state_dict(path, max_decoded_bytes=12 << 20)["w"].numel() == 1 << 21
    assert torch_load.load_state_dict(path, max_decoded_bytes=None)["w"].numel() == 1 << 21
    with pytest.raises(LimitError):
        m.load(path, max_decoded_bytes=4 << 20)


def test_cli_export_takes_the_budget(tmp_path):
    from click.testing import CliRunner

    from mrcformat.cli import main

    path = _bomb(tmp_path)
    out = tmp_path / "b.onnx"
    r = CliRunner().invoke(main, ["export", str(path), "-o", str(out), "--max-decoded-bytes", "16MiB"])
    assert r.exit_code == 1 and "budget" in r.stderr and not out.exists()
    r = CliRunner().invoke(main, ["export", str(path), "-o", str(out), "--max-decoded-bytes", "64MiB"])
    assert r.exit_code == 0 and out.exists()
    # the two-step form never decodes the coded tensor in numpy (its decoder is a few times the file), so
    # the budget that refused the plain export lets it through; the reader's own limit still applies
    net, weights = tmp_path / "n.onnx", tmp_path / "w.onnx"
    r = CliRunner().invoke(main, ["export", str(path), "-o", str(net), "--two-step", str(weights),
                                  "--max-decoded-bytes", "4MiB"])
    assert r.exit_code == 1 and "limit" in r.stderr and not net.exists() and not weights.exists()
    r = CliRunner().invoke(main, ["export", str(path), "-o", str(net), "--two-step", str(weights),
                                  "--max-decoded-bytes", "16MiB"])
    assert r.exit_code == 0 and net.exists() and weights.exists(), r.output
