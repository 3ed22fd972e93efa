"""Load time of a `.mrc` model into torch and onnxruntime, against the same weights uncompressed
(safetensors, torch.load), at LeNet-5 and VGG-16 (CIFAR-10, ~15M weights) scale; decode throughput.

    .venv/bin/python bench/runtime_load.py [--repeats 5] [--repeats-vgg 3] [--slow-repeats 1]
                                           [--scales lenet5,vgg16] [--out bench/results]

Per scale, every case runs once as a warm-up (file cache, lazy imports, tables), then `repeats`
interleaved rounds (each round runs every case once, in a rotated order); the tables give medians
and the ratio of medians to `safetensors.torch.load_file`. A case whose warm-up took longer than
`--slow-seconds` (the constant-folded self-decoding session at VGG scale: ~25 s) keeps its warm-up
as a sample and is repeated in only `--slow-repeats` - 1 further rounds.

Files (in a temporary folder): the `.mrc` file (random 16-bit indices, affine layouts, graph),
the decoded float32 state dict as `.safetensors` and as `torch.save` `.pt`, and the plain ONNX export.
CUDA rows run only when torch.cuda.is_available().
Writes `<out>/runtime_load.md` and `<out>/runtime_load.png`.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models
import onnxruntime as ort
import safetensors.numpy
import safetensors.torch
import torch
from mrcformat_runtime import onnx_export, torch_decode, torch_load
from mrcformat_runtime import ort as mrc_ort
from mrcformat_runtime.selfdecode import regenerated_weights_model

import mrcformat as m

CUDA = torch.cuda.is_available()
LABELS = {"lenet5": "LeNet-5", "vgg16": "VGG-16"}
REF = "safetensors.torch.load_file"  # default backend: mmap, lazy (pages are read on first touch)
REF2 = 'safetensors.torch.load_file(backend="pread")'  # eager read


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _noopt() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def _ort_feed(sess) -> dict:
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    return {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def session_phases(make) -> dict[str, float]:
    """Session creation, then its first run (ORT computes anything not folded at creation), then a second."""
    t = time.perf_counter()
    sess = make()
    t_create = time.perf_counter() - t
    feed = _ort_feed(sess)
    t_first = _timed(lambda: sess.run(None, feed))
    t_second = _timed(lambda: sess.run(None, feed))
    return {"total": t_create, "first run": t_first, "second run": t_second}


def load_cases(paths: dict[str, str]) -> dict[str, tuple[str, object]]:
    """name -> (group, fn); fn() returns {"total": seconds, ...phases}."""
    mrc, st, pt, onnx_plain = paths["mrc"], paths["safetensors"], paths["pt"], paths["onnx"]

    def simple(fn):
        return lambda: {"total": _timed(fn)}

    cases = {
        REF: ("uncompressed", simple(lambda: safetensors.torch.load_file(st))),
        REF2: ("uncompressed", simple(lambda: safetensors.torch.load_file(st, backend="pread"))),
        "safetensors.torch.load_file (mmap) + touch every page": ("uncompressed", simple(lambda: [
            t.view(-1)[::1024].sum() for t in safetensors.torch.load_file(st).values() if t.is_floating_point()])),
        "safetensors.numpy.load_file": ("uncompressed", simple(lambda: safetensors.numpy.load_file(st))),
        "torch.load(weights_only=True)": ("uncompressed", simple(lambda: torch.load(pt, weights_only=True))),
        ".mrc -> numpy (mrcformat.decode(load))": (".mrc", simple(lambda: m.decode(m.load(mrc)))),
        ".mrc -> torch load_state_dict (CPU)": (".mrc", simple(lambda: torch_load.load_state_dict(mrc))),
        ".mrc -> torch load_module (CPU)": (".mrc", simple(lambda: torch_load.load_module(mrc))),
        "plain .onnx -> ORT InferenceSession": ("onnxruntime", lambda: session_phases(
            lambda: ort.InferenceSession(onnx_plain, providers=["CPUExecutionProvider"]))),
        ".mrc -> ORT session, plain (numpy decode)": ("onnxruntime", lambda: session_phases(
            lambda: mrc_ort.session(mrc))),
        ".mrc -> ORT session, plain, external initializers (external_min_bytes=1 MiB)": ("onnxruntime", lambda: session_phases(
            lambda: mrc_ort.session(mrc, external_min_bytes=1 << 20))),
        ".mrc -> ORT session, self-decoding (ORT decodes once, no-opt; then plain session)": ("onnxruntime",
            lambda: session_phases(lambda: mrc_ort.session(mrc, self_decoding=True))),
        "self-decoding .onnx -> ORT session (default opts: decode folded at creation)": ("onnxruntime",
            lambda: session_phases(lambda: ort.InferenceSession(paths["onnx_sd"], providers=["CPUExecutionProvider"]))),
        "self-decoding .onnx -> ORT session (opts off: decode on every run)": ("onnxruntime",
            lambda: session_phases(lambda: ort.InferenceSession(paths["onnx_sd"], _noopt(),
                                                                providers=["CPUExecutionProvider"]))),
    }
    if CUDA:
        def cuda_sd():
            t = time.perf_counter()
            torch_load.load_state_dict(mrc, "cuda")
            _sync()
            return {"total": time.perf_counter() - t}

        def cuda_st():
            t = time.perf_counter()
            safetensors.torch.load_file(st, device="cuda")
            _sync()
            return {"total": time.perf_counter() - t}

        cases["safetensors.torch.load_file (CUDA)"] = ("uncompressed", cuda_st)
        cases[".mrc -> torch load_state_dict (CUDA)"] = (".mrc", cuda_sd)
    return cases


def decode_cases(c: m.Container) -> dict[str, tuple[str, object]]:
    """Decode only, container already in memory: name -> (group, fn)."""
    rw = regenerated_weights_model(c).SerializeToString()

    def ort_graph():
        t = time.perf_counter()
        sess = ort.InferenceSession(rw, _noopt(), providers=["CPUExecutionProvider"])
        t1 = time.perf_counter()
        sess.run(None, {})
        t2 = time.perf_counter()
        return {"total": t2 - t1, "create": t1 - t}

    cases = {
        "numpy (mrcformat.decode)": ("decode", lambda: {"total": _timed(lambda: m.decode(c))}),
        "torch CPU (torch_decode.decode)": ("decode", lambda: {"total": _timed(lambda: torch_decode.decode(c, "cpu"))}),
        "ORT self-decoding graph (regenerated_weights_model, opts off; run)": ("decode", ort_graph),
    }
    if CUDA:
        def cuda():
            t = time.perf_counter()
            torch_decode.decode(c, "cuda")
            _sync()
            return {"total": time.perf_counter() - t}

        cases["torch CUDA (torch_decode.decode)"] = ("decode", cuda)
    return cases


def run_rounds(cases: dict, repeats: int, slow_seconds: float, slow_repeats: int) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in cases}
    slow = set()
    for name, (_, fn) in cases.items():  # warm-up
        gc.collect()
        r = fn()
        if r["total"] > slow_seconds:
            slow.add(name)
            for k, v in r.items():
                samples[name].setdefault(k, []).append(v)
        print(f"  warm-up {name}: {r['total']:.3f} s" + (" (slow: warm-up kept as a sample)" if name in slow else ""),
              flush=True)
    names = list(cases)
    for rnd in range(repeats):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            if name in slow and len(samples[name].get("total", [])) >= slow_repeats:
                continue
            gc.collect()
            r = cases[name][1]()
            for k, v in r.items():
                samples[name].setdefault(k, []).append(v)
        print(f"  round {rnd + 1}/{repeats} done", flush=True)
    return samples


def write_files(c: m.Container, folder: str) -> dict[str, str]:
    paths = {k: os.path.join(folder, f"model.{ext}") for k, ext in
             (("mrc", "mrc"), ("safetensors", "safetensors"), ("pt", "pt"), ("onnx", "onnx"), ("onnx_sd", "sd.onnx"))}
    m.save(c, paths["mrc"])
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in m.decode(c).items()}
    safetensors.torch.save_file(sd, paths["safetensors"])
    torch.save(sd, paths["pt"])
    onnx_export.export(c, paths["onnx"])
    onnx_export.export(c, paths["onnx_sd"], self_decoding=True)
    return paths


def fmt_t(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s"


def med(samples: dict[str, list[float]], key: str = "total") -> float | None:
    v = samples.get(key)
    return statistics.median(v) if v else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds at LeNet-5 scale")
    ap.add_argument("--repeats-vgg", type=int, default=3, help="interleaved rounds at VGG-16 scale")
    ap.add_argument("--slow-seconds", type=float, default=5.0)
    ap.add_argument("--slow-repeats", type=int, default=1)
    ap.add_argument("--scales", default="lenet5,vgg16")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    scales = [s for s in args.scales.split(",") if s]
    t_start = time.perf_counter()
    results = {}
    for scale in scales:
        print(f"== {LABELS[scale]}: building model and container", flush=True)
        model, c = _models.build(scale)
        info = {
            "coded": sum(t.numel for t in c.tensors if t.encoding == "coded"),
            "params": sum(v.numel() for v in model.state_dict().values()),
            "decoded_bytes": _models.decoded_bytes(c),
            "index_bytes": sum(g.payload_length for g in c.groups),
            "block": c.groups[0].block_size, "groups": len(c.groups), "tensors": len(c.tensors),
        }
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_files(c, tmp)
            info["sizes"] = {k: os.path.getsize(p) for k, p in paths.items()}
            repeats = args.repeats if scale == "lenet5" else args.repeats_vgg
            cases = {**load_cases(paths), **decode_cases(c)}
            samples = run_rounds(cases, repeats, args.slow_seconds, args.slow_repeats)
        results[scale] = (info, cases, samples, repeats)
    elapsed = time.perf_counter() - t_start
    md = report(results, args, elapsed)
    print()
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime_load.md").write_text(md)
    plot(results, out / "runtime_load.png")
    print(f"wrote {out / 'runtime_load.md'} and {out / 'runtime_load.png'}")


def report(results: dict, args, elapsed: float) -> str:
    scales = list(results)
    L = ["# Load time and decode throughput: `.mrc` vs uncompressed weights", ""]
    L.append(f"`{' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}` — {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{platform.machine()}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end, "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, "
             f"numpy {np.__version__}, safetensors {safetensors.__version__}; CUDA: "
             f"{torch.cuda.get_device_name() if CUDA else 'not available (CUDA rows skipped)'}; "
             f"total {elapsed:.0f} s.")
    L.append("")
    L.append("Medians of interleaved rounds after one warm-up (files in the page cache). Ratios: median / median "
             f"at the same scale (> 1 is slower) of `{REF}` (\"st mmap\": its default mmap backend returns tensors "
             "backed by the mapped file and reads nothing until a page is touched, so it is a lower bound) and of "
             f"`{REF2}` (\"st pread\": reads every byte).")
    L.append("")
    L.append("## Models and files")
    L.append("")
    L.append("| | " + " | ".join(LABELS[s] for s in scales) + " |")
    L.append("|---|" + "---:|" * len(scales))
    rows = [
        ("state_dict elements", lambda i: f"{i['params']:,}"),
        ("coded weights (one group per weight tensor)", lambda i: f"{i['coded']:,} in {i['groups']} groups"),
        ("block size / index bits", lambda i: f"{i['block']} / 16 (affine layout)"),
        ("index payload", lambda i: f"{i['index_bytes']:,} B"),
        ("decoded tensors (float32 + raw)", lambda i: f"{i['decoded_bytes']:,} B"),
        (".mrc file", lambda i: f"{i['sizes']['mrc']:,} B"),
        (".safetensors", lambda i: f"{i['sizes']['safetensors']:,} B"),
        ("torch.save .pt", lambda i: f"{i['sizes']['pt']:,} B"),
        ("plain .onnx (onnx_export.export)", lambda i: f"{i['sizes']['onnx']:,} B"),
        ("self-decoding .onnx", lambda i: f"{i['sizes']['onnx_sd']:,} B"),
        ("safetensors / .mrc size", lambda i: f"{i['sizes']['safetensors'] / i['sizes']['mrc']:.0f}x"),
        ("rounds (repeats)", lambda i: None),
    ]
    for label, f in rows:
        if label.startswith("rounds"):
            L.append(f"| {label} | " + " | ".join(str(results[s][3]) for s in scales) + " |")
        else:
            L.append(f"| {label} | " + " | ".join(f(results[s][0]) for s in scales) + " |")
    L.append("")
    L.append("## Load time")
    L.append("")
    hdr = "| case |" + "".join(f" {LABELS[s]} median | x st mmap | x st pread | n |" for s in scales)
    L.append(hdr)
    L.append("|---|" + "---:|---:|---:|---:|" * len(scales))
    names = [n for n in results[scales[0]][1] if results[scales[0]][1][n][0] != "decode"]
    for s in scales[1:]:
        names += [n for n in results[s][1] if results[s][1][n][0] != "decode" and n not in names]
    phase_rows = []
    for n in names:
        cells = []
        for s in scales:
            samples = results[s][2].get(n)
            ref, ref2 = med(results[s][2][REF]), med(results[s][2][REF2])
            t = med(samples) if samples else None
            cells.append(" — | — | — | — |" if t is None else
                         f" {fmt_t(t)} | {t / ref:.1f} | {t / ref2:.1f} | {len(samples['total'])} |")
        L.append(f"| {n}{' (session creation)' if 'ORT' in n else ''} |" + "".join(cells))
        phases = [k for k in ("first run", "second run") if any(k in results[s][2].get(n, {}) for s in scales)]
        for k in phases:
            cells = []
            for s in scales:
                t = med(results[s][2].get(n, {}), k)
                cells.append(" — | | |" if t is None else f" {fmt_t(t)} | | |")
            phase_rows.append(f"| {n}: {k} |" + "".join(cells))
    L.append("")
    L.append("onnxruntime sessions, inference after creation (batch 1): the first run of the self-decoding "
             "session with optimizations off computes every weight; with default options onnxruntime has "
             "constant-folded the decoder into initializers at session creation, so its first run is an "
             "ordinary inference.")
    L.append("")
    L.append("| run |" + "".join(f" {LABELS[s]} median | | |" for s in scales))
    L.append("|---|" + "---:|---:|---:|" * len(scales))
    L.extend(phase_rows)
    L.append("")
    L.append("## Decode throughput (container in memory, coded weights only)")
    L.append("")
    L.append("| decoder |" + "".join(f" {LABELS[s]} median | Mweights/s | n |" for s in scales))
    L.append("|---|" + "---:|---:|---:|" * len(scales))
    dnames = [n for n in results[scales[0]][1] if results[scales[0]][1][n][0] == "decode"]
    for s in scales[1:]:
        dnames += [n for n in results[s][1] if results[s][1][n][0] == "decode" and n not in dnames]
    if not CUDA:
        dnames.append("torch CUDA (torch_decode.decode)")
    fold = "self-decoding .onnx -> ORT session (default opts: decode folded at creation)"
    for n in dnames + [fold]:
        cells = []
        for s in scales:
            info, _, samples, _ = results[s]
            t = med(samples.get(n, {}))
            if n == fold and t is not None:  # session creation includes the file read and graph building
                cells.append(f" {fmt_t(t)} | {info['coded'] / t / 1e6:.2f} | {len(samples[n]['total'])} |")
            elif t is None:
                cells.append(" skipped: no CUDA | | |")
            else:
                cells.append(f" {fmt_t(t)} | {info['coded'] / t / 1e6:.1f} | {len(samples[n]['total'])} |")
        label = ("ORT self-decoding, constant-folded at session creation (whole creation)" if n == fold else n)
        L.append(f"| {label} |" + "".join(cells))
    ogn = "ORT self-decoding graph (regenerated_weights_model, opts off; run)"
    L.append("")
    L.append("ORT self-decoding graph: `run` time only; session creation (opts off) took "
             + ", ".join(f"{fmt_t(med(results[s][2][ogn], 'create'))} ({LABELS[s]})" for s in scales if ogn in results[s][2])
             + ". onnxruntime uses its default intra-op threads; torch "
             f"{torch.get_num_threads()} threads.")
    L.append("")
    return "\n".join(L)


def plot(results: dict, path: Path) -> None:
    plt = _models.pyplot()
    if plt is None:
        return
    scales = list(results)
    fig, axes = plt.subplots(1, len(scales) + 1, figsize=(6 * len(scales) + 5, 5.5),
                             gridspec_kw={"width_ratios": [3] * len(scales) + [2]})
    colors = {"uncompressed": "tab:gray", ".mrc": "tab:blue", "onnxruntime": "tab:orange", "decode": "tab:green"}
    for ax, s in zip(axes, scales):
        _, cases, samples, _ = results[s]
        names = [n for n in cases if cases[n][0] != "decode"]
        vals = [med(samples[n]) for n in names]
        ax.barh(range(len(names)), vals, color=[colors[cases[n][0]] for n in names])
        firsts = [med(samples[n], "first run") or 0 for n in names]
        idx = [i for i, f in enumerate(firsts) if f > 0]
        ax.barh(idx, [firsts[i] for i in idx], left=[vals[i] for i in idx], color="none", edgecolor="tab:red",
                hatch="///", label="+ first run (ORT)")
        ax.legend(fontsize=7, loc="best")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([n.replace(" (", "\n(", 1) if len(n) > 40 else n for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("median load time (s, log)")
        ax.set_title(f"{LABELS[s]}: load (ORT: session creation)")
        for i, (v, f) in enumerate(zip(vals, firsts)):
            ax.text(v + f, i, f" {fmt_t(v)}" + (f" + {fmt_t(f)}" if f else ""), va="center", fontsize=7)
    ax = axes[-1]
    width = 0.8 / len(scales)
    dnames = [n for n in results[scales[0]][1] if results[scales[0]][1][n][0] == "decode"]
    for k, s in enumerate(scales):
        info, _, samples, _ = results[s]
        rates = [info["coded"] / med(samples[n]) / 1e6 if n in samples else 0 for n in dnames]
        ax.bar(np.arange(len(dnames)) + k * width, rates, width, label=LABELS[s])
    ax.set_xticks(np.arange(len(dnames)) + width * (len(scales) - 1) / 2)
    ax.set_xticklabels([n.split(" (")[0] for n in dnames], fontsize=8, rotation=15)
    ax.set_ylabel("Mweights / s (median)")
    ax.set_title("decode throughput" + ("" if CUDA else " (no CUDA)"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
