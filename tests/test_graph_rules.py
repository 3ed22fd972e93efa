"""SPEC.md 7.6: external data is refused anywhere in the model, nested subgraphs included."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import mrcformat as m
from mrcformat.errors import ExternalDataError
from mrcformat.onnx_graphs import all_graphs
from strategies import make_group


def _external(name: str):
    t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="elsewhere.bin")
    return t


def _nested_model(depth: int, where: str) -> bytes:
    """w -> If(cond){ If(cond){ ... Identity(w) + constant } }: the external tensor sits `depth` levels down."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inner_nodes = [helper.make_node("Identity", ["w"], ["y"])]
    inits = []
    if where == "attribute":
        inner_nodes.insert(0, helper.make_node("Constant", [], ["k"], value=_external("k")))
    else:
        inits = [_external("k")]
    body = helper.make_graph(inner_nodes, "leaf", [], [out], initializer=inits)
    for i in range(depth):
        node = helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body)
        body = helper.make_graph([node], f"level{i}", [], [out])
    g = helper.make_graph(body.node, "top", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [out])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@pytest.mark.parametrize("where", ["initializer", "attribute"])
@pytest.mark.parametrize("depth", [1, 3])
def test_external_data_in_subgraphs_is_refused(where, depth):
    g = make_group(4, block_size=2, index_bits=3, rng=np.random.default_rng(0))
    c = m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (4,), "coded", group=0)],
                    graph=_nested_model(depth, where))
    with pytest.raises(ExternalDataError):
        m.to_bytes(c)  # the writer runs the strict reader on what it produced


def test_all_graphs_visits_every_level_once():
    from onnx import ModelProto

    model = ModelProto.FromString(_nested_model(4, "initializer"))
    names = [g.name for g in all_graphs(model.graph)]
    assert names[0] == "top" and names.count("leaf") == 2 ** 4
    assert len(names) == 1 + sum(2 ** k for k in range(1, 5))  # each If has a then and an else branch


def _sparse_external():
    values = _external("sv")
    indices = helper.make_tensor("si", TensorProto.INT64, [1], [0])
    return helper.make_sparse_tensor(values, indices, [4])


def _model_hiding(where: str) -> bytes:
    """A model whose only external tensor hides in `where` (issue 15: places a reader must look)."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Identity", ["w"], ["y"])]
    functions, training = [], []
    if where == "function":
        fnode = helper.make_node("Constant", [], ["k"], value=_external("k"))
        functions = [helper.make_function("local", "F", [], ["k"], [fnode], [helper.make_opsetid("", 18)])]
        nodes.append(helper.make_node("F", [], ["z"], domain="local"))
    elif where == "function-subgraph":
        leaf = helper.make_graph([helper.make_node("Constant", [], ["k"], value=_external("k"))], "leaf", [],
                                 [helper.make_tensor_value_info("k", TensorProto.FLOAT, None)])
        fnode = helper.make_node("If", ["c"], ["k2"], then_branch=leaf, else_branch=leaf)
        functions = [helper.make_function("local", "F", ["c"], ["k2"], [fnode], [helper.make_opsetid("", 18)])]
    elif where == "sparse-attribute":
        nodes.append(helper.make_node("Constant", [], ["k"], sparse_value=_sparse_external()))
    elif where == "training-info":
        init = helper.make_graph([], "init", [], [], initializer=[_external("k")])
        ti = helper.make_training_info(init, [], init, [])
        training = [ti]
    g = helper.make_graph(nodes, "top", [], [out])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                              functions=functions)
    model.training_info.extend(training)
    return model.SerializeToString()


@pytest.mark.parametrize("where", ["function", "function-subgraph", "sparse-attribute", "training-info"])
def test_external_data_is_refused_in_every_hiding_place(where):
    g = make_group(4, block_size=2, index_bits=3, rng=np.random.default_rng(0))
    c = m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (4,), "coded", group=0)], graph=_model_hiding(where))
    from spec_helpers import unchecked_bytes

    with pytest.raises(ExternalDataError):
        m.from_bytes(unchecked_bytes(c))
    assert any(p.code == "external-data" for p in m.validate_bytes(unchecked_bytes(c)))
