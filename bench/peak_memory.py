"""Peak memory of a load: `.mrc` into numpy / torch / onnxruntime against safetensors and torch.load.

    .venv/bin/python bench/peak_memory.py [--scales lenet5,vgg16] [--repeats 3] [--no-fold] [--out bench/results]

Every measurement runs in a fresh interpreter (`subprocess`) that imports what it needs, then
hands the heap's free pages back (glibc malloc_trim, so that a load which trims cannot show memory
freed before it), records its resident set (VmRSS), resets the kernel's high-water mark (writing 5
to /proc/self/clear_refs), does one load, keeps the result alive and reads the peak (VmHWM). The
table gives peak - RSS before the load (the median of `--repeats` interpreters; onnxruntime's varies
by tens of MiB from run to run), next to the output size (bytes of all decoded tensors) and, for
tensor-by-tensor decoding, the largest group. "file" is the growth of file-backed resident pages
(RssFile): code of shared libraries run for the first time (torch's: ~8 MiB), not data.

Rows marked "before" reproduce the loaders as they were before issue 13 with today's code: the user's
model filled by `model.load_state_dict(load_state_dict(path))`, and an onnxruntime session that keeps
the decoded arrays for its lifetime (external initializers from 1 MiB, no heap trim).

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
import statistics
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
model = None
if mode.startswith("torch:model"):  # the user's model, built (and its weights allocated) before the baseline
    sys.path.insert(0, paths["bench"])
    import _models
    torch.manual_seed(0)
    model = _models.SCALES[paths["scale"]][0]().eval()

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
    if mode == "torch:model_load_state_dict":  # before: a decoded dict next to the model's own weights
        return model.load_state_dict(torch_load.load_state_dict(mrc))
    if mode == "torch:model_load_into":
        return torch_load.load_into(model, mrc)
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
    if mode == "ort:plain_onnx_trim":
        s = ort.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
        s.run(None, feed(s))
        mrc_ort.trim_heap()
        return s
    if mode == "ort:plain":
        s = mrc_ort.session(mrc)
        s.run(None, feed(s))
        return s
    if mode == "ort:plain_notrim":
        s = mrc_ort.session(mrc, trim=False)
        s.run(None, feed(s))
        return s
    if mode == "ort:plain_serialized":
        s = mrc_ort.session(mrc, external_min_bytes=None)
        s.run(None, feed(s))
        return s
    if mode in ("ort:plain_before", "ort:sd_two_step_before"):  # arrays kept by the options for the session's life
        s = mrc_ort.session(mrc, self_decoding=mode.startswith("ort:sd"), sess_options=ort.SessionOptions(),
                            external_min_bytes=1 << 20, trim=False)
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
try:
    import ctypes
    ctypes.CDLL(None).malloc_trim(0)
except (OSError, AttributeError):
    pass
rss0 = status("VmRSS:")
file0 = status("RssFile:")
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
file1 = status("RssFile:")
ru1 = resource.getrusage(resource.RUSAGE_SELF)
maxrss1 = ru1.ru_maxrss * 1024
print(json.dumps({"rss0": rss0, "hwm": hwm, "rss1": rss1, "maxrss0": maxrss0, "maxrss1": maxrss1,
                  "file": (file1 - file0) if file0 is not None and file1 is not None else 0,
                  "reset": reset, "seconds": dt, "user": ru1.ru_utime - ru0.ru_utime, "sys": ru1.ru_stime - ru0.ru_stime,
                  "minflt": ru1.ru_minflt - ru0.ru_minflt}))
'''

# (mode, label, chunk or None, reference: "output" | "group" | "none")
MODES = [
    ("mrc:load", "mrcformat.load (container only: header, indices, raw tensors)", None, "none"),
    ("mrc:decode", "mrcformat.decode(load) -> dict of numpy arrays", None, "output"),
    ("mrc:iter_drop", "mrcformat.iter_decode, each tensor dropped (chunk 2^16, default)", None, "group"),
    ("mrc:iter_drop", "mrcformat.iter_decode, each tensor dropped (chunk 2^14)", 1 << 14, "group"),
    ("mrc:iter_drop", "mrcformat.iter_decode, each tensor dropped (chunk 2^18)", 1 << 18, "group"),
    ("torch:load_state_dict", "mrcformat_runtime load_state_dict (torch CPU)", None, "output"),
    ("torch:iter_drop", "mrcformat_runtime torch_decode.iter_decode, each tensor dropped", None, "group"),
    ("torch:load_module", "mrcformat_runtime load_module (torch CPU)", None, "output"),
    ("torch:model_load_state_dict", "before: user's model (built first), model.load_state_dict(load_state_dict(path))",
     None, "none"),
    ("torch:model_load_into", "user's model (built first), load_into(model, path)", None, "none"),
    ("st:torch_mmap", "safetensors.torch.load_file (mmap, nothing touched)", None, "output"),
    ("st:torch_mmap_touch", "safetensors.torch.load_file (mmap) + every page touched", None, "output"),
    ("st:torch_pread", 'safetensors.torch.load_file(backend="pread")', None, "output"),
    ("st:numpy", "safetensors.numpy.load_file", None, "output"),
    ("ptload:weights_only", "torch.load(weights_only=True)", None, "output"),
    ("ort:plain_onnx", "plain .onnx -> ORT session + 1 run", None, "output"),
    ("ort:plain_onnx_trim", "plain .onnx -> ORT session + 1 run, then trim_heap()", None, "output"),
    ("ort:plain_before", "before: .mrc -> ORT session, plain + 1 run (arrays kept, external from 1 MiB, no trim)",
     None, "output"),
    ("ort:plain_serialized", ".mrc -> ORT session, plain, every tensor serialized in the model + 1 run", None,
     "output"),
    ("ort:plain_notrim", ".mrc -> ORT session, plain, trim=False + 1 run", None, "output"),
    ("ort:plain", ".mrc -> ORT session, plain + 1 run (default)", None, "output"),
    ("ort:sd_two_step_before", "before: .mrc -> ORT session, self-decoding two-step + 1 run (arrays kept, no trim)",
     None, "output"),
    ("ort:sd_two_step", ".mrc -> ORT session, self-decoding (ORT decodes once, no-opt) + 1 run (default)", None,
     "output"),
    ("ort:sd_noopt", "self-decoding .onnx -> ORT session, opts off + 1 run", None, "output"),
    ("ort:sd_folded", "self-decoding .onnx -> ORT session, default opts (folded) + 1 run (measured once)", None,
     "output"),
]
ONCE = {"ort:sd_folded"}  # seconds and GiB per run: one interpreter, not --repeats


def measure_once(mode: str, paths: dict, chunk: int | None) -> dict:
    from mrcformat.decoder import DEFAULT_CHUNK

    p = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(paths), str(chunk or DEFAULT_CHUNK)],
                       capture_output=True, text=True, timeout=600, check=False)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(mode: str, paths: dict, chunk: int | None, repeats: int) -> dict:
    """The median of each number over `repeats` fresh interpreters, plus every run's peak."""
    runs = []
    for _ in range(1 if mode in ONCE else max(1, repeats)):
        r = measure_once(mode, paths, chunk)
        if "error" in r:
            return r
        runs.append(r)
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if not isinstance(runs[0][k], bool)}
    out["reset"] = all(r["reset"] for r in runs)
    out["peaks"] = sorted(((r["hwm"] - r["rss0"]) if out["reset"] else (r["maxrss1"] - r["rss0"])) for r in runs)
    out["peak"] = statistics.median(out["peaks"])
    out["kept"] = statistics.median(r["rss1"] - r["rss0"] for r in runs)
    return out


def fmt_mib(b: float) -> str:
    return f"{b / MiB:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="lenet5,vgg16")
    ap.add_argument("--repeats", type=int, default=3, help="fresh interpreters per row (median reported)")
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
            paths.update(scale=scale, bench=str(Path(__file__).resolve().parent))
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
                r = measure(mode, paths, chunk, args.repeats)
                rows.append((mode, label, chunk, ref, r))
                if "error" in r:
                    print(f"  {label}: FAILED {r['error']}", flush=True)
                else:
                    print(f"  {label}: peak +{fmt_mib(r['peak'])} MiB "
                          f"({', '.join(fmt_mib(p) for p in r['peaks'])}), kept {fmt_mib(r['kept'])} MiB, "
                          f"{r['seconds']:.2f} s", flush=True)
        results[scale] = (info, rows)
    md = report(results, time.perf_counter() - t_start, args.repeats)
    print()
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peak_memory.md").write_text(md)
    plot(results, out / "peak_memory.png")
    print(f"wrote {out / 'peak_memory.md'} and {out / 'peak_memory.png'}")


# before row -> after row, for the summary
PAIRS = [
    ("torch:model_load_state_dict", "torch:model_load_into", "torch, into the user's model"),
    ("ort:plain_before", "ort:plain", "onnxruntime session, plain"),
    ("ort:sd_two_step_before", "ort:sd_two_step", "onnxruntime session, self-decoding two-step"),
]

NOTES = """Where the copies were (issue 13) and what the loaders do now:

- numpy `decode` / `iter_decode`: each group is decoded once into one float32 buffer; its tensors are
  views. Peak = output + a chunk of temporaries (tensor by tensor: the largest group + temporaries).
- torch `load_state_dict`, `load_module`: already one copy: the tensors are views of each group's
  buffer and `OnnxModule` makes them its parameters without copying (`nn.Parameter` wraps the storage).
  Most of what they show over the output in a fresh interpreter is file-backed: torch's code paged in
  on first use (column "file"), not data.
- torch with the user's class: `model.load_state_dict(load_state_dict(path))` holds the model's own
  weights and a decoded dict, one full extra copy. `load_into(model, path)` decodes a one-tensor group
  straight into the parameter's memory (others through one group buffer): peak = temporaries.
- onnxruntime: `OrtValue.ortvalue_from_numpy` shares a CPU array's memory, but onnxruntime copies
  external initializers into its graph while loading (checked: the session does not see later writes to
  the arrays), and `add_initializer` would share only with a full copy left in the model. So the decoded
  arrays are the one copy onnxruntime copies from; `session` now drops them once the session exists
  (before: kept for the session's life through its options). Tensors serialized into the model cost a
  protobuf copy, the serialized bytes (which `InferenceSession` keeps) and onnxruntime's parse; only
  tensors under 4 KiB are serialized now (was 1 MiB).
- onnxruntime's own load (default optimisation level) makes transient copies (fusions, layout, pre-packing)
  that dominate the peak (~3x the weights for VGG-16, also from a plain .onnx file) and frees them, but glibc
  keeps the pages: ~200 MiB resident for 56 MiB of weights. `session(..., trim=True)` (default) calls
  malloc_trim after creation; what stays is onnxruntime's one live copy (plus its code pages).
- The onnxruntime peak did not go down: while it builds the session, onnxruntime copies from our arrays
  and then makes its transient copies, so the peak is our one copy plus onnxruntime's load, within the
  run-to-run spread. No public onnxruntime call takes the arrays without that copy: add_external_initializers
  copies; add_initializer shares only with the data also in the model (and pre-packed weights are copied
  anyway); OrtValues that own their memory are refused; in-memory address tags in a model are refused."""


def report(results: dict, elapsed: float, repeats: int) -> str:
    from mrcformat.decoder import DEFAULT_CHUNK

    L = ["# Peak memory of a load", ""]
    L.append(f"`{' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}` — {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{os.cpu_count()} CPU(s); {repeats} fresh interpreter(s) per row, medians; total {elapsed:.0f} s.")
    L.append("")
    L.append("Peak = kernel high-water mark (VmHWM, reset after the imports and a heap trim) minus the resident set "
             "before the load; the result is kept alive until the peak is read. \"peaks\": every interpreter's. "
             "\"x output\": peak / bytes of all decoded tensors. \"over ref\": peak minus the reference (the "
             "output, or for tensor-by-tensor decoding the largest group's float32 weights, which `iter_decode` "
             "keeps while it yields that group's tensors; — for loads into a model built before the baseline). "
             "\"kept\": RSS after - RSS before. \"file\": growth of file-backed resident pages (library code run "
             "for the first time). Numbers are MiB; allocator and interpreter noise is ~1 MiB, onnxruntime's "
             "peaks vary by tens of MiB between runs. user/sys: CPU seconds of the load (sys is mostly page "
             "faults on fresh memory).")
    L.append("")
    L.append(NOTES)
    L.append("")
    L.append("## Before / after (same run)")
    L.append("")
    L.append("| model | load | before: peak / kept MiB | after: peak / kept MiB |")
    L.append("|---|---|---:|---:|")
    for scale, (info, rows) in results.items():
        by_mode = {mode: r for mode, _, _, _, r in rows}
        for before, after, what in PAIRS:
            b, a = by_mode.get(before), by_mode.get(after)
            if b is None or a is None or "error" in b or "error" in a:
                continue
            L.append(f"| {LABELS[scale]} | {what} | {fmt_mib(b['peak'])} / {fmt_mib(b['kept'])} | "
                     f"{fmt_mib(a['peak'])} / {fmt_mib(a['kept'])} |")
    for scale, (info, rows) in results.items():
        L.append("")
        L.append(f"## {LABELS[scale]}")
        L.append("")
        L.append(f"output {fmt_mib(info['output'])} MiB ({info['output']:,} B; raw tensors {info['raw']:,} B), "
                 f"largest group {fmt_mib(info['largest_group'])} MiB, indices as int64 in the Container "
                 f"{fmt_mib(info['indices_int64'])} MiB; numpy decoder chunk default {DEFAULT_CHUNK} slots.")
        L.append("")
        L.append("| load | peak MiB | peaks | x output | reference | over ref MiB | kept MiB | file MiB | wall s | "
                 "user s | sys s |")
        L.append("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for mode, label, chunk, ref, r in rows:
            if "error" in r:
                L.append(f"| {label} | failed: {r['error']} | | | | | | | | | |")
                continue
            peak = r["peak"]
            refb = {"output": info["output"], "group": info["largest_group"], "none": 0}[ref]
            refname = {"output": "output", "group": "largest group", "none": "—"}[ref]
            over = f"{fmt_mib(peak - refb)}" if ref != "none" else ""
            note = "" if r["reset"] else " (ru_maxrss: no reset)"
            peaks = ", ".join(fmt_mib(p) for p in r["peaks"])
            L.append(f"| {label}{note} | {fmt_mib(peak)} | {peaks} | {peak / info['output']:.2f} | {refname} | "
                     f"{over} | {fmt_mib(r['kept'])} | {fmt_mib(r.get('file', 0))} | {r['seconds']:.2f} | "
                     f"{r['user']:.2f} | {r['sys']:.2f} |")
    L.append("")
    return "\n".join(L)


def plot(results: dict, path: Path) -> None:
    import _models

    plt = _models.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(8 * len(results), 8), squeeze=False)
    for ax, (scale, (info, rows)) in zip(axes[0], results.items()):
        rows = [r for r in rows if "error" not in r[4]]
        peaks = [max(r[4]["peak"], 1024) / info["output"] for r in rows]  # log axis: a floor of 1 KiB
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
