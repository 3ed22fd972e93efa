"""`finetune_onnx`: MIRACLE training for an ONNX model, starting from its post-training `.mrc` file.

The post-training coder (`onnx_compress`) codes each weight close to the pretrained one without
looking at what the other weights do; training lets the coded network make up for its own errors.
Steps:
1. `compress_onnx` codes the model at the budget (its file is the starting point and the baseline);
2. the post-training file is loaded as a torch module with the converter (`load_module`: the
   ONNX graph run with torch ops, the file's decoded weights as its parameters), and the original
   model is converted the same way as the teacher;
3. `compress` trains and codes the coded weights (a group per tensor) on the calibration feeds
   with no labels: the objective is to reproduce the original's outputs, the index payload the
   post-training file's;
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

__all__ = ["FinetuneReport", "finetune_onnx"]


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

    def summary(self) -> str:
        p = self.post_training
        return (f"{self.file_bytes} bytes after {self.steps} MIRACLE steps: output distortion "
                f"{self.measured_distortion:.4g} (post-training {p.measured_distortion:.4g} at {p.file_bytes} bytes)")


def _loader(feeds: list[dict], seed: int):
    """Each calibration feed as one batch (a dict of keyword inputs), in a seeded random order."""
    import torch
    from torch.utils.data import DataLoader

    items = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in f.items()} for f in feeds]
    return DataLoader(items, batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(seed))


def finetune_onnx(model: str | os.PathLike | bytes | Analysis, output: str | os.PathLike | None, budget,
                  calibration=None, *, steps: int, index_bits: int = 12, seed: int = 0, progress: bool = True,
                  divergence="mse", analyse_options: dict | None = None, **train_options) -> FinetuneReport:
    """Post-training coding of `model` at `budget` (as `compress_onnx`), then `steps` MIRACLE steps from
    that file (module doc); writes `output` (None: do not write). `divergence` compares the outputs
    (default "mse": the squared error the post-training coder minimises and both files are measured
    by; "auto" chooses per output as `compress` does). `train_options` go to `compress`
    (retrain_steps, blocks_per_round, lr, method, ...); by default the blocks are coded in about 50
    rounds with steps // 250 (at least 1) retraining steps after each."""
    import onnx
    import torch
    from mrcformat_runtime.onnx_to_torch import OnnxModule
    from mrcformat_runtime.torch_load import load_module

    from .api import compress

    if steps < 1:
        raise ValueError("steps must be at least 1 (0 is the post-training file: compress_onnx)")
    t0 = time.perf_counter()
    an = model if isinstance(model, Analysis) else analyse(model, calibration, seed=seed, progress=progress,
                                                          **(analyse_options or {}))
    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp) / "post.mrc"
        post = compress_onnx(an, start, budget, index_bits=index_bits, seed=seed, progress=progress)
        student = load_module(start)
        post_container = load(start)
    t_post = time.perf_counter() - t0
    teacher = OnnxModule(onnx.ModelProto.FromString(an.model.SerializeToString()))
    keys = {f"_weights.{student._names[s.name]}": s.name for s in an.sites}
    bias_like = [n for n in keys if n.rpartition(".")[2].startswith("bias")]
    if bias_like:
        raise ValueError(f"weights {sorted(keys[n] for n in bias_like)} have names the coder takes for biases")
    # coding in about 50 rounds, with retraining after each worth a fifth of the training steps in all
    blocks = max(1, post.payload_bytes * 8 // index_bits)
    train_options.setdefault("blocks_per_round", max(1, -(-blocks // 50)))
    train_options.setdefault("retrain_steps", max(1, steps // 250))
    t1 = time.perf_counter()
    result = compress(student, _loader(an.probe.feeds, seed), post.payload_bytes, index_bits=index_bits,
                      steps=steps, seed=seed, progress=progress, labels=False, teacher=teacher, biases="raw",
                      divergence=divergence,
                      code=lambda name, p: name in keys, group_by="tensor", graph=post_container.graph,
                      **train_options)
    t_train = time.perf_counter() - t1
    c = result.container
    tensors = [dataclasses.replace(t, name=keys[t.name]) for t in c.tensors if t.name in keys]
    if len(tensors) != len(keys) or any(t.encoding != "coded" for t in tensors):
        raise RuntimeError("not every post-training tensor was coded by the fine-tuning run")
    meta = {**post_container.metadata, "encoder": "mrcformat post-training + MIRACLE", "miracle_steps": str(steps)}
    container = Container(seed=c.seed, groups=c.groups, tensors=tensors, graph=post_container.graph, metadata=meta,
                          version=post_container.version, graph_deflate=post_container.graph_deflate)
    decoded = decode(container)
    measured = an.probe.distortion({i: np.asarray(decoded[s.name]) for i, s in enumerate(an.sites)})
    from mrcformat.writer import to_bytes

    size = save(container, output) if output is not None else len(to_bytes(container))
    return FinetuneReport(str(output) if output is not None else None, post, size,
                          sum(g.payload_length for g in container.groups), measured, steps,
                          {"post_training": t_post, "miracle": t_train, "total": time.perf_counter() - t0},
                          result.history)
