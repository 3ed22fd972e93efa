"""Compiled kernels against the numpy reference and torch: decode and candidate-scoring throughput.

    python bench/kernels.py [--repeats 7] [--out bench/results/kernels]

1. Decode throughput (weights/s, median of --repeats) against group size, one group per file, for
   each backend: numpy reference, compiled kernels on 1 and on all threads, torch tensor ops (CPU;
   CUDA when present); safetensors reading the same float32 weights (`load_file`, pread backend) as
   the line to beat. Layouts: affine (what the encoder writes) and contiguous. For affine groups also
   the compiled kernel with the value scan that direct call enumeration replaced ("scan").
2. Whole files at LeNet-5 and VGG-16 scale (bench/_models.py): `mrcformat.decode` (numpy arrays) and
   `load_state_dict` (torch) against safetensors `load_file(backend="pread")` of the decoded weights,
   ratios of medians measured side by side in one run.
   Also in fresh processes (--fresh N rounds, one load per process, imports and first-use costs
   outside the timing): what loading a model once costs, where every byte of the output is a fresh
   page for both (a warm loop reuses freed pages, which flatters whichever allocates more).
3. Candidate scoring (generate + score, float64), the encoder's inner loop: candidate values/s per
   scorer for a few block sizes.

Writes OUT.md (tables) and OUT.png (decode throughput against size).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _models import build, pyplot  # noqa: E402
from strategies import make_group  # noqa: E402

import mrcformat as m  # noqa: E402
from mrcformat import kernels  # noqa: E402
from mrcformat.layout import choose_affine  # noqa: E402
from mrcformat_runtime import torch_decode  # noqa: E402
from mrcformat_runtime.torch_load import load_state_dict  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Threads:
    """MRCFORMAT_THREADS and torch's intra-op threads set for a block."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.env, self.torch = os.environ.get("MRCFORMAT_THREADS"), torch.get_num_threads()
        os.environ["MRCFORMAT_THREADS"] = str(self.n)
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.env is None:
            os.environ.pop("MRCFORMAT_THREADS", None)
        else:
            os.environ["MRCFORMAT_THREADS"] = self.env
        torch.set_num_threads(self.torch)


def group_container(n: int, affine: bool) -> m.Container:
    rng = np.random.default_rng(n)
    g = make_group(n, block_size=96, index_bits=16, rng=rng, layout=choose_affine(n, 7, 0) if affine else None,
                   sigma=0.05)
    return m.Container(seed=7, groups=[g], tensors=[m.Tensor("w", (n,), "coded", group=0)])


def safetensors_seconds(arrays: dict[str, np.ndarray], folder: str, repeats: int) -> float:
    import safetensors.numpy
    import safetensors.torch

    path = os.path.join(folder, "w.safetensors")
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)
    return median_seconds(lambda: safetensors.torch.load_file(path, backend="pread"), repeats)


def decode_sizes(args, cpus: int, folder: str) -> tuple[list[str], list[dict]]:
    sizes = [1 << k for k in range(14, 25, 2)]
    rows = []
    for affine in (True, False):
        for n in sizes:
            c = group_container(n, affine)
            out = np.empty(n, np.float32)
            r = {"layout": "affine" if affine else "contiguous", "n": n}
            with Threads(1):
                r["numpy"] = n / median_seconds(lambda: m.decode_group(c, 0, out=out, backend="numpy"), args.repeats)
                if kernels.available():
                    r["native, 1 thread"] = n / median_seconds(lambda: m.decode_group(c, 0, out=out, backend="native"),
                                                               args.repeats)
                    if affine:  # the same kernel with the scan that direct enumeration replaced (8 | n, 8 | B)
                        kernels._native._set_aligned_calls(False)
                        try:
                            r["native, 1 thread, scan"] = n / median_seconds(
                                lambda: m.decode_group(c, 0, out=out, backend="native"), args.repeats)
                        finally:
                            kernels._native._set_aligned_calls(True)
                r["torch ops, 1 thread"] = n / median_seconds(
                    lambda: torch_decode.decode_group(c, 0, "cpu", backend="torch"), args.repeats)
            if kernels.available() and cpus > 1:
                with Threads(cpus):
                    r[f"native, {cpus} threads"] = n / median_seconds(
                        lambda: m.decode_group(c, 0, out=out, backend="native"), args.repeats)
            if torch.cuda.is_available():
                r["torch, CUDA"] = n / median_seconds(lambda: torch_decode.decode_group(c, 0, "cuda"), args.repeats)
            r["safetensors load_file (pread)"] = n / safetensors_seconds({"w": out}, folder, args.repeats)
            rows.append(r)
            print(r["layout"], n, {k: f"{v / 1e6:.0f}M/s" for k, v in r.items() if k not in ("layout", "n")},
                  flush=True)
    cols = [k for k in rows[0] if k not in ("layout", "n")]
    lines = ["| layout | weights | " + " | ".join(f"{c} (M weights/s)" for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['n']:,} | " + " | ".join(f"{r[c] / 1e6:.0f}" if c in r else "–"
                                                                  for c in cols) + " |")
    return lines, rows


def whole_files(args, cpus: int, folder: str) -> list[str]:
    import safetensors.numpy
    import safetensors.torch

    lines = ["| model | coded weights | case | median ms | ratio to safetensors |", "|---|---|---|---|---|"]
    for scale in ("lenet5", "vgg16"):
        _, c = build(scale, graph=False)
        nw = sum(c.group_weights(g) for g in range(len(c.groups)))
        decoded = m.decode(c)
        path = os.path.join(folder, f"{scale}.safetensors")
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in decoded.items()}, path)
        mrc = os.path.join(folder, f"{scale}.mrc")
        m.save(c, mrc)
        cases = {
            "safetensors.torch.load_file(pread)": lambda: safetensors.torch.load_file(path, backend="pread"),
            "mrcformat.decode(load) (numpy reference, 1 thread)": lambda: m.decode(m.load(mrc), backend="numpy"),
        }
        if kernels.available():
            for t in sorted({1, cpus}):
                cases[f"mrcformat.decode(load) (native, {t} thread{'s' if t > 1 else ''})"] = (
                    lambda t=t: _with_threads(t, lambda: m.decode(m.load(mrc))))
                cases[f"load_state_dict (torch CPU, native, {t} thread{'s' if t > 1 else ''})"] = (
                    lambda t=t: _with_threads(t, lambda: load_state_dict(mrc)))
        # side by side: every case once per round, so drift hits them alike
        times = {k: [] for k in cases}
        for k, fn in cases.items():
            fn()
        for _ in range(args.repeats):
            for k, fn in cases.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        ref = statistics.median(times["safetensors.torch.load_file(pread)"])
        for k, ts in times.items():
            med = statistics.median(ts)
            lines.append(f"| {scale} | {nw:,} | {k} | {med * 1e3:.1f} | {med / ref:.2f} |")
            print(lines[-1], flush=True)
    return lines


FRESH_CHILD = r"""
import json, sys, time
import mrcformat as m
from mrcformat.sampler import normal_table
from mrcformat_runtime.torch_load import load_state_dict
import safetensors.torch
case, mrc, st = sys.argv[1:4]
normal_table(); m.load(mrc)  # imports, the table, the file in the page cache: outside the timing
f = {"safetensors": lambda: safetensors.torch.load_file(st, backend="pread"),
     "decode": lambda: m.decode(m.load(mrc)), "load_state_dict": lambda: load_state_dict(mrc)}[case]
t = time.perf_counter(); f(); print(json.dumps(time.perf_counter() - t))
"""


def fresh_files(args, cpus: int, folder: str) -> list[str]:
    """VGG-16 loaded once per fresh process: safetensors, mrcformat.decode, load_state_dict (1 and all threads)."""
    import safetensors.numpy
    import subprocess

    _, c = build("vgg16", graph=False)
    path = os.path.join(folder, "fresh.safetensors")
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in m.decode(c).items()}, path)
    mrc = os.path.join(folder, "fresh.mrc")
    m.save(c, mrc)
    cases = [("safetensors.torch.load_file(pread)", "safetensors", 1)]
    for t in sorted({1, cpus}):
        cases += [(f"mrcformat.decode(load) (native, {t} thread{'s' if t > 1 else ''})", "decode", t),
                  (f"load_state_dict (torch CPU, native, {t} thread{'s' if t > 1 else ''})", "load_state_dict", t)]
    times = {label: [] for label, _, _ in cases}
    for _ in range(args.fresh):  # side by side: one process per case per round
        for label, case, t in cases:
            env = dict(os.environ, MRCFORMAT_THREADS=str(t))
            out = subprocess.run([sys.executable, "-c", FRESH_CHILD, case, mrc, path], capture_output=True, text=True,
                                 env=env, check=True).stdout
            times[label].append(float(out.strip().splitlines()[-1]))
    ref = statistics.median(times[cases[0][0]])
    lines = ["| model | case | median ms (fresh process) | ratio to safetensors |", "|---|---|---|---|"]
    for label, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| vgg16 | {label} | {med * 1e3:.1f} | {med / ref:.2f} |")
        print(lines[-1], flush=True)
    return lines


def _with_threads(n, fn):
    with Threads(n):
        return fn()


def scoring(args, cpus: int) -> list[str]:
    from mrcformat.encode.coding import candidate_scorer

    k = 1 << args.bits
    lines = [f"K = {k} candidates per block, {args.rows} blocks per call", "",
             "| scorer | block size | threads | candidate values/s | per thread |", "|---|---|---|---|---|"]
    setups = [("numpy", 1), ("torch", 1)]
    if kernels.available():
        setups += [("native", 1)] + ([("native", cpus)] if cpus > 1 else [])
    if torch.cuda.is_available():
        setups.append(("torch-cuda", 1))
    for bsz in (64, 256, 1024):
        rng = np.random.default_rng(bsz)
        mean = torch.from_numpy(rng.normal(0, 0.05, (args.rows, bsz)).astype(np.float32))
        log_std = torch.full((args.rows, bsz), -3.5)
        valid = torch.ones(args.rows, bsz, dtype=torch.bool)
        for name, t in setups:
            dev = "cuda" if name == "torch-cuda" else "cpu"
            scorer = candidate_scorer(dev, "torch" if name.startswith("torch") else name)
            count = k if name != "numpy" else k // 8          # the reference is slow: a slice of the candidates
            blocks = list(range(args.rows))
            with Threads(t):
                sec = median_seconds(lambda: scorer(7, 0, blocks, bsz, 0.0625, mean.to(dev), log_std.to(dev),
                                                    valid.to(dev), 0, count), args.repeats)
            rate = args.rows * count * bsz / sec
            lines.append(f"| {name} | {bsz} | {t} | {rate:.3g} | {rate / t:.3g} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--bits", type=int, default=14)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--fresh", type=int, default=7, help="rounds of fresh-process whole-file loads (0: skip)")
    ap.add_argument("--only-fresh", action="store_true", help="run only the fresh-process section (to OUT-fresh.md)")
    ap.add_argument("--out", default="bench/results/kernels")
    args = ap.parse_args()
    cpus = kernels.threads()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    head = [f"# Kernels: decode and scoring throughput\n",
            f"Machine: {cpus} CPUs available to the process, {device}; native code path: {kernels.isa()}. "
            f"Medians of {args.repeats} runs, wall time.\n"]
    fresh_head = ["", "## Whole files, each load in a fresh process (VGG-16, random indices)\n",
                  f"Medians of {args.fresh} rounds; imports, the table and the file's first read are outside the "
                  "timing. Every output page is fresh for both here.\n"]
    if args.only_fresh:
        with tempfile.TemporaryDirectory() as folder:
            lines = fresh_files(args, cpus, folder)
        Path(args.out + "-fresh.md").write_text("\n".join(head + fresh_head + lines) + "\n")
        print(f"table: {args.out}-fresh.md")
        return
    with tempfile.TemporaryDirectory() as folder:
        dec_lines, rows = decode_sizes(args, cpus, folder)
        file_lines = whole_files(args, cpus, folder)
        if args.fresh > 0:
            file_lines += fresh_head + fresh_files(args, cpus, folder)
    score_lines = scoring(args, cpus)
    text = "\n".join(head + ["## Decode throughput against group size (one group, 16-bit indices, block 96)\n"]
                     + dec_lines + ["", "## Whole files (random indices; bench/_models.py)\n"] + file_lines
                     + ["", "## Candidate scoring (generate + score, float64)\n"] + score_lines) + "\n"
    Path(args.out + ".md").write_text(text)
    print(f"table: {args.out}.md")
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    names = list(dict.fromkeys(c for r in rows for c in r if c not in ("layout", "n")))
    colour = {c: f"C{i}" for i, c in enumerate(names)}   # one colour per backend in both panels
    for ax, layout in zip(axes, ("affine", "contiguous")):
        sub = [r for r in rows if r["layout"] == layout]
        for col in [c for c in sub[0] if c not in ("layout", "n")]:
            style = (dict(color="black", linestyle="--") if col.startswith("safetensors")
                     else dict(marker="o", color=colour[col]))
            ax.plot([r["n"] for r in sub], [r[col] / 1e6 for r in sub], label=col, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("weights in the group")
        ax.set_title(f"{layout} layout")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("M weights / s (median)")
    for ax in axes:
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Decode throughput per backend (safetensors: reading the same float32 weights)")
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)
    print(f"plot: {args.out}.png")


if __name__ == "__main__":
    main()
