"""Compress LeNet-5-Caffe on MNIST with MIRACLE and check the file by decoding it.

    python examples/lenet5_mnist.py --quick          # ~3 KiB of indices, about 4 minutes on 2 CPU cores
    # the bundled files (seed 1, one thread: byte-identical reruns; ~25 and ~40 min on this CPU):
    python examples/lenet5_mnist.py --threads 1 --budget 1556 --hashing fc1=64,conv2=8,fc2=4 --shift 1 \
        --retrain-lr 0.5 --out examples/lenet5-small.mrc --checkpoint small.ckpt
    python examples/lenet5_mnist.py --threads 1 --budget 3102 --hashing fc1=32,conv2=4,fc2=2 --shift 1 \
        --retrain-lr 1 --retrain-steps 120 --init examples/lenet5-pretrained-shift1.safetensors \
        --out examples/lenet5-accurate.mrc --checkpoint accurate.ckpt
    # the starting networks: examples/lenet5-pretrained.safetensors (15 epochs, 0.67%) and
    # examples/lenet5-pretrained-shift1.safetensors (20 epochs on images shifted by up to 1 pixel, 0.49%;
    # a one-thread rerun gives the same weights, ~4 min):
    python examples/lenet5_mnist.py --pretrain --threads 1 --init examples/lenet5-pretrained.safetensors
    python examples/lenet5_mnist.py --pretrain --threads 1 --pretrain-epochs 20 --pretrain-shift 1 \
        --init examples/lenet5-pretrained-shift1.safetensors

Defaults: Mean-Var, 16-bit blocks, KL target 16 ln 2 - 1 nats per block, hashing fc1=32,conv2=4,fc2=2,
10000 training steps, then about 260 coding rounds with 20 retraining steps after each; each block
keeps its highest-weight candidate (`--choice sampled`: MIRACLE's seeded sample).
The run starts from a bundled pretrained network (float16): by default examples/lenet5-pretrained.safetensors
(0.67% test error), or `--init FILE`, e.g. the augmented one (0.49%) that the accurate file starts from;
`--pretrain` trains one into `--init`. The test error printed at the end is measured on the
10,000 MNIST test images from the saved .mrc file alone: onnxruntime on the stored graph with
the decoded weights (or, when the file has no graph, the numpy-decoded weights in the torch model).
`--noise weights` samples the weights once per step instead of local reparameterisation's noise per
pre-activation: each step about half the time, errors within the recipes' seed spread
(bench/results/lenet5_mnist.md), files of their own (not the bundled ones).
`--channels-last` computes the convolutions in channels_last memory format (1.2-1.45x faster LeNet-5
steps on a CPU); with `--shift` the batches already have channels_last strides (the recipes above run so already):
with `--noise weights` the flag then gives the same file; with local noise another one (the noise is
drawn in channels_last order), at about the same speed.
An interrupted run given the same `--checkpoint` continues where it stopped and ends with the same file.
Runs given the same `--trained-checkpoint` train once: later ones start coding from the trained state.
`--results FILE.json` adds the run's record (sizes, error, times, KL history) for bench/lenet5_mnist.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lenet5_model import LeNet5, pretrain

import mrcformat
from mrcformat.encode import compress
from mrcformat.encode.augment import RandomShift
from mrcformat.encode.mnist import load_mnist, mnist_loaders

DATA = HERE / "data"
PRETRAINED = HERE / "lenet5-pretrained.safetensors"
QUICK = {"budget": 3102, "bits": 10, "steps": 2500, "retrain_steps": 2, "blocks_per_round": 32}


def load_pretrained(path: Path = PRETRAINED) -> LeNet5:
    from safetensors.torch import load_file
    model = LeNet5()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model


def test_error_of_file(path: str | Path, data_dir: Path = DATA) -> tuple[float, str]:
    """Test error (%) of the network stored in a .mrc file, and how it was run."""
    x, y = load_mnist(data_dir, "test")
    container = mrcformat.load(path)
    if container.graph is not None:
        try:
            from mrcformat_runtime.ort import session
            sess, how = session(str(path)), "onnxruntime (mrcformat_runtime.ort)"
        except ImportError:
            import onnx
            import onnxruntime as ort
            from onnx import numpy_helper
            model = onnx.load_from_string(container.graph)
            for name, arr in mrcformat.decode(container).items():
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            how = "onnxruntime (graph + mrcformat.decode)"
        name = sess.get_inputs()[0].name
        logits = np.concatenate([sess.run(None, {name: x[i:i + 1000].numpy()})[0] for i in range(0, len(x), 1000)])
        pred = torch.from_numpy(logits).argmax(1)
    else:
        model = LeNet5()
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mrcformat.decode(container).items()})
        with torch.no_grad():
            pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
        how = "torch with mrcformat.decode weights (file has no graph)"
    return 100.0 * float((pred != y).float().mean()), how


def thin_history(history: list[dict]) -> list[dict]:
    """Every record of the first 2000 steps (where the KL meets its budget), then one per 500 steps; 4 digits."""
    keep = [h for h in history if h["step"] <= 2000 or h["step"] % 500 == 0 or h is history[-1]]
    return [{k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in h.items()} for h in keep]


def add_record(path: Path, record: dict) -> None:
    """Replace the run with the same label in the JSON list at `path` (locked: runs may end together)."""
    import fcntl
    import hashlib
    import tempfile

    from mrcformat.atomic import atomic_write_bytes

    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"mrc-results-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(path.read_text()) if path.exists() else []
        runs = [r for r in runs if r.get("label") != record["label"]] + [record]
        atomic_write_bytes(path, json.dumps(runs, indent=1).encode())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"small fast run: {QUICK}")
    ap.add_argument("--budget", type=int, default=1556, help="index payload budget in bytes (1556 = 1.52 KiB)")
    ap.add_argument("--method", choices=["mean-kl", "mean-var"], default="mean-var")
    ap.add_argument("--bits", type=int, default=16, help="index bits per block")
    ap.add_argument("--steps", type=int, default=10000, help="variational training steps before coding")
    ap.add_argument("--retrain-steps", type=int, default=20, help="training steps after each coding round (I)")
    ap.add_argument("--blocks-per-round", type=int, default=None,
                    help="blocks coded per round (default: enough for about 260 rounds)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-scale", type=float, default=1e-2)
    ap.add_argument("--kl-margin", type=float, default=1.0, help="nats below index_bits * ln 2 per block")
    ap.add_argument("--allocation", default="sqrt",
                    help='blocks per layer: "kl" (learned in a pre-phase), "sqrt" or "size"')
    ap.add_argument("--alloc-steps", type=int, default=2000, help="length of the --allocation kl pre-phase")
    ap.add_argument("--hashing", default="fc1=32,conv2=4,fc2=2",
                    help="weights per coded value (hashing trick): one ratio, or per layer, e.g. fc1=32,conv2=4")
    ap.add_argument("--biases", choices=["coded", "separate", "raw"], default="coded")
    ap.add_argument("--choice", choices=["greedy", "sampled"], default="greedy",
                    help="index of each block: its highest-weight candidate, or MIRACLE's seeded sample")
    ap.add_argument("--noise", choices=["local", "weights"], default="local",
                    help="training noise: a normal per pre-activation (local reparameterisation, two products "
                         "per layer) or one weight sample per step (one product per layer, about twice as fast)")
    ap.add_argument("--channels-last", action="store_true",
                    help="the convolutions (and max-pools) in channels_last memory format: on a CPU a step is "
                         "1.2-1.45x faster (LeNet-5). With --shift little changes: shifted batches already arrive with "
                         "channels_last strides, so the recipes above already compute in that layout (with "
                         "--noise weights the same file; with local noise the noise is drawn in another order)")
    ap.add_argument("--refine-sweeps", type=int, default=0,
                    help="after coding, sweeps re-choosing each index for the loss (Fisher-weighted model)")
    ap.add_argument("--retrain-lr", type=float, default=None,
                    help="lr factor while coding (default: 0.1, where the cosine decay of training ends)")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="weight of distillation from the pretrained network (0: labels only)")
    ap.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shift", type=int, default=0,
                    help="augment training batches: random translations of up to this many pixels")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="lenet5-quick.mrc")
    ap.add_argument("--checkpoint", default=None, help="checkpoint file: resume from it if present")
    ap.add_argument("--trained-checkpoint", default=None,
                    help="state at the end of training: written once, then shared by runs that differ only in "
                         "--retrain-steps, --retrain-lr, --blocks-per-round or --choice")
    ap.add_argument("--results", default=None, help="JSON file to add this run's record to (for bench/)")
    ap.add_argument("--label", default=None)
    ap.add_argument("--init", type=Path, default=PRETRAINED,
                    help="starting network (safetensors, LeNet5 state dict); default: the bundled one")
    ap.add_argument("--pretrain", action="store_true",
                    help="train a starting network, write it to --init and exit")
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--pretrain-shift", type=int, default=0,
                    help="augment pretraining batches: random translations of up to this many pixels")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pretrain:
        pretrain(str(DATA), str(args.init), epochs=args.pretrain_epochs, threads=args.threads, shift=args.pretrain_shift)
        return {}
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)

    if args.blocks_per_round is None:
        args.blocks_per_round = max(1, math.ceil(args.budget * 8 // args.bits / 260))
    hashing = None if args.hashing in (None, "", "none") else args.hashing
    if hashing is not None:
        hashing = ({k: float(v) for k, v in (kv.split("=") for kv in hashing.split(","))} if "=" in hashing
                   else float(hashing))
    train_loader, _ = mnist_loaders(DATA, batch_size=args.batch_size, seed=args.seed)
    model = load_pretrained(args.init)
    forked = bool(args.trained_checkpoint) and Path(args.trained_checkpoint).exists()
    t0 = time.perf_counter()
    result = compress(model, train_loader, budget_bytes=args.budget, method=args.method, index_bits=args.bits,
                      steps=args.steps, retrain_steps=args.retrain_steps, blocks_per_round=args.blocks_per_round,
                      lr=args.lr, lr_scale=args.lr_scale, kl_margin=args.kl_margin, allocation=args.allocation,
                      alloc_steps=args.alloc_steps, refine_sweeps=args.refine_sweeps,
                      batch_transform=RandomShift(args.shift) if args.shift else None,
                      teacher=model if args.distill > 0 else None, distill_weight=args.distill,
                      distill_temperature=args.temperature, retrain_lr_factor=args.retrain_lr,
                      hashing=hashing, biases=args.biases, greedy=args.choice == "greedy", seed=args.seed,
                      noise=args.noise, channels_last=args.channels_last,
                      device=args.device, checkpoint=args.checkpoint,
                      trained_checkpoint=args.trained_checkpoint, progress=not args.no_progress,
                      example_input=torch.zeros(1, 1, 28, 28),
                      metadata={"model": "LeNet-5-Caffe", "dataset": "MNIST"})
    wall = time.perf_counter() - t0
    size = result.save(args.out)
    err, how = test_error_of_file(args.out)
    record = {"label": args.label or Path(args.out).stem, "out": str(args.out), "budget_bytes": args.budget,
              "method": args.method, "index_bits": args.bits, "steps": args.steps, "noise": args.noise,
              **({"channels_last": True} if args.channels_last else {}),
              "retrain_steps": args.retrain_steps, "blocks_per_round": args.blocks_per_round,
              "hashing": args.hashing, "kl_margin": args.kl_margin, "biases": args.biases,
              "greedy": args.choice == "greedy", "shift": args.shift, "retrain_lr": args.retrain_lr,
              "distill": args.distill, "temperature": args.temperature if args.distill > 0 else None,
              "refine_sweeps": args.refine_sweeps, "refinement": result.refinement,
              "refine_seconds": round(result.refine_seconds, 1),
              "allocation": args.allocation, "alloc_steps": args.alloc_steps if args.allocation == "kl" else 0,
              "groups": result.allocation,
              "payload_bytes": result.payload_bytes, "file_bytes": size, "test_error_percent": round(err, 2),
              "evaluated_with": how, "wall_seconds": round(wall, 1), "train_seconds": round(result.train_seconds, 1),
              "code_seconds": round(result.code_seconds, 1), "blocks": result.summary()["blocks"],
              "kl_budget_nats": round(result.summary()["blocks"] * args.bits * math.log(2) - 0.0, 1),
              "seed": args.seed, "device": args.device, "init": args.init.name,
              "from_trained_checkpoint": forked,   # wall_seconds then leaves out the shared training
              "history": thin_history(result.history)}
    print(f"index payload: {result.payload_bytes} bytes ({result.payload_bytes / 1024:.2f} KiB)")
    print(f"file size:     {size} bytes ({args.out})")
    print(f"test error:    {err:.2f}%  [{how}]")
    for name, g in result.allocation.items():
        demand = f", learned demand {g['demand_nats']:.0f} nats" if g["demand_nats"] is not None else ""
        print(f"  group {name:<12} {g['blocks']:>5} blocks x {g['block_size']:>3} values{demand}")
    for r in result.refinement:
        print(f"  refinement sweep {r['sweep']}: training loss {r['loss_before']:.4f} -> {r['loss_after']:.4f}, "
              f"{r['changed_blocks']} blocks changed, {'kept' if r['kept'] else 'undone'}")
    print(f"wall time:     {wall:.0f} s (training {result.train_seconds:.0f} s, coding {result.code_seconds:.0f} s)")
    if args.results:
        add_record(Path(args.results), record)
    return record


if __name__ == "__main__":
    main()
