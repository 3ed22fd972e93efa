"""External data hidden anywhere in the graph (SPEC.md 7.6), and no byte outside the file ever read
(issue 15, item 1). The places the first list-based check missed (default attributes of model-local
functions, tensor lists, deep nesting inside functions and training_info) each have a case; the reader's
walk covers every message field, so `external_data_tensors` is checked on all of them, then the reader,
the validator and every loader on a file that carries one. The last test plants a file next to the
.mrc and next to the exported model and shows onnxruntime would read it from the raw graph but nothing
of ours does."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from spec_helpers import unchecked_bytes  # noqa: E402
from strategies import make_group  # noqa: E402

import mrcformat as m  # noqa: E402
from mrcformat.errors import ExternalDataError, MrcError  # noqa: E402
from mrcformat.onnx_external import external_data_tensors  # noqa: E402

PLANTED = b"SECRET-BYTES-OUTSIDE-THE-FILE!!!"  # 32 bytes = 8 float32


def _external(name: str, location: str = "planted.bin", n: int = 8):
    t = helper.make_tensor(name, TensorProto.FLOAT, [n], np.zeros(n, np.float32))
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="length", value=str(4 * n))
    return t


def _sparse(values):
    return helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [1], [0]), [8])


def _leaf(nodes=(), inits=()):
    return helper.make_graph(list(nodes), "leaf", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, None)],
                             initializer=list(inits))


def _if(leaf, out="k2"):
    return helper.make_node("If", ["c"], [out], then_branch=leaf, else_branch=leaf)


def _function(nodes, inputs=(), attribute_proto=()):
    f = helper.make_function("local", "F", list(inputs), [nodes[-1].output[0]], nodes, [helper.make_opsetid("", 18)])
    f.attribute_proto.extend(attribute_proto)
    return f


def hiding_model(where: str):
    """A model reading file tensor `w`, whose one external tensor hides in `where`."""
    nodes = [helper.make_node("Identity", ["w"], ["y"])]
    functions, training = [], []
    if where == "function-default-tensor":  # FunctionProto.attribute_proto: a default attribute value
        functions = [_function([helper.make_node("Identity", ["x"], ["z"])], ["x"],
                               [helper.make_attribute("value", _external("k"))])]
    elif where == "function-default-graph":
        functions = [_function([helper.make_node("Identity", ["x"], ["z"])], ["x"],
                               [helper.make_attribute("body", _leaf(inits=[_external("k")]))])]
    elif where == "function-deep-sparse":  # If in If in a function, a sparse Constant at the bottom
        leaf = _leaf([helper.make_node("Constant", [], ["k"], sparse_value=_sparse(_external("k")))])
        mid = _leaf([_if(leaf, "k")])
        functions = [_function([_if(mid)], ["c"])]
    elif where == "attribute-tensor-list":  # `tensors` (a list attribute) of a custom-domain node
        nodes.append(helper.make_node("Custom", [], ["z"], domain="local", values=[_external("k")]))
    elif where == "attribute-sparse-list":
        nodes.append(helper.make_node("Custom", [], ["z"], domain="local",
                                      sparses=[_sparse(_external("k"))]))
    elif where == "graphs-list-attribute":  # `graphs` (a list of subgraphs) attribute
        nodes.append(helper.make_node("Custom", [], ["z"], domain="local",
                                      branches=[_leaf(), _leaf(inits=[_external("k")])]))
    elif where == "training-algorithm-loop":
        body = helper.make_graph([helper.make_node("Constant", [], ["k"], value=_external("k"))], "body", [],
                                 [helper.make_tensor_value_info("k", TensorProto.FLOAT, None)])
        algo = helper.make_graph([helper.make_node("Loop", ["", ""], [], body=body)], "algo", [], [])
        training = [helper.make_training_info(helper.make_graph([], "init", [], []), [], algo, [])]
    elif where == "sparse-initializer-indices":
        sp = helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]), _external("i"), [8])
        sub = helper.make_graph([], "leaf", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, None)])
        sub.sparse_initializer.append(sp)
        nodes.append(_if(sub))
    else:
        raise ValueError(where)
    g = helper.make_graph(nodes, "top", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                              functions=functions)
    model.training_info.extend(training)
    return model


PLACES = ["function-default-tensor", "function-default-graph", "function-deep-sparse", "attribute-tensor-list",
          "attribute-sparse-list", "graphs-list-attribute", "training-algorithm-loop", "sparse-initializer-indices"]


def _container(graph: bytes) -> m.Container:
    g = make_group(4, block_size=2, index_bits=3, rng=np.random.default_rng(0))
    return m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (4,), "coded", group=0)], graph=graph)


@pytest.mark.parametrize("where", PLACES)
def test_every_hiding_place_is_found_and_refused(where, tmp_path):
    model = hiding_model(where)
    assert external_data_tensors(model) != [], where
    data = unchecked_bytes(_container(model.SerializeToString()))
    with pytest.raises(ExternalDataError):
        m.from_bytes(data)
    assert [p.code for p in m.validate_bytes(data)][:1] == ["external-data"]
    path = tmp_path / "hostile.mrc"
    path.write_bytes(data)
    (tmp_path / "planted.bin").write_bytes(PLANTED)
    from mrcformat_runtime import ort as mrc_ort
    from mrcformat_runtime.onnx_export import export

    with pytest.raises(ExternalDataError):
        mrc_ort.session(path)
    with pytest.raises(ExternalDataError):
        export(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_walk_finds_nothing_in_clean_models_and_everything_at_depth():
    clean = hiding_model("graphs-list-attribute")
    del clean.graph.node[1].attribute[0].graphs[1].initializer[:]
    assert external_data_tensors(clean) == []
    leaf = _leaf(inits=[_external("deep")])
    for _ in range(25):  # as deep as protobuf parses (3 messages a level, limit 100); one branch a level
        leaf = _leaf([helper.make_node("If", ["c"], ["k"], then_branch=leaf, else_branch=_leaf())])
    g = helper.make_graph(leaf.node, "top", [], [])
    assert external_data_tensors(helper.make_model(g)) == ["deep"]


def test_planted_file_is_never_read(tmp_path):
    """The attack of issue 15: a Constant with external data in a model-local function. onnxruntime,
    given the raw graph next to a planted file, returns the planted bytes as the model's output; our
    reader refuses the .mrc, and a valid file exported next to the planted file reads nothing of it."""
    ort = pytest.importorskip("onnxruntime")
    fnode = helper.make_node("Constant", [], ["k"], value=_external("k"))
    f = helper.make_function("local", "F", [], ["k"], [fnode], [helper.make_opsetid("", 18)])
    g = helper.make_graph([helper.make_node("F", [], ["y"], domain="local"), helper.make_node("Identity", ["w"], ["y2"])],
                          "top", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8]),
                                      helper.make_tensor_value_info("y2", TensorProto.FLOAT, [4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                              functions=[f])
    (tmp_path / "planted.bin").write_bytes(PLANTED)
    # the attack is real: onnxruntime on the raw graph (w supplied) reads the planted file
    raw = onnx.ModelProto()
    raw.CopyFrom(model)
    raw.graph.initializer.append(helper.make_tensor("w", TensorProto.FLOAT, [4], np.zeros(4, np.float32)))
    onnx.save(raw, tmp_path / "raw.onnx")
    try:
        y = ort.InferenceSession(str(tmp_path / "raw.onnx"), providers=["CPUExecutionProvider"]).run(["y"], {})[0]
        attack_works = y.tobytes() == PLANTED
    except Exception:  # noqa: BLE001  # an onnxruntime that refuses it is fine too
        attack_works = False
    # ours: the .mrc is refused by every path, before onnxruntime sees the graph
    data = unchecked_bytes(_container(model.SerializeToString()))
    (tmp_path / "hostile.mrc").write_bytes(data)
    from mrcformat_runtime import ort as mrc_ort
    from mrcformat_runtime.onnx_export import export

    for load in (lambda: m.load(tmp_path / "hostile.mrc"), lambda: mrc_ort.session(tmp_path / "hostile.mrc"),
                 lambda: export(tmp_path / "hostile.mrc", tmp_path / "hostile.onnx")):
        with pytest.raises(ExternalDataError):
            load()
    # a valid file's export, opened next to the planted file: no external reference, nothing planted comes out
    del model.functions[:]
    del model.graph.node[0]
    del model.graph.output[0]
    good = tmp_path / "good.mrc"
    m.save(_container(model.SerializeToString()), good)
    for self_decoding in (False, True):
        out = tmp_path / f"good{int(self_decoding)}.onnx"
        export(good, out, self_decoding=self_decoding)
        exported = onnx.load(str(out), load_external_data=False)
        assert external_data_tensors(exported) == []
        outs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {})
        assert all(PLANTED not in o.tobytes() for o in outs)
    print("onnxruntime reads the planted file from the raw graph:", attack_works)


def test_loaders_raise_library_errors_only_on_a_refused_graph(tmp_path):
    """Defence in depth: any MrcError, never another class, from every loader on a hostile file."""
    pytest.importorskip("torch")
    from mrcformat_runtime.torch_load import load_module, load_state_dict

    path = tmp_path / "h.mrc"
    path.write_bytes(unchecked_bytes(_container(hiding_model("function-deep-sparse").SerializeToString())))
    for load in (load_state_dict, load_module):
        with pytest.raises(MrcError):
            load(path)
