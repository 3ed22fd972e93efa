"""silero-vad: MIRACLE fine-tuning (`finetune_onnx`, `mrc compress MODEL.onnx --steps N`) against the
post-training coder alone, at several bit rates, on held-out espeak-ng speech (issue 12's target:
>= 99% frame agreement and the same speech segments at <= 1 bit per weight).

For each budget: the post-training file (`compress_onnx`, the starting point) and the fine-tuned file
are both exported to plain ONNX (graph unchanged) and run through silero's own streaming loop over the
held-out audio (`real_models/silero_vad.evaluate`). Training feeds are every streaming step of the
original over a training track (calibration voices, sentences disjoint from the held-out ones), 64
steps per batch with the LSTM state the original carried at each (`silero_vad.training_feeds`).

    python bench/silero_finetune.py --budgets 0.5,1,2 --steps 1500 [--append]
writes bench/results/silero_finetune.{json,md,png} (`--append` merges with the rows there, one row per
setting and budget); the post-training curve of bench/onnx_compress.py (bench/results/onnx_silero.md,
16-bit blocks, other calibration feeds) is drawn beside it. Settings: --method, --index-bits, --tracks
(more ~70 s training tracks, other voicing and noise), --stream T --batch B (train on T-step sequences of
B lanes with the state carried, `finetune_onnx`'s streaming mode); --render redraws from the JSON. The
fine-tuned file is evaluated even where `finetune_onnx` would keep the post-training one
(keep_better=False).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from real_models import silero_vad as sv

RESULTS = ROOT / "results"
METRICS = ("frame_agreement", "segment_iou", "mean_abs_diff", "max_abs_diff")


def _eval(path: Path) -> dict:
    from mrcformat_runtime.onnx_export import to_onnx_model

    ev = sv.evaluate(to_onnx_model(str(path)).SerializeToString())
    return {k: ev[k] for k in METRICS} | {"segments_same": len(ev["segments_original"]) == len(ev["segments_candidate"])}


def run(budgets: list[float], steps: int, index_bits: int, batch: int, work: Path, divergence, lr: float | None,
        log, method: str = "mean-kl", stream: int = 0, tracks: int = 1, per_row: bool = True,
        greedy: bool = False, noise: str = "local", seed: int = 0) -> list[dict]:
    import torch

    from mrcformat.encode.onnx_compress import analyse
    from mrcformat.encode.onnx_finetune import finetune_onnx

    torch.manual_seed(0)
    model = str(sv.model_paths()["default"])
    feeds = sv.training_feeds(batch, streams=stream > 0, tracks=tracks)
    t0 = time.perf_counter()
    extra = dict(state={"state": "stateN"}, sequence_length=stream) if stream else {}
    an = analyse(model, feeds, max_feeds=None, importance_feeds=8, progress=False, **extra)
    t_an = time.perf_counter() - t0
    log(f"training feeds: {len(feeds)} x {batch} steps; analyse {t_an:.1f}s, {an.coded_weights} coded weights")
    if "=" in divergence:  # probe terms, some outputs overridden: output=bce
        from mrcformat.encode.onnx_finetune import probe_divergence
        divergence = probe_divergence(an) | dict(kv.split("=") for kv in divergence.split(","))
    rows = []
    for b in budgets:
        out = work / f"ft_{b}bpw_s{steps}.mrc"
        opts = ({"lr": lr} if lr is not None else {}) | {"method": method, "per_row": per_row, "greedy": greedy,
                                                             "noise": noise}
        t0 = time.perf_counter()
        r = finetune_onnx(an, out, f"{b}bpw", steps=steps, index_bits=index_bits, progress=True, seed=seed,
                          divergence=divergence, keep_better=False, **opts)
        wall = time.perf_counter() - t0
        # the fine-tuning run's starting file again (deterministic: same analysis, budget, seed), kept to evaluate it
        post_path = work / f"post_{b}bpw.mrc"
        from mrcformat.encode.onnx_compress import compress_onnx
        post = compress_onnx(an, post_path, f"{b}bpw", index_bits=index_bits, seed=seed, progress=False)
        ev_post, ev_ft = _eval(post_path), _eval(out)
        row = dict(budget_bpw=b, steps=steps, index_bits=index_bits, coded_weights=an.coded_weights,
                   post_bytes=post.file_bytes, ft_bytes=r.file_bytes,
                   post_bits_per_param=8 * post.file_bytes / an.coded_weights,
                   ft_bits_per_param=8 * r.file_bytes / an.coded_weights,
                   post_distortion=post.measured_distortion, ft_distortion=r.measured_distortion,
                   seconds=r.seconds, wall_seconds=wall, method=method, stream=stream, tracks=tracks, batch=batch,
                   per_row=per_row, greedy=greedy, noise=noise, **({"seed": seed} if seed else {}),
                   post={k: v for k, v in ev_post.items()}, ft={k: v for k, v in ev_ft.items()})
        rows.append(row)
        log(f"{b} bpw: D post {post.measured_distortion:.4g} fine-tuned {r.measured_distortion:.4g}; "
            f"post {post.file_bytes} B agreement {ev_post['frame_agreement']:.4f} iou {ev_post['segment_iou']:.4f}"
            f" | fine-tuned {r.file_bytes} B agreement {ev_ft['frame_agreement']:.4f} iou {ev_ft['segment_iou']:.4f}"
            f" ({wall:.0f}s)")
    return rows


def _post_training_16bit() -> list[tuple[int, float]]:
    """(file bytes, frame agreement) of our rows in bench/results/onnx_silero.md (bench/onnx_compress.py)."""
    path = RESULTS / "onnx_silero.md"
    if not path.exists():
        return []
    head, pts = None, []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["method", "budget / qp"]:
            head = cells
        elif head and len(cells) == len(head) and cells[0] == "ours":
            pts.append((int(cells[head.index("total B")]), float(cells[head.index("frame_agreement")])))
    return pts


def _setting(r: dict) -> str:
    how = (f"{r['stream']}-step sequences x {r.get('batch', 32)} lanes, state carried" if r.get("stream")
           else "one step per example")
    data = f", {r['tracks']} training tracks" if r.get("tracks", 1) > 1 else ""
    rows = ", row scales" if r.get("per_row") else ""   # rows before per-row training had none
    rows += ", greedy" if r.get("greedy") else ""
    rows += ", weight noise" if r.get("noise", "local") == "weights" else ""
    rows += f", seed {r['seed']}" if r.get("seed") else ""
    return f"{r['method']}, {r['steps']} steps, {r['index_bits']}-bit blocks{rows}, {how}{data}"


def write(rows: list[dict], meta: dict, append: bool = False) -> None:
    RESULTS.mkdir(exist_ok=True)
    old = RESULTS / "silero_finetune.json"
    if append and old.exists():  # rows of other settings kept; a row of the same setting replaced
        key = ("budget_bpw", "steps", "index_bits", "method", "stream", "tracks", "batch", "per_row", "greedy")
        def setting(r):  # rows recorded before the noise and seed options: local noise, seed 0
            return (*(r.get(k) for k in key), r.get("noise", "local"), r.get("seed", 0))
        new = {setting(r) for r in rows}
        prev = json.loads(old.read_text())
        rows = [r for r in prev["rows"] if setting(r) not in new] + rows
        meta = dict(meta, argv=prev["meta"]["argv"] + "; then " + meta["argv"])
    rows = sorted(rows, key=lambda r: (r.get("stream", 0), r["method"], r["steps"], r["budget_bpw"]))
    (RESULTS / "silero_finetune.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [
        "# silero-vad: post-training coding vs MIRACLE fine-tuning",
        "",
        f"`python bench/silero_finetune.py {meta['argv']}` on {meta['date']} ({meta['machine']}); {meta['note']}",
        "",
        "Both files of a row have the same index payload (the fine-tuning run keeps the post-training file's "
        "budget and graph); file sizes include the graph. Metrics on held-out speech through silero's streaming "
        "loop: frame agreement at the 0.5 threshold, speech-time IoU of the segments, per-frame probability "
        "differences; 'segs' = same number of speech segments as the original.",
        "",
        "| training | budget (bpw) | file B | bits/param (file) | post-training agreement | fine-tuned agreement | post IoU | "
        "fine-tuned IoU | post mean/max abs diff | fine-tuned mean/max abs diff | segs (ft) | train+code s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, f = r["post"], r["ft"]
        lines.append(
            f"| {_setting(r)} | {r['budget_bpw']} | {r['ft_bytes']} | {r['ft_bits_per_param']:.3f} | {p['frame_agreement']:.4f} | "
            f"{f['frame_agreement']:.4f} | {p['segment_iou']:.4f} | {f['segment_iou']:.4f} | "
            f"{p['mean_abs_diff']:.4f} / {p['max_abs_diff']:.3f} | {f['mean_abs_diff']:.4f} / {f['max_abs_diff']:.3f} | "
            f"{'yes' if f['segments_same'] else 'no'} | {r['seconds'].get('miracle', 0):.0f} |")
    (RESULTS / "silero_finetune.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7.5))
    def unseeded(r):  # runs that differ only in their seed share a colour and a legend entry
        return _setting({k: v for k, v in r.items() if k != "seed"})
    settings = list(dict.fromkeys(unseeded(r) for r in rows))
    for k, name in enumerate(settings):
        rs = sorted((r for r in rows if unseeded(r) == name), key=lambda r: r["budget_bpw"])
        bpp = [r["ft_bits_per_param"] for r in rs]
        if k == 0:
            ax.plot(bpp, [r["post"]["frame_agreement"] for r in rs], "o--", color="grey",
                    label=f"post-training start ({rs[0]['index_bits']}-bit blocks, training feeds)")
        seeds = len({r.get("seed", 0) for r in rs})
        style = "o-" if len({r["budget_bpw"] for r in rs}) == len(rs) else "o"   # several seeds: points only
        ax.plot(bpp, [r["ft"]["frame_agreement"] for r in rs], style, alpha=0.8,
                label=f"fine-tuned: {name}" + (f" ({seeds} seeds)" if seeds > 1 else ""))
    pts = _post_training_16bit()
    if pts:
        ax.plot([8 * b / rows[0]["coded_weights"] for b, _ in pts], [a for _, a in pts], "s:",
                label="post-training, 16-bit blocks (onnx_silero.md)")
    ax.axhline(0.99, color="grey", lw=0.8)
    ax.set_xlabel("file bits per coded weight (graph included)")
    ax.set_ylabel("frame agreement with the original (held-out)")
    ax.set_title("silero-vad: post-training vs MIRACLE fine-tuning")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "silero_finetune.png", dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="0.5,1,2")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--index-bits", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--divergence", default="probe",
                    help="probe (finetune_onnx's default), mse, auto, or overrides of probe: output=bce")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--method", default="mean-kl", choices=["mean-var", "mean-kl"])
    ap.add_argument("--tracks", type=int, default=1, help="training tracks of ~70 s each (different voicing/noise)")
    ap.add_argument("--stream", type=int, default=0,
                    help="T > 0: calibrate and train on T-step sequences with the state carried (else one step "
                         "per example, the original's state fed)")
    ap.add_argument("--no-per-row", action="store_true",
                    help="one coding sigma per tensor in the fine-tuned file (finetune_onnx per_row=False)")
    ap.add_argument("--greedy", action="store_true", help="code each block's best candidate (finetune_onnx greedy=True)")
    ap.add_argument("--noise", default="local", choices=["local", "weights"], help="training noise (TrainConfig.noise)")
    ap.add_argument("--seed", type=int, default=0,
                    help="finetune_onnx's seed: the starting file's coding seed and the training run's seed")
    ap.add_argument("--work", default="/tmp/silero_finetune")
    ap.add_argument("--note", default="")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--append", action="store_true", help="merge with the rows already in the results")
    ap.add_argument("--render", action="store_true", help="only rewrite the table and plot from the results' JSON")
    a = ap.parse_args(argv)
    import os
    import platform
    import re

    if a.render:
        prev = json.loads((RESULTS / "silero_finetune.json").read_text())
        write(prev["rows"], prev["meta"])
        return 0

    import torch

    torch.set_num_threads(1)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run([float(b) for b in a.budgets.split(",")], a.steps, a.index_bits, a.batch, work, a.divergence, a.lr,
               lambda m: print(m, flush=True), a.method, a.stream, a.tracks, not a.no_per_row, a.greedy, a.noise,
               a.seed)
    args = " ".join(sys.argv[1:] if argv is None else argv)
    args = re.sub(r" ?--(work|note) \S+( [^-]\S*)*", "", args)  # paths and the free-text note
    meta = dict(argv=args, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch 1 thread", note=a.note,
                total_seconds=time.perf_counter() - t0)
    if not a.no_write:
        import fcntl

        RESULTS.mkdir(exist_ok=True)
        with open(RESULTS / ".silero_finetune.lock", "w") as lock:  # runs started side by side merge in turn
            fcntl.flock(lock, fcntl.LOCK_EX)
            write(rows, meta, a.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
