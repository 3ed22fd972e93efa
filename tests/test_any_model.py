"""MIRACLE on any PyTorch model (issue 12): any parameter coded, any signature, unlabelled data, the
architecture fixed and checked before training, and the bugs real models hit."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from mrcformat.encode import compress  # noqa: E402
from mrcformat.encode.api import coded_layer_specs  # noqa: E402
from mrcformat.encode.digest import state_digest  # noqa: E402
from mrcformat.encode.distill import Distillation  # noqa: E402
from mrcformat.encode.graph_check import GraphCheckError, _with_tensors, export_checked  # noqa: E402
from mrcformat.encode.layers import VariationalLinear, fast_layer_class, make_variational  # noqa: E402
from mrcformat.encode.selection import CodeRule, coded_specs  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def _ort(graph: bytes, model: nn.Module, feeds: dict) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(_with_tensors(graph, model.state_dict()), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in feeds.items()})


# --- the bugs -----------------------------------------------------------------------------------
def test_digest_of_an_empty_buffer_made_from_numpy():
    m = nn.Linear(2, 2)
    m.register_buffer("empty", torch.from_numpy(np.zeros((0,), np.float32)))   # stride 0
    assert m.empty.stride() == (0,)
    d = state_digest(m)
    m.empty = torch.zeros(0, 3)
    assert len(d) == 16 and state_digest(m) != d


class Rescale(nn.Module):
    """Buffers as converters make them: a Resize scale read by the trace, and a fixed analysis matrix."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("window", torch.linspace(0.0, 1.0, 8 * 8).reshape(8, 8))

    def forward(self, x):
        x = F.interpolate(self.conv(x), scale_factor=float(self.scale), mode="nearest")
        return x @ self.window


def test_export_keeps_buffers_as_they_are():
    from mrcformat_runtime.graph import export_architecture

    torch.manual_seed(0)
    model = Rescale().eval()
    x = torch.randn(2, 2, 4, 4)
    graph = export_architecture(model, x)
    (got,) = _ort(graph, model, {"input": x})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_marked_axes_are_dynamic_in_the_stored_graph():
    torch.manual_seed(0)
    model = Rescale().eval()
    x = torch.randn(1, 2, 4, 4)
    wider = torch.randn(3, 2, 4, 5)           # another batch and width: window is 8 x 8, so width 4 only
    with pytest.raises(GraphCheckError):
        export_checked(model, x, check_inputs=(torch.randn(1, 2, 6, 4),))   # height fixed by default
    graph = export_checked(model, x, dynamic_axes={"input": [2]}, check_inputs=(torch.randn(3, 2, 6, 4),))
    (got,) = _ort(graph, model, {"input": torch.ones(2, 2, 7, 4)})
    assert got.shape == (2, 3, 14, 8)
    with pytest.raises(GraphCheckError, match="not inputs"):
        export_checked(model, x, dynamic_axes={"picture": [2]})
    del wider


class TwoHeads(nn.Module):
    """A detector-style head: class logits and a one-channel sigmoid map, as a tuple."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.cls = nn.Linear(4 * 6 * 6, 3)
        self.map = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.cls(h.flatten(1)), torch.sigmoid(self.map(h))


def test_distillation_on_tuple_outputs_is_nonzero_and_decreases():
    torch.manual_seed(0)
    teacher = TwoHeads()
    student = TwoHeads()
    x = torch.randn(16, 1, 6, 6)
    d = Distillation(teacher, temperature=2.0, weight=1.0)
    assert d.prepare(x) == {"output": "mse", "output1": "bce"}
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = d.soft_loss(student(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0 and losses[-1] < 0.3 * losses[0]
    # the one-channel sigmoid map alone is not silently 0 either
    only_map = Distillation(teacher, weight=1.0, divergence={"output": lambda s, t: s.sum() * 0})
    only_map.prepare(x)
    assert float(only_map.soft_loss(student(x), x).detach()) > 0
    assert float(d.soft_loss(teacher(x), x).detach()) == pytest.approx(0.0, abs=1e-5)   # zero at the teacher


def test_a_divergence_that_cannot_work_is_refused_before_training():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 6, 6)
    with pytest.raises(ValueError, match="at least 2 channels"):
        Distillation(TwoHeads(), divergence="kl").prepare(x)
    with pytest.raises(ValueError, match="needs probabilities"):
        Distillation(TwoHeads(), divergence={"output": "bce"}).prepare(x)
    loader = DataLoader(TensorDataset(x), batch_size=8)
    with pytest.raises(ValueError, match="at least 2 channels"):
        compress(TwoHeads(), loader, 64, divergence="kl", steps=5, progress=False)


def test_a_loss_that_is_identically_zero_is_an_error():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(ValueError, match="exactly 0"):
        compress(TwoHeads(), loader, 64, index_bits=8, steps=5, progress=False,
                 loss_fn=lambda out, y: 0.0 * out[0].sum())
    with pytest.raises(ValueError, match="no gradient"):
        compress(TwoHeads(), loader, 64, index_bits=8, steps=5, progress=False,
                 loss_fn=lambda out, y: torch.tensor(1.0))


class Scaled(nn.Linear):
    def forward(self, x):
        return 2.0 * super().forward(x)


def test_subclasses_of_linear_are_coded_fast_or_generically():
    torch.manual_seed(0)

    class Plain(nn.Linear):
        pass

    model = nn.Sequential(Plain(8, 16), nn.ReLU(), Scaled(16, 8))
    names = [m for s in coded_layer_specs(model) for m, _ in s.members]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert fast_layer_class(model[0]) is VariationalLinear and fast_layer_class(model[2]) is None
    vmodel, layers, generic = make_variational(model, set(names))
    assert list(layers) == ["0"] and generic == ["2.weight", "2.bias"]
    assert "2.weight" not in vmodel.state_dict()       # generic: a non-persistent buffer, not trained raw
    layers["0"].set_moments(model[0].weight, torch.zeros(16, 8), model[0].bias, torch.zeros(16))
    vmodel.eval()
    x = torch.randn(4, 8)
    out = torch.func.functional_call(vmodel, {"2.weight": model[2].weight, "2.bias": model[2].bias}, (x,))
    torch.testing.assert_close(out, model(x))


# --- any parameter, any signature ---------------------------------------------------------------
def test_code_rule_chooses_parameters_by_size_and_name():
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.PReLU(8), nn.BatchNorm1d(8), nn.LSTM(8, 8), nn.Embedding(10, 8))
    default = [m for s in coded_layer_specs(model) for m, _ in s.members]
    assert default == ["0.weight", "0.bias", "3.weight_ih_l0", "3.weight_hh_l0", "3.bias_ih_l0", "3.bias_hh_l0",
                       "4.weight"]
    rule = CodeRule(min_size=64, include=("1.*",), exclude=("3.weight_hh*", "3.bias*"))
    specs = coded_layer_specs(model, "separate", rule=rule)
    assert [(s.name, [m for m, _ in s.members]) for s in specs] == [
        ("0", ["0.weight"]), ("0.bias", ["0.bias"]), ("1", ["1.weight"]), ("3", ["3.weight_ih_l0"]),
        ("4", ["4.weight"])]
    only_lstm = coded_layer_specs(model, "raw", rule=lambda name, p: name.startswith("3."))
    assert [m for s in only_lstm for m, _ in s.members] == ["3.weight_ih_l0", "3.weight_hh_l0"]
    per_tensor = coded_layer_specs(model, "coded", hashing={"3.weight_ih_l0": 2.0}, rule=rule)
    assert [(s.name, s.hash_ratio) for s in coded_specs(model, "coded", {"3.weight_ih_l0": 2.0}, rule, "tensor")] == [
        ("0.weight", 1.0), ("0.bias", 1.0), ("1.weight", 1.0), ("3.weight_ih_l0", 2.0), ("4.weight", 1.0)]
    assert [s.name for s in per_tensor] == ["0", "1", "3", "4"]


class Mixed(nn.Module):
    """Two inputs (token ids, an image), a dict out; Embedding, Conv1d, PReLU, LSTM, ConvTranspose2d."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.act = nn.PReLU(16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, 4)
        self.up = nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1)
        self.mix = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, tokens, image):
        h = self.act(self.conv(self.emb(tokens).transpose(1, 2))).transpose(1, 2)
        y, _ = self.lstm(h)
        mask = torch.sigmoid(self.mix(torch.relu(self.up(image))))
        return {"logits": self.head(y[:, -1]), "mask": mask}


def _mixed_data(n=64, t=5, hw=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (n, t), generator=g), torch.randn(n, 2, hw, hw, generator=g)


def _mixed_compress(model, tokens, images, budget: int, **kw):
    """compress(Mixed) without labels from a fresh seeded loader: every call sees the same batches."""
    loader = DataLoader(TensorDataset(tokens, images), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    return compress(model, loader, budget, index_bits=8, retrain_steps=1, progress=False, **kw)


def test_mixed_model_compresses_without_labels_and_loads_back_three_ways(tmp_path):
    from mrcformat_runtime.ort import session
    from mrcformat_runtime.torch_load import load_module, load_state_dict

    torch.manual_seed(0)
    model = Mixed()
    tokens, images = _mixed_data()
    loader = DataLoader(TensorDataset(tokens, images), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    dyn = {"input": [1], "input1": [2, 3], "mask": [2, 3]}
    result = compress(model, loader, 400, index_bits=8, steps=30, retrain_steps=1, blocks_per_round=16,
                      seed=2, progress=False, dynamic_axes=dyn, code=CodeRule(include=("act.*",)))
    coded = {t.name for t in result.container.tensors if t.encoding == "coded"}
    assert {"emb.weight", "conv.weight", "act.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "up.weight",
            "mix.weight", "head.weight"} <= coded
    assert result.payload_bytes <= 400 and result.history[0]["nll"] > 0
    path = tmp_path / "mixed.mrc"
    result.save(path)

    ref = Mixed()
    ref.load_state_dict(load_state_dict(path))
    ref.eval()
    tok, img = _mixed_data(6, t=7, hw=6, seed=5)          # other batch, length and image size
    with torch.no_grad():
        want = ref(tok, img)
    sess = session(path)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": tok.numpy(), "input1": img.numpy()})))
    assert set(got) == {"logits", "mask"} and got["mask"].shape == (6, 2, 12, 12)
    for k in got:
        np.testing.assert_allclose(got[k], want[k].numpy(), rtol=1e-4, atol=1e-5)
    module = load_module(path)
    with torch.no_grad():
        out = module(tok, img)
    out = dict(zip(["logits", "mask"], out)) if not isinstance(out, dict) else out
    for k in ("logits", "mask"):
        np.testing.assert_allclose(out[k].numpy(), want[k].numpy(), rtol=1e-4, atol=1e-5)
    # it still does what the original does (30 steps at ~1 bit per weight: close, not equal)
    with torch.no_grad():
        orig = model.eval()(tok, img)
    assert float((want["mask"] - orig["mask"]).abs().mean()) < 0.1


def test_unlabelled_run_is_reproducible_and_matches_after_resume(tmp_path):
    from mrcformat.encode import Interrupted

    torch.manual_seed(0)
    model = Mixed()
    tokens, images = _mixed_data(32)

    def run(**kw):
        return _mixed_compress(model, tokens, images, 300, steps=12, blocks_per_round=32, seed=4, **kw)

    first = run().to_bytes()
    assert run().to_bytes() == first
    ck = tmp_path / "ck.pt"
    with pytest.raises(Interrupted):
        run(checkpoint=str(ck), interrupt_after=7)
    assert run(checkpoint=str(ck)).to_bytes() == first


def test_unexportable_model_fails_before_training():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x)[:, : int(x.abs().sum()) % 3 + 1]      # shape fixed by the example's values

    x = torch.randn(16, 8)
    loader = DataLoader(TensorDataset(x), batch_size=4)
    with pytest.raises(GraphCheckError):
        compress(DataDependent(), loader, 64, index_bits=8, steps=50, progress=False,
                 example_input=torch.ones(1, 8))


class Streaming(nn.Module):
    """A streaming model: (chunk, (h, c)) in, (speech probability, (h, c)) out."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(8, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x, state):
        h, c = self.cell(x, tuple(state))
        return torch.sigmoid(self.out(h)), (h, c)


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, n=48):
        g = torch.Generator().manual_seed(0)
        self.x, self.h, self.c = (torch.randn(n, k, generator=g) * s for k, s in ((8, 1.0), (16, 0.3), (16, 0.3)))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], (self.h[i], self.c[i])


def test_streaming_state_in_and_out(tmp_path):
    from mrcformat_runtime.ort import session

    torch.manual_seed(0)
    model = Streaming()
    loader = DataLoader(_Chunks(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    result = compress(model, loader, 200, index_bits=8, steps=20, retrain_steps=1, blocks_per_round=16,
                      progress=False, graph_deflate=True)
    assert result.container.version == (1, 1) and result.container.graph_deflate
    assert {t.name for t in result.container.tensors if t.encoding == "coded"} == {
        "cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh"}
    result.save(tmp_path / "s.mrc")
    sess = session(tmp_path / "s.mrc")
    assert [i.name for i in sess.get_inputs()] == ["input", "input1.0", "input1.1"]
    assert [o.name for o in sess.get_outputs()] == ["output", "output1.0", "output1.1"]
    ref = result.load_into(Streaming()).eval()
    x, h, c = torch.randn(5, 8), torch.zeros(5, 16), torch.zeros(5, 16)
    got = sess.run(None, {"input": x.numpy(), "input1.0": h.numpy(), "input1.1": c.numpy()})
    with torch.no_grad():
        p, (h2, c2) = ref(x, (h, c))
    for g, w in zip(got, (p, h2, c2)):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


def test_keyword_inputs_in_any_order():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(4, 8)

        def forward(self, first, second):
            return self.a(first) - self.b(second)

    torch.manual_seed(0)
    inputs = {"second": torch.randn(3, 4), "first": torch.randn(3, 8)}       # not the signature's order
    graph = export_checked(Keyed(), inputs, check_inputs=({"first": torch.randn(5, 8), "second": torch.randn(5, 4)},))
    import onnx

    assert [i.name for i in onnx.ModelProto.FromString(graph).graph.input] == ["first", "second"]


def test_an_rnn_state_output_is_averaged_over_its_batch_axis_not_its_layers():
    """nn.LSTM returns h of shape (layers, N, hidden): its distillation term is a per-example sum
    averaged over the N examples, like the batch-first output's; it was divided by the layer count, so
    it weighed N times as much, and twice as much for twice the batch."""

    class Rnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            y, (h, c) = self.lstm(x)
            return self.head(y[:, -1]), h

    torch.manual_seed(0)
    teacher, student = Rnn(), Rnn()
    x = torch.randn(8, 4, 3)
    d = Distillation(teacher, weight=1.0, divergence={"output": "mse", "output1": "mse"})
    d.prepare(x)
    with torch.no_grad():
        s1, t1 = student(x)[1], teacher(x)[1]
        state_term = d._term("output1", "mse", s1, t1, 8)
        want = 0.5 * (s1 - t1).pow(2).sum() / 8 / d.scales["output1"]
        assert float(state_term) == pytest.approx(float(want), rel=1e-6)
        # doubling the batch with the same examples leaves the loss unchanged
        xx = torch.cat([x, x])
        assert float(d.soft_loss(student(xx), xx)) == pytest.approx(float(d.soft_loss(student(x), x)), rel=1e-5)
