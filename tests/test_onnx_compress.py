"""`mrc compress MODEL.onnx` (issue 11): weights found wherever they live, the graph back unchanged,
the budget met, bits where the importance is, a real model within tolerance."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import mrcformat as m  # noqa: E402
from mrcformat.encode.onnx_compress import analyse, compress_onnx, parse_budget, sweep_onnx  # noqa: E402
from mrcformat.encode.onnx_ingest import OnnxInputError, find_weights, load_onnx  # noqa: E402
from mrcformat.encode.rd_allocation import allocate, group_posterior  # noqa: E402
from mrcformat_runtime.onnx_export import to_onnx_model  # noqa: E402
from mrcformat_runtime.ort import session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
F = TensorProto.FLOAT


def _nested_model(seed: int = 0) -> onnx.ModelProto:
    """y = If(flag) then: relu(x @ A) @ B (A a Constant, B a branch initializer)
                    else: Loop 2x s -> tanh(s @ C) (C a Constant in the body) from x @ D (top initializer)
    plus a top-level bias and a small Constant that stays raw; batch dimension dynamic."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((16, 32)).astype(np.float32) * 0.3
    B = rng.standard_normal((32, 8)).astype(np.float32) * 0.3
    C = rng.standard_normal((8, 8)).astype(np.float32) * 0.4
    D = rng.standard_normal((16, 8)).astype(np.float32) * 0.3
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["A"], value=numpy_helper.from_array(A, "A_value")),
         helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "B"], ["y_then"])],
        "then", [], [helper.make_tensor_value_info("y_then", F, ["N", 8])],
        initializer=[numpy_helper.from_array(B, "B")])
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["C"], value=numpy_helper.from_array(C, "")),
         helper.make_node("MatMul", ["s", "C"], ["t"]), helper.make_node("Tanh", ["t"], ["s_next"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("s", F, ["N", 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("s_next", F, ["N", 8])])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("", TensorProto.INT64, [], [2])),
         helper.make_node("MatMul", ["x", "D"], ["s0"]),
         helper.make_node("Loop", ["trips", "", "s0"], ["y_else"], body=body)],
        "else", [], [helper.make_tensor_value_info("y_else", F, ["N", 8])])
    g = helper.make_graph(
        [helper.make_node("If", ["flag"], ["yb"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Constant", [], ["small"], value=numpy_helper.from_array(np.full(8, 0.1, np.float32), "")),
         helper.make_node("Add", ["yb", "bias"], ["y0"]), helper.make_node("Add", ["y0", "small"], ["y"])],
        "nested", [helper.make_tensor_value_info("x", F, ["N", 16]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", F, ["N", 8])],
        initializer=[numpy_helper.from_array(D, "D"), numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="test", ir_version=8)
    model.doc_string = "a model whose weights live everywhere"
    helper.set_model_props(model, {"author": "tests", "character": "abc"})
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(n: int = 12, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 16)).astype(np.float32), "flag": np.array(bool(i % 2))} for i in range(n)]


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    d = tmp_path_factory.mktemp("nested")
    path = d / "nested.onnx"
    onnx.save(_nested_model(), path)
    return path


def test_weights_are_found_everywhere(nested):
    sites, notes = find_weights(load_onnx(nested))
    assert {s.name: s.kind for s in sites} == {"A": "constant", "B": "initializer", "C": "constant", "D": "initializer"}
    assert notes == []


def test_graph_comes_back_unchanged_but_for_the_coded_data(nested, tmp_path):
    out = tmp_path / "n.mrc"
    report = compress_onnx(nested, out, "6bpw", _feeds(), index_bits=8, progress=False)
    c = m.load(out)
    assert c.version == (1, 1) and {t.name for t in c.tensors} == {"A", "B", "C", "D"}
    restored = to_onnx_model(c)
    original = onnx.load(nested)
    decoded = m.decode(c)
    # put the decoded values into the original's places: then the two models are byte-identical
    sites, _ = find_weights(original)
    assert len(sites) == 4
    for s in sites:
        s.tensor.ClearField("float_data")
        s.tensor.raw_data = decoded[s.name].astype("<f4").tobytes()
    assert restored.SerializeToString() == original.SerializeToString()
    assert report.file_bytes == out.stat().st_size


@pytest.mark.parametrize("self_decoding", [False, True])
def test_compressed_model_runs_with_dynamic_shapes(nested, tmp_path, self_decoding):
    out = tmp_path / "n.mrc"
    compress_onnx(nested, out, "8bpw", _feeds(), index_bits=10, progress=False)
    ref = ort.InferenceSession(str(nested), providers=["CPUExecutionProvider"])
    sess = session(out, self_decoding=self_decoding)
    rng = np.random.default_rng(5)
    for n in (1, 3, 17):  # the batch dimension stays dynamic
        for flag in (True, False):
            feed = {"x": rng.standard_normal((n, 16)).astype(np.float32), "flag": np.array(flag)}
            a, b = ref.run(None, feed)[0], sess.run(None, feed)[0]
            assert a.shape == b.shape == (n, 8)
            rel = np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2))
            assert rel < 0.15, (n, flag, rel)


def test_more_budget_gives_less_distortion(nested):
    an = analyse(nested, _feeds(), progress=False)
    reports = sweep_onnx(an, ["2bpw", "6bpw"], index_bits=8, progress=False)
    assert reports[0].file_bytes < reports[1].file_bytes
    assert reports[1].measured_distortion < reports[0].measured_distortion


@pytest.mark.parametrize("extra", [150, 400, 700])
def test_file_budget_is_met(nested, tmp_path, extra):
    an = analyse(nested, _feeds(), progress=False)
    low = compress_onnx(an, None, "0.5bpw", index_bits=12, progress=False).file_bytes
    out = tmp_path / "b.mrc"
    for budget in (low + extra, f"{(low + extra) / 1024:.4f}KiB"):
        r = compress_onnx(an, out, budget, index_bits=12, progress=False)
        limit = parse_budget(budget, 0)[1]
        assert out.stat().st_size == r.file_bytes <= limit
        assert r.file_bytes > limit - 64  # within the blocks' granularity (a few bytes at these block sizes)


def test_budget_beyond_reach_is_said(nested):
    r = compress_onnx(nested, None, "40KiB", _feeds(), index_bits=8, progress=False)
    assert r.file_bytes < 40 * 1024
    assert any("one block per weight" in n for n in r.notes)


def test_parse_budget():
    assert parse_budget("64KiB", 1) == ("bytes", 65536.0)
    assert parse_budget("1.5MiB", 1) == ("bytes", 1.5 * 2**20)
    assert parse_budget("2bpw", 1) == ("bpw", 2.0)
    assert parse_budget(1000, 1) == ("bytes", 1000.0)
    with pytest.raises(ValueError, match="bits per weight"):
        parse_budget("lots", 1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from([8, 12, 16]))
@example(1615183, 4, 12)  # the bytes left over put a 196-weight group at one weight per block (12 bits each):
#                           its multiplier lay 1e4 below the global one, outside the search range it had
def test_allocation_meets_the_budget_and_follows_importance(seed, ngroups, bits):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(int(rng.integers(64, 3000))) * rng.uniform(0.01, 1) for _ in range(ngroups)]
    hs = [np.exp(rng.normal(0, 2, w.size)) for w in ws]
    payload = int(sum(w.size for w in ws) * rng.uniform(0.5, 4) / 8)
    try:
        al = allocate(ws, hs, payload, bits)
    except ValueError:  # below the minimum for these sizes: said so
        return
    from mrcformat.bitpack import packed_length

    used = sum(packed_length(a.num_blocks, bits) for a in al)
    assert used <= payload
    # per group, the posterior's KL is what its blocks carry
    for a in al:
        assert a.kl == pytest.approx(a.num_blocks * bits * np.log(2), rel=2e-2)
    # within a group, more important weights get narrower q's (relative to their row's prior scale)
    for w, h, a in zip(ws, hs, al):
        ratio = a.std / a.value_sigma()
        order = np.argsort(h)
        assert np.all(np.diff(ratio[order]) <= 1e-9)


def test_water_filling_closed_form_is_the_optimum():
    """For one weight, the (m, s) of the closed form minimise h((m-w)^2 + s^2) + lam KL over a grid."""
    w, h, mu, sp, lam = 0.7, 3.0, 0.1, 0.5, 0.8
    m_, s_, _ = group_posterior(np.array([w]), np.array([h]), mu, sp, lam)

    def objective(mm, ss):
        kl = np.log(sp / ss) + (ss ** 2 + (mm - mu) ** 2) / (2 * sp ** 2) - 0.5
        return h * ((mm - w) ** 2 + ss ** 2) + lam * kl

    best = objective(m_[0], s_[0])
    grid = [(mm, ss) for mm in np.linspace(-1, 1.5, 251) for ss in np.linspace(0.01, 1, 200)]
    assert best <= min(objective(mm, ss) for mm, ss in grid) + 1e-9


def test_external_data_outside_the_folder_is_refused(tmp_path):
    model = _nested_model()
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../secret.bin")
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxInputError, match="outside the model's folder"):
        load_onnx(path)


def test_external_data_inside_the_folder_is_read(tmp_path):
    model = _nested_model()
    onnx.save(model, tmp_path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    sites, _ = find_weights(load_onnx(tmp_path / "model.onnx"))
    assert {s.name for s in sites} == {"A", "B", "C", "D"}


def test_onnx_and_mrc_mixed_up_say_so(nested, tmp_path):
    with pytest.raises(m.MrcError, match="looks like an ONNX model"):
        m.load(nested)
    mrc = ROOT / "spec" / "vectors" / "mlp_graph.mrc"
    with pytest.raises(OnnxInputError, match="already a .mrc file"):
        load_onnx(mrc)


def test_calibration_inputs_are_checked(nested):
    with pytest.raises(OnnxInputError, match="lacks \\['flag'\\]"):
        analyse(nested, [{"x": np.zeros((2, 16), np.float32)}], progress=False)
    with pytest.raises(OnnxInputError, match="wants rank"):
        analyse(nested, [{"x": np.zeros(16, np.float32), "flag": np.array(True)}], progress=False)


def test_cli_compress_info_and_sweep(nested, tmp_path):
    from click.testing import CliRunner

    from mrcformat.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(_feeds(6)):
        np.savez(calib / f"{i:03d}.npz", **f)
    out = tmp_path / "c.mrc"
    r = CliRunner().invoke(main, ["compress", str(nested), "--budget", "4bpw", "--calibration", str(calib), "-o",
                                  str(out), "--index-bits", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "bits/weight" in r.output and out.is_file()
    info = CliRunner().invoke(main, ["info", str(out), "--json"])
    d = json.loads(info.output)
    placed = {t["name"]: t["placed"] for t in d["tensors"]}
    assert placed["A"].startswith("constant at graph/node[0]:If.then_branch")
    assert placed["D"] == "initializer at graph/initializer[0]"
    table = CliRunner().invoke(main, ["info", str(out)])
    assert "placed in graph" in table.output
    sweep = tmp_path / "sweep"
    r = CliRunner().invoke(main, ["compress", str(nested), "--budgets", "2bpw,5bpw", "--calibration", str(calib),
                                  "-o", str(sweep), "--index-bits", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (sweep / "sweep.png").is_file() and (sweep / "sweep.md").is_file()
    assert len(list(sweep.glob("*.mrc"))) == 2
    bad = CliRunner().invoke(main, ["info", str(nested)])
    assert bad.exit_code == 1 and "mrc compress" in bad.output     # 1: an invalid .mrc (mrc --help)


def test_a_note_when_blocks_hold_more_kl_than_their_indices_code(nested, tmp_path):
    """With 6-bit indices at 4 bpw many blocks hold over 7 bits of KL: the report says so (and the CLI prints
    the coding's notes, which it used to drop); the advice is right: wider indices at the same size give a
    lower output distortion. 12-bit indices at 2 bpw: no such note."""
    from click.testing import CliRunner

    from mrcformat.cli import main

    an = analyse(nested, _feeds(), progress=False)
    narrow = compress_onnx(an, None, "4bpw", index_bits=6, progress=False)
    wide = compress_onnx(an, None, "4bpw", index_bits=12, progress=False)
    note = [n for n in narrow.notes if "candidates can code" in n]
    assert len(note) == 1 and "--index-bits 10" in note[0]
    assert re.search(r"about \d+(\.\d)? (s|min|h) here, against \d+(\.\d)? (s|min|h)\)", note[0]), note[0]
    assert narrow.predicted_actual > 2 * narrow.predicted_distortion
    assert wide.measured_distortion < narrow.measured_distortion and wide.file_bytes == narrow.file_bytes
    assert not [n for n in compress_onnx(an, None, "2bpw", index_bits=12, progress=False).notes
                if "candidates can code" in n]
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(_feeds()):
        np.savez(calib / f"{i:03d}.npz", **f)
    r = CliRunner().invoke(main, ["compress", str(nested), "--budget", "4bpw", "--calibration", str(calib), "-o",
                                  str(tmp_path / "n.mrc"), "--index-bits", "6", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "note: " in r.output and "candidates can code" in r.output


@pytest.mark.slow
def test_lenet5_compresses_and_keeps_its_accuracy(tmp_path):
    """A real trained model (the bundled LeNet-5), exported by torch.onnx, compressed post-training to
    about 1/40 of its size: test accuracy within 1 point of the original's on 2,000 MNIST images."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "examples"))
    from lenet5_model import LeNet5

    from mrcformat.encode.mnist import load_mnist

    net = LeNet5()
    net.load_state_dict({k: v.float() for k, v in load_file(ROOT / "examples" / "lenet5-pretrained.safetensors").items()})
    net.eval()
    path = tmp_path / "lenet5.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}}, dynamo=False)
    x, y = load_mnist(ROOT / "examples" / "data", "test", limit=2000)
    xn, yn = x.numpy(), y.numpy()
    calib = [{"x": xn[i:i + 50]} for i in range(1000, 1400, 50)]
    out = tmp_path / "lenet5.mrc"
    r = compress_onnx(path, out, "40KiB", calib, index_bits=12, progress=False)
    assert out.stat().st_size <= 40 * 1024
    acc = lambda s: float(np.mean(np.argmax(s.run(None, {"x": xn})[0], axis=1) == yn))
    original = acc(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    compressed = acc(session(out))
    assert compressed >= original - 0.01, (original, compressed, r.summary())


def test_self_decoding_export_of_a_compressed_model(nested, tmp_path):
    """The standalone self-decoding .onnx (graph converted to opset 18, stubs fed by Identity nodes from
    the in-graph decoder) gives the plain export's outputs."""
    from mrcformat_runtime.onnx_export import export

    out = tmp_path / "n.mrc"
    compress_onnx(nested, out, "5bpw", _feeds(), index_bits=8, progress=False)
    export(out, tmp_path / "plain.onnx")
    export(out, tmp_path / "self.onnx", self_decoding=True)
    plain = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    selfd = ort.InferenceSession(str(tmp_path / "self.onnx"), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feed = {"x": np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32), "flag": np.array(flag)}
        np.testing.assert_array_equal(plain.run(None, feed)[0], selfd.run(None, feed)[0])


def test_every_export_of_a_file_with_float16_biases(tmp_path):
    """mrc compress's default --float16 stores a float32 bias as a raw float16 tensor in its float32 stub,
    next to the coded weight stub in the same initializer list (as in a compressed YOLOv8n, nudenet's
    320n.onnx). The self-decoding export used to leave such a stub empty when the coded stub came first
    and onnxruntime refused the model; every form now gives the plain export's outputs."""
    from mrcformat_runtime.onnx_export import export, export_two_step

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((16, 40)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(40) * 2.0).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
                          "lin", [helper.make_tensor_value_info("x", F, ["N", 16])],
                          [helper.make_tensor_value_info("y", F, ["N", 40])],
                          initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    src = tmp_path / "lin.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(8)]
    out = tmp_path / "lin.mrc"
    compress_onnx(src, out, "6bpw", feeds, index_bits=8, progress=False)
    c = m.load(out)
    assert c.tensor("b").encoding == "raw" and c.tensor("b").dtype == "float16"
    export(out, tmp_path / "plain.onnx")
    export(out, tmp_path / "self.onnx", self_decoding=True)
    export_two_step(out, tmp_path / "w.onnx", tmp_path / "net.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    dec = ort.InferenceSession(str(tmp_path / "w.onnx"), opts, providers=["CPUExecutionProvider"])
    fed = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
    plain, selfd, net = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
                         for f in ("plain.onnx", "self.onnx", "net.onnx"))
    for feed in feeds[:2]:
        want = plain.run(None, feed)[0]
        np.testing.assert_array_equal(selfd.run(None, feed)[0], want)
        np.testing.assert_array_equal(net.run(None, {**fed, **feed})[0], want)
