"""`finetune_onnx`: MIRACLE training for an ONNX model, starting from its post-training `.mrc` file.

The post-training coder (`onnx_compress`) codes each weight close to the pretrained one without
looking at what the other weights do; training lets the coded network make up for its own errors.
Steps:
1. `compress_onnx` codes the model at the budget (its file is the starting point and the baseline);
2. the original model is converted to torch (`OnnxModule`: the ONNX graph run with torch ops) twice:
   the teacher, and the student whose pretrained weights are the posterior means to start from; each
   coded tensor keeps the post-training file's number of blocks (its rate-distortion allocation);
3. `compress` trains and codes the coded weights (a group per tensor) on the calibration feeds
   with no labels: the objective is to reproduce the original's outputs (by default the probe's D:
   per output, squared error relative to its power), the index payload the post-training file's.
   Mean-KL by default: on silero-vad at 1 bit per weight, 1,500 steps of it brought D on the
   training feeds from 0.107 (post-training) to 0.0083 and held-out frame agreement from 64% to
   91%, where Mean-Var's KL control, starting far above the budget, ended at D 0.058 and 30%
   (bench/results/silero_finetune.md). A streaming model analysed with `state=` is trained as it
   streams: each calibration sequence is one batch, run step by step with the student's own state
   carried (`Unrolled`);
4. the file keeps the post-training file's graph (the original graph, the coded weights as stubs,
   SPEC 7.6): only the coded tensors change. The output distortion of both files is measured on the
   calibration feeds by the post-training probe (the same number `compress_onnx` reports).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrcformat.container import Container
from mrcformat.decoder import decode
from mrcformat.reader import load
from mrcformat.writer import save

from .onnx_compress import Analysis, OnnxCompressReport, analyse, compress_onnx

__all__ = ["FinetuneReport", "RelativeSquaredError", "finetune_onnx", "probe_divergence"]


@dataclass
class FinetuneReport:
    output: str | None
    post_training: OnnxCompressReport
    file_bytes: int
    payload_bytes: int
    measured_distortion: float          # same measure as post_training.measured_distortion
    steps: int
    seconds: dict = field(default_factory=dict)
    history: list = field(default_factory=list, repr=False)
    kept: str = "fine-tuned"             # which file was written: "fine-tuned" or "post-training"
    finetuned_distortion: float = float("nan")  # the fine-tuned file's, written or not

    def summary(self) -> str:
        p = self.post_training
        if self.kept == "post-training":
            return (f"{self.file_bytes} bytes: the post-training file, output distortion {self.measured_distortion:.4g}, "
                    f"kept: {self.steps} MIRACLE steps gave {self.finetuned_distortion:.4g}")
        return (f"{self.file_bytes} bytes after {self.steps} MIRACLE steps: output distortion "
                f"{self.measured_distortion:.4g} (post-training {p.measured_distortion:.4g} at {p.file_bytes} bytes)")


def _loader(feeds: list[dict], seed: int):
    """Each calibration feed as one batch (a dict of keyword inputs), in a seeded random order."""
    import torch
    from torch.utils.data import DataLoader

    items = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in f.items()} for f in feeds]
    return DataLoader(items, batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(seed))


class RelativeSquaredError:
    """One output's term of the probe's D (`calibration`): mean squared error over its elements /
    the output's mean power on the calibration feeds. Summed over outputs this is the distortion the
    post-training coder minimises and both files are measured by, each output weighing alike
    whatever its size or layout (distill's "mse" sums over elements per dim-0 example: an LSTM state
    (2, B, 128) would outweigh a (B, 1) probability ~10^4 times)."""

    def __init__(self, power: float) -> None:
        self.power = float(power)

    def __call__(self, s, t):
        return (s - t).pow(2).mean() / self.power

    def __repr__(self) -> str:  # part of a run's settings (checkpoints compare it)
        return f"RelativeSquaredError({self.power!r})"


def probe_divergence(an: Analysis, outputs: list[str] | None = None) -> dict:
    """{module output name: divergence} for a module returning the graph outputs `outputs` (default all
    of the model's, in order): the probe's D term for each output it measures, distill's "mse" for any
    other float output (a state output the probe carries instead of measuring)."""
    import torch

    from .signature import named_leaves

    outputs = [o.name for o in an.model.graph.output] if outputs is None else outputs
    leaves = [n for n, _ in named_leaves(tuple(torch.zeros(1) for _ in outputs)
                                         if len(outputs) > 1 else torch.zeros(1))]
    power = an.probe.output_power
    return {leaf: RelativeSquaredError(power[o]) if o in power else "mse" for leaf, o in zip(leaves, outputs)}


def _unrolled_class():
    import torch

    class Unrolled(torch.nn.Module):
        """A converted streaming model run over a sequence of steps with its state carried, so that
        training sees what streaming does (errors in the state feed back; a teacher-forced step never
        shows it). Every input but the state has a leading time axis; a state input gives the first
        step's state. Returns the measured outputs stacked over time."""

        def __init__(self, module, state: dict[str, str], graph_outputs: list[str], measured: list[str]) -> None:
            super().__init__()
            self.module = module
            self.state = dict(state)
            self.graph_outputs, self.measured = list(graph_outputs), list(measured)

        def forward(self, **inputs):
            steps = {v.shape[0] for k, v in inputs.items() if k not in self.state}
            if len(steps) != 1:
                raise ValueError(f"every input but the state needs the same leading time axis, got {sorted(steps)}")
            carried: dict = {}
            outs = []
            for t in range(steps.pop()):
                feed = {k: carried.get(k, v) if k in self.state else v[t] for k, v in inputs.items()}
                ys = self.module(**feed)
                got = dict(zip(self.graph_outputs, ys if isinstance(ys, tuple) else (ys,)))
                carried = {i: got[o] for i, o in self.state.items()}
                outs.append([got[o] for o in self.measured])
            stacked = tuple(torch.stack([o[j] for o in outs]) for j in range(len(self.measured)))
            return stacked[0] if len(stacked) == 1 else stacked

    return Unrolled


def _sequence_loader(an: Analysis, seed: int):
    """One batch per probe sequence: every input but the state stacked on a new time axis 0, the state
    inputs of its first step (as recorded), in a seeded random order."""
    import torch
    from torch.utils.data import DataLoader

    p = an.probe
    items = []
    for q in p.sequences:
        first = p.feeds[q[0]]
        items.append({k: torch.from_numpy(np.ascontiguousarray(v if k in p.state else np.stack([p.feeds[i][k] for i in q])))
                      for k, v in first.items()})
    return DataLoader(items, batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(seed))


def finetune_onnx(model: str | os.PathLike | bytes | Analysis, output: str | os.PathLike | None, budget,
                  calibration=None, *, steps: int, index_bits: int = 12, seed: int = 0, progress: bool = True,
                  divergence="probe", keep_better: bool = True, analyse_options: dict | None = None,
                  per_row: bool = True, **train_options) -> FinetuneReport:
    """Post-training coding of `model` at `budget` (as `compress_onnx`), then `steps` MIRACLE steps from
    that file (module doc); writes `output` (None: do not write). `divergence` compares the outputs
    (default "probe": the post-training coder's D, which both files are measured by: per output, mean
    squared error over its elements relative to its mean power; or any of `compress`'s: "auto", "mse",
    a dict per output name, ...). `train_options` go to `compress`
    (retrain_steps, blocks_per_round, lr, method (default "mean-kl"), ...); by default each tensor keeps
    the post-training file's number of blocks and the blocks are coded in about 50 rounds with
    steps // 250 (at least 1) retraining steps after each. An analysis with `state=` trains on its
    sequences with the state carried (module doc). `keep_better`: when the fine-tuned file's output
    distortion on the calibration feeds is above the post-training file's (same payload), write the
    post-training file instead (`report.kept` says which; short runs and high rates can end there).
    `per_row`: each tensor's coding distribution gets a scale per row (format 1.1 group scales, as the
    post-training file has by default), so the prior follows each row's magnitude."""
    import onnx
    from mrcformat_runtime.onnx_to_torch import OnnxModule

    from .api import compress

    if steps < 1:
        raise ValueError("steps must be at least 1 (0 is the post-training file: compress_onnx)")
    t0 = time.perf_counter()
    an = model if isinstance(model, Analysis) else analyse(model, calibration, seed=seed, progress=progress,
                                                          **(analyse_options or {}))
    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp) / "post.mrc"
        post = compress_onnx(an, start, budget, index_bits=index_bits, seed=seed, progress=progress)
        post_container = load(start)
    t_post = time.perf_counter() - t0
    teacher = OnnxModule(onnx.ModelProto.FromString(an.model.SerializeToString()))
    # the posterior means start at the pretrained weights (the post-training file holds one noisy
    # sample of them: starting there only adds its coding error); the file gives the bit allocation
    student = OnnxModule(onnx.ModelProto.FromString(an.model.SerializeToString()))
    prefix = "_weights."
    names = student._names
    outputs = None
    loader = _loader(an.probe.feeds, seed)
    if an.probe.state:  # a streaming model calibrated with its state carried: train as it streams
        graph_outputs = [o.name for o in an.model.graph.output]
        outputs = list(an.probe.output_names)
        unrolled = _unrolled_class()
        teacher = unrolled(teacher, an.probe.state, graph_outputs, outputs)
        student = unrolled(student, an.probe.state, graph_outputs, outputs)
        prefix = "module._weights."
        loader = _sequence_loader(an, seed)
    keys = {f"{prefix}{names[s.name]}": s.name for s in an.sites}
    bias_like = [n for n in keys if n.rpartition(".")[2].startswith("bias")]
    if bias_like:
        raise ValueError(f"weights {sorted(keys[n] for n in bias_like)} have names the coder takes for biases")
    # each tensor gets the post-training file's blocks (its rate-distortion allocation on the probe)
    blocks_of = {t.name: post_container.groups[t.group].num_blocks for t in post_container.tensors
                 if t.encoding == "coded"}
    train_options.setdefault("allocation", {k: float(blocks_of[v]) for k, v in keys.items()})
    # coding in about 50 rounds, with retraining after each worth a fifth of the training steps in all
    blocks = max(1, post.payload_bytes * 8 // index_bits)
    train_options.setdefault("blocks_per_round", max(1, -(-blocks // 50)))
    train_options.setdefault("retrain_steps", max(1, steps // 250))
    if divergence == "probe":
        divergence = probe_divergence(an, outputs)
    train_options.setdefault("method", "mean-kl")
    t1 = time.perf_counter()
    result = compress(student, loader, post.payload_bytes, index_bits=index_bits,
                      steps=steps, seed=seed, progress=progress, labels=False, teacher=teacher, biases="raw",
                      divergence=divergence,
                      code=lambda name, p: name in keys, group_by="tensor", graph=post_container.graph,
                      per_row=per_row, **train_options)
    t_train = time.perf_counter() - t1
    c = result.container
    tuned = {keys[t.name]: dataclasses.replace(t, name=keys[t.name]) for t in c.tensors if t.name in keys}
    if len(tuned) != len(keys) or any(t.encoding != "coded" for t in tuned.values()):
        raise RuntimeError("not every post-training tensor was coded by the fine-tuning run")
    # the post-training file's tensors in its order: the coded ones from this run, the raw ones (the
    # float16 values filling float32 stubs, SPEC 7.6) as they are: without them their stubs stay empty
    tensors = [tuned.get(t.name, t) if t.encoding == "coded" else t for t in post_container.tensors]
    meta = {**post_container.metadata, "encoder": "mrcformat post-training + MIRACLE", "miracle_steps": str(steps)}
    container = Container(seed=c.seed, groups=c.groups, tensors=tensors, graph=post_container.graph, metadata=meta,
                          version=max(post_container.version, c.version), graph_deflate=post_container.graph_deflate)
    decoded = decode(container)
    tuned_d = measured = an.probe.distortion({i: np.asarray(decoded[s.name]) for i, s in enumerate(an.sites)})
    kept = "fine-tuned"
    if keep_better and measured > post.measured_distortion:
        container, measured, kept = post_container, post.measured_distortion, "post-training"
    from mrcformat.writer import to_bytes

    size = save(container, output) if output is not None else len(to_bytes(container))
    return FinetuneReport(str(output) if output is not None else None, post, size,
                          sum(g.payload_length for g in container.groups), measured, steps,
                          {"post_training": t_post, "miracle": t_train, "total": time.perf_counter() - t0},
                          result.history, kept, tuned_d)
