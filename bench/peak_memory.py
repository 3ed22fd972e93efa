"""Peak memory of a load: `.mrc` into numpy / torch / onnxruntime against safetensors and torch.load.

    .venv/bin/python bench/peak_memory.py [--scales lenet5,vgg16] [--no-fold] [--out bench/results]

Every measurement runs in a fresh interpreter (`subprocess`) that imports what it needs, then
records its resident set (VmRSS), resets the kernel's high-water mark (writing 5 to
/proc/self/clear_refs), does one load, keeps the result alive and reads the peak (VmHWM). The
table gives peak - RSS before the load, next to the output size (bytes of all decoded tensors)
and, for tensor-by-tensor decoding, the largest group.

Why not `resource.getrusage(RUSAGE_SELF).ru_maxrss`: on Linux a child started with fork/vfork +
exec inherits the parent's high-water mark into ru_maxrss (the kernel folds the pre-exec address
space's peak into signal->maxrss), so in a child of this script ru_maxrss starts at the parent's peak
(hundreds of MiB after building VGG-16) and hides any smaller load. ru_maxrss is still recorded
and shown when the reset is not available. Imports (numpy, onnx, torch, onnxruntime, the normal16
table) happen before the baseline: they are fixed costs (onnx alone is ~8 MiB, imported by the reader
to check a stored graph), not part of what a load adds.

Writes `<out>/peak_memory.md` and `<out>/peak_memory.png`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LABELS = {"lenet5": "LeNet-5", "vgg16": "VGG-16"}
MiB = 1 << 20

CHILD = r'''
import gc, json, os, resource, sys, time
mode, paths, chunk = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
import numpy as np
import onnx  # imported lazily by the reader to check a stored graph: a fixed ~8 MiB, kept out of the peak
import mrcformat as m
from mrcformat.sampler import normal_table
normal_table()
lib = mode.split(":")[0]
if lib in ("torch", "st", "ptload"):
    import torch
if lib == "st":
    import safetensors.numpy, safetensors.torch
if lib == "torch":
    from mrcformat_runtime import onnx_to_torch, torch_decode, torch_load
if lib == "ort":
    import onnxruntime as ort
    from mrcformat_runtime import ort as mrc_ort, onnx_export, selfdecode

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None

def noopt():
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so

def feed(sess):
    i = sess.get_inputs()[0]
    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)}

def run(mode):
    mrc = paths["mrc"]
    if mode == "mrc:load":
        return m.load(mrc)
    if mode == "mrc:decode":
        return m.decode(m.load(mrc), chunk=chunk)
    if mode == "mrc:iter_drop":
        n = 0
        for name, a in m.iter_decode(m.load(mrc), chunk=chunk):
            n += a.size  # the consumer drops each tensor (the group's buffer goes with the next group)
            del a
        return n
    if mode == "torch:load_state_dict":
        return torch_load.load_state_dict(mrc)
    if mode == "torch:iter_drop":
        n = 0
        for name, a in torch_decode.iter_decode(m.load(mrc), "cpu"):
            n += a.numel()
            del a
        return n
    if mode == "torch:load_module":
        return torch_load.load_module(mrc)
    if mode == "st:torch_mmap":
        return safetensors.torch.load_file(paths["safetensors"])
    if mode == "st:torch_mmap_touch":
        d = safetensors.torch.load_file(paths["safetensors"])
        for t in d.values():
            if t.is_floating_point():
                t.view(-1)[::1024].sum()
        return d
    if mode == "st:torch_pread":
        return safetensors.torch.load_file(paths["safetensors"], backend="pread")
    if mode == "st:numpy":
        return safetensors.numpy.load_file(paths["safetensors"])
    if mode == "ptload:weights_only":
        return torch.load(paths["pt"], weights_only=True)
    if mode == "ort:plain_onnx":
        s = ort.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
        s.run(None, feed(s))
        return s
    if mode == "ort:plain":
        s = mrc_ort.session(mrc)
        s.run(None, feed(s))
        return s
    if mode == "ort:plain_external":
        s = mrc_ort.session(mrc, external_min_bytes=1 << 20)
        s.run(None, feed(s))
        return s
    if mode == "ort:sd_two_step":  # mrcformat_runtime: ORT computes the weights once, then a plain session
        s = mrc_ort.session(mrc, self_decoding=True)
        s.run(None, feed(s))
        return s
    if mode == "ort:sd_noopt":  # the standalone self-decoding .onnx, optimisations off: decodes every run
        s = ort.InferenceSession(mrc.replace(".mrc", ".sd.onnx"), noopt(), providers=["CPUExecutionProvider"])
        s.run(None, feed(s))
        return s
    if mode == "ort:sd_folded":  # the standalone self-decoding .onnx, default options: folded at creation
        s = ort.InferenceSession(mrc.replace(".mrc", ".sd.onnx"), providers=["CPUExecutionProvider"])
        s.run(None, feed(s))
        return s
    raise ValueError(mode)

gc.collect()
rss0 = status("VmRSS:")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = status("VmHWM:") <= rss0 + (1 << 20)
except OSError:
    reset = False
ru0 = resource.getrusage(resource.RUSAGE_SELF)
maxrss0 = ru0.ru_maxrss * 1024
t = time.perf_counter()
result = run(mode)
dt = time.perf_counter() - t
hwm = status("VmHWM:")
rss1 = status("VmRSS:")
ru1 = resource.getrusage(resource.RUSAGE_SELF)
maxrss1 = ru1.ru_maxrss * 1024
print(json.dumps({"rss0": rss0, "hwm": hwm, "rss1": rss1, "maxrss0": maxrss0, "maxrss1": maxrss1,
                  "reset": reset, "seconds": dt, "user": ru1.ru_utime - ru0.ru_utime, "sys": ru1.ru_stime - ru0.ru_stime,
                  "minflt": ru1.ru_minflt - ru0.ru_minflt}))
'''

# (mode, label, chunk or None, reference: "output" | "group")
MODES = [
    ("mrc:load", "mrcformat.load (container only: header, indices, raw tensors)", None, "none"),
    ("mrc:decode", "mrcformat.decode(load) -> dict of numpy arrays", None, "output"),
    ("mrc:iter_drop", "mrcformat.iter_decode, each tensor dropped (chunk 2^16, default)", None, "group"),
    ("mrc:iter_drop", "mrcformat.iter_decode, each tensor dropped (chunk 2^14)", 1 << 14, "group"),
    ("mrc:iter_drop", "mrcformat.iter_decode, each tensor dropped (chunk 2^18)", 1 << 18, "group"),
    ("torch:load_state_dict", "mrcformat_runtime load_state_dict (torch CPU)", None, "output"),
    ("torch:iter_drop", "mrcformat_runtime torch_decode.iter_decode, each tensor dropped", None, "group"),
    ("torch:load_module", "mrcformat_runtime load_module (torch CPU)", None, "output"),
    ("st:torch_mmap", "safetensors.torch.load_file (mmap, nothing touched)", None, "output"),
    ("st:torch_mmap_touch", "safetensors.torch.load_file (mmap) + every page touched", None, "output"),
    ("st:torch_pread", 'safetensors.torch.load_file(backend="pread")', None, "output"),
    ("st:numpy", "safetensors.numpy.load_file", None, "output"),
    ("ptload:weights_only", "torch.load(weights_only=True)", None, "output"),
    ("ort:plain_onnx", "plain .onnx -> ORT session + 1 run", None, "output"),
    ("ort:plain", ".mrc -> ORT session, plain + 1 run", None, "output"),
    ("ort:plain_external", ".mrc -> ORT session, plain, external initializers + 1 run", None, "output"),
    ("ort:sd_two_step", ".mrc -> ORT session, self-decoding (ORT decodes once, no-opt) + 1 run", None, "output"),
    ("ort:sd_noopt", "self-decoding .onnx -> ORT session, opts off + 1 run", None, "output"),
    ("ort:sd_folded", "self-decoding .onnx -> ORT session, default opts (folded) + 1 run", None, "output"),
]


def measure(mode: str, paths: dict, chunk: int | None) -> dict:
    from mrcformat.decoder import DEFAULT_CHUNK

    p = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(paths), str(chunk or DEFAULT_CHUNK)],
                       capture_output=True, text=True, timeout=600, check=False)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt_mib(b: float) -> str:
    return f"{b / MiB:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="lenet5,vgg16")
    ap.add_argument("--no-fold", action="store_true",
                    help="skip the constant-folded self-decoding session (VGG-16: ~25 s and several GiB)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    import _models
    import numpy as np
    import safetensors.torch
    import torch
    from mrcformat_runtime import onnx_export

    import mrcformat as m

    t_start = time.perf_counter()
    results = {}
    for scale in [s for s in args.scales.split(",") if s]:
        print(f"== {LABELS[scale]}", flush=True)
        _, c = _models.build(scale)
        info = {
            "output": _models.decoded_bytes(c),
            "largest_group": max(c.group_weights(g) for g in range(len(c.groups))) * 4,
            "largest_raw": max([t.data.nbytes for t in c.tensors if t.encoding == "raw"] or [0]),
            "raw": sum(t.data.nbytes for t in c.tensors if t.encoding == "raw"),
            "indices_int64": sum(g.num_blocks for g in c.groups) * 8,
        }
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            paths = {k: os.path.join(tmp, f"model.{k}") for k in ("mrc", "safetensors", "pt", "onnx", "sd.onnx")}
            m.save(c, paths["mrc"])
            sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in m.decode(c).items()}
            safetensors.torch.save_file(sd, paths["safetensors"])
            torch.save(sd, paths["pt"])
            onnx_export.export(c, paths["onnx"])
            onnx_export.export(c, paths["sd.onnx"], self_decoding=True)
            del sd, c
            for mode, label, chunk, ref in MODES:
                if mode == "ort:sd_folded" and args.no_fold:
                    continue
                r = measure(mode, paths, chunk)
                rows.append((mode, label, chunk, ref, r))
                if "error" in r:
                    print(f"  {label}: FAILED {r['error']}", flush=True)
                else:
                    print(f"  {label}: peak +{fmt_mib(r['hwm'] - r['rss0'])} MiB, {r['seconds']:.2f} s", flush=True)
        results[scale] = (info, rows)
    md = report(results, time.perf_counter() - t_start)
    print()
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peak_memory.md").write_text(md)
    plot(results, out / "peak_memory.png")
    print(f"wrote {out / 'peak_memory.md'} and {out / 'peak_memory.png'}")


def report(results: dict, elapsed: float) -> str:
    from mrcformat.decoder import DEFAULT_CHUNK

    L = ["# Peak memory of a load", ""]
    L.append(f"`{' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}` — {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{os.cpu_count()} CPU(s); one fresh interpreter per row; total {elapsed:.0f} s.")
    L.append("")
    L.append("Peak = kernel high-water mark (VmHWM, reset after the imports) minus the resident set before the load; "
             "the result is kept alive until the peak is read. \"x output\": peak / bytes of all decoded tensors. "
             "\"over ref\": peak minus the reference (the output, or for tensor-by-tensor decoding the largest "
             "group's float32 weights, which `iter_decode` keeps while it yields that group's tensors). "
             "\"kept\": RSS after - RSS before. Numbers are MiB; allocator and interpreter noise is ~1 MiB. "
             "user/sys: CPU seconds of the load (sys is mostly page faults on fresh memory).")
    for scale, (info, rows) in results.items():
        L.append("")
        L.append(f"## {LABELS[scale]}")
        L.append("")
        L.append(f"output {fmt_mib(info['output'])} MiB ({info['output']:,} B; raw tensors {info['raw']:,} B), "
                 f"largest group {fmt_mib(info['largest_group'])} MiB, indices as int64 in the Container "
                 f"{fmt_mib(info['indices_int64'])} MiB; numpy decoder chunk default {DEFAULT_CHUNK} slots.")
        L.append("")
        L.append("| load | peak MiB | x output | reference | over ref MiB | kept MiB | wall s | user s | sys s |")
        L.append("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for mode, label, chunk, ref, r in rows:
            if "error" in r:
                L.append(f"| {label} | failed: {r['error']} | | | | | | | |")
                continue
            peak = (r["hwm"] - r["rss0"]) if r["reset"] else (r["maxrss1"] - r["rss0"])
            refb = {"output": info["output"], "group": info["largest_group"], "none": 0}[ref]
            refname = {"output": "output", "group": "largest group", "none": "—"}[ref]
            over = f"{fmt_mib(peak - refb)}" if ref != "none" else ""
            note = "" if r["reset"] else " (ru_maxrss: no reset)"
            L.append(f"| {label}{note} | {fmt_mib(peak)} | {peak / info['output']:.2f} | {refname} | {over} | "
                     f"{fmt_mib(r['rss1'] - r['rss0'])} | {r['seconds']:.2f} | {r['user']:.2f} | {r['sys']:.2f} |")
    L.append("")
    return "\n".join(L)


def plot(results: dict, path: Path) -> None:
    import _models

    plt = _models.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 6), squeeze=False)
    for ax, (scale, (info, rows)) in zip(axes[0], results.items()):
        rows = [r for r in rows if "error" not in r[4]]
        peaks = [(r[4]["hwm"] - r[4]["rss0"]) / info["output"] for r in rows]
        colors = ["tab:blue" if r[0].startswith(("mrc", "torch")) else "tab:orange" if r[0].startswith("ort")
                  else "tab:gray" for r in rows]
        ax.barh(range(len(rows)), peaks, color=colors)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r[1] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.axvline(info["largest_group"] / info["output"], color="tab:green", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("peak RSS increase / output size (log)")
        ax.set_title(f"{LABELS[scale]}: output {info['output'] / MiB:.1f} MiB (dashed)\n"
                     f"largest group {info['largest_group'] / MiB:.1f} MiB (dotted)", fontsize=10)
        for i, v in enumerate(peaks):
            ax.text(v, i, f" {v * info['output'] / MiB:.1f} MiB", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
