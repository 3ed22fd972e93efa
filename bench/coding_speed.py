"""Coding speed: candidate values generated and scored per second.

Coding a block scores all K = 2^bits candidates of B values each, so a group costs K * n
candidate values whatever its block size. This measures, per generator (numpy reference,
torch on CPU, torch on CUDA if present), the rate of (a) generating candidates and
(b) generating + scoring them (log q - log p in float64), for a few block sizes.

    python bench/coding_speed.py [--bits 12] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from mrcformat.encode.coding import candidate_source, score_candidates


def rate(fn, values: int, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return values / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-sizes", default="64,256,1024")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k = 1 << args.bits
    setups = [("numpy", "cpu"), ("torch", "cpu")] + ([("torch", "cuda")] if torch.cuda.is_available() else [])
    lines = [f"K = {k} candidates per block, {args.threads} CPU threads", "",
             "| generator | device | block size | generate (values/s) | generate + score (values/s) |",
             "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for gen_name, device in setups:
        gen = candidate_source(device, gen_name)
        for bsz in [int(b) for b in args.block_sizes.split(",")]:
            per = max(1, min(k, (1 << 21) // bsz))
            mean = torch.zeros(bsz, device=device)
            log_std = torch.full((bsz,), -3.0, device=device)
            valid = torch.ones(bsz, dtype=torch.bool, device=device)

            def gen_only(gen=gen, bsz=bsz, per=per):
                for k0 in range(0, k, per):
                    gen(7, 0, 3, bsz, 0.0, 0.0625, k0, min(per, k - k0))

            def gen_score(gen=gen, bsz=bsz, per=per, mean=mean, log_std=log_std, valid=valid):
                for k0 in range(0, k, per):
                    x = gen(7, 0, 3, bsz, 0.0, 0.0625, k0, min(per, k - k0))
                    score_candidates(x, mean, log_std, valid, 0.0625)

            lines.append(f"| {gen_name} | {device} | {bsz} | {rate(gen_only, k * bsz):.3g} "
                         f"| {rate(gen_score, k * bsz):.3g} |")
            print(lines[-1], flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# Coding speed: candidate values per second\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
