"""Calibrating recurrent ONNX models as they stream (`state=`, `mrc compress --state IN=OUT`): the state
is carried between consecutive feeds, so weight errors accumulate through it as they do in use."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mrcformat.encode.calibration import Probe, state_candidates  # noqa: E402
from mrcformat.encode.onnx_compress import analyse, compress_onnx  # noqa: E402
from mrcformat.encode.onnx_ingest import OnnxInputError, find_weights  # noqa: E402

F = TensorProto.FLOAT
H = 12


def _rnn(seed: int = 0) -> onnx.ModelProto:
    """stateN = tanh(x @ W + state @ U), y = stateN @ V: an Elman cell, state in and state out."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((8, H)) * 0.4).astype(np.float32)
    U = (rng.standard_normal((H, H)) * 0.3).astype(np.float32)
    V = (rng.standard_normal((H, 4)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["state", "U"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Tanh", ["c"], ["stateN"]),
             helper.make_node("MatMul", ["stateN", "V"], ["y"])]
    g = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", F, [1, 8]),
                                         helper.make_tensor_value_info("state", F, [1, H])],
                          [helper.make_tensor_value_info("y", F, [1, 4]),
                           helper.make_tensor_value_info("stateN", F, [1, H])],
                          [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (U, "U"), (V, "V"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _np_stream(model, xs, s0, weights=None):
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w.update(weights or {})
    s, ys = s0, []
    for x in xs:
        s = np.tanh(x @ w["W"] + s @ w["U"])
        ys.append(s @ w["V"])
    return ys


def _steps(n: int = 20, seed: int = 3):
    """Feeds as a streaming loop records them: each step's recorded state is the previous stateN."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(n)]
    m = _rnn()
    w = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    s, feeds = np.zeros((1, H), np.float32), []
    for x in xs:
        feeds.append({"x": x, "state": s.astype(np.float32)})
        s = np.tanh(x @ w["W"] + s @ w["U"])
    return feeds


def test_state_is_carried_between_steps():
    model, feeds = _rnn(), _steps()
    sites, _ = find_weights(model, 16, 2)
    # recorded states replaced by garbage after each sequence's first step: a carried state ignores them
    spoiled = [dict(f, state=f["state"] if i % 5 == 0 else np.full((1, H), 9.0, np.float32))
               for i, f in enumerate(feeds)]
    p = Probe(model, sites, spoiled, state={"state": "stateN"}, sequence_length=5)
    assert p.sequences == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    assert p.output_names == ["y"]              # the state output is carried, not measured
    for q in p.sequences:
        want = _np_stream(model, [feeds[i]["x"] for i in q], feeds[q[0]]["state"])
        for i, y in zip(q, want):
            np.testing.assert_allclose(p.reference[i][0], y, rtol=1e-5, atol=1e-6)
    # a perturbed weight: the distortion is the streamed one, which differs from the single-step one
    U = next(s.array for s in sites if s.name == "U")
    k = next(i for i, s in enumerate(sites) if s.name == "U")
    bad = U + np.float32(0.2)
    d_stream = p.distortion({k: bad})
    err, power = [], []
    for q in p.sequences:
        xs, s0 = [feeds[i]["x"] for i in q], feeds[q[0]]["state"]
        for r, y in zip(_np_stream(model, xs, s0), _np_stream(model, xs, s0, {"U": bad})):
            err.append(np.mean((y - r) ** 2))
            power.append(np.mean(r ** 2))
    assert d_stream == pytest.approx(np.mean(err) / np.mean(power), rel=1e-4)
    single = Probe(model, sites, feeds)
    assert single.distortion({k: bad}) != pytest.approx(d_stream, rel=1e-2)


def test_max_feeds_keeps_whole_sequences_and_subset_counts_feeds():
    model, feeds = _rnn(), _steps(40)
    sites, _ = find_weights(model, 16, 2)
    p = Probe(model, sites, feeds, state={"state": "stateN"}, sequence_length=8, max_feeds=16)
    assert [len(q) for q in p.sequences] == [8, 8] and len(p.feeds) == 16
    assert p.sequences[0] == list(range(8))        # consecutive steps survive the subsampling
    assert len(p.subset(8)) == 1 and len(p.subset(None)) == 2
    one = Probe(model, sites, feeds, state={"state": "stateN"}, max_feeds=10)   # one long sequence, cut
    assert one.sequences == [list(range(10))]


def test_state_names_are_checked_and_candidates_suggested():
    model, feeds = _rnn(), _steps(6)
    sites, _ = find_weights(model, 16, 2)
    with pytest.raises(OnnxInputError, match="state h=stateN"):
        Probe(model, sites, feeds, state={"h": "stateN"})
    with pytest.raises(OnnxInputError, match="cannot be fed back"):
        Probe(model, sites, feeds, state={"state": "y"})             # y is [1, 4], state [1, 12]
    with pytest.raises(OnnxInputError, match="does not run on these calibration feeds.*InvalidArgument"):
        Probe(model, sites, [dict(f, x=np.zeros((1, 9), np.float32)) for f in feeds])   # onnxruntime refuses x
    p = Probe(model, sites, feeds)
    assert state_candidates(p.session.get_inputs(), p.session.get_outputs()) == [("state", "stateN")]
    an = analyse(model.SerializeToString(), feeds, importance="tensor", min_elements=16, progress=False)
    assert any("--state state=stateN" in n for n in an.notes)
    an = analyse(model.SerializeToString(), feeds, importance="tensor", min_elements=16, state={"state": "stateN"}, progress=False)
    assert not any("--state" in n for n in an.notes)


def test_streaming_calibration_compresses_and_measures_streamed_distortion(tmp_path):
    model, feeds = _rnn(), _steps(24)
    an = analyse(model.SerializeToString(), feeds, importance="tensor", min_elements=16, state={"state": "stateN"}, sequence_length=12,
                 progress=False)
    r = compress_onnx(an, tmp_path / "rnn.mrc", "6bpw", index_bits=8, progress=False)
    import mrcformat as m
    from mrcformat.decoder import decode

    c = m.load(tmp_path / "rnn.mrc")
    w = decode(c)
    ys_ref, ys = [], []
    for q in an.probe.sequences:
        xs, s0 = [an.probe.feeds[i]["x"] for i in q], an.probe.feeds[q[0]]["state"]
        ys_ref += _np_stream(model, xs, s0)
        ys += _np_stream(model, xs, s0, w)
    want = np.mean([np.mean((y - r) ** 2) for y, r in zip(ys, ys_ref)]) / np.mean([np.mean(r ** 2) for r in ys_ref])
    assert r.measured_distortion == pytest.approx(want, rel=1e-3)
    assert 0 < r.measured_distortion < 0.5



def test_cli_state_option(tmp_path):
    from click.testing import CliRunner

    from mrcformat.cli import main

    path = tmp_path / "rnn.onnx"
    onnx.save(_rnn(), path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(_steps(10)):
        np.savez(calib / f"{i:03d}.npz", **f)
    out = tmp_path / "o.mrc"
    base = ["compress", str(path), "--budget", "6bpw", "--calibration", str(calib), "-o", str(out),
            "--index-bits", "8", "--min-elements", "16", "--quiet"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0 and "--state state=stateN" in r.output
    r = CliRunner().invoke(main, base + ["--state", "state=stateN", "--sequence-length", "5"])
    assert r.exit_code == 0, r.output
    assert "--state state=stateN" not in r.output and out.is_file()
    bad = CliRunner().invoke(main, base + ["--state", "state"])
    assert bad.exit_code != 0 and "INPUT=OUTPUT" in bad.output
    bad = CliRunner().invoke(main, base + ["--sequence-length", "5"])
    assert bad.exit_code != 0 and "needs --state" in bad.output


def test_finetuning_a_streaming_model_trains_through_the_carried_state(tmp_path):
    """`finetune_onnx` on an analysis with `state=`: the student runs each calibration sequence with its
    own state carried (`Unrolled`), its outputs equal the numpy streaming loop's, and the file it
    writes is a valid fine-tuned copy whose streaming distortion the probe measures."""
    torch = pytest.importorskip("torch")
    from mrcformat.encode.onnx_finetune import _sequence_loader, _unrolled_class, finetune_onnx
    from mrcformat_runtime.onnx_to_torch import OnnxModule

    import mrcformat

    model = _rnn()
    feeds = _steps(24)
    an = analyse(model.SerializeToString(), feeds, importance="tensor", min_elements=16, state={"state": "stateN"},
                 sequence_length=8, progress=False)
    from mrcformat.encode.onnx_finetune import RelativeSquaredError, probe_divergence

    div = probe_divergence(an)                       # all graph outputs: the carried state is not measured
    assert isinstance(div["output"], RelativeSquaredError) and div["output1"] == "mse"
    assert list(probe_divergence(an, ["y"])) == ["output"]
    unrolled = _unrolled_class()(OnnxModule(model), an.probe.state, ["y", "stateN"], ["y"])
    batches = list(_sequence_loader(an, 0))
    assert len(batches) == 3 and {tuple(b["x"].shape) for b in batches} == {(8, 1, 8)}
    assert {tuple(b["state"].shape) for b in batches} == {(1, H)}                  # the first step's only
    for b in batches:
        with torch.no_grad():
            y = unrolled(**b).numpy()
        xs = list(b["x"].numpy())
        want = np.stack(_np_stream(model, xs, b["state"].numpy()))
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    out = tmp_path / "ft.mrc"
    r = finetune_onnx(an, out, "4bpw", steps=40, index_bits=8, retrain_steps=1, blocks_per_round=16, progress=False)
    assert mrcformat.validate_file(out) == [] and r.history and r.history[0]["nll"] > 0
    assert {t.name for t in mrcformat.load(out).tensors} == {s.name for s in an.sites}
    assert np.isfinite(r.measured_distortion)


def test_cli_steps_with_state(tmp_path):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    import mrcformat
    from mrcformat.cli import main

    path = tmp_path / "rnn.onnx"
    onnx.save(_rnn(), str(path))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(_steps(16)):
        np.savez(calib / f"{i:03d}.npz", **f)
    out = tmp_path / "ft.mrc"
    res = CliRunner().invoke(main, ["compress", str(path), "--budget", "4bpw", "--calibration", str(calib), "-o", str(out),
                                    "--index-bits", "8", "--min-elements", "16", "--state", "state=stateN",
                                    "--sequence-length", "8", "--steps", "10", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "10 MIRACLE steps" in res.output and mrcformat.validate_file(out) == []
