"""Real exported models through the ONNX-to-torch converter (`OnnxModule`) against onnxruntime.

Why: the converter is what fine-tunes ONNX models (`mrc compress MODEL.onnx --steps N`) and what
`load_module` runs, so it must compute what onnxruntime computes on the models users actually have,
not only on hand-built graphs. For each model found on this machine it prints: the operator types
(subgraphs included), the largest absolute difference per output, and the median time per call
(torch, onnxruntime, both one thread). silero-vad models run their streaming loop (state out fed back
in) over a few seconds of audio in both, and the per-frame probabilities and final state are compared.

Models are looked up (never downloaded) in the installed `silero_vad` / `rapidocr` packages, then
in any site-packages under $MRC_MODEL_ROOTS (default /work/benchenv). Audio: held-out speech from
bench/real_models/silero_vad.py's data folder if present, else a deterministic tone/noise mix.

    python -m bench.real_models.converter_check [--seconds 4] [--repeats 5] [--only silero]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from mrcformat_runtime.onnx_to_torch import OnnxModule

SR = 16000


def _package_dirs(package: str, sub: str) -> list[Path]:
    dirs = []
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / sub)
    for root in os.environ.get("MRC_MODEL_ROOTS", "/work/benchenv").split(os.pathsep):
        dirs += [Path(p) for p in glob.glob(f"{root}/lib/python3*/site-packages/{package}/{sub}")]
    return [d for d in dirs if d.is_dir()]


def find_models() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, sub in (("silero_vad", "data"), ("rapidocr", "models")):
        for d in _package_dirs(package, sub):
            for p in sorted(d.glob("*.onnx")):
                found.setdefault(p.name, p)
    return found


def op_types(g: onnx.GraphProto, acc: set[str] | None = None) -> set[str]:
    acc = set() if acc is None else acc
    for n in g.node:
        acc.add(n.op_type)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                op_types(sub, acc)
    return acc


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def audio(seconds: float) -> np.ndarray:
    p = Path(os.environ.get("MRC_BENCH_DATA", "/work/benchdata")) / "silero" / "heldout_audio.npy"
    n = int(seconds * SR)
    if p.exists():
        a = np.load(p).astype(np.float32)
        if a.size >= n:
            return a[:n]
    rng = np.random.default_rng(0)
    t = np.arange(n) / SR
    voiced = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(np.float32)
    return (0.3 * voiced * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
            + 0.02 * rng.standard_normal(n)).astype(np.float32)


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def _to_np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check_streaming(path: Path, seconds: float) -> dict:
    """silero-vad: the streaming loop in both runtimes, state carried; per-frame probabilities compared."""
    sess = session(path)
    mod = OnnxModule(path).eval()
    names = [i.name for i in sess.get_inputs()]
    fp16 = sess.get_inputs()[0].type == "tensor(float16)"
    dt = np.float16 if fp16 else np.float32
    x = audio(seconds)
    frames = x[: len(x) // 512 * 512].reshape(-1, 512)
    ctx = np.concatenate([np.zeros((1, 64), np.float32), frames[:-1, -64:]])
    feeds_x = np.concatenate([ctx, frames], 1).astype(dt)
    if {"h", "c"} <= set(names):  # the sequence variant: all frames at once, h/c state
        h = c = np.zeros((1, 1, 128), dt)
        t0 = time.perf_counter()
        want = sess.run(None, {"input": feeds_x, "h": h, "c": c})
        t_ort = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            got = mod(*[torch.from_numpy(v) for v in (feeds_x, h, c)])
        t_torch = time.perf_counter() - t0
        diffs = [float(np.abs(_to_np(g).astype(np.float64) - w.astype(np.float64)).max()) for g, w in zip(got, want)]
        return {"outputs": dict(zip([o.name for o in sess.get_outputs()], diffs)), "t_torch": t_torch * 1000,
                "t_ort": t_ort * 1000, "frames": len(feeds_x)}
    state_o = np.zeros((2, 1, 128), dt)
    state_t = torch.zeros(2, 1, 128, dtype=torch.float16 if fp16 else torch.float32)
    sr = np.array(SR, dtype=np.int64)
    p_o, p_t, t_o, t_t = [], [], [], []
    for f in feeds_x:
        feed = {"input": f[None], "state": state_o}
        if "sr" in names:
            feed["sr"] = sr
        t0 = time.perf_counter()
        out, state_o = sess.run(None, feed)[:2]
        t_o.append(time.perf_counter() - t0)
        p_o.append(float(out.reshape(-1)[0]))
        args = {"input": torch.from_numpy(f[None]), "state": state_t, "sr": torch.from_numpy(sr)}
        t0 = time.perf_counter()
        with torch.no_grad():
            out_t, state_t = mod(*[args[n] for n in mod.input_names])[:2]
        t_t.append(time.perf_counter() - t0)
        p_t.append(float(out_t.reshape(-1)[0]))
    p_o, p_t = np.array(p_o), np.array(p_t)
    agree = float(np.mean((p_o >= 0.5) == (p_t >= 0.5)))
    return {"outputs": {"prob (every frame)": float(np.abs(p_o - p_t).max()),
                        "final state": float(np.abs(_to_np(state_t).astype(np.float64) - state_o).max())},
            "t_torch": _median_ms(t_t), "t_ort": _median_ms(t_o), "frames": len(feeds_x),
            "agreement": agree}


def _image_feeds(path: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    name = path.name
    if "_det_" in name:
        shapes = [(1, 3, 320, 320), (1, 3, 256, 416)]  # dynamic H, W: two shapes through one module
    elif "_rec_" in name:
        shapes = [(1, 3, 48, 320), (2, 3, 48, 160)]
    else:  # cls
        shapes = [(1, 3, 48, 192), (3, 3, 48, 192)]
    return [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]


def check_image(path: Path, repeats: int) -> dict:
    sess = session(path)
    mod = OnnxModule(path).eval()
    diffs: dict[str, float] = {}
    t_t, t_o = [], []
    for x in _image_feeds(path):
        want = sess.run(None, {sess.get_inputs()[0].name: x})
        with torch.no_grad():
            got = mod(torch.from_numpy(x))
        got = got if isinstance(got, tuple) else (got,)
        for o, g, w in zip(sess.get_outputs(), got, want):
            key = f"{o.name} {list(x.shape)}"
            diffs[key] = float(np.abs(_to_np(g).astype(np.float64) - w).max())
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, {sess.get_inputs()[0].name: x})
            t_o.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                mod(torch.from_numpy(x))
            t_t.append(time.perf_counter() - t0)
    return {"outputs": diffs, "t_torch": _median_ms(t_t), "t_ort": _median_ms(t_o)}


def _rows(name: str, ops: set[str], res: dict, build_ms: float) -> list[list[str]]:
    note = ""
    if "frames" in res:
        note = f"{res['frames']} frames" + (f", speech decisions agree {100 * res['agreement']:.2f}%"
                                            if "agreement" in res else "")
        note += ", time per frame" if "agreement" in res else ", time for all frames"
    rows = []
    for i, (out, d) in enumerate(res["outputs"].items()):
        first = i == 0
        rows.append([name if first else "", str(len(ops)) if first else "", out, f"{d:.3g}",
                     f"{res['t_torch']:.2f}" if first else "", f"{res['t_ort']:.2f}" if first else "",
                     f"{build_ms:.0f}" if first else "", note if first else ""])
    return rows


_HEAD = ["model", "ops", "output", "max abs diff", "torch ms", "ort ms", "build ms", "notes"]


def _plot(results: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n.replace(".onnx", "") for n, _ in results]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.5 * len(names) + 1.5))
    diffs = [max(r["outputs"].values()) for _, r in results]
    a1.barh(names, [max(d, 1e-12) for d in diffs], color="tab:blue")
    a1.set_xscale("log")
    a1.set_xlabel("largest |converter - onnxruntime| over outputs")
    a1.invert_yaxis()
    ratio = [r["t_torch"] / r["t_ort"] for _, r in results]
    a2.barh(names, ratio, color="tab:orange")
    a2.axvline(1.0, color="k", lw=0.8)
    a2.set_xlabel("time ratio converter / onnxruntime (median, 1 thread)")
    a2.invert_yaxis()
    a2.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="audio through the silero streaming loops")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per image input")
    ap.add_argument("--only", default="", help="substring of the model file names to run")
    ap.add_argument("--out", default="", help="also write OUT.md (the table) and OUT.png (a plot)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = {k: v for k, v in find_models().items() if args.only in k}
    if not models:
        print("no silero_vad / rapidocr models found (pip install --no-deps silero-vad rapidocr)")
        return
    rows, done = [], []
    for name, path in models.items():
        ops = op_types(onnx.load(str(path), load_external_data=False).graph)
        t0 = time.perf_counter()
        try:
            OnnxModule(path)
            build_ms = 1000 * (time.perf_counter() - t0)
            res = check_streaming(path, args.seconds) if "silero" in name else check_image(path, args.repeats)
        except Exception as e:  # noqa: BLE001 - a model the converter cannot run is a row, not a crash
            rows.append([name, str(len(ops)), "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0]}",
                         "", "", "", ""])
            continue
        rows += _rows(name, ops, res, build_ms)
        rows.append(["", "", "ops: " + " ".join(sorted(ops)), "", "", "", "", ""])
        done.append((name, res))
    header = (f"onnxruntime {ort.__version__}, torch {torch.__version__}, one thread each; "
              f"{args.seconds:g} s of audio, {args.repeats} timed calls per image input")
    table = [r for r in [_HEAD, *rows] if not r[2].startswith("ops:")]
    widths = [min(40, max(len(r[i]) for r in table)) for i in range(len(_HEAD))]
    print(header + "\n")
    for r in [_HEAD, *rows]:
        if r[2].startswith("ops:"):
            print(" " * (widths[0] + widths[1] + 2) + r[2])
            continue
        print(" ".join(c[:w].ljust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if args.out:
        out = Path(args.out)
        md = [(f"# ONNX-to-torch converter on real models\n\n`python -m bench.real_models.converter_check "
               f"--seconds {args.seconds:g} --repeats {args.repeats} --out {args.out}`\n\n{header}\n"),
              "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        out.with_suffix(".md").write_text("\n".join(md) + "\n")
        if done:
            _plot(done, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
