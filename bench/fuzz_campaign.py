"""The long fuzzing campaign of issue 15: seeded mutated files through every loader, in worker processes.

    nice python bench/fuzz_campaign.py --files 100000 --workers 1 --time-limit 3600

Same mutations and loaders as the CI campaign (tests/fuzz_mutations.py; CI uses seeds from 15,000,000,
this script from --start, default 0), run in chunks by worker processes so that a crash (a worker
killed by a signal) or a hang (a chunk over its time) is counted and the campaign goes on with a fresh
worker. Results (outcomes per loader and per mutation kind, every finding with its seed) are rewritten
after each chunk to bench/results/fuzz_campaign.{json,md}, so a campaign stopped early still reports
what it ran. A finding reproduces with `fuzz_mutations.fuzz_one(seed, folder)`.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

_FOLDER: Path | None = None


def _init() -> None:
    global _FOLDER
    import fuzz_mutations as F
    import mrcformat_runtime.ort  # noqa: F401  # imports paid once per worker
    import mrcformat_runtime.torch_load  # noqa: F401
    import torch

    torch.set_num_threads(1)
    F.bases()
    _FOLDER = Path(tempfile.mkdtemp(prefix="mrc-fuzz-"))


def _chunk(seeds: tuple[int, int]) -> dict:
    import fuzz_mutations as F

    counts: collections.Counter = collections.Counter()
    findings, slowest = [], (0.0, None)
    t0 = time.monotonic()
    for seed in range(*seeds):
        r = F.fuzz_one(seed, _FOLDER)
        for loader, o in r["outcomes"].items():
            counts[f"{r['kind']}|{loader}|{o.split(':')[0]}"] += 1
            if o.startswith("FOREIGN"):
                findings.append({"seed": seed, "kind": r["kind"], "loader": loader, "what": o})
        if r["stdout"]:
            findings.append({"seed": seed, "kind": r["kind"], "loader": "stdout", "what": r["stdout"][:300]})
        if r["seconds"] > slowest[0]:
            slowest = (r["seconds"], seed)
    return {"seeds": seeds, "counts": dict(counts), "findings": findings, "slowest": slowest,
            "seconds": time.monotonic() - t0}


def _kill(ex: cf.ProcessPoolExecutor) -> None:
    for p in list(getattr(ex, "_processes", {}).values()):
        p.kill()
    ex.shutdown(wait=False, cancel_futures=True)


def report(res: dict) -> str:
    from fuzz_mutations import LOADERS

    counts = collections.Counter()
    per_kind = collections.Counter()
    for key, v in res["counts"].items():
        kind, loader, outcome = key.split("|")
        counts[(loader, outcome)] += v
        if loader == "load":
            per_kind[kind] += v
    lines = [
        "# Fuzzing campaign (issue 15)", "",
        f"`python bench/fuzz_campaign.py {res['argv']}` — {res['date']}, {res['workers']} worker(s), "
        f"{res['wall']:.0f} s wall, {res['cpu_files_per_s']:.1f} files/s per worker.", "",
        f"Files: **{res['files']:,}** (seeds {res['start']}..{res['start'] + res['files'] - 1}, in order); "
        f"memory budget of every load {res['budget'] >> 20} MiB. Foreign exceptions: **{res['foreign']}**, "
        f"prints to stdout: **{res['printed']}**, worker crashes: **{len(res['crashes'])}**, hangs (chunk over "
        f"its time): **{len(res['hangs'])}**, slowest file {res['slowest'][0]:.2f} s (seed {res['slowest'][1]}).", "",
        "Mutation kinds: " + ", ".join(f"{k} {v:,}" for k, v in sorted(per_kind.items())) + ".", "",
        "| loader | files | ok | library errors (distinct codes) | foreign | top codes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for loader in LOADERS:
        rows = {o: v for (ld, o), v in counts.items() if ld == loader}
        if not rows:
            continue
        total = sum(rows.values())
        foreign = sum(v for o, v in rows.items() if o.startswith("FOREIGN"))
        errs = {o: v for o, v in rows.items() if o != "ok" and not o.startswith("FOREIGN")}
        top = ", ".join(f"{o} {v:,}" for o, v in sorted(errs.items(), key=lambda kv: -kv[1])[:6])
        lines.append(f"| {loader} | {total:,} | {rows.get('ok', 0):,} | {sum(errs.values()):,} ({len(errs)}) | "
                     f"{foreign} | {top} |")
    if res["findings"]:
        lines += ["", "Findings (first 20):", ""]
        lines += [f"- seed {f['seed']} ({f['kind']}, {f['loader']}): {f['what']}" for f in res["findings"][:20]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--time-limit", type=float, default=None, help="stop starting chunks after this many seconds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz_campaign"))
    args = ap.parse_args()
    from fuzz_mutations import FUZZ_BUDGET

    t0 = time.monotonic()
    res = {"argv": " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "workers": args.workers, "start": args.start, "budget": FUZZ_BUDGET, "files": 0, "counts": {},
           "findings": [], "crashes": [], "hangs": [], "slowest": (0.0, None), "foreign": 0, "printed": 0,
           "wall": 0.0, "cpu_files_per_s": 0.0}
    chunks = [(s, min(s + args.chunk, args.start + args.files))
              for s in range(args.start, args.start + args.files, args.chunk)]
    busy = 0.0
    out = Path(args.out)
    ex = cf.ProcessPoolExecutor(max_workers=args.workers, initializer=_init)
    pending = list(reversed(chunks))
    running: dict = {}
    while pending or running:
        stop = args.time_limit is not None and time.monotonic() - t0 > args.time_limit
        while pending and len(running) < args.workers and not stop:
            seeds = pending.pop()
            running[ex.submit(_chunk, seeds)] = (seeds, time.monotonic())
        if not running:
            break
        done, _ = cf.wait(list(running), timeout=5, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            seeds, _ = running.pop(fut)
            try:
                r = fut.result()
            except cf.process.BrokenProcessPool:
                res["crashes"].append(list(seeds))
                _kill(ex)
                pending.extend(s for s, _ in running.values())
                running.clear()
                ex = cf.ProcessPoolExecutor(max_workers=args.workers, initializer=_init)
                continue
            res["files"] += seeds[1] - seeds[0]
            for k, v in r["counts"].items():
                res["counts"][k] = res["counts"].get(k, 0) + v
            res["findings"] += r["findings"]
            res["foreign"] += sum(1 for f in r["findings"] if f["loader"] != "stdout")
            res["printed"] += sum(1 for f in r["findings"] if f["loader"] == "stdout")
            if r["slowest"][0] > res["slowest"][0]:
                res["slowest"] = r["slowest"]
            busy += r["seconds"]
        for fut, (seeds, started) in list(running.items()):  # a chunk far over its time: a hang
            if time.monotonic() - started > 30 * (seeds[1] - seeds[0]) + 120:
                res["hangs"].append(list(seeds))
                _kill(ex)
                pending.extend(s for f, (s, _) in running.items() if f is not fut)
                running.clear()
                ex = cf.ProcessPoolExecutor(max_workers=args.workers, initializer=_init)
                break
        res["wall"] = time.monotonic() - t0
        res["cpu_files_per_s"] = res["files"] / busy if busy else 0.0
        if done:
            out.with_suffix(".json").write_text(json.dumps(res, indent=1))
            out.with_suffix(".md").write_text(report(res))
    ex.shutdown()
    print(report(res))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
