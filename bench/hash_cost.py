"""What the hashing trick's hash costs when a compressed model opens in onnxruntime, and what a cheaper
hash would cost: the evidence for issue 14's LeNet-5 target (open <= 2x the plain export).

    .venv/bin/python bench/hash_cost.py [--mrc examples/lenet5-small.mrc] [--repeats 5] [--runtimes python,node,web]

SPEC 1.x derives every hashed weight's value index and sign from one Philox4x32-10 call per two weights
(SPEC 5.3): LeNet-5's 431k hashed weights are 215k calls, ~100 uint64 element operations each in ONNX.
This script opens, in fresh processes and interleaved (case after case, repeat after repeat):

* the plain export, the self-decoding export (default options: the decoder is constant-folded) and the
  two-step files (decoder run once with optimisations off, then the network), all as shipped;
* the same two decoder forms with only the hashing part replaced by a PROTOTYPE hash that is not in the
  format: murmur3's 32-bit finaliser (fmix32) of the weight position xor a per-group key, index =
  (h * n) >> 32, sign = low bit of h: 17 element operations per weight instead of ~50. Its weights
  differ from the file's (another hash); its cost is what a format with that hash would pay, because
  everything else in the graph (candidates, table, layout, shapes) is the shipped decoder's.

Python onnxruntime: session creation (two-step: decoder opened and run + network opened), wall and CPU
seconds. onnxruntime-node / -web (wasm, one thread, in Node.js): the same through tests/node's packages.
Then, in Python, where a two-step open's time goes (each step timed in one fresh process: onnxruntime's
first session, which every app pays once, then the decoder's open and first run, then the network; the
table-only model `table_model()` and the plain file after the first session, for scale).
Writes bench/results/hash_cost.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import device_open

FMIX_C1, FMIX_C2 = 0x85EBCA6B, 0xC2B2AE35


def fmix32_hash(t: np.ndarray, key: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The prototype hash in numpy (index, sign) for positions t < 2^32: the graph below computes the same."""
    x = (t.astype(np.uint64) ^ np.uint64(key)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(FMIX_C1)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(FMIX_C2)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return (x * np.uint64(n)) >> np.uint64(32), np.where(x & np.uint64(1), -1.0, 1.0).astype(np.float32)


def _hashed_fmix32(self, gids: list[int], values: dict[int, str]) -> dict[int, str]:
    """Drop-in for selfdecode._Decoder._hashed with the prototype hash: one Range over every hashed weight
    of every group, the mix in uint64 (products < 2^64), then per group its index, sign and gather."""
    b, c = self.b, self.c
    if not gids:
        return {}
    counts = [c.group_weights(gid) for gid in gids]
    keys = [(0x9E3779B9 * (gid + 1) + c.seed) & 0xFFFFFFFF for gid in gids]
    u64 = lambda v: b.const(np.array(v, dtype=np.uint64), np.uint64)
    t = b.op("Cast", b.op("Range", b.const(0), b.const(sum(counts)), b.const(1)), to=13)
    # one Range for all groups, split; each part minus its group's first position is the position t
    starts = np.cumsum([0] + counts[:-1])
    parts = self._split(t, counts)
    out = {}
    for gid, part, start, key in zip(gids, parts, starts, keys):
        x = b.op("BitwiseXor", b.op("Sub", part, u64(int(start))), u64(key))
        f = u64(0xFFFFFFFF)
        x = b.op("BitwiseXor", x, b.op("BitShift", x, u64(16), direction="RIGHT"))
        x = b.op("BitwiseAnd", b.op("Mul", x, u64(FMIX_C1)), f)
        x = b.op("BitwiseXor", x, b.op("BitShift", x, u64(13), direction="RIGHT"))
        x = b.op("BitwiseAnd", b.op("Mul", x, u64(FMIX_C2)), f)
        x = b.op("BitwiseXor", x, b.op("BitShift", x, u64(16), direction="RIGHT"))
        index = b.op("Cast", b.op("BitShift", b.op("Mul", x, u64(c.groups[gid].num_values)), u64(32),
                                  direction="RIGHT"), to=7)
        odd = b.op("Cast", b.op("BitwiseAnd", x, u64(1)), to=1)
        sign = b.op("Sub", b.const(1.0, np.float32), b.op("Mul", b.const(2.0, np.float32), odd))
        out[gid] = b.op("Mul", b.op("Gather", values[gid], index), sign)
    return out


def write_forms(mrc: Path, d: Path) -> dict[str, str]:
    from mrcformat_runtime import onnx_export, selfdecode

    import mrcformat as m

    c = m.load(mrc)
    p = {"plain": d / "plain.onnx", "sd": d / "sd.onnx", "two": d / "two", "sd_fmix": d / "sd_fmix.onnx",
         "two_fmix": d / "two_fmix"}
    onnx_export.export(c, p["plain"])
    onnx_export.export(c, p["sd"], self_decoding=True)
    onnx_export.export_two_step(c, f"{p['two']}.weights.onnx", f"{p['two']}.network.onnx")
    original = selfdecode._Decoder._hashed
    selfdecode._Decoder._hashed = _hashed_fmix32
    try:
        onnx_export.export(c, p["sd_fmix"], self_decoding=True)
        onnx_export.export_two_step(c, f"{p['two_fmix']}.weights.onnx", f"{p['two_fmix']}.network.onnx")
    finally:
        selfdecode._Decoder._hashed = original
    check_prototype(c, f"{p['two_fmix']}.weights.onnx")
    return {k: str(v) for k, v in p.items()}


def check_prototype(c, weights_path: str) -> None:
    """The prototype graph computes the numpy fmix32 hash (so the measured graph is the hash described)."""
    import onnxruntime as ort

    from mrcformat.decoder import decode_values

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(weights_path, so, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {})))
    for gid, g in enumerate(c.groups):
        if not g.hashing:
            continue
        values = decode_values(c.seed, gid, g)
        t = np.arange(c.group_weights(gid), dtype=np.uint64)
        key = (0x9E3779B9 * (gid + 1) + c.seed) & 0xFFFFFFFF
        idx, sign = fmix32_hash(t, key, g.num_values)
        want = values[idx.astype(np.int64)] * sign
        have = np.concatenate([got[mm.name].ravel() for mm in c.group_members(gid) if mm.name in got])
        if not np.array_equal(have.view(np.uint32), want.view(np.uint32)):
            raise AssertionError(f"prototype graph and numpy fmix32 differ on group {gid}")


CASES = [  # (key, label, python mode, node: (model key, decoder key or None))
    ("plain", "plain .onnx (weights stored), default options", "default", ("plain", None)),
    ("sd", "self-decoding .onnx, Philox hash (SPEC 1.x), folded", "default", ("sd", None)),
    ("sd_fmix", "self-decoding .onnx, PROTOTYPE fmix32 hash, folded", "default", ("sd_fmix", None)),
    ("two", "two-step files, Philox hash (SPEC 1.x): decoder run once + network", "two_files", ("two", "two")),
    ("two_fmix", "two-step files, PROTOTYPE fmix32 hash: decoder run once + network", "two_files",
     ("two_fmix", "two_fmix")),
]


def one(runtime: str, case: tuple, paths: dict, tmp: Path) -> dict:
    key, _, mode, (model, decoder) = case
    if runtime == "python":
        return device_open._py(mode, paths[key], 8)
    if decoder:
        return device_open._node(runtime, paths[model] + ".network.onnx", None, False, tmp,
                                 decoder=paths[decoder] + ".weights.onnx")
    return device_open._node(runtime, paths[model], None, False, tmp)


BREAKDOWN_CHILD = r'''
import json, sys, time
import onnxruntime as ort
from onnx import TensorProto, helper
dec, net, plain = sys.argv[1], sys.argv[2], sys.argv[3] == "plain"
g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
tiny = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
t = [time.perf_counter()]
ort.InferenceSession(tiny, providers=["CPUExecutionProvider"]); t.append(time.perf_counter())
so = ort.SessionOptions()
if not plain:  # the decoder runs once as nodes; the plain file opens with default options and is not run
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(dec, so, providers=["CPUExecutionProvider"]); t.append(time.perf_counter())
if not plain:
    s.run(None, {})
t.append(time.perf_counter())
if net:
    ort.InferenceSession(net, providers=["CPUExecutionProvider"])
t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
'''


def breakdown(paths: dict, tmp: Path, repeats: int) -> list[dict]:
    """Median seconds of: first session, decoder open, decoder first run, network open (Python)."""
    import subprocess

    from mrcformat_runtime.selfdecode import table_model

    table = tmp / "table.onnx"
    table.write_bytes(table_model().SerializeToString())
    cases = [("two", "two-step, Philox hash (SPEC 1.x)", paths["two"] + ".weights.onnx", paths["two"] + ".network.onnx"),
             ("two_fmix", "two-step, PROTOTYPE fmix32 hash", paths["two_fmix"] + ".weights.onnx",
              paths["two_fmix"] + ".network.onnx"),
             ("table", "the normal16 table alone (table_model)", str(table), "")]
    samples: dict = {k: [] for k, *_ in cases}
    plain: list = []
    for _ in range(repeats):
        for key, _, dec, net in cases:
            out = subprocess.run([sys.executable, "-c", BREAKDOWN_CHILD, dec, net, "decoder"], capture_output=True,
                                 text=True, check=True)
            samples[key].append(json.loads(out.stdout.strip().splitlines()[-1]))
        out = subprocess.run([sys.executable, "-c", BREAKDOWN_CHILD, paths["plain"], "", "plain"], capture_output=True,
                             text=True, check=True)
        plain.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = [{"case": k, "label": label, "steps_s": [statistics.median(s[i] for s in samples[k]) for i in range(4)]}
            for k, label, *_ in cases]
    rows.append({"case": "plain", "label": "plain .onnx (default options; its 'decoder open' is the plain open)",
                 "steps_s": [statistics.median(s[i] for s in plain) for i in range(4)]})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mrc", type=Path, default=ROOT / "examples" / "lenet5-small.mrc")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runtimes", default="python,node,web")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    if ("node" in runtimes or "web" in runtimes) and not (device_open.NODE_DIR / "node_modules").exists():
        sys.exit("tests/node/node_modules is missing: cd tests/node && npm ci --ignore-scripts")
    t_start = time.time()
    results: dict = {rt: {c[0]: [] for c in CASES} for rt in runtimes}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        paths = write_forms(args.mrc, tmp)
        sizes = {k: sum(os.path.getsize(f) for f in ([v] if os.path.exists(v) else
                                                     [f"{v}.weights.onnx", f"{v}.network.onnx"]))
                 for k, v in paths.items()}
        for r in range(args.repeats):
            for rt in runtimes:
                for case in CASES:
                    res = one(rt, case, paths, tmp)
                    results[rt][case[0]].append(res)
            print(f"repeat {r + 1}/{args.repeats} done", flush=True)
        steps = breakdown(paths, tmp, args.repeats) if "python" in runtimes else []
    rows = []
    for rt in runtimes:
        base = None
        for key, label, _, _ in CASES:
            ok = [s for s in results[rt][key] if "error" not in s]
            if not ok:
                rows.append({"runtime": rt, "case": key, "label": label, "error": results[rt][key][0]["error"]})
                continue
            open_s = statistics.median(s["open_s"] for s in ok)
            cpu = [s["cpu_s"] for s in ok if s.get("cpu_s") is not None]
            base = open_s if key == "plain" else base
            rows.append({"runtime": rt, "case": key, "label": label, "open_s": open_s,
                         "open_all": [s["open_s"] for s in ok], "cpu_s": statistics.median(cpu) if cpu else None,
                         "x_plain": open_s / base if base else None, "n": len(ok), "bytes": sizes[key]})
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_start))
    names = {"python": "Python onnxruntime", "node": "onnxruntime-node", "web": "onnxruntime-web (wasm)"}
    lines = [
        "# The hash's share of opening a hashed model",
        "",
        (f"`bench/hash_cost.py --mrc {args.mrc.relative_to(ROOT) if args.mrc.is_relative_to(ROOT) else args.mrc} "
        f"--repeats {args.repeats}` — {stamp} UTC, {os.cpu_count()} CPU(s), {platform.machine()}, "
        f"{time.time() - t_start:.0f} s. Fresh process per measurement, cases interleaved; median (all samples "
        "in the JSON). Open: session creation (two-step: decoder opened with optimisations off and run once, "
        "then the network opened). PROTOTYPE rows use a hash that is not in the format (see the script)."),
        "",
        "| runtime | form | bytes | open s | x plain | CPU s | n |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {names[r['runtime']]} | {r['label']} | | failed: {r['error']} | | | |")
            continue
        cpu = f"{r['cpu_s']:.3f}" if r["cpu_s"] is not None else ""
        lines.append(f"| {names[r['runtime']]} | {r['label']} | {r['bytes']:,} | {r['open_s']:.3f} | "
                     f"{r['x_plain']:.1f} | {cpu} | {r['n']} |")
    if steps:
        lines += ["", "Where a Python two-step open goes (ms, medians; one fresh process per sample, steps in order):", "",
                  "| case | first session (any app) | decoder open | decoder first run | network open | total |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in steps:
            ms = [1e3 * v for v in r["steps_s"]]
            lines.append(f"| {r['label']} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[3]:.1f} | {sum(ms):.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hash_cost.md").write_text("\n".join(lines) + "\n")
    (args.out / "hash_cost.json").write_text(json.dumps({"when": stamp, "rows": rows, "breakdown": steps}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
