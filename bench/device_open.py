"""How long a compressed model takes to open, and how much memory, in every onnxruntime: Python
onnxruntime, onnxruntime-node and onnxruntime-web (wasm backend, in Node.js), at LeNet-5 (the shipped
example, hashed) and VGG-16 (~15M weights) scale, plain export against the self-decoding forms.

    .venv/bin/python bench/device_open.py [--repeats 3] [--scales lenet5,vgg16] [--runtimes python,node,web]
                                          [--fold-limit-gib 8] [--no-fold-node vgg16] [--out bench/results]

Forms (the files are written once, in a temporary folder):
* plain .onnx, default session options: the weights decoded by numpy and stored as initializers;
* self-decoding .onnx, default options: onnxruntime constant-folds the in-graph decoder while it opens;
* decoder .onnx (`regenerated_weights_model`), optimisations off, open + first run: the decode done once as
  ordinary nodes (what `mrcformat_runtime.ort.session(self_decoding=True)` does before it opens the network);
* two-step files (`onnx_export.export_two_step`): that decoder run once, then the network (weights as named
  inputs) opened with default options, as an app does it in any onnxruntime without our code;
* Python only: `.mrc -> mrcformat_runtime.ort.session(self_decoding=True)` (decoder run + network session),
  `.mrc -> ort.session(...)` (numpy decode + network session), and the self-decoding model converted to ORT
  format (mobile) with optimisations off, default options (onnxruntime does not fold an .ort file: the
  decoder runs in every run, so its first run is given too).

Every measurement is a fresh process; the median of `--repeats` is shown (one process for a case that took
more than 60 s). Peak = the process's high-water mark of resident memory during the open (and run) minus
its resident set just before (Python: VmHWM reset after the imports; Node.js: maxRSS against the RSS before
the first session, which includes loading onnxruntime's library or wasm module: a fixed cost also paid by
the plain model). CPU s = user + system of the open (Python only), less sensitive than wall time to other
processes on a shared machine. Runs that exceed `--fold-limit-gib` of address space (Python) or wasm's
4 GiB are reported as failed.
Writes `<out>/device_open.md` and `<out>/device_open.png`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE_DIR = ROOT / "tests" / "node"
sys.path.insert(0, str(HERE))

LABELS = {"lenet5": "LeNet-5", "vgg16": "VGG-16"}

PY_CHILD = r'''
import json, os, sys, time
mode, path = sys.argv[1], sys.argv[2]
import numpy as np
import onnxruntime as ort
from mrcformat_runtime import ort as mrc_ort
import mrcformat
from mrcformat.sampler import normal_table
normal_table()  # the reader's and decoder's fixed first-use costs, kept out of the measurement

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

mrc_ort.trim_heap()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t0, c0 = time.perf_counter(), os.times()
run_s = None
if mode in ("default", "ort_default"):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
elif mode == "noopt_run":
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
elif mode == "two_step":
    sess = mrc_ort.session(path, self_decoding=True)
elif mode == "numpy_session":
    sess = mrc_ort.session(path)
elif mode == "two_files":  # export_two_step's files: decoder run once (optimisations off), network fed its outputs
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    dec = ort.InferenceSession(path + ".weights.onnx", so, providers=["CPUExecutionProvider"])
    weights = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
    del dec
    sess = ort.InferenceSession(path + ".network.onnx", providers=["CPUExecutionProvider"])
open_s = time.perf_counter() - t0
c1 = os.times()
if mode in ("noopt_run", "ort_default"):
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.zeros(shape, dtype=np.float32)
    t1 = time.perf_counter()
    sess.run(None, feeds)
    run_s = time.perf_counter() - t1
print(json.dumps({"open_s": open_s, "cpu_s": (c1.user - c0.user) + (c1.system - c0.system), "run_s": run_s,
                  "peak": status("VmHWM") - before}))
'''


def _py(mode: str, path: str, limit_gib: float) -> dict:
    cmd = [sys.executable, "-c", PY_CHILD, mode, path]
    if shutil.which("prlimit"):
        cmd = ["prlimit", f"--as={int(limit_gib * 2**30)}"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _node(runtime: str, path: str, options: dict | None, run: bool, tmp: Path, decoder: str | None = None) -> dict:
    jobs = tmp / "job.json"
    job = {"model": path, "opens": 1, "runs": 1 if run else 0, "options": options or {}}
    if decoder:
        job["decoder"] = decoder
    jobs.write_text(json.dumps({"jobs": [job]}))
    try:
        proc = subprocess.run(["node", str(NODE_DIR / "run_models.mjs"), runtime, str(jobs)], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timeout (30 min)"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:160]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"open_s": r["open_s"][0], "run_s": r["run_s"][0] if r["run_s"] else None, "cpu_s": None,
            "peak": (r["rss_peak_mb"] - r["rss_before_mb"]) * 2**20}


def measure(fn, repeats: int) -> dict:
    samples = []
    for i in range(repeats):
        t = time.perf_counter()
        r = fn()
        if "error" in r:
            return r
        samples.append(r)
        if time.perf_counter() - t > 60:
            break
    med = {k: statistics.median(s[k] for s in samples) if samples[0][k] is not None else None
           for k in ("open_s", "cpu_s", "run_s", "peak")}
    med["n"] = len(samples)
    return med


def write_files(scale: str, d: Path) -> dict:
    import _models
    from mrcformat_runtime import onnx_export
    from mrcformat_runtime.selfdecode import regenerated_weights_model

    import mrcformat as m

    if scale == "lenet5":
        c = m.load(ROOT / "examples" / "lenet5-small.mrc")
    else:
        _, c = _models.build(scale)
    paths = {k: str(d / f"{scale}.{k}") for k in ("mrc", "plain.onnx", "sd.onnx", "decoder.onnx")}
    m.save(c, paths["mrc"])
    onnx_export.export(c, paths["plain.onnx"])
    onnx_export.export(c, paths["sd.onnx"], self_decoding=True)
    Path(paths["decoder.onnx"]).write_bytes(regenerated_weights_model(c).SerializeToString())
    paths["two"] = str(d / f"{scale}.two")
    onnx_export.export_two_step(c, paths["two"] + ".weights.onnx", paths["two"] + ".network.onnx")
    conv = d / f"{scale}-ort"
    conv.mkdir()
    shutil.copy(paths["sd.onnx"], conv / f"{scale}.sd.onnx")
    env = dict(os.environ, ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL="disable")
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", "--optimization_style",
                           "Fixed", "--output_dir", str(conv / "out"), str(conv / f"{scale}.sd.onnx")],
                          env=env, capture_output=True, text=True)
    found = list((conv / "out").glob("*.ort")) if proc.returncode == 0 else []
    paths["sd.ort"] = str(found[0]) if found else None
    sizes = {k: os.path.getsize(v) for k, v in paths.items() if v and k != "two"}
    sizes.update({f"two-step {k}": os.path.getsize(paths["two"] + f".{k}.onnx") for k in ("weights", "network")})
    info = {"weights": sum(t.numel for t in c.tensors if t.encoding == "coded"), "groups": len(c.groups),
            "hashed": sum(1 for g in c.groups if g.hashing), "sizes": sizes}
    return paths, info


def rows_for(paths: dict, runtimes: list[str], repeats: int, limit: float, tmp: Path, fold_node: bool) -> list[tuple]:
    """(runtime, form, result) for every case."""
    out = []
    if "python" in runtimes:
        cases = [("plain .onnx, default options", "default", "plain.onnx"),
                 ("self-decoding .onnx, default options (decoder folded)", "default", "sd.onnx"),
                 ("decoder .onnx, optimisations off: open + first run", "noopt_run", "decoder.onnx"),
                 ("two-step files (export_two_step): decoder run once, opts off + network", "two_files", "two"),
                 (".mrc -> ort.session(self_decoding=True) (decode once + network)", "two_step", "mrc"),
                 (".mrc -> ort.session() (numpy decode + network)", "numpy_session", "mrc"),
                 ("self-decoding .ort (mobile, unoptimised), default options: open + first run", "ort_default",
                  "sd.ort")]
        for label, mode, key in cases:
            if not paths.get(key):
                continue
            print(f"  python: {label}", flush=True)
            out.append(("Python onnxruntime", label, measure(lambda: _py(mode, paths[key], limit), repeats)))
    for rt, name in (("node", "onnxruntime-node"), ("web", "onnxruntime-web (wasm)")):
        if rt not in runtimes:
            continue
        cases = [("plain .onnx, default options", "plain.onnx", None, False),
                 ("self-decoding .onnx, default options (decoder folded)", "sd.onnx", None, False),
                 ("decoder .onnx, optimisations off: open + first run", "decoder.onnx",
                  {"graphOptimizationLevel": "disabled"}, True),
                 ("two-step files (export_two_step): decoder run once, opts off + network", "two", None, False)]
        for label, key, options, run in cases:
            if key == "sd.onnx" and not fold_node:
                out.append((name, label, {"error": "not run (--no-fold-node: several GiB, no memory limit in Node.js)"}))
                continue
            print(f"  {rt}: {label}", flush=True)
            model, decoder = ((paths[key] + ".network.onnx", paths[key] + ".weights.onnx") if key == "two"
                              else (paths[key], None))
            out.append((name, label, measure(lambda: _node(rt, model, options, run, tmp, decoder), repeats)))
    return out


def fmt(r: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    v = r.get(key)
    return "" if v is None else f"{v / scale:.{digits}f}"


def report(results: dict, args, elapsed: float) -> str:
    lines = ["# Opening a compressed model in every onnxruntime", "",
             f"`bench/device_open.py --repeats {args.repeats}` — {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{os.cpu_count()} CPU(s), {platform.machine()}, total {elapsed:.0f} s. Medians of fresh processes "
             "(n = how many); open = session creation, run = first run; peak = resident high-water mark during "
             "open (+ run) minus the resident set before; x plain = ratio to the same runtime's plain .onnx open. "
             "The machine is shared: wall times vary by 2-3x between runs, CPU s (Python) less so.", ""]
    for scale, (info, rows) in results.items():
        s = info["sizes"]
        lines += [f"## {LABELS[scale]}", "",
                  f"{info['weights']:,} weights in {info['groups']} groups ({info['hashed']} hashed). Files: "
                  + ", ".join(f"{k} {v:,} B" for k, v in s.items()), "",
                  "| runtime | form | open s | x plain | CPU s | first run s | peak MiB | x plain | n |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        plain = {rt: r for rt, label, r in rows if label.startswith("plain") and "error" not in r}
        for rt, label, r in rows:
            if "error" in r:
                lines.append(f"| {rt} | {label} | failed: {r['error']} | | | | | | |")
                continue
            p = plain.get(rt)
            xo = f"{r['open_s'] / p['open_s']:.1f}" if p else ""
            xm = f"{r['peak'] / p['peak']:.1f}" if p and p["peak"] > 0 else ""
            lines.append(f"| {rt} | {label} | {fmt(r, 'open_s')} | {xo} | {fmt(r, 'cpu_s')} | {fmt(r, 'run_s')} | "
                         f"{fmt(r, 'peak', 2**20, 1)} | {xm} | {r['n']} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import _models

    plt = _models.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5), squeeze=False)
    for ax, (scale, (_, rows)) in zip(axes[0], results.items()):
        ok = [(rt, label, r) for rt, label, r in rows if "error" not in r]
        names = [f"{rt.split(' ')[0]}: {label.split(',')[0].split(' (')[0]}" for rt, label, _ in ok]
        ax.barh(range(len(ok)), [r["open_s"] + (r["run_s"] or 0) for _, _, r in ok], color="tab:blue")
        ax.set_yticks(range(len(ok)), names, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("open (+ first run) s, median")
        ax.set_title(LABELS[scale])
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scales", default="lenet5,vgg16")
    ap.add_argument("--runtimes", default="python,node,web")
    ap.add_argument("--fold-limit-gib", type=float, default=8.0,
                    help="address-space limit of a Python measurement (the folded VGG-16 decoder needs several GiB)")
    ap.add_argument("--no-fold-node", default="", help="scales (comma-separated) whose self-decoding .onnx is not "
                    "opened with default options in Node.js (the folded VGG-16 decoder takes GiBs, unbounded there)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r]
    if any(r in ("node", "web") for r in runtimes) and not (shutil.which("node") and (NODE_DIR / "node_modules").exists()):
        print("node or tests/node/node_modules missing (npm ci --ignore-scripts in tests/node): Python only")
        runtimes = [r for r in runtimes if r == "python"]
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in [s for s in args.scales.split(",") if s]:
            print(f"== {LABELS[scale]}", flush=True)
            d = Path(tmp) / scale
            d.mkdir()
            paths, info = write_files(scale, d)
            results[scale] = (info, rows_for(paths, runtimes, args.repeats, args.fold_limit_gib, d,
                                             scale not in args.no_fold_node.split(",")))
    md = report(results, args, time.perf_counter() - t0)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_open.md").write_text(md)
    plot(results, out / "device_open.png")
    print(f"wrote {out / 'device_open.md'}")


if __name__ == "__main__":
    main()
