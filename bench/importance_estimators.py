"""Which importance estimate should `mrc compress` use? Measured on the bundled LeNet-5 (pretrained,
exported to ONNX by torch), post-training, at several budgets.

    python bench/importance_estimators.py [--budgets 8KiB,12KiB,20KiB,40KiB] [--index-bits 12]

For each estimator ("uniform": plain weight MSE; "tensor": one measured sensitivity per tensor;
"activation": that, spread inside each tensor by its input channels' mean squares; and "activation"
with the rate-distortion closed form's shrunk q means instead of q centred on the weights) and budget:
file size, the allocation's predicted output distortion, the distortion predicted from the coded
weights, the distortion measured on 2,000 held-out MNIST test images (not the calibration images),
and test accuracy against the original network's. Also the rank correlation between predicted and
measured distortion over all runs of an estimator (does it predict?). Writes
bench/results/importance_lenet5.md and .png.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def _export(path: Path) -> None:
    import torch
    from lenet5_model import LeNet5
    from safetensors.torch import load_file

    net = LeNet5()
    net.load_state_dict({k: v.float() for k, v in load_file(ROOT / "examples" / "lenet5-pretrained.safetensors").items()})
    net.eval()
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}}, dynamo=False)


def _rank_corr(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="8KiB,12KiB,20KiB,40KiB")
    ap.add_argument("--index-bits", type=int, default=12)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "importance_lenet5"))
    args = ap.parse_args()

    import onnxruntime as ort

    from mrcformat.encode.calibration import Probe
    from mrcformat.encode.mnist import load_mnist
    from mrcformat.encode.onnx_compress import analyse, compress_onnx
    from mrcformat.decoder import decode_group
    from mrcformat.reader import load
    from mrcformat_runtime.ort import session

    tmp = Path(tempfile.mkdtemp())
    model = tmp / "lenet5.onnx"
    _export(model)
    x, y = load_mnist(ROOT / "examples" / "data", "test")
    xn, yn = x.numpy(), y.numpy()
    calib = [{"x": xn[i:i + 50]} for i in range(8000, 8800, 50)]       # 800 calibration images
    held = [{"x": xn[i:i + 250]} for i in range(0, 2000, 250)]         # 2,000 held-out images
    acc = lambda s: float(np.mean(np.argmax(s.run(None, {"x": xn[:2000]})[0], axis=1) == yn[:2000]))
    original = acc(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]))
    budgets = [b.strip() for b in args.budgets.split(",")]
    rows = []
    for est, shrink in (("uniform", False), ("tensor", False), ("activation", False), ("activation", True)):
        t0 = time.perf_counter()
        an = analyse(model, calib, importance=est, progress=False)
        label = est + (" + shrunk q" if shrink else "")
        t_an = time.perf_counter() - t0
        held_probe = Probe(an.model, an.sites, held)
        for b in budgets:
            out = tmp / f"{est}-{shrink}-{b}.mrc"
            r = compress_onnx(an, out, b, index_bits=args.index_bits, shrink=shrink, progress=False)
            c = load(out)
            d_held = held_probe.distortion({k: decode_group(c, k) for k in range(len(c.groups))})
            rows.append(dict(est=label, budget=b, bytes=r.file_bytes, bpw=r.bits_per_weight, pred=r.predicted_distortion,
                             pred_coded=r.predicted_actual, meas_calib=r.measured_distortion, meas_held=d_held,
                             acc=acc(session(out)), seconds=t_an + sum(r.seconds.values()) - r.seconds["analyse"]))
            print(rows[-1], flush=True)
    lines = [f"# Importance estimators on LeNet-5 (post-training, {args.index_bits}-bit blocks)", "",
             f"Original test accuracy on the 2,000 held-out images: {original:.4f}. Calibration: 800 other test "
             "images. D = relative squared error of the logits (mrcformat.encode.calibration).", "",
             "| estimator | budget | file bytes | bits/weight | predicted D | predicted D (coded) | D calib | D held-out | "
             "accuracy | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['est']} | {r['budget']} | {r['bytes']} | {r['bpw']:.3f} | {r['pred']:.3g} | {r['pred_coded']:.3g} "
                     f"| {r['meas_calib']:.3g} | {r['meas_held']:.3g} | {r['acc']:.4f} | {r['seconds']:.1f} |")
    lines += ["", "Does the predicted distortion follow the measured one (Spearman rank correlation over budgets; "
              "the ratio measured / predicted, median)?", "", "| estimator | rank corr (coded vs held-out) | "
              "measured / predicted (coded), median |", "|---|---|---|"]
    labels = list(dict.fromkeys(r["est"] for r in rows))
    for est in labels:
        rs = [r for r in rows if r["est"] == est]
        lines.append(f"| {est} | {_rank_corr([r['pred_coded'] for r in rs], [r['meas_held'] for r in rs]):.2f} | "
                     f"{np.median([r['meas_held'] / r['pred_coded'] for r in rs]):.3g} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for est in labels:
        rs = [r for r in rows if r["est"] == est]
        a1.plot([r["bytes"] / 1024 for r in rs], [r["meas_held"] for r in rs], "o-", label=est)
        a2.plot([r["bytes"] / 1024 for r in rs], [100 * r["acc"] for r in rs], "o-", label=est)
    a2.axhline(100 * original, color="k", ls=":", label="original")
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_xlabel("file size (KiB)")
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    a1.set_yscale("log")
    a1.set_ylabel("held-out output distortion D")
    a2.set_ylabel("test accuracy (%)")
    fig.suptitle("mrc compress lenet5.onnx: importance estimators")
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
