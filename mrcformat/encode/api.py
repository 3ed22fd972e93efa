"""`compress`: turn a trained PyTorch model into a `.mrc` file with MIRACLE.

    from mrcformat.encode import compress
    result = compress(model, train_loader, budget_bytes=1556, method="mean-var",
                      index_bits=16, hashing={"fc1": 64}, steps=6000)
    result.save("model.mrc")

Any floating-point parameter can be coded, whatever module holds it (`selection.py`: weights of
at least 64 values by default, a `CodeRule` or a callable to choose otherwise; with
biases="coded" a module's biases join its weights' group): one group per module (or per
tensor), p = N(0, sigma_p^2) per group (with `per_row`, times a fixed scale per row of a tensor:
format 1.1 group scales), blocks of `index_bits` bits allotted so that the packed indices fit
`budget_bytes`. Every other parameter and buffer is stored raw (float32 parameters are
trained as point estimates alongside). Linear/Conv2d weights are trained with the local
reparameterisation trick, every other coded parameter by sampling it once per step
(`layers.py`).

The model may take several (keyword) inputs and return tuples, dicts or nested outputs
(`signature.py`). With labels the objective is the user's loss (cross-entropy by default);
without them it is to reproduce the original model's outputs (`distill.py`), so
`compress(model, unlabelled_loader, budget)` needs nothing else. The architecture is stored as an
ONNX graph without weight data, exported and checked in onnxruntime before training starts
(`graph_check.py`), with a dynamic batch axis and the axes `dynamic_axes` marks.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrcformat.container import Container, Group, Tensor
from mrcformat.decoder import decode
from mrcformat.sampler import float_to_f32_bits
from mrcformat.writer import save, to_bytes

from .allocate import learn_allocation
from .blocks import GroupSpec, allocate_blocks, build_plan, scale_rows
from .digest import state_digest
from .distill import Distillation
from .distributed import CodingGroup
from .graph_check import export_checked
from .layers import make_variational
from .posterior import GroupPosterior
from .refine import refine
from .selection import BIASES, CodeRule, coded_specs
from .signature import batch_size, has_labels, split_batch
from .train import MiracleTrainer, TrainConfig

__all__ = ["BIASES", "CodeRule", "CompressResult", "coded_layer_specs", "compress", "export_graph"]

# settings that act only once training is over: runs that differ in these alone share a trained state
_CODING_SETTINGS = frozenset({"retrain_steps", "retrain_lr_factor", "blocks_per_round", "final_steps", "greedy",
                              "code"})

_DTYPE_NAMES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64",
    torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
    torch.bool: "bool",
}


def coded_layer_specs(model: nn.Module, biases: str = "coded", hashing: float | dict | None = None,
                      rule=None) -> list[GroupSpec]:
    """The coded groups of `model`: one per module with a coded parameter (`selection.coded_specs`)."""
    return coded_specs(model, biases, hashing, rule)


def export_graph(model: nn.Module, example_input, names: list[str] | None = None, *,
                 dynamic_axes: dict | None = None, check: bool = False) -> bytes | None:
    """ONNX architecture without the model's tensors (`graph_check.export_checked`; `names` must be the
    state_dict's, as the file names its tensors), or None (with a warning) if no exporter is installed."""
    try:
        import mrcformat_runtime.graph  # noqa: F401
    except ImportError:
        warnings.warn("mrcformat_runtime.graph.export_architecture is not available: the file has no architecture")
        return None
    if names is not None and list(names) != list(model.state_dict()):
        raise ValueError("the graph strips every state_dict tensor: names must be the state_dict's")
    return export_checked(model, example_input, dynamic_axes=dynamic_axes, check=check)


def _peek(loader):
    """The loader's first batch, with the random states that choose its order put back as they were,
    so that training sees the same batches as if nobody had looked."""
    gen = getattr(loader, "generator", None)
    saved = torch.get_rng_state(), (gen.get_state() if gen is not None else None)
    try:
        return next(iter(loader))
    finally:
        torch.set_rng_state(saved[0])
        if gen is not None:
            gen.set_state(saved[1])


@dataclass
class CompressResult:
    """The compressed model: `container` (what `save` writes) plus the run's record."""

    container: Container
    config: TrainConfig
    budget_bytes: int
    history: list = field(default_factory=list)
    coding: list = field(default_factory=list)
    train_seconds: float = 0.0
    code_seconds: float = 0.0
    wall_seconds: float = 0.0
    trained_weights: dict = field(default_factory=dict, repr=False)  # encoder's final coded weights
    allocation: dict = field(default_factory=dict)    # per group: blocks, block size, values, learned demand
    alloc_history: list = field(default_factory=list)  # the "kl" allocation pre-phase's training record
    refinement: list = field(default_factory=list)     # per refinement sweep: losses, blocks changed, kept
    refine_seconds: float = 0.0


    @property
    def payload_bytes(self) -> int:
        """Bytes of packed indices (what the MIRACLE papers count)."""
        return sum(g.payload_length for g in self.container.groups)

    def to_bytes(self) -> bytes:
        return to_bytes(self.container)

    def save(self, path: str | Path) -> int:
        """Write the `.mrc` file atomically; returns its size in bytes."""
        return save(self.container, path)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as a decoder sees them (decoded from the container, not from training state)."""
        return {k: torch.from_numpy(np.array(v)) for k, v in decode(self.container).items()}

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the decoded weights into (a model of) the original architecture; returns it."""
        model.load_state_dict(self.state_dict(), strict=True)
        return model

    def summary(self) -> dict:
        return {"payload_bytes": self.payload_bytes, "file_bytes": len(self.to_bytes()),
                "blocks": sum(g.num_blocks for g in self.container.groups),
                "method": self.config.method, "train_seconds": round(self.train_seconds, 1),
                "code_seconds": round(self.code_seconds, 1), "wall_seconds": round(self.wall_seconds, 1)}


def compress(model: nn.Module, train_loader, budget_bytes: int, *, method: str = "mean-var", index_bits: int = 12,
             biases: str = "coded", hashing: float | dict | None = None, allocation: str | dict = "sqrt",
             alloc_steps: int = 2000, refine_sweeps: int = 0, refine_examples: int = 10240,
             kl_margin: float = 0.0, init_std_ratio: float = 0.1, layout: str = "affine",
             example_input: torch.Tensor | None = None, metadata: dict[str, str] | None = None,
             loss_fn=None, batch_transform=None, teacher: nn.Module | None = None,
             distill_temperature: float = 4.0, distill_weight: float = 0.9, coding_group="auto",
             code=None, labels: bool | None = None, divergence="auto", dynamic_axes: dict | None = None,
             check_graph: bool = True, graph_deflate: bool = False, graph: bytes | None = None,
             group_by: str = "module", per_row: bool = False, **train_options) -> CompressResult | None:
    """Compress `model` (weights are the starting point) with MIRACLE into `budget_bytes` of indices.

    Args:
        model: any nn.Module (its parameters chosen by `code` get coded); left unchanged.
        train_loader: DataLoader of (inputs, target) batches, or of inputs alone (no labels); inputs
            are a tensor, a tuple of positional or a dict of keyword inputs (shuffling with a seeded
            `generator` makes runs reproducible and resumable).
        budget_bytes: cap on the packed index payload (e.g. 1556 for 1.52 KiB).
        method: "mean-var" (mean and variance trained, MIRACLE's per-block KL control) or "mean-kl"
            (q given by its mean and KL: each block's KL is its budget by construction). On LeNet-5
            Mean-Var reached the lower error for the same CPU time (bench/lenet5_mnist.py).
        index_bits: bits per block (K = 2**index_bits candidates scored per block).
        biases: "coded" (in the layer's group), "separate" (a group per bias, not hashed) or "raw"
            (stored as float32).
        hashing: weights per coded value (hashing trick), one ratio or {layer path: ratio}.
        allocation: how blocks are shared among groups: "kl" (learned: `alloc_steps` Mean-Var
            steps under one global KL penalty decide each group's share, then warm-start the
            main run; see `allocate.py`), "sqrt", "size" or {group name: share}.
        alloc_steps: length of the "kl" allocation pre-phase (before `steps`).
        refine_sweeps: once every block is coded, sweeps of index refinement (`refine.py`: each
            block re-chooses its candidate under a Fisher-weighted second-order model of the loss
            on `refine_examples` training examples; a sweep that does not lower that loss is undone).
        kl_margin: nats subtracted from each block's budget index_bits * ln 2.
        init_std_ratio: Mean-Var initial posterior std as a fraction of sigma_p.
        example_input: inputs for the architecture export (default: the first training batch's, the
            first example of a single tensor).
        loss_fn: (output, target) -> mean loss; default cross-entropy. Implies labelled batches.
        code: which parameters are coded: a `CodeRule` (min_size, include/exclude globs on names) or a
            callable (name, parameter) -> bool; default `CodeRule()` (see `selection.py`).
        labels: whether batches are (inputs, target); default: with `loss_fn`, or when a batch is a
            pair whose second item is a 1-d integer tensor as long as the batch. Without labels the
            objective is to reproduce the outputs of `teacher` (default: the model itself).
        divergence: how an output is compared with the teacher's (`distill.py`): "auto", "kl",
            "probs", "bce", "mse", a callable (student, teacher) -> loss, or {output name: one of these}.
        dynamic_axes: {input or output name: {axis: label} or [axes]}: axes of the stored graph
            that accept any size, on top of axis 0 (batch) of every input and output. Inputs are
            named "input", "input1", ... (keyword inputs by their keys), outputs as
            `signature.named_leaves` says ("output", "output1", ..., dict keys).
        check_graph: run the exported graph in onnxruntime against the model before training.
        graph_deflate: store the graph zlib-compressed (SPEC 1.1; a 1.0 reader cannot read the file).
        graph: a ready architecture graph for the file instead of the export (the caller answers for it
            reading the file's tensor names; `onnx_finetune` passes the original ONNX graph).
        group_by: "module" (a group per module) or "tensor" (a group per coded parameter).
        per_row: a coding scale per row (format 1.1 group scales, SPEC 4.2) for every group of one
            tensor without hashing (`blocks.scale_rows`: per axis-0 row, or runs of rows covering >= 64
            values): p of row k is N(0, (sigma_p * scale_k)^2), scale_k that row's RMS relative to the
            tensor's in the starting weights (2 bytes per row in the file). Groups of several tensors
            or hashed ones keep one sigma_p.
        batch_transform: (x, generator) -> x applied to every training batch, e.g. data augmentation
            (`augment.RandomShift`); its repr is part of the run's settings (checkpoints).
        teacher: a network whose outputs the compressed one learns (knowledge distillation,
            `distill.py`), typically the pretrained `model` itself; the data term becomes
            (1 - distill_weight) * loss_fn + distill_weight * (sum of each output's divergence,
            at temperature `distill_temperature` for logits). Refinement still uses `loss_fn` alone.
        coding_group: processes that share the coding work (`distributed.CodingGroup`): "auto" = the
            default torch.distributed group when one is initialised with more than one process, None =
            none. Every process calls `compress` with the same arguments; rank 0 trains and returns the
            result, the other ranks score candidates and return None. The file is the same for any
            number of processes.
        **train_options: fields of `TrainConfig` (steps, retrain_steps, blocks_per_round, lr, seed,
            device, checkpoint, greedy, progress, noise, ...). `noise="weights"` samples every coded
            weight once per step (hashed copies share their sample, as they share their value in the
            file) instead of a normal per pre-activation of each Linear/Conv2d (`"local"`, local
            reparameterisation, the default): where Linear/Conv2d carry the work a step then costs
            about a plain training step instead of ~2x (bench/train_step.py), with noise shared by
            the batch; LeNet-5 kept its errors (bench/results/lenet5_recipe_time.md). Other coded
            tensors are sampled once per step either way; on silero-vad fine-tuning (no Linear/Conv2d)
            weight noise still ended lower in all five seeds, cause not found
            (bench/results/silero_finetune_noise.md). `channels_last=True` runs the
            coded Conv2d layers (and so what follows them) in channels_last memory format: on a CPU,
            oneDNN's convolutions and torch's max-pool are much faster in it (a hashed weight-noise LeNet-5
            step 1.43x); sums round differently, so a run differs from the default layout's, and a
            model whose forward calls `.view` on a conv output needs `.reshape` (or `.flatten`).
            `trained_checkpoint=PATH` keeps the state at the end of training
            there; a later run that differs only in how it codes (retrain_steps, retrain_lr_factor,
            blocks_per_round, final_steps, greedy) starts from it and ends with the file it would
            have made from scratch.
    """
    t_start = time.perf_counter()
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(train_options) - known
    if unknown:
        raise TypeError(f"unknown options: {sorted(unknown)}")
    cfg = TrainConfig(method=method, **train_options)
    seed = int(cfg.seed) & ((1 << 64) - 1)
    torch.manual_seed(cfg.seed)

    specs = coded_specs(model, biases, hashing, code, group_by)
    if per_row:
        specs = [replace(s, rows=scale_rows(s.members[0][1])) if len(s.members) == 1 and not s.hashing else s
                 for s in specs]
    if not specs:
        raise ValueError(f"no parameter of the model is coded under {code or CodeRule()!r}: lower min_size or "
                         "name the parameters to code")
    shard = CodingGroup.current() if coding_group == "auto" else coding_group
    worker = shard is not None and not shard.coordinator
    batch0 = _peek(train_loader)
    labelled = labels if labels is not None else (loss_fn is not None or has_labels(batch0))
    inputs0, _ = split_batch(batch0, labelled)
    if example_input is None:
        example_input = inputs0[:1] if isinstance(inputs0, torch.Tensor) else inputs0
    if worker:  # scores candidates only: no allocation pre-phase, checkpoints or progress of its own
        cfg = replace(cfg, checkpoint=None, trained_checkpoint=None, progress=False)
    volatile = {"checkpoint", "checkpoint_every", "trained_checkpoint", "progress", "interrupt_after", "device",
                "generator"}
    settings = {"budget_bytes": budget_bytes, "index_bits": index_bits, "biases": biases, "hashing": hashing,
                "allocation": allocation, "alloc_steps": alloc_steps if allocation == "kl" else 0,
                **({"per_row": True} if per_row else {}),  # absent when off: earlier checkpoints still match
                "kl_margin": kl_margin, "init_std_ratio": init_std_ratio, "layout": layout,
                "batch_transform": repr(batch_transform),
                **{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in volatile}}
    for name, default in (("noise", "local"), ("channels_last", False)):
        if settings[name] == default:   # defaults left out: checkpoints made before the option still match
            del settings[name]
    if not labelled:        # the objective: reproduce the original model's outputs
        distill = Distillation(teacher if teacher is not None else model, distill_temperature, 1.0, divergence)
    else:
        distill = Distillation(teacher, distill_temperature, distill_weight, divergence) if teacher is not None else None
    if distill is not None:
        distill.prepare(inputs0)     # each output's divergence, fixed (and checked) before training
    settings["distill"] = repr(distill)
    settings["labels"] = labelled
    settings["code"] = repr(code)
    settings["dynamic_axes"] = repr(dynamic_axes)
    # the architecture is fixed (exported and run in onnxruntime) before any training
    settings["graph"] = hashlib.sha256(graph).hexdigest()[:16] if graph is not None else "export"
    settings["group_by"] = group_by
    if graph is None and not worker:
        checks = () if batch_size(inputs0) == batch_size(example_input) else (inputs0,)
        try:
            import mrcformat_runtime.graph  # noqa: F401
        except ImportError:
            warnings.warn("mrcformat_runtime.graph is not available: the file has no architecture")
        else:
            graph = export_checked(model, example_input, dynamic_axes=dynamic_axes, check_inputs=checks,
                                   check=check_graph)
    # The starting weights are part of what a checkpoint was trained from (a teacher's are in `distill`).
    settings["model_digest"] = state_digest(model)
    train_settings = {k: v for k, v in settings.items() if k not in _CODING_SETTINGS}
    coded_bias = biases != "raw"
    warm = None
    if allocation == "kl" and not worker:
        warm = learn_allocation(model, train_loader, specs, budget_bytes, index_bits, seed, cfg, steps=alloc_steps,
                                coded_bias=coded_bias, layout=layout, kl_margin=kl_margin,
                                init_std_ratio=init_std_ratio, loss_fn=loss_fn, fingerprint=repr(train_settings),
                                batch_transform=batch_transform, distill=distill, labelled=labelled)
        block_sizes = allocate_blocks(specs, budget_bytes, index_bits, warm.shares(specs))
        if cfg.interrupt_after is not None:     # counted over both phases
            cfg = replace(cfg, interrupt_after=cfg.interrupt_after - alloc_steps)
    elif allocation != "kl":
        block_sizes = allocate_blocks(specs, budget_bytes, index_bits, allocation)
    if shard is not None:  # the workers code the coordinator's plan
        block_sizes = shard.broadcast_ints(None if worker else block_sizes, len(specs))
    plans = build_plan(specs, block_sizes, index_bits, seed, layout)
    params = dict(model.state_dict())
    posteriors = []
    for g, plan in enumerate(plans):
        if warm is None:
            w = torch.cat([params[name].detach().reshape(-1).float().cpu() for name, _ in plan.spec.members])
            posteriors.append(GroupPosterior(plan, method, w, init_std_ratio=init_std_ratio, kl_margin=kl_margin))
        else:
            posteriors.append(GroupPosterior(plan, method, warm.weights[g], init_std_ratio=init_std_ratio,
                                             kl_margin=kl_margin, init_log_std=warm.log_std[g],
                                             init_log_sp=warm.log_sp[g]))
    vmodel, layers, generic = make_variational(model, {name for s in specs for name, _ in s.members})
    if warm is not None:
        vmodel.load_state_dict(warm.raw_state)
    trainer = MiracleTrainer(vmodel, layers, posteriors, train_loader, cfg, loss_fn=loss_fn, seed=seed,
                             batch_transform=batch_transform, distill=distill, generic=generic, labelled=labelled)
    if warm is not None:
        for beta in trainer.betas:
            beta.beta.fill_(warm.beta)      # every block starts where the global beta ended
    trainer.fingerprint = repr({**settings, "block_sizes": block_sizes})
    trainer.train_fingerprint = repr({**train_settings, "block_sizes": block_sizes})
    trainer.shard = shard
    trainer.run()
    if worker:
        return None
    refined = None
    if refine_sweeps > 0:
        refined = refine(trainer, sweeps=refine_sweeps, examples=refine_examples, progress=cfg.progress)

    # --- the container: coded groups + raw tensors in state_dict order + architecture ---------
    groups = [Group(float_to_f32_bits(0.0), int(p.frozen_sigma_bits), p.plan.block_size, p.plan.index_bits,
                    p.plan.num_values, p.plan.layout, p.plan.spec.hashing, p.index.cpu().numpy().astype(np.int64),
                    p.scale_bits())
              for p in trainer.posteriors]
    coded = {name: p.plan.gid for p in trainer.posteriors for name, _ in p.plan.spec.members}
    trained = trainer.model.state_dict()
    tensors = []
    for name, value in model.state_dict().items():
        if name in coded:
            tensors.append(Tensor(name, tuple(value.shape), "coded", group=coded[name]))
        else:
            data = trained.get(name, value).detach().cpu()
            tensors.append(Tensor(name, tuple(value.shape), "raw", dtype=_DTYPE_NAMES[data.dtype],
                                  data=data.view(torch.int16).numpy().view(np.uint16) if data.dtype == torch.bfloat16
                                  else data.numpy()))
    meta = {"encoder": "mrcformat.encode", "method": method, "budget_bytes": str(budget_bytes),
            "index_bits": str(index_bits)}
    meta.update(metadata or {})
    deflate = graph_deflate and graph is not None
    extra = {"graph_deflate": True} if deflate else {}
    if deflate or any(g.scales is not None for g in groups):  # format 1.1 features
        extra["version"] = (1, 1)
    container = Container(seed=seed, groups=groups, tensors=tensors, graph=graph, metadata=meta, **extra)
    with torch.no_grad():
        final = {name: mean.detach().cpu().clone() for p in trainer.posteriors
                 for name, (mean, _) in p.member_moments().items()}
    st = trainer.state
    pre_history = warm.history if warm is not None else []
    pre_time = warm.train_seconds if warm is not None else 0.0
    return CompressResult(container, cfg, budget_bytes, st.history, st.coding, st.train_time + pre_time,
                          st.code_time, time.perf_counter() - t_start, final,
                          allocation={s.name: {"blocks": p.plan.num_blocks, "block_size": p.plan.block_size,
                                               "values": p.plan.num_values,
                                               "demand_nats": (round(warm.demand_nats[g], 2) if warm else None)}
                                      for g, (s, p) in enumerate(zip(specs, trainer.posteriors))},
                          alloc_history=pre_history, refinement=refined.sweeps if refined else [],
                          refine_seconds=refined.seconds if refined else 0.0)
