"""MIRACLE training for ONNX models from their post-training file (`onnx_finetune`, `mrc compress --steps`)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

import mrcformat  # noqa: E402
from mrcformat.cli import main  # noqa: E402
from mrcformat.encode.onnx_compress import analyse  # noqa: E402
from mrcformat.encode.onnx_finetune import finetune_onnx  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("onnx")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    path = d / "tiny.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 8, 8), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    feeds = [{"x": np.random.default_rng(i).normal(size=(2, 3, 8, 8)).astype(np.float32)} for i in range(8)]
    calib = d / "calib"
    calib.mkdir()
    for i, f in enumerate(feeds):
        np.savez(calib / f"{i}.npz", **f)
    return path, feeds, calib


def test_finetuned_file_keeps_the_graph_and_codes_the_same_tensors(tiny, tmp_path):
    from mrcformat_runtime.ort import session

    path, feeds, _ = tiny
    an = analyse(str(path), feeds, progress=False)
    out = tmp_path / "ft.mrc"
    r = finetune_onnx(an, out, "3bpw", steps=200, index_bits=8, retrain_steps=1, blocks_per_round=64, progress=False,
                      keep_better=False)
    assert r.kept == "fine-tuned" and r.measured_distortion == r.finetuned_distortion
    assert mrcformat.validate_file(out) == []
    c = mrcformat.load(out)
    assert {t.name for t in c.tensors} == {s.name for s in an.sites} and all(t.encoding == "coded" for t in c.tensors)
    assert r.payload_bytes <= r.post_training.payload_bytes and r.file_bytes == out.stat().st_size
    # per-row coding scales, as the post-training file has them (the Linear's 5 rows of 144 values)
    from mrcformat.encode.blocks import scale_rows
    scales = {t.shape: c.groups[t.group].scales for t in c.tensors}
    assert len(scales[(5, 144)]) == 5 and all(
        (v is None) == (scale_rows(k) == 1) for k, v in scales.items()) and c.version >= (1, 1)
    assert np.isfinite(r.measured_distortion) and r.measured_distortion < 4 * max(r.post_training.measured_distortion, 1e-3)
    assert r.history and r.history[0]["nll"] > 0
    sess = session(out)
    x = np.random.default_rng(99).normal(size=(5, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = sess.run(None, {"x": x})[0]
    assert got.shape == want.shape == (5, 5)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.8       # still the original's function, roughly


def test_cli_steps_runs_miracle_after_post_training(tiny, tmp_path):
    path, _, calib = tiny
    out = tmp_path / "cli.mrc"
    res = CliRunner().invoke(main, ["compress", str(path), "--budget", "3bpw", "--calibration", str(calib), "-o",
                                    str(out), "--index-bits", "8", "--steps", "10", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "10 MIRACLE steps" in res.output and mrcformat.validate_file(out) == []
    res = CliRunner().invoke(main, ["compress", str(path), "--budgets", "2bpw,3bpw", "--calibration", str(calib), "-o",
                                    str(tmp_path / "sweep"), "--steps", "10", "--quiet"])
    assert res.exit_code != 0 and "--steps works with one --budget" in res.output
    tuned = {}                                                  # --noise reaches the training
    for noise in ("local", "weights"):
        res = CliRunner().invoke(main, ["compress", str(path), "--budget", "3bpw", "--calibration", str(calib), "-o",
                                        str(tmp_path / f"{noise}.mrc"), "--index-bits", "8", "--steps", "10",
                                        "--noise", noise, "--json", "--quiet"])
        assert res.exit_code == 0, res.output
        assert mrcformat.validate_file(tmp_path / f"{noise}.mrc") == []
        tuned[noise] = json.loads(res.stdout[res.stdout.index("{"):])["finetuned_distortion"]
    assert tuned["local"] != tuned["weights"]                   # (either file may be the post-training one)
    res = CliRunner().invoke(main, ["compress", str(path), "--budget", "3bpw", "--calibration", str(calib), "-o",
                                    str(tmp_path / "x.mrc"), "--noise", "weights", "--quiet"])
    assert res.exit_code != 0 and "--noise sets how --steps trains" in res.output


def test_finetuning_keeps_the_post_training_allocation_and_measures_like_the_probe(tiny, tmp_path):
    """Each tensor keeps the post-training file's number of blocks (its rate-distortion allocation),
    and the default objective is the probe's D: per output, mean squared error over its power."""
    from mrcformat.encode.onnx_compress import compress_onnx
    from mrcformat.encode.onnx_finetune import RelativeSquaredError, probe_divergence

    path, feeds, _ = tiny
    an = analyse(str(path), feeds, progress=False)
    div = probe_divergence(an)
    assert list(div) == ["output"] and isinstance(div["output"], RelativeSquaredError)
    assert div["output"].power == pytest.approx(an.probe.output_power["y"])
    s, t = torch.ones(3, 5), torch.zeros(3, 5)
    assert float(div["output"](s, t)) == pytest.approx(1.0 / an.probe.output_power["y"])
    post = compress_onnx(an, tmp_path / "post.mrc", "3bpw", index_bits=8, progress=False)
    finetune_onnx(an, tmp_path / "ft.mrc", "3bpw", steps=5, index_bits=8, retrain_steps=1, blocks_per_round=64,
                  progress=False)

    def blocks(f):
        c = mrcformat.load(f)
        return {t.name: c.groups[t.group].num_blocks for t in c.tensors if t.encoding == "coded"}

    assert blocks(tmp_path / "ft.mrc") == blocks(tmp_path / "post.mrc") and post.payload_bytes > 0


def test_a_fine_tuning_run_worse_than_its_start_keeps_the_post_training_file(tiny, tmp_path):
    """5 steps leave the tiny net's output distortion far above the post-training file's: that file is
    written (byte for byte what compress_onnx writes), and the report says so."""
    from mrcformat.encode.onnx_compress import compress_onnx

    path, feeds, _ = tiny
    an = analyse(str(path), feeds, progress=False)
    out = tmp_path / "ft.mrc"
    r = finetune_onnx(an, out, "3bpw", steps=5, index_bits=8, retrain_steps=1, blocks_per_round=64, progress=False)
    post = compress_onnx(an, tmp_path / "post.mrc", "3bpw", index_bits=8, progress=False)
    assert r.finetuned_distortion > post.measured_distortion          # the premise of this test
    assert r.kept == "post-training" and r.measured_distortion == post.measured_distortion
    assert out.read_bytes() == (tmp_path / "post.mrc").read_bytes() and r.file_bytes == out.stat().st_size
    assert "post-training file" in r.summary() and "kept" in r.summary()


def test_finetuned_file_keeps_the_float16_tensors_that_fill_stubs(tmp_path):
    """The post-training file stores a 40-value bias (too small to code) as float16 in its float32 stub
    (format 1.2); the fine-tuned file must keep it: it lost every raw tensor, leaving the stub empty, and
    onnxruntime refused the model (silero-vad: 'should contain one and only one value field')."""
    import onnxruntime as ort

    from mrcformat.encode.onnx_compress import compress_onnx
    from mrcformat_runtime.onnx_export import to_onnx_model
    from mrcformat_runtime.ort import session

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 40, 3), nn.ReLU(), nn.Flatten(), nn.Linear(40 * 4 * 4, 3)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 6, 6), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    feeds = [{"x": np.random.default_rng(i).normal(size=(2, 3, 6, 6)).astype(np.float32)} for i in range(4)]
    an = analyse(str(path), feeds, progress=False)
    assert [s.name for s in an.half]                                    # the premise: a float16 stub
    post = tmp_path / "post.mrc"
    compress_onnx(an, post, "3bpw", index_bits=8, progress=False)
    out = tmp_path / "ft.mrc"
    finetune_onnx(an, out, "3bpw", steps=5, index_bits=8, retrain_steps=1, blocks_per_round=64, progress=False,
                  keep_better=False)
    p, c = mrcformat.load(post), mrcformat.load(out)
    raw = {t.name: t.data for t in p.tensors if t.encoding == "raw"}
    assert raw and {t.name: t.data.tobytes() for t in c.tensors if t.encoding == "raw"} == {
        k: v.tobytes() for k, v in raw.items()}
    assert [t.name for t in c.tensors] == [t.name for t in p.tensors] and c.version == p.version == (1, 2)
    x = feeds[0]["x"]
    plain = ort.InferenceSession(to_onnx_model(str(out)).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(plain.run(None, {"x": x})[0], session(out).run(None, {"x": x})[0])
