"""Cost of one MIRACLE training step against one plain training step of the same network.

    .venv/bin/python bench/train_step.py [--models ocr,lenet5] [--noise local,weights] [--channels-last]
                                         [--repeats 9] [--threads 2]
                                         [--label "after, 2 threads"] [--profile] [--out bench/results]

For each network the trainer is set up as `mrcformat.encode.compress` sets it up (coded layer specs,
"sqrt" block allocation of a small budget at 16 bits per block, affine layout, group posteriors,
`variationalize`, `MiracleTrainer` with the default `TrainConfig`), for both methods, with and
without hashing, with each `--noise` (local reparameterisation, the default, and "weight noise":
one weight sample per step, `TrainConfig.noise="weights"`), and timed step by step next to a plain step of the original network
(forward + cross-entropy + backward + Adam, batches from the same kind of loader). Measurements
are interleaved (one step of every configuration per round, `--repeats` rounds after `--warmup`
rounds) so that a busy machine slows all of them alike; the table gives medians and the ratio of
each MIRACLE median to the plain median of the same round set.

Networks:
* "ocr": a text-line CNN like the one of issue 13 (2.29M weights): 1x64x256 grey images, seven
  3x3 conv layers (32-64-128-128-256-256-256, max-pools down to 4x32), a per-column classifier
  (Linear 1024-512-96, i.e. 32 output columns of 96 classes, cross-entropy per column);
  batch 32.
* "lenet5": LeNet-5-Caffe of the bundled example (`examples/lenet5_model.py`), MNIST-sized
  random inputs, batch 128 (the example's batch size).

Results go to `<out>/train_step.json` under `--label` and `<out>/train_step.md` is rewritten from
all labels recorded there (`--report-only`: rewrite it, measure nothing). Before/after: run the
older code under a label starting with "before" (e.g. `git archive <commit> mrcformat | tar -x -C
/tmp/old` and `PYTHONPATH=/tmp/old`) and the current code under the same label with "after"; the
report puts each such pair side by side.
`--profile` adds torch.profiler tables (self CPU time per operator) of a few steps of the plain
network and of both methods without hashing. `bench/results/train_step_notes.md` (the findings,
written by hand) is copied into the report.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from lenet5_model import LeNet5

from mrcformat.encode.api import coded_layer_specs
from mrcformat.encode.blocks import allocate_blocks, build_plan
from mrcformat.encode.layers import variationalize
from mrcformat.encode.posterior import GroupPosterior
from mrcformat.encode.train import MiracleTrainer, TrainConfig


class OCRNet(nn.Module):
    """Text-line recogniser without the recurrent part: conv features, one class vector per column."""

    def __init__(self, classes: int = 96) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 128, 3, padding=1)
        self.c4 = nn.Conv2d(128, 128, 3, padding=1)
        self.c5 = nn.Conv2d(128, 256, 3, padding=1)
        self.c6 = nn.Conv2d(256, 256, 3, padding=1)
        self.c7 = nn.Conv2d(256, 256, 3, padding=1)
        self.fc1 = nn.Linear(256 * 4, 512)
        self.fc2 = nn.Linear(512, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)                  # 32 x 32x128
        x = F.max_pool2d(F.relu(self.c2(x)), 2)                  # 64 x 16x64
        x = F.relu(self.c3(x))
        x = F.max_pool2d(F.relu(self.c4(x)), 2)                  # 128 x 8x32
        x = F.relu(self.c5(x))
        x = F.max_pool2d(F.relu(self.c6(x)), (2, 1))             # 256 x 4x32
        x = F.relu(self.c7(x))
        n, c, h, w = x.shape
        x = x.permute(0, 3, 1, 2).reshape(n, w, c * h)           # one feature vector per column
        x = self.fc2(F.relu(self.fc1(x)))                        # [N, 32, classes]
        return x.transpose(1, 2)                                 # [N, classes, 32] for cross_entropy


def ocr_data(n: int, gen: torch.Generator):
    return torch.rand(n, 1, 64, 256, generator=gen), torch.randint(0, 96, (n, 32), generator=gen)


def mnist_like(n: int, gen: torch.Generator):
    return torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# name -> (model factory, data factory, batch size, examples, budget bytes, hashing ratio when hashed)
MODELS = {
    "ocr": (OCRNet, ocr_data, 32, 256, 8192, 4.0),
    "lenet5": (LeNet5, mnist_like, 128, 1024, 1556, 4.0),
}
LABELS = {"ocr": "OCR CNN", "lenet5": "LeNet-5"}
NOISE_LABEL = {"local": "", "weights": ", weight noise"}   # TrainConfig.noise; the default keeps the old labels


def loader(x, y, batch, seed=0):
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


def build_trainer(model, dl, method: str, budget: int, hashing, index_bits: int = 16, seed: int = 0,
                  noise: str = "local", channels_last: bool = False):
    """`compress`'s set-up of the trainer (allocation "sqrt", coded biases, affine layout)."""
    torch.manual_seed(seed)
    specs = coded_layer_specs(model, "coded", hashing)
    block_sizes = allocate_blocks(specs, budget, index_bits, "sqrt")
    plans = build_plan(specs, block_sizes, index_bits, seed, "affine")
    params = dict(model.state_dict())
    posteriors = []
    for plan in plans:
        w = torch.cat([params[name].detach().reshape(-1).float().cpu() for name, _ in plan.spec.members])
        posteriors.append(GroupPosterior(plan, method, w))
    vmodel, layers = variationalize(model, coded_bias=True)
    cfg = TrainConfig(method=method, steps=2000, seed=seed, progress=False, noise=noise, channels_last=channels_last)
    trainer = MiracleTrainer(vmodel, layers, posteriors, dl, cfg, seed=seed)
    info = {"groups": len(plans), "blocks": sum(p.num_blocks for p in plans),
            "values": sum(p.num_values for p in plans)}
    return trainer, info


class PlainStep:
    def __init__(self, model, dl) -> None:
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.it, self.dl = iter(dl), dl

    def __call__(self) -> None:
        try:
            x, y = next(self.it)
        except StopIteration:
            self.it = iter(self.dl)
            x, y = next(self.it)
        self.model.train()
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def configs_for(name: str, methods: list[str], noises: tuple[str, ...] = ("local",), channels_last: bool = False):
    make, data, batch, n, budget, ratio = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    x, y = data(n, gen)
    torch.manual_seed(0)
    model = make()
    weights = sum(m.weight.numel() for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d))
    out = [("plain", PlainStep(model, loader(x, y, batch)), {})]
    if channels_last:   # the plain network in channels_last too (its own best CPU layout)
        twin = make()
        twin.load_state_dict(model.state_dict())
        out.append(("plain, channels_last", PlainStep(twin.to(memory_format=torch.channels_last),
                                                      loader(x, y, batch)), {}))
    for method in methods:
        for noise in noises:
            for hashing in (None, ratio):
                trainer, info = build_trainer(model, loader(x, y, batch), method, budget, hashing, noise=noise)
                label = f"{method}" + (f", hashing x{ratio:g}" if hashing else "") + NOISE_LABEL[noise]
                out.append((label, trainer.train_step, info))
                if channels_last:
                    trainer, info = build_trainer(model, loader(x, y, batch), method, budget, hashing, noise=noise,
                                                  channels_last=True)
                    out.append((label + ", channels_last", trainer.train_step, info))
    meta = {"weights": weights, "batch": batch, "input": list(x.shape[1:]), "budget_bytes": budget}
    return out, meta


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(name: str, methods: list[str], repeats: int, warmup: int, noises: tuple[str, ...] = ("local",),
            channels_last: bool = False) -> dict:
    configs, meta = configs_for(name, methods, noises, channels_last)
    times = {label: [] for label, _, _ in configs}
    cpu = {label: [] for label, _, _ in configs}
    faults = {label: [] for label, _, _ in configs}
    for r in range(warmup + repeats):
        for label, step, _ in configs:
            f0, c0, t0 = _faults(), time.process_time(), time.perf_counter()
            step()
            dt, dc, df = time.perf_counter() - t0, time.process_time() - c0, _faults() - f0
            if r >= warmup:
                times[label].append(dt)
                cpu[label].append(dc)
                faults[label].append(df)
    plain = statistics.median(times["plain"])
    plain_cpu = statistics.median(cpu["plain"])
    rows = []
    for label, _, info in configs:
        med, mc = statistics.median(times[label]), statistics.median(cpu[label])
        rows.append({"config": label, "median_s": med, "min_s": min(times[label]), "ratio": med / plain,
                     "cpu_s": mc, "cpu_ratio": mc / plain_cpu, "faults": int(statistics.median(faults[label])),
                     **info})
        print(f"  {LABELS[name]:8s} {label:28s} median {med * 1e3:8.1f} ms  min {min(times[label]) * 1e3:8.1f} ms"
              f"  x{med / plain:5.2f}  cpu {mc * 1e3:8.1f} ms x{mc / plain_cpu:5.2f}"
              f"  faults {rows[-1]['faults']}", flush=True)
    return {"meta": meta, "rows": rows}


def profile(name: str, methods: list[str], steps: int = 3, top: int = 10,
            only: tuple = ("plain", "mean-var", "mean-kl")) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    configs, _ = configs_for(name, methods)
    out = {}
    for label, step, _ in configs:
        if label not in only:
            continue
        for _ in range(2):
            step()
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        avgs = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in avgs)
        out[label] = {"total_ms": total / 1e3 / steps,
                      "ops": [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count // steps) for e in avgs[:top]]}
    return out


def _comparisons(results: dict) -> list[tuple[str, str]]:
    """("before..." label, "after..." label) pairs whose labels differ only in that word."""
    return [(lb, "after" + lb[len("before"):]) for lb in results
            if lb.startswith("before") and "after" + lb[len("before"):] in results]


def report(results: dict) -> str:
    lines = ["# MIRACLE training step against a plain training step", ""]
    lines.append("`bench/train_step.py`: median wall time of one training step, measured interleaved with the "
                 "plain step of the same network in the same run; \"x plain\" = MIRACLE median / plain median of "
                 "that run. Plain step: forward + cross-entropy + backward + Adam of the original network. MIRACLE "
                 "step: `MiracleTrainer.train_step` set up as `compress` does (16-bit blocks, \"sqrt\" allocation, "
                 "coded biases, affine layout, default `TrainConfig`: history every 50 steps). CPU = process "
                 "CPU time (user + system) per step; page faults = minor faults per step (fresh memory).")
    lines.append("")
    notes = ROOT / "bench" / "results" / "train_step_notes.md"
    if notes.exists():
        lines.append(notes.read_text().rstrip())
        lines.append("")
    for lb, la in _comparisons(results):
        lines.append(f"## Before and after{lb[len('before'):]}")
        lines.append("")
        lines.append(f"\"{lb}\" ({results[lb]['env'].get('date', '')}) and \"{la}\" "
                     f"({results[la]['env'].get('date', '')}): medians in ms; speed-up = before / after.")
        lines.append("")
        lines.append("| network | step | before ms | before x plain | after ms | after x plain | speed-up |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for name in results[la]["models"]:
            if name not in results[lb]["models"]:
                continue
            before = {x["config"]: x for x in results[lb]["models"][name]["rows"]}
            for row in results[la]["models"][name]["rows"]:
                rb = before.get(row["config"])
                if rb is None:
                    continue
                lines.append(f"| {LABELS.get(name, name)} | {row['config']} | {rb['median_s'] * 1e3:.0f} | "
                             f"{rb['ratio']:.2f} | {row['median_s'] * 1e3:.0f} | {row['ratio']:.2f} | "
                             f"{rb['median_s'] / row['median_s']:.2f} |")
        lines.append("")
    for label, res in results.items():
        lines.append(f"## {label}")
        lines.append("")
        env = res.get("env", {})
        lines.append(f"{env.get('date', '')}, {env.get('threads', '?')} torch thread(s) on "
                     f"{env.get('cpus', '?')} CPU(s), torch {env.get('torch', '?')}; {env.get('repeats', '?')} "
                     f"timed rounds after {env.get('warmup', '?')} warm-up rounds. {env.get('note', '')}".rstrip())
        lines.append("")
        for name, r in res["models"].items():
            m = r["meta"]
            lines.append(f"**{LABELS.get(name, name)}**: {m['weights']:,} weights, batch {m['batch']} x "
                         f"{'x'.join(map(str, m['input']))}, budget {m['budget_bytes']:,} B")
            lines.append("")
            lines.append("| step | blocks | values | median ms | min ms | x plain | CPU ms | CPU x plain | page faults |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for row in r["rows"]:
                lines.append(f"| {row['config']} | {row.get('blocks', '')} | {row.get('values', '')} | "
                             f"{row['median_s'] * 1e3:.1f} | {row['min_s'] * 1e3:.1f} | {row['ratio']:.2f} | "
                             f"{row.get('cpu_s', float('nan')) * 1e3:.1f} | {row.get('cpu_ratio', float('nan')):.2f} | "
                             f"{row.get('faults', '')} |")
            lines.append("")
    for label, res in results.items():
        prof = res.get("profile")
        if not prof:
            continue
        lines.append(f"## Profile: {label}")
        lines.append("")
        lines.append("torch.profiler, self CPU time per operator per step (mean of 3 profiled steps after 2 "
                     "unprofiled ones; profiler overhead included).")
        lines.append("")
        for name, per in prof.items():
            for cfg, p in per.items():
                lines.append(f"**{LABELS.get(name, name)}, {cfg}**: {p['total_ms']:.0f} ms self CPU per step")
                lines.append("")
                lines.append("| op | ms / step | calls / step |")
                lines.append("|---|---:|---:|")
                for key, ms, calls in p["ops"]:
                    lines.append(f"| `{key}` | {ms:.1f} | {calls} |")
                lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ocr,lenet5")
    ap.add_argument("--methods", default="mean-var,mean-kl")
    ap.add_argument("--noise", default="local,weights",
                    help="TrainConfig.noise values to time: local (local reparameterisation), weights (one sample per step)")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time every step with TrainConfig.channels_last (and the plain network in channels_last)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default="after")
    ap.add_argument("--note", default="")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the stored .json, measure nothing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models, methods = args.models.split(","), args.methods.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "train_step.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.report_only:
        (out / "train_step.md").write_text(report(results))
        return
    env = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "cpus": len(os.sched_getaffinity(0)),
           "torch": torch.__version__, "python": platform.python_version(), "repeats": args.repeats,
           "warmup": args.warmup, "note": args.note}
    res = {"env": env, "models": {}}
    for name in models:
        print(f"{LABELS[name]}:", flush=True)
        res["models"][name] = measure(name, methods, args.repeats, args.warmup, tuple(args.noise.split(",")),
                                         args.channels_last)
    if args.profile:
        res["profile"] = {name: profile(name, methods) for name in models}
    results[args.label] = res
    store.write_text(json.dumps(results, indent=1))
    md = report(results)
    (out / "train_step.md").write_text(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
