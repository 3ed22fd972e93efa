"""Does the memory budget mean what it says? Peak memory of each loader against the bytes it counts.

    nice python bench/peak_memory_budget.py

For each file and loader, a fresh interpreter imports everything, trims the heap, resets the kernel's
high-water mark (VmHWM), loads with `max_decoded_bytes` set to exactly what the loader counts
(`mrcformat_runtime.load_budget.estimate`; numpy: the decoded tensors, what the reader counts), and reports the peak over
the resident set before the load. A second run with a budget one byte smaller must be refused with
LimitError before allocating (its peak is shown too). Files: two decompression bombs (a few hundred
bytes: hashed weights; a ConstantOfShape the graph makes) and an ordinary MLP. Writes
bench/results/peak_memory_budget.md.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

LOADERS = ("numpy decode", "load_state_dict", "load_module", "session")

CHILD = r"""
import json, sys, ctypes
import numpy as np
import mrcformat as m
from mrcformat.errors import LimitError
from mrcformat_runtime import load_budget, ort as mrc_ort
from mrcformat_runtime.torch_load import load_module, load_state_dict
import torch
torch.set_num_threads(1)
path, loader, delta = sys.argv[1], sys.argv[2], int(sys.argv[3])
if loader == "plain .onnx file":  # the floor: onnxruntime opening the exported model itself
    import onnxruntime as ort
    so = ort.SessionOptions(); so.log_severity_level = 4
    est = budget = 0
elif loader == "numpy decode":
    c = m.load(path, max_decoded_bytes=None)
    est = sum(4 * t.numel for t in c.tensors if t.encoding == "coded") + sum(
        t.data.nbytes for t in c.tensors if t.encoding == "raw")  # what the reader counts
    c = None
else:
    est = load_budget.estimate(path, loader)
budget = est + delta if loader != "plain .onnx file" else None
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
x = None
import gc; gc.collect(); ctypes.CDLL(None).malloc_trim(0)
rss0 = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
try:
    if loader == "numpy decode":
        x = m.decode(m.load(path, max_decoded_bytes=budget))
    elif loader == "load_state_dict":
        x = load_state_dict(path, max_decoded_bytes=budget)
    elif loader == "load_module":
        x = load_module(path, max_decoded_bytes=budget)
    elif loader == "session":
        x = mrc_ort.session(path, max_decoded_bytes=budget)
    else:
        x = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        ctypes.CDLL(None).malloc_trim(0)  # as session(trim=True) does
    outcome = "ok"
except LimitError:
    outcome = "limit"
print(json.dumps({"estimate": est, "budget": budget, "peak": status("VmHWM:") - rss0, "outcome": outcome}))
"""


def files(folder: Path) -> dict[str, Path]:
    import mrcformat as m
    from onnx import TensorProto, helper
    from strategies import make_group

    out = {}
    rng = np.random.default_rng(0)
    w = 1 << 26  # 256 MiB of float32 from 64 Mi hashed weights
    g = make_group(w // 256, block_size=4096, index_bits=1, rng=rng, hashing=True)
    graph = helper.make_model(helper.make_graph([helper.make_node("ReduceSum", ["w"], ["y"], keepdims=0)], "b", [],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]),
                              opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    c = m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (w,), "coded", group=0)], graph=graph)
    out["hashing bomb, 256 MiB decoded"] = folder / "bomb.mrc"
    m.save(c, out["hashing bomb, 256 MiB decoded"])

    g = make_group(16, block_size=4, index_bits=4, rng=rng)
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [1 << 26])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0), helper.make_node("Identity", ["w"], ["y2"])]
    graph = helper.make_model(helper.make_graph(nodes, "cos", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
                                                                  helper.make_tensor_value_info("y2", TensorProto.FLOAT, [16])],
                                                initializer=[shape]),
                              opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    out["ConstantOfShape 256 MiB in the graph"] = folder / "cos.mrc"
    m.save(m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (16,), "coded", group=0)], graph=graph),
           out["ConstantOfShape 256 MiB in the graph"])

    n, layers = 2048, 6
    groups, tensors, nodes, prev = [], [], [], "x"
    for i in range(layers):
        groups.append(make_group(n * n, block_size=4096, index_bits=4, rng=rng, sigma=0.01))
        tensors.append(m.Tensor(f"w{i}", (n, n), "coded", group=i))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_model(helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                                                [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, n])]),
                              opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    out["MLP 6 x 2048^2, 96 MiB decoded"] = folder / "mlp.mrc"
    m.save(m.Container(seed=1, groups=groups, tensors=tensors, graph=graph), out["MLP 6 x 2048^2, 96 MiB decoded"])
    return out


def measure(path: Path, loader: str, delta: int) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(path), loader, str(delta)], capture_output=True, text=True,
                       timeout=900)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    from mrcformat_runtime.onnx_export import export

    mib = 1 << 20
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in files(Path(tmp)).items():
            size = path.stat().st_size
            for loader in LOADERS:
                runs = [measure(path, loader, 0) for _ in range(repeats)]
                if any("error" in r for r in runs):
                    rows.append(f"| {name} ({size:,} B) | {loader} | error: {runs[0].get('error')} | | | | |")
                    continue
                peak = statistics.median(r["peak"] for r in runs)
                est = runs[0]["estimate"]
                refused = measure(path, loader, -1)
                rows.append(f"| {name} ({size:,} B) | {loader} | {est / mib:.1f} | {peak / mib:.1f} | "
                            f"{(peak - est) / mib:+.1f} | {', '.join(format(r['peak'] / mib, '.0f') for r in runs)} | "
                            f"{refused.get('outcome', refused.get('error'))}, peak {refused.get('peak', 0) / mib:.1f} |")
                print(rows[-1], flush=True)
            plain = path.with_suffix(".onnx")
            export(str(path), str(plain))
            runs = [measure(plain, "plain .onnx file", 0) for _ in range(repeats)]
            if any("error" in r for r in runs):
                rows.append(f"| {name} | plain .onnx file -> onnxruntime | error: {runs[0].get('error')} | | | | |")
            else:
                peak = statistics.median(r["peak"] for r in runs)
                rows.append(f"| {name} ({plain.stat().st_size:,} B .onnx) | plain .onnx file -> onnxruntime "
                            f"(no budget; the floor for `session`) | — | {peak / mib:.1f} | | "
                            f"{', '.join(format(r['peak'] / mib, '.0f') for r in runs)} | |")
            plain.unlink()
            print(rows[-1], flush=True)
    text = "\n".join([
        "# Memory budget against measured peaks", "",
        f"`bench/peak_memory_budget.py {repeats}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{time.time() - t0:.0f} s. Fresh interpreter per run, peak = VmHWM after the load minus RSS before it "
        "(imports done, heap trimmed), median of the runs; MiB.", "",
        "Budget = what the loader counts (`load_budget.estimate`; numpy: the decoded tensors), the load run "
        "with exactly that budget; 'budget - 1 B' is the same load with one byte less: it must be refused "
        "before allocating. 'plain .onnx file -> onnxruntime': the same model exported to a plain .onnx "
        "(`mrc export`) and opened by `onnxruntime.InferenceSession(path)` with the heap trimmed after, as `session` "
        "does: what onnxruntime itself needs to open these weights, the floor for `session` (which adds its "
        "decoded copy, dropped once onnxruntime holds its own).", "",
        "| file | loader | counted (= budget) | peak | peak - budget | peaks | budget - 1 B |",
        "|---|---|---:|---:|---:|---|---|",
        *rows])
    out = ROOT / "bench" / "results" / "peak_memory_budget.md"
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
