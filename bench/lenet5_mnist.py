"""LeNet-5-Caffe on MNIST: test error against compressed size, beside the published frontier.

Reads the run records that `examples/lenet5_mnist.py --results bench/results/lenet5_mnist.json` writes
(every number there was measured by decoding the saved .mrc file), so the heavy runs are not
redone; `--run BUDGET[,BUDGET...]` runs the missing ones first (CPU: ~30-60 min each).

Prints a table (index payload, file size, decoded test error, wall time), the spread of a recipe
over seeds (runs whose settings differ only in `--seed`), the Mean-KL vs Mean-Var comparison
(steps until the KL is within budget, error, time) and writes
bench/results/lenet5_mnist.{md,png}: error vs size (index bits only, as the papers count) with MIRACLE
(1.52 KiB / 0.96%, 3.03 KiB / 0.69%), Bayesian Compression (2.3 KB / 1.0%) and Deep
Compression (44 KB / 0.8%) drawn beside ours, and each multi-seed recipe as its mean and range.

    python bench/lenet5_mnist.py [--results bench/results/lenet5_mnist.json] [--run 1556,3102 --method mean-kl]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = [  # (label, size in KiB of the stored weights, test error %)
    ("MIRACLE (Havasi et al. 2019)", 1.52, 0.96),
    ("MIRACLE (Havasi et al. 2019)", 3.03, 0.69),
    ("Bayesian Compression (Louizos et al. 2017)", 2.3 * 1000 / 1024, 1.0),
    ("Deep Compression (Han et al. 2016)", 44 * 1000 / 1024, 0.8),
]


DEFAULT_INIT = "lenet5-pretrained.safetensors"   # runs recorded before `--init` existed started from it


def _init(r: dict) -> str:
    """The starting network a run was compressed from."""
    return r.get("init") or DEFAULT_INIT


def steps_to_budget(run: dict) -> int | None:
    """First recorded step (before coding) at which at most half of the blocks are above their KL budget.

    Mean-KL: 0, every block's KL is its budget by construction. Mean-Var: the per-block control then
    keeps each block's KL oscillating around its budget (history: blocks_over_budget, max_kl_ratio).
    """
    if run["method"] == "mean-kl":
        return 0
    for h in run.get("history", []):
        if h["coded_blocks"] == 0 and h["blocks_over_budget"] <= 0.5 * h["blocks_uncoded"]:
            return h["step"]
    return None


def _config(r: dict) -> str:
    text = f"{r['index_bits']} bits, hashing {r.get('hashing') or 'none'}"
    if r.get("allocation", "sqrt") != "sqrt":
        text += f", {r['allocation']} allocation"
    if r.get("biases", "coded") != "coded":
        text += f", {r['biases']} biases"
    if r.get("greedy"):
        text += ", greedy choice"
    return text + _extras(r)


def _extras(r: dict) -> str:
    """Training options beyond the basic recipe, as ", a, b" (empty when none)."""
    text = ""
    if _init(r) != DEFAULT_INIT:
        text += f", from {Path(_init(r)).stem}"
    if r.get("shift"):
        text += f", shift {r['shift']}px"
    if r.get("distill"):
        text += f", distilled (weight {r['distill']:g}, T {r['temperature']:g})"
    if r.get("kl_margin", 1.0) != 1.0:
        text += f", KL margin {r['kl_margin']:g} nat"
    if r.get("retrain_lr") is not None:
        text += f", retraining lr x{r['retrain_lr']:g}"
    if r.get("refine_sweeps"):
        text += ", refined"
    if r.get("noise", "local") != "local":
        text += f", {r['noise']} noise"
    return text


def _wall(r: dict) -> str:
    """Wall time; a run that started from a shared trained checkpoint ran only its coding phase."""
    if r.get("from_trained_checkpoint"):
        return f"{r['wall_seconds'] / 60:.1f} min (coding only: training shared)"
    return f"{r['wall_seconds'] / 60:.1f} min"


def _steps(r: dict) -> str:
    main = f"{r['steps']} + {r['blocks'] // r['blocks_per_round'] * r['retrain_steps']}"
    return f"{r['alloc_steps']} + {main}" if r.get("alloc_steps") else main


def table(runs: list[dict]) -> str:
    lines = [("| run | method | blocks | hashing | allocation, biases, choice, extras | steps | index payload (B) | file (B) "
              "| test error (decoded file) | wall time |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["payload_bytes"], r["test_error_percent"])):
        lines.append(f"| {r['label']} | {r['method']} | {r['blocks']} x {r['index_bits']} bits | {r.get('hashing') or 'none'} "
                     f"| {r.get('allocation', 'sqrt')}, {r.get('biases', 'coded')}, {'greedy' if r.get('greedy') else 'sampled'}"
                     f"{_extras(r)} | {_steps(r)} "
                     f"| {r['payload_bytes']} ({r['payload_bytes'] / 1024:.2f} KiB) | {r['file_bytes']} "
                     f"| {r['test_error_percent']:.2f}% | {_wall(r)} |")
    notes = [f"- {r['label']}: {r['note']}" for r in runs if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def allocations(runs: list[dict]) -> str:
    """Per group: values, blocks given, and the share of the budget the learned ("kl") pre-phase asked for."""
    out = []
    for r in runs:
        groups = r.get("groups") or {}
        if not any(g.get("demand_nats") is not None for g in groups.values()):
            continue
        total_demand = sum(g["demand_nats"] for g in groups.values()) or 1.0
        total_blocks = sum(g["blocks"] for g in groups.values())
        total_sqrt = sum(g["values"] ** 0.5 for g in groups.values())
        out += [f"**{r['label']}** ({r['payload_bytes']} B, {r['test_error_percent']:.2f}%)", "",
                "| group | values | blocks x size | share of blocks | share of learned KL | share under the sqrt rule |",
                "|---|---|---|---|---|---|"]
        for name, g in groups.items():
            out.append(f"| {name} | {g['values']} | {g['blocks']} x {g['block_size']} | "
                       f"{100 * g['blocks'] / total_blocks:.1f}% | {100 * g['demand_nats'] / total_demand:.1f}% "
                       f"| {100 * g['values'] ** 0.5 / total_sqrt:.1f}% |")
        out.append("")
    return "\n".join(out) if out else "(no run with a learned allocation yet)"


_RECIPE = ("budget_bytes", "method", "index_bits", "steps", "retrain_steps", "blocks_per_round", "hashing",
           "kl_margin", "biases", "greedy", "shift", "retrain_lr", "distill", "refine_sweeps", "allocation", "noise")
_DEFAULTS = {"noise": "local"}   # settings added later: runs recorded before them had the default


def seed_groups(runs: list[dict]) -> list[list[dict]]:
    """Runs of one recipe (same `_RECIPE` settings and starting network) under two or more seeds, each list sorted by seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((*(str(r.get(k, _DEFAULTS.get(k))) for k in _RECIPE), _init(r)), []).append(r)
    return [sorted(rs, key=lambda r: r["seed"]) for rs in groups.values() if len({r["seed"] for r in rs}) > 1]


def seeds(runs: list[dict]) -> str:
    """Table of `seed_groups`: error per seed, mean and range, and the wall times."""
    lines = ["| recipe (seed-1 label) | index payload (B) | test error per seed | mean | min - max | wall time per seed |",
             "|---|---|---|---|---|---|"]
    for rs in seed_groups(runs):
        errs = [r["test_error_percent"] for r in rs]
        lines.append(f"| {rs[0]['label']} | {rs[0]['payload_bytes']} | "
                     + ", ".join(f"seed {r['seed']}: {r['test_error_percent']:.2f}%" for r in rs)
                     + f" | {sum(errs) / len(errs):.2f}% | {min(errs):.2f}% - {max(errs):.2f}% | "
                     + ", ".join(_wall(r) for r in rs) + " |")
    return "\n".join(lines) if len(lines) > 2 else "(no recipe run under several seeds yet)"


def comparison(runs: list[dict]) -> str:
    """Mean-KL against Mean-Var where both ran with the same budget, bits and hashing."""
    lines = ["| budget (B) | configuration | method | steps to reach the budget | test error | training | coding | wall |",
             "|---|---|---|---|---|---|---|---|"]
    by_setup: dict[tuple, list[dict]] = {}
    for r in runs:
        by_setup.setdefault((r["budget_bytes"], _config(r)), []).append(r)
    for (budget, config), rs in sorted(by_setup.items()):
        if len({r["method"] for r in rs}) < 2:
            continue
        for r in sorted(rs, key=lambda r: r["method"]):
            s = steps_to_budget(r)
            lines.append(f"| {budget} | {config} | {r['method']} | {'never' if s is None else s} "
                         f"| {r['test_error_percent']:.2f}% | {r['train_seconds'] / 60:.1f} min "
                         f"| {r['code_seconds'] / 60:.1f} min | {r['wall_seconds'] / 60:.1f} min |")
    return "\n".join(lines) if len(lines) > 2 else "(no setup with both methods yet)"


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"MIRACLE (Havasi et al. 2019)": "s", "Bayesian Compression (Louizos et al. 2017)": "^",
               "Deep Compression (Han et al. 2016)": "D"}
    seen = set()
    for label, kib, err in PUBLISHED:
        ax.scatter([kib], [err], marker=markers[label], s=70, color="gray", zorder=3,
                   label=None if label in seen else f"{label} (published)")
        seen.add(label)
    # every run as a dot (the table says which is which), and a line through the best run per budget
    ax.scatter([r["payload_bytes"] / 1024 for r in runs], [r["test_error_percent"] for r in runs], s=18,
               color="C0", alpha=0.45, label=f"mrcformat, every run in the table ({len(runs)})")
    best = {}
    for r in runs:
        if r["budget_bytes"] not in best or r["test_error_percent"] < best[r["budget_bytes"]]["test_error_percent"]:
            best[r["budget_bytes"]] = r
    front = sorted(best.values(), key=lambda r: r["payload_bytes"])
    ax.plot([r["payload_bytes"] / 1024 for r in front], [r["test_error_percent"] for r in front], "o-", color="C3",
            label="mrcformat, best run per budget")
    for r in front:
        ax.annotate(f"{r['test_error_percent']:.2f}%", (r["payload_bytes"] / 1024, r["test_error_percent"]),
                    textcoords="offset points", xytext=(8, -4), fontsize=8, color="C3")
    for i, rs in enumerate(seed_groups(runs)):   # what one recipe gives over seeds: mean and range
        errs = [r["test_error_percent"] for r in rs]
        mean = sum(errs) / len(errs)
        ax.errorbar([rs[0]["payload_bytes"] / 1024 * 1.04], [mean], yerr=[[mean - min(errs)], [max(errs) - mean]],
                    fmt="_", color="C2", capsize=4, markersize=10,
                    label="mrcformat, one recipe over seeds (mean, min-max)" if i == 0 else None)
        ax.annotate(f"{len(rs)} seeds", (rs[0]["payload_bytes"] / 1024 * 1.04, max(errs)), textcoords="offset points",
                    xytext=(4, 2), fontsize=7, color="C2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="both", which="minor", labelsize=7)
    ax.set_xlabel("size of the stored weights (KiB; .mrc: packed indices)")
    ax.set_ylabel("MNIST test error (%), .mrc: from the decoded file")
    ax.set_title("LeNet-5-Caffe (431,080 parameters)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "lenet5_mnist.json"))
    ap.add_argument("--plot", default=str(ROOT / "bench" / "results" / "lenet5_mnist.png"))
    ap.add_argument("--markdown", default=str(ROOT / "bench" / "results" / "lenet5_mnist.md"))
    ap.add_argument("--run", default=None, help="comma-separated budgets (bytes) to run first if missing")
    ap.add_argument("--method", default="mean-kl")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="more flags for examples/lenet5_mnist.py (after --)")
    args = ap.parse_args()
    path = Path(args.results)
    if args.run:
        sys.path.insert(0, str(ROOT / "examples"))
        import lenet5_mnist
        done = {(r["budget_bytes"], r["method"]) for r in (json.loads(path.read_text()) if path.exists() else [])}
        for b in (int(x) for x in args.run.split(",")):
            if (b, args.method) not in done:
                extra = [a for a in args.extra if a != "--"]
                lenet5_mnist.main(["--budget", str(b), "--method", args.method, "--results", str(path),
                                   "--out", str(ROOT / "bench" / f"lenet5-{b}-{args.method}.mrc"),
                                   "--label", f"{b}-{args.method}", *extra])
    if not path.exists():
        sys.exit(f"no results at {path}: run examples/lenet5_mnist.py --results {path} (or this script with --run)")
    runs = json.loads(path.read_text())
    text = "\n".join([
        "# LeNet-5-Caffe on MNIST: test error vs size", "",
        ("Every error is measured on the 10,000 test images from the saved .mrc file (decoded); "
         "sizes: index payload (what the papers count) and the whole file."), "",
        table(runs), "", "## One recipe, several seeds", "",
        ("Seed changes the batch order, the initial posterior noise and the file's coding seed; the spread is what "
         "one run of a recipe can tell apart."), "", seeds(runs), "",
        "## Mean-KL vs Mean-Var (one run each)", "", comparison(runs), "",
        "## Learned allocation (KL per group after the global-beta pre-phase)", "", allocations(runs), "",
        "Published (weights only): " + "; ".join(f"{lab}: {k:.2f} KiB at {e}%" for lab, k, e in PUBLISHED), ""])
    print(text)
    Path(args.markdown).write_text(text)
    plot(runs, Path(args.plot))
    print(f"table: {args.markdown}\nplot: {args.plot}")


if __name__ == "__main__":
    main()
