"""Throughput of the numpy reference decoder, in weights per second.

    python bench/decode_numpy.py [--repeats 5] [--plot bench/decode_numpy.png]

Cases vary group size, layout (contiguous / affine), hashing and the decoder's chunk size.
Each row reports the median of `--repeats` full decodes, measured in one run, side by side.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from strategies import make_group  # noqa: E402

import mrcformat as m  # noqa: E402
from mrcformat.layout import choose_affine  # noqa: E402


def container(n_weights: int, *, affine: bool, hash_ratio: int, block: int = 512, bits: int = 16) -> m.Container:
    rng = np.random.default_rng(0)
    nv = n_weights // hash_ratio
    layout = choose_affine(nv, 1, 0) if affine else None
    g = make_group(nv, block_size=block, index_bits=bits, rng=rng, layout=layout, hashing=hash_ratio > 1)
    return m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (n_weights,), "coded", group=0)])


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (table load, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--plot", default="bench/decode_numpy.png")
    args = ap.parse_args()
    rows = []
    for n in (1 << 16, 1 << 20, 1 << 22):
        for affine in (False, True):
            for ratio in (1, 4):
                c = container(n, affine=affine, hash_ratio=ratio)
                t = median_time(lambda: m.decode(c), args.repeats)
                rows.append((n, "affine" if affine else "contiguous", ratio, m.decoder.DEFAULT_CHUNK, t, n / t))
    c = container(1 << 20, affine=True, hash_ratio=1)
    for chunk in (1 << 14, 1 << 16, 1 << 20):
        t = median_time(lambda: m.decode(c, chunk=chunk), args.repeats)
        rows.append((1 << 20, "affine", 1, chunk, t, (1 << 20) / t))
    print(f"{'weights':>9} {'layout':>10} {'hash':>4} {'chunk':>8} {'median s':>9} {'Mweights/s':>10}")
    for n, lay, ratio, chunk, t, rate in rows:
        print(f"{n:>9} {lay:>10} {ratio:>4} {chunk:>8} {t:>9.4f} {rate / 1e6:>10.1f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for lay in ("contiguous", "affine"):
        for ratio in (1, 4):
            pts = [(n, rate) for n, l2, r2, ch, _, rate in rows if l2 == lay and r2 == ratio and ch == m.decoder.DEFAULT_CHUNK]
            ax.plot([p[0] for p in pts], [p[1] / 1e6 for p in pts], marker="o", label=f"{lay}, hash x{ratio}")
    ax.set_xscale("log")
    ax.set_xlabel("weights in the group")
    ax.set_ylabel("Mweights / s (median)")
    ax.set_title("numpy reference decoder")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
