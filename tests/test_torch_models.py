"""End to end with torch models: container -> decoded weights -> ONNX architecture graph -> `.mrc`
file -> `load_module` (no user code) and `load_state_dict` (user's class) give the model's output.

MIRACLE regenerates weights from indices, so a file cannot hold *given* weights: each test makes a
container with random indices (one group per weight matrix, sigma ~ 1/sqrt(fan_in); biases and
BatchNorm parameters/statistics raw), decodes it, loads the decoded weights into the model, exports
the model's architecture and stores it as the file's graph.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from torch import nn  # noqa: E402

import mrcformat  # noqa: E402
from mrcformat.container import Container, Group, Tensor  # noqa: E402
from mrcformat.layout import choose_affine, num_blocks  # noqa: E402
from mrcformat.sampler import float_to_bf16_bits, float_to_f32_bits  # noqa: E402
from mrcformat_runtime.graph import export_architecture, strip_weights, with_graph  # noqa: E402
from mrcformat_runtime.onnx_to_torch import OnnxModule  # noqa: E402
from mrcformat_runtime.torch_load import load_module, load_state_dict  # noqa: E402


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv 20 5x5, maxpool, conv 50 5x5, maxpool, fc 800-500, relu, fc 500-10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))  # Shape/Gather/Concat/Reshape in ONNX


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Recurrent(nn.Module):
    def __init__(self, cell: str = "lstm", bidirectional: bool = False):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(8, 16, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(32 if bidirectional else 16, 4)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def container_for(model: nn.Module, seed: int = 7, index_bits: int = 8, block_size: int = 16) -> Container:
    """Random-index container with the model's state_dict names: a coded group per tensor of rank >= 2,
    everything else raw (float32; positive BatchNorm variances; num_batches_tracked int64)."""
    rng = np.random.default_rng(seed)
    groups, tensors = [], []
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if t.dim() >= 2:
            n = t.numel()
            fan_in = n // shape[0]
            sigma = float_to_bf16_bits(1.0 / np.sqrt(fan_in))
            gid = len(groups)
            groups.append(Group(float_to_f32_bits(0.0), sigma, block_size, index_bits, n,
                                choose_affine(n, seed, gid), False,
                                rng.integers(0, 2**index_bits, size=num_blocks(n, block_size), dtype=np.int64)))
            tensors.append(Tensor(name, shape, "coded", group=gid))
        elif t.is_floating_point():
            data = (rng.uniform(0.5, 1.5, size=shape) if name.endswith("running_var")
                    else rng.normal(0.0, 0.1, size=shape)).astype(np.float32)
            tensors.append(Tensor(name, shape, "raw", dtype="float32", data=data))
        else:
            tensors.append(Tensor(name, shape, "raw", dtype="int64", data=np.full(shape, 3, dtype=np.int64)))
    return Container(seed=seed, groups=groups, tensors=tensors)


CASES = {
    "lenet5": (LeNet5, lambda: torch.randn(3, 1, 28, 28)),
    "convbn": (ConvBN, lambda: torch.randn(3, 3, 16, 16)),
    "lstm": (lambda: Recurrent("lstm"), lambda: torch.randn(3, 5, 8)),
    "gru": (lambda: Recurrent("gru"), lambda: torch.randn(3, 5, 8)),
    "bilstm": (lambda: Recurrent("lstm", bidirectional=True), lambda: torch.randn(3, 5, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_roundtrip(case, tmp_path):
    make, sample = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    c = container_for(model)
    model.load_state_dict(load_state_dict(c))  # the decoded weights, strict: every name matches
    c = with_graph(c, model, sample())
    path = tmp_path / f"{case}.mrc"
    mrcformat.save(c, path)

    x = sample()
    x_other_batch = torch.cat([x, x[:1]])  # the batch axis is dynamic
    with torch.no_grad():
        want = model(x)
        mod = load_module(path)
        assert isinstance(mod, nn.Module) and not mod.training
        got = mod(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mod(x_other_batch)[:3], want, rtol=1e-5, atol=1e-5)

        # the user's class with load_state_dict gives the same weights, bit for bit
        user = make().eval()
        user.load_state_dict(load_state_dict(path))
        assert torch.equal(user(x), want)

    # onnxruntime, from the file alone: plain (numpy-decoded initializers) and self-decoding (weights
    # regenerated by onnxruntime itself) both agree with the original model
    from mrcformat_runtime.ort import session

    for self_decoding in (False, True):
        sess = session(path, self_decoding=self_decoding)
        (got_ort,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        np.testing.assert_allclose(got_ort, want.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"self_decoding={self_decoding}")

    # the module's weights are the file's tensors
    ref = mrcformat.decode(mrcformat.load(path))
    for name, arr in ref.items():
        if name in mod._names:
            assert np.array_equal(mod.tensor(name).detach().numpy(), arr)


def test_stored_graph_has_no_weights():
    model = ConvBN().eval()  # fresh BatchNorm: weight == running_var, bias == running_mean
    names = list(model.state_dict())
    graph = export_architecture(model, torch.randn(1, 3, 16, 16), names)
    import onnx

    g = onnx.ModelProto.FromString(graph).graph
    assert not {i.name for i in g.initializer} & set(names)
    assert [i.name for i in g.input] == ["input"]
    read = {n for node in g.node for n in node.input}
    # every parameter and statistic is read under its own name (no de-duplicated aliases)
    assert {n for n in names if not n.endswith("num_batches_tracked")} <= read
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {node.op_type for node in g.node} >= {"BatchNormalization", "Conv"}  # BN not fused into Conv


def test_strip_weights_removes_initializers_and_inputs():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    k = numpy_helper.from_array(np.ones(2, np.float32), "keep")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "keep"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])], initializer=[w, k])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    import onnx

    out = onnx.ModelProto.FromString(strip_weights(m.SerializeToString(), ["w"])).graph
    assert [t.name for t in out.initializer] == ["keep"]
    assert [i.name for i in out.input] == ["x"]
    mod = OnnxModule(onnx.ModelProto(graph=out, opset_import=m.opset_import), {"w": torch.eye(2) * 2})
    torch.testing.assert_close(mod(torch.tensor([[1.0, 2.0]])), torch.tensor([[3.0, 5.0]]))


def test_load_module_without_graph_raises():
    c = container_for(LeNet5())
    with pytest.raises(mrcformat.MrcError):
        load_module(dataclasses.replace(c, graph=None))


@pytest.mark.parametrize("op, attrs, inputs, expect", [
    ("Slice", {}, [np.arange(10.0, dtype=np.float32), np.array([8]), np.array([1]), np.array([0]), np.array([-3])],
     np.array([8.0, 5.0, 2.0], dtype=np.float32)),
    ("Gather", {"axis": 1}, [np.arange(6.0, dtype=np.float32).reshape(2, 3), np.array([-1, 0])],
     np.array([[2.0, 0.0], [5.0, 3.0]], dtype=np.float32)),
    ("Reshape", {}, [np.arange(6.0, dtype=np.float32).reshape(2, 3), np.array([0, -1, 1])],
     np.arange(6.0, dtype=np.float32).reshape(2, 3, 1)),
    ("Div", {}, [np.array([-7, 7]), np.array([2, 2])], np.array([-3, 3])),
    ("Unsqueeze", {}, [np.zeros((2, 3), np.float32), np.array([0, -1])], np.zeros((1, 2, 3, 1), np.float32)),
])
def test_single_ops_match_onnx_semantics(op, attrs, inputs, expect):
    from onnx import helper, numpy_helper

    names = [f"i{k}" for k in range(len(inputs))]
    inits = [numpy_helper.from_array(a, n) for a, n in zip(inputs, names)]
    out = helper.make_tensor_value_info("y", numpy_helper.from_array(expect).data_type, None)
    g = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g", [], [out], initializer=inits)
    mod = OnnxModule(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), {})
    np.testing.assert_array_equal(mod().numpy(), expect)


def test_against_onnxruntime_when_available(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model = ConvBN().eval()
    c = container_for(model)
    model.load_state_dict(load_state_dict(c))
    c = with_graph(c, model, torch.randn(1, 3, 16, 16))
    full = onnx.ModelProto.FromString(c.graph)
    for name, t in load_state_dict(c).items():
        if name in {n for node in full.graph.node for n in node.input}:
            full.graph.initializer.append(onnx.numpy_helper.from_array(t.numpy(), name))
    x = torch.randn(2, 3, 16, 16)
    sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        got = load_module(c)(x)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
