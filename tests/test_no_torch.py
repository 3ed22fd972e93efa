"""The onnxruntime side works with only numpy, msgpack, onnx and onnxruntime: torch is never imported."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Makes `import torch` (and any torch.* submodule) fail, as on a machine without torch.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is not installed here ({name})")
            return None

    sys.meta_path.insert(0, _NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")
""")

END_TO_END = textwrap.dedent("""
    import sys
    import numpy as np
    from onnx import TensorProto, helper

    import mrcformat
    import mrcformat_runtime
    import mrcformat_runtime.ort as mort
    from mrcformat import Container, Group, Layout, Tensor
    from mrcformat.sampler import float_to_bf16_bits, float_to_f32_bits

    path = sys.argv[1]
    rng = np.random.default_rng(0)

    def group(nv, bsz, bits, **kw):
        nb = -(-nv // bsz)
        return Group(float_to_f32_bits(0.0), float_to_bf16_bits(0.1), bsz, bits, nv, kw.pop("layout", Layout()),
                     kw.pop("hashing", False), rng.integers(0, 2**bits, size=nb, dtype=np.int64))

    groups = [group(16 * 8 + 16, 10, 12, layout=Layout("affine", 5, 7)), group(20, 6, 7, hashing=True)]
    tensors = [Tensor("fc1.weight", (16, 8), "coded", group=0), Tensor("fc1.bias", (16,), "coded", group=0),
               Tensor("fc2.weight", (3, 16), "coded", group=1), Tensor("fc2.bias", (3,), "coded", group=1)]
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    mrcformat.save(Container(seed=77, groups=groups, tensors=tensors, graph=graph), path)

    c = mrcformat.load(path)
    w = mrcformat.decode(c)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    want = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0) @ w["fc2.weight"].T + w["fc2.bias"]
    ys = {}
    for self_decoding in (False, True):
        sess = mort.session(path, self_decoding=self_decoding)
        ys[self_decoding], = sess.run(None, {"x": x})
        np.testing.assert_allclose(ys[self_decoding], want, rtol=1e-5, atol=1e-6)
    assert ys[False].tobytes() == ys[True].tobytes()  # same weights, bit for bit
    # the lazily resolved top-level names work too
    assert mrcformat_runtime.to_onnx_model(path, self_decoding=True).graph.node
    assert mrcformat_runtime.session is mort.session
    assert "torch" not in sys.modules, "torch was imported"
    print("ok")
""")


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_end_to_end_without_torch(tmp_path):
    r = _run(BLOCK_TORCH + END_TO_END, str(tmp_path / "mlp.mrc"))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@pytest.mark.parametrize("module", ["mrcformat", "mrcformat_runtime", "mrcformat_runtime.ort",
                                    "mrcformat_runtime.onnx_export", "mrcformat_runtime.selfdecode"])
def test_import_does_not_load_torch(module):
    """Even where torch is installed, importing the onnxruntime side leaves it unloaded."""
    code = f"import sys, {module}\nassert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
    r = _run(code)
    assert r.returncode == 0, r.stderr
