"""Mobile: the self-decoding export converted to onnxruntime's ORT format (what onnxruntime-mobile and
reduced-operator builds load) with `python -m onnxruntime.tools.convert_onnx_models_to_ort`, kept
unoptimised (ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL=disable) so the .ort file still carries the
decoder, not decoded weights. The .ort files run in Python onnxruntime, the regenerated weights are the
reference bits, and the operators the tool lists for a reduced build are standard ai.onnx ones from the
set README's "Shipping to a device" names.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnxruntime.tools.convert_onnx_models_to_ort") is None:
    pytest.skip("onnxruntime.tools.convert_onnx_models_to_ort is not available", allow_module_level=True)

from pathlib import Path  # noqa: E402

from mrcformat import decode  # noqa: E402
from mrcformat.reader import load  # noqa: E402
from mrcformat_runtime.onnx_export import export, export_two_step  # noqa: E402
from mrcformat_runtime.weights_probe import weights_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet5-small.mrc"

# The operators (ai.onnx domain) the self-decoding LeNet-5 needs in a reduced-operator build: the decoder's
# and LeNet-5's own (Conv, MaxPool, Relu, Gemm, Flatten). README "Shipping to a device" lists the same set.
DECODER_OPS = {"Add", "And", "BitShift", "BitwiseAnd", "BitwiseXor", "Cast", "Concat", "CumSum", "Div", "Equal",
               "Expand", "Gather", "Log", "MatMul", "Mod", "Mul", "Neg", "Pad", "Pow", "Range", "ReduceSum",
               "Reshape", "ScatterElements", "Slice", "Split", "Sqrt", "Sub", "Transpose", "Unsqueeze", "Where"}
LENET_OPS = {"Conv", "MaxPool", "Relu", "Gemm", "Flatten"}
PROBE_OPS = {"Identity"}  # the weights probe's outputs (converted in the same folder), not part of a shipped model
TWO_STEP_OPS = {"Loop", "Identity"}  # the two-step decoder: Philox as a Loop over its rounds (Identity: the body's condition)


def _required_ops(config: Path) -> dict[str, set[str]]:
    """domain -> operator names, from a required_operators_and_types config (`domain;opset;Op{types},Op`)."""
    ops: dict[str, set[str]] = {}
    for line in config.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        domain, _, rest = line.split(";", 2)
        depth, name, names = 0, "", set()
        for ch in rest + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                names.add(name.strip())
                name = ""
            elif depth == 0:
                name += ch
        ops.setdefault(domain, set()).update(n for n in names if n)
    return ops


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ort_format")
    c = load(EXAMPLE)
    probe, names = weights_probe(c, self_decoding=True)
    (d / "weights.onnx").write_bytes(probe.SerializeToString())
    export(c, d / "lenet5.onnx", self_decoding=True)
    export(c, d / "plain.onnx")
    export_two_step(c, d / "two.weights.onnx", d / "two.network.onnx")
    env = dict(os.environ, ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL="disable")
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", "--optimization_style",
                           "Fixed", "--enable_type_reduction", "--output_dir", str(d / "out"), str(d)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d / "out"


def test_ort_format_regenerates_the_reference_bits(converted):
    c = load(EXAMPLE)
    _, names = weights_probe(c, self_decoding=True)
    outs = ort.InferenceSession(str(converted / "weights.disable.ort"), providers=["CPUExecutionProvider"]).run(None, {})
    ref = decode(c)
    assert len(outs) == len(names) == 8
    for name, got in zip(names, outs):
        assert got.dtype == np.float32 and got.tobytes() == np.asarray(ref[name]).tobytes(), name


def test_ort_format_model_runs_and_stays_small(converted):
    """The whole self-decoding LeNet-5 as .ort: it runs, and it is still far smaller than the float32 weights."""
    f = converted / "lenet5.disable.ort"
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    y, = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == (2, 10) and np.isfinite(y).all()
    weights = sum(t.numel for t in load(EXAMPLE).tensors) * 4
    assert f.stat().st_size < weights / 8, (f.stat().st_size, weights)


def test_required_operators_are_standard(converted):
    configs = list(converted.glob("*required_operators_and_types*.config"))
    assert len(configs) == 1
    ops = _required_ops(configs[0])
    assert set(ops) == {"ai.onnx"}, ops  # no custom or contrib domain: any onnxruntime build has them
    allowed = DECODER_OPS | LENET_OPS | PROBE_OPS | TWO_STEP_OPS
    assert ops["ai.onnx"] <= allowed, ops["ai.onnx"] - allowed
    assert DECODER_OPS <= ops["ai.onnx"]  # the list in README stays complete


def test_two_step_files_as_ort(converted):
    """The two-step form converted the same way: the decoder's .ort, run once, regenerates the reference bits
    and the network's .ort fed them gives the plain export's outputs (weights fed as inputs are not
    pre-packed, so the convolution kernels may round the last bits apart)."""
    c = load(EXAMPLE)
    dec = ort.InferenceSession(str(converted / "two.weights.disable.ort"), providers=["CPUExecutionProvider"])
    weights = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
    ref = decode(c)
    assert len(weights) == 8
    for name, got in weights.items():
        assert got.dtype == np.float32 and got.tobytes() == np.asarray(ref[name]).tobytes(), name
    net = ort.InferenceSession(str(converted / "two.network.disable.ort"), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(converted / "plain.disable.ort"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    data = next(i.name for i in net.get_inputs() if i.name not in weights)
    got, = net.run(None, {**weights, data: x})
    want, = plain.run(None, {plain.get_inputs()[0].name: x})
    assert got.shape == want.shape == (3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
