"""Real-model benchmark of `mrc compress MODEL.onnx` (post-training ONNX compression) next to NNCodec.

    python bench/onnx_compress.py {silero,rapidocr} [--budgets 1.5,2,3,...] [--index-bits N]
                                  [--nnc-qps -8,-12,...] [--work DIR] [--skip-ours] [--skip-nnc]

For one model it
  * compresses it with `mrcformat.encode.onnx_compress` at several budgets (bits per coded weight),
    decodes each .mrc back to ONNX (`mrcformat_runtime.onnx_export.to_onnx_model`, graph unchanged),
  * runs NNCodec 2.1.3 (`bench/real_models/nncodec_baseline.py`, in the separate venv /work/nncenv,
    `--short-names`) at several QPs on the same model,
  * evaluates every candidate with the model's own harness (`bench/real_models/silero_vad.py`:
    frame agreement / probability differences / segment IoU vs the original on held-out audio;
    `bench/real_models/rapidocr_rec.py`: exact string match / CER vs the original's strings on
    200 held-out rendered lines, through RapidOCR's own pipeline),
  * writes bench/results/onnx_<model>.md (table) and .png (both curves), and <work>/results.json.

Sizes, counted the same way for both methods:
  * ours: total = the .mrc file (it carries the graph, with the uncoded small/1-d tensors as raw
    float32); weight bytes = file - len(mrcformat.load(path).graph).
  * NNCodec: its bitstream holds only the tensors it coded, so total = bitstream + "skeleton"
    (the original ONNX with the data of every tensor NNCodec coded removed, serialized once);
    weight bytes = bitstream.  `--short-names` codes tensors under numeric keys, so names are
    not paid twice (they are in the skeleton already).
  * bits/w: weight bytes * 8 / the method's own coded value count (ours: float tensors with
    >= 64 elements and ndim >= 2; NNCodec: float tensors with >= 64 elements, biases included,
    these at its near-lossless nonweight_qp -75); bits/param: total bytes * 8 / all float32
    values of the model (a common denominator).

Run from the repository root in /work/benchenv (the NNCodec part is a subprocess in /work/nncenv).
Timing: both coders run one at a time on this machine (2 cores); "compress s" is ours
allocate+code (analyse, done once per model, is listed separately) and NNCodec's encode.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real_models import nncodec_baseline as nncb  # noqa: E402  (only onnx/numpy at import)

RESULTS = ROOT / "bench" / "results"
NNC_PYTHON = os.environ.get("NNC_PYTHON", "/work/nncenv/bin/python")

MODELS = {
    "silero": dict(
        budgets="1.5,2,3,4,5,6,8,12", index_bits=16, nnc_qps="-8,-12,-16,-20,-24,-28,-32,-36,-40",
        main="frame_agreement", main_label="frame agreement with the original (>= 0.5 rule)",
        second="mean_abs_diff", second_label="mean |p - p_orig| per frame", second_log=True,
        cols=["frame_agreement", "segment_iou", "mean_abs_diff", "max_abs_diff"],
        thresholds=[0.95, 0.99], analyse=dict(max_feeds=None, importance_feeds=64)),
    "rapidocr": dict(
        budgets="2,3,4,6,8", index_bits=13, nnc_qps="-8,-16,-20,-24,-28,-32,-36,-40",
        main="exact_match", main_label="exact-match rate vs the original's strings",
        second="cer", second_label="CER vs the original's strings", second_log=False,
        cols=["exact_match", "cer", "exact_match_gt_candidate", "cer_gt_candidate"],
        thresholds=[0.9, 0.95, 0.99], analyse=dict(max_feeds=64, importance_feeds=16)),
}


# --------------------------------------------------------------------------- model plumbing
def model_info(name: str) -> dict:
    if name == "silero":
        from bench.real_models import silero_vad as h
        path = h.model_paths()["default"]
        calib = h.DATA_DIR / "calib"
        return dict(path=Path(path), calib=calib, evaluate=lambda cand: h.evaluate(cand))
    from bench.real_models import rapidocr_rec as h
    path = h.rec_model_path()
    calib = h.DATA_DIR / "calib"

    def ev(cand):
        if isinstance(cand, (bytes, bytearray)):
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "candidate.onnx"
                p.write_bytes(bytes(cand))
                return h.evaluate(p)
        return h.evaluate(cand)
    return dict(path=Path(path), calib=calib, evaluate=ev)


def float_params(model: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(e["tensor"].dims, dtype=np.int64)) for e in nncb.collect_float_tensors(model)))


def nnc_skeleton(model_path: Path) -> bytes:
    """The original ONNX with the data of every tensor NNCodec codes (float32, >= MIN_ELEMENTS) removed."""
    m = onnx.load(str(model_path))
    for e in nncb.collect_float_tensors(m):
        t = e["tensor"]
        if int(np.prod(t.dims, dtype=np.int64)) >= nncb.MIN_ELEMENTS:
            t.ClearField("raw_data")
            t.ClearField("float_data")
    return m.SerializeToString()


def graph_section_bytes(path: Path) -> tuple[int, bool]:
    """(length of the graph section as stored in the .mrc file, whether it is zlib-compressed)."""
    import struct

    import msgpack
    buf = Path(path).read_bytes()
    hlen = struct.unpack_from("<I", buf, 12)[0]
    hdr = msgpack.unpackb(buf[24:24 + hlen], raw=False, strict_map_key=False)
    if hdr.get("graph") is None:
        return 0, False
    return int(hdr["sections"][hdr["graph"]]["length"]), hdr.get("graph_size") is not None


def code_version() -> str:
    """HEAD of this checkout, + '-dirty' if mrcformat/ or runtime/ have uncommitted changes."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "mrcformat", "runtime") else "")


def refresh_sizes(res: dict, model_path: Path, work: Path) -> None:
    """Recompute the size columns from the files (ours: graph section as stored; NNCodec: raw and
    zlib-9 skeleton) so that rows from older runs are counted the same way."""
    import zlib
    skel = nnc_skeleton(model_path)
    raw, z = len(skel), len(zlib.compress(skel, 9))
    if res.get("nnc"):
        res["nnc"].update(skeleton_bytes=raw, skeleton_zlib_bytes=z)
    for r in res["rows"]:
        if r["method"] == "ours" and "mrc" not in r:  # rows of runs before the path was recorded
            r["mrc"] = str(work / f"ours_{r['setting'].split()[0]}bpw_ib{r['index_bits']}.mrc")
        if r["method"] == "ours" and Path(r["mrc"]).exists():
            g, deflated = graph_section_bytes(Path(r["mrc"]))
            r["total_bytes"] = Path(r["mrc"]).stat().st_size
            r["graph_bytes"], r["graph_deflated"] = g, deflated
            r["weight_bytes"] = r["total_bytes"] - g
            r["bits_per_weight"] = 8.0 * r["weight_bytes"] / r["coded_values"]
        elif r["method"].startswith("NNCodec"):
            r["graph_bytes"], r["graph_zlib_bytes"] = raw, z
            r["total_bytes"] = r["weight_bytes"] + raw
            r["total_zlib_bytes"] = r["weight_bytes"] + z


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("segments_")}


# --------------------------------------------------------------------------- runs
def run_ours(name: str, info: dict, budgets: list[str], index_bits: int, work: Path, log) -> tuple[list, dict]:
    import mrcformat
    from mrcformat.encode.onnx_compress import analyse, compress_onnx
    from mrcformat_runtime.onnx_export import to_onnx_model

    version = code_version()
    t0 = time.perf_counter()
    an = analyse(str(info["path"]), str(info["calib"]), importance="activation", progress=False,
                 **MODELS[name]["analyse"])
    t_an = time.perf_counter() - t0
    log(f"ours: analyse {t_an:.1f}s, {an.coded_weights} coded weights in {len(an.sites)} tensors; notes: {an.notes}")
    rows = []
    for b in budgets:
        out = work / f"ours_{b}bpw_ib{index_bits}.mrc"
        t0 = time.perf_counter()
        r = compress_onnx(an, out, f"{b}bpw", index_bits=index_bits, progress=False)
        t_c = time.perf_counter() - t0
        graph_len, deflated = graph_section_bytes(out)
        onnx_bytes = to_onnx_model(str(out)).SerializeToString()
        t0 = time.perf_counter()
        ev = _clean(info["evaluate"](onnx_bytes))
        t_ev = time.perf_counter() - t0
        row = dict(method="ours", setting=f"{b} bpw", budget_bpw=float(b), index_bits=index_bits, mrc=str(out),
                   graph_deflated=deflated,
                   total_bytes=r.file_bytes, weight_bytes=r.file_bytes - graph_len, graph_bytes=graph_len,
                   payload_bytes=r.payload_bytes, coded_values=r.coded_weights,
                   bits_per_weight=8.0 * (r.file_bytes - graph_len) / r.coded_weights,
                   report_bits_per_weight=r.bits_per_weight, measured_distortion=r.measured_distortion,
                   predicted_distortion=r.predicted_distortion, snr_db=r.snr_db,
                   compress_seconds=r.seconds.get("allocate", 0) + r.seconds.get("code", 0),
                   seconds=r.seconds, wall_seconds=t_c, eval_seconds=t_ev, notes=r.notes[len(an.notes):], **ev)
        rows.append(row)
        log(f"ours {b:>4} bpw: {r.file_bytes} B (weights {row['weight_bytes']}), code {r.seconds.get('code', 0):.1f}s, "
            f"D {r.measured_distortion:.3e}, " + ", ".join(f"{k} {v:.4g}" for k, v in ev.items()
                                                           if isinstance(v, float)))
    return rows, dict(code_version=version, analyse=MODELS[name]['analyse'], analyse_seconds=t_an, coded_weights=an.coded_weights, tensors=len(an.sites), notes=an.notes)


def run_nnc(name: str, info: dict, qps: list[int], work: Path, log, qp_mode: str = "absolute") -> tuple[list, dict]:
    out = work / ("nnc" if qp_mode == "absolute" else f"nnc_{qp_mode}")
    method = "NNCodec" if qp_mode == "absolute" else f"NNCodec {qp_mode}-qp"
    cmd = [NNC_PYTHON, str(ROOT / "bench/real_models/nncodec_baseline.py"), str(info["path"]),
           f"--qps={','.join(str(q) for q in qps)}", "--out", str(out), "--short-names", "--qp-mode", qp_mode]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench/real_models/nncodec_stub"))
    log("nncodec: " + " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=str(ROOT))
    log(f"nncodec: all qps in {time.perf_counter() - t0:.1f}s")
    res = json.loads((out / "results.json").read_text())
    skel = len(nnc_skeleton(info["path"]))
    rows = []
    for r in res["results"]:
        t0 = time.perf_counter()
        ev = _clean(info["evaluate"](Path(r["reconstructed_model"]).read_bytes()))
        t_ev = time.perf_counter() - t0
        row = dict(method=method, setting=f"qp {r['qp']}", qp=r["qp"], total_bytes=r["bitstream_bytes"] + skel,
                   weight_bytes=r["bitstream_bytes"], graph_bytes=skel, coded_values=r["num_coded_weights"],
                   bits_per_weight=r["bits_per_weight"], compress_seconds=r["encode_seconds"],
                   decode_seconds=r["decode_seconds"], eval_seconds=t_ev, **ev)
        rows.append(row)
        log(f"{method} qp {r['qp']}: {row['total_bytes']} B (bitstream {r['bitstream_bytes']}), enc {r['encode_seconds']:.1f}s, "
            + ", ".join(f"{k} {v:.4g}" for k, v in ev.items() if isinstance(v, float)))
    return rows, dict(skeleton_bytes=skel, coded_values=res["results"][0]["num_coded_weights"] if rows else None,
                      coded_tensors=res["num_coded_tensors"], codec=res["codec"], settings=res["settings"])


# --------------------------------------------------------------------------- analysis / output
def size_at(rows: list[dict], key: str, thr: float, size: str = "total_bytes") -> float | None:
    """Smallest total size from which `key` stays >= thr at every larger measured point, interpolated
    (linear in log bytes) between the last failing and the first passing point; None if never."""
    pts = sorted((r.get(size, r["total_bytes"]), r[key]) for r in rows)
    ok = [v >= thr for _, v in pts]
    if not ok or not ok[-1]:
        return None
    i = len(pts) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    if i == 0:
        return float(pts[0][0])  # passes everywhere measured: an upper bound
    (b0, v0), (b1, v1) = pts[i - 1], pts[i]
    f = (thr - v0) / (v1 - v0) if v1 != v0 else 1.0
    return float(math.exp(math.log(b0) + f * (math.log(b1) - math.log(b0))))


def size_first(rows: list[dict], key: str, thr: float, size: str = "total_bytes") -> float | None:
    """Smallest size at which `key` first reaches thr (interpolated like size_at; ignores later dips)."""
    pts = sorted((r.get(size, r["total_bytes"]), r[key]) for r in rows)
    for i, (b1, v1) in enumerate(pts):
        if v1 >= thr:
            if i == 0:
                return float(b1)
            b0, v0 = pts[i - 1]
            f = (thr - v0) / (v1 - v0) if v1 != v0 else 1.0
            return float(math.exp(math.log(b0) + f * (math.log(b1) - math.log(b0))))
    return None


def write_outputs(name: str, res: dict) -> None:
    cfg = MODELS[name]
    rows = res["rows"]
    ours = [r for r in rows if r["method"] == "ours"]
    nnc = [r for r in rows if r["method"] == "NNCodec"]
    nnc_std = [r for r in rows if r["method"] == "NNCodec std-qp"]
    cols = cfg["cols"]
    lines = [f"# `mrc compress` vs NNCodec on {res['model_file']}", "",
             f"Generated by `{res['command']}` on {res['date']} (2 CPU cores).", "",
             f"- original .onnx: {res['original_bytes']} bytes; {res['float_params']} float32 values in the model",
             ]
    if not ours:
        lines.append("- ours: NO ROWS in this run (see bench/results/onnx_compress_notes.md)")
    if "ours" in res:
        o = res["ours"]
        lines.append(f"- ours: {o['coded_weights']} values coded ({o['tensors']} tensors, ndim >= 2, >= 64 values), "
                     f"index_bits {res['index_bits']}, importance 'activation', "
                     + ", ".join(f"{k} {v}" for k, v in o.get("analyse", dict(max_feeds=32, importance_feeds=8)).items())
                     + "; "
                     f"analyse (once) {o['analyse_seconds']:.1f} s")
    if "nnc" in res:
        n = res["nnc"]
        lines.append(f"- NNCodec ({n['codec']}, dq on, nonweight_qp -75, short names): {n['coded_values']} values "
                     f"coded ({n['coded_tensors']} tensors >= 64 values, 1-d ones included); skeleton "
                     f"(original with those tensors' data removed) {n['skeleton_bytes']} bytes")
    deflated = any(r.get("graph_deflated") for r in ours)
    lines += ["- total = .mrc file (ours) or bitstream + skeleton (NNCodec); weight bytes = file - graph section "
              "as stored (ours) or bitstream (NNCodec); bits/w = weight bytes*8 / the method's own coded values; "
              "bits/param = total*8 / all float32 values",
              f"- ours' graph section is {'zlib-compressed (format 1.1 graph_size)' if deflated else 'stored raw' if ours else 'n/a'}; "
              f"so NNCodec is also given 'total (zlib skeleton)' = bitstream + zlib-9 of its skeleton "
              f"({(res.get('nnc') or {}).get('skeleton_zlib_bytes')} bytes), the like-for-like count "
              f"{'used for the plot and the first ratio below' if deflated else '(not used: ours is raw too)' if ours else ''}",
              f"- ours' code: {(res.get('ours') or {}).get('code_version', 'not recorded')}", ""]
    head = ["method", "budget / qp", "total B", "total B (zlib skeleton)", "weight B", "bits/w", "bits/param"] + cols + ["calib D", "compress s"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in (sorted(ours, key=lambda r: r["total_bytes"]) + sorted(nnc, key=lambda r: r["total_bytes"])
              + sorted(nnc_std, key=lambda r: r["total_bytes"])):
        cells = [r["method"], r["setting"], str(r["total_bytes"]), str(r.get("total_zlib_bytes", "")),
                 str(r["weight_bytes"]),
                 f"{r['bits_per_weight']:.3f}", f"{8 * r['total_bytes'] / res['float_params']:.3f}"]
        cells += [f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols]
        cells += [f"{r['measured_distortion']:.3e}" if "measured_distortion" in r else "",
                  f"{r['compress_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Size at equal fidelity (interpolated, log bytes). 'stays': smallest size from which the metric "
              "stays above the threshold at every larger measured point; 'first': where it first reaches it "
              "(later dips ignored). Ratio > 1: NNCodec is bigger than ours at that fidelity.", ""]
    series = [("NNCodec", nnc)] + ([("NNCodec std-qp", nnc_std)] if nnc_std else [])
    sizes = (["total_zlib_bytes"] if deflated else []) + ["total_bytes"]
    lines.append(f"| {cfg['main']} >= | rule | ours total B | NNCodec counted as | "
                 + " | ".join(f"{n} total B | {n} / ours" for n, _ in series) + " |")
    lines.append("|---|---|---|---|" + "---|---|" * len(series))
    for thr in cfg["thresholds"]:
        for rule, fn in (("stays", size_at), ("first", size_first)):
            a = fn(ours, cfg["main"], thr)
            for sz in sizes:
                cells = [str(thr), rule, str(a and round(a)), "bitstream + zlib skeleton"
                         if sz == "total_zlib_bytes" else "bitstream + raw skeleton"]
                for _, rs in series:
                    b = fn(rs, cfg["main"], thr, sz)
                    cells += [str(b and round(b)), f"{b / a:.2f}" if a and b else "n/a"]
                lines.append("| " + " | ".join(cells) + " |")
    (RESULTS / f"onnx_{name}.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, label, logy in ((axes[0], cfg["main"], cfg["main_label"], False),
                                 (axes[1], cfg["second"], cfg["second_label"], cfg["second_log"])):
        for rs, style, lab in ((ours, "o-", f"mrc compress (index_bits {res['index_bits']})"),
                               (nnc, "s--", "NNCodec 2.1.3 (qp = absolute step)"),
                               (nnc_std, "^:", "NNCodec 2.1.3, std-qp (step ~ 2^(qp/4) * std per tensor)")):
            if not rs:
                continue
            xkey = "total_zlib_bytes" if deflated and rs is not ours else "total_bytes"
            rs = sorted(rs, key=lambda r: r[xkey])
            x = [r[xkey] for r in rs]
            y = [max(r[key], 1e-7) if logy else r[key] for r in rs]
            ax.plot(x, y, style, label=lab)
            for r, xi, yi in zip(rs, x, y):
                ax.annotate(r["setting"].replace(" bpw", "").replace("qp ", ""), (xi, yi), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.axvline(res["original_bytes"], color="grey", lw=0.8, ls=":")
        ax.text(res["original_bytes"], ax.get_ylim()[0], " original .onnx", rotation=90, fontsize=7,
                va="bottom", color="grey")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("total bytes (.mrc file / NNCodec bitstream + "
                      + ("zlib-9 of the ONNX skeleton)" if deflated else "ONNX skeleton)"))
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{res['model_file']}: held-out fidelity vs size (labels: bits/weight budget or NNCodec qp)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"onnx_{name}.png", dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--budgets", help="comma-separated bits per coded weight (default per model)")
    p.add_argument("--index-bits", type=int)
    p.add_argument("--nnc-qps", help="comma-separated NNCodec QPs (default per model)")
    p.add_argument("--nnc-std-qps", help="also run NNCodec with --qp-mode std at these QPs (default: not run)")
    p.add_argument("--work", help="work folder for .mrc/.onnx/.nnc files (default /tmp/onnx_compress_<model>)")
    p.add_argument("--skip-ours", action="store_true", help="reuse ours' rows from <work>/results.json")
    p.add_argument("--skip-nnc", action="store_true", help="reuse NNCodec's rows from <work>/results.json")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv) - 1):  # "--nnc-qps -8,-12": argparse takes "-8,..." for an option
        if argv[i] in ("--nnc-qps", "--nnc-std-qps"):
            argv[i:i + 2] = [f"{argv[i]}={argv[i + 1]}", ""]
    a = p.parse_args([x for x in argv if x != ""])
    cfg = MODELS[a.model]
    budgets = [b.strip() for b in (a.budgets or cfg["budgets"]).split(",") if b.strip()]
    qps = [int(q) for q in (a.nnc_qps or cfg["nnc_qps"]).split(",") if q.strip()]
    index_bits = a.index_bits or cfg["index_bits"]
    work = Path(a.work or f"/tmp/onnx_compress_{a.model}")
    work.mkdir(parents=True, exist_ok=True)
    info = model_info(a.model)
    old = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    res = dict(model=a.model, model_file=info["path"].name, original_bytes=info["path"].stat().st_size,
               float_params=float_params(onnx.load(str(info["path"]))), index_bits=index_bits,
               command="python bench/onnx_compress.py " + " ".join(x for x in argv if x),
               date=time.strftime("%Y-%m-%d"), rows=[])
    t0 = time.perf_counter()
    ev = _clean(info["evaluate"](info["path"].read_bytes()))
    log(f"original vs itself ({time.perf_counter() - t0:.1f}s): {ev}")
    res["original_self_check"] = ev
    if a.skip_nnc:
        res["rows"] += [r for r in old.get("rows", []) if r["method"].startswith("NNCodec")]
        res["nnc"] = old.get("nnc")
    else:
        rows, meta = run_nnc(a.model, info, qps, work, log)
        res["rows"] += rows
        res["nnc"] = meta
        if a.nnc_std_qps:
            rows, _ = run_nnc(a.model, info, [int(q) for q in a.nnc_std_qps.split(",") if q.strip()], work, log, "std")
            res["rows"] += rows
    (work / "results.json").write_text(json.dumps(res, indent=1, default=float))
    if a.skip_ours:
        res["rows"] += [r for r in old.get("rows", []) if r["method"] == "ours"]
        res["ours"] = old.get("ours")
        res["index_bits"] = old.get("index_bits", index_bits)
    else:
        rows, meta = run_ours(a.model, info, budgets, index_bits, work, log)
        res["rows"] += rows
        res["ours"] = meta
    res = {k: v for k, v in res.items() if v is not None}
    refresh_sizes(res, info["path"], work)
    (work / "results.json").write_text(json.dumps(res, indent=1, default=float))
    write_outputs(a.model, res)
    log(f"wrote {RESULTS / f'onnx_{a.model}.md'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
