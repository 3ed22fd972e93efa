"""The MIRACLE training and coding loop.

Schedule (one "action" = one optimiser step or one coding round):
1. `steps` steps of variational training (Mean-Var: with per-block KL control; Mean-KL: the
   expected loss only, each block's KL is its budget by construction);
2. freeze every group's coding distribution (sigma_p rounded to bfloat16);
3. repeat until every block is coded: code `blocks_per_round` blocks (their weights become the
   chosen candidates), then train the rest for `retrain_steps` steps;
4. `final_steps` steps for the parameters stored raw (if any).

Resumable: with a checkpoint path the full state (parameters, coded indices, betas, optimiser,
noise generator, data order and position, history) is saved atomically every
`checkpoint_every` actions and at the end; a run started again with the same arguments
continues from it and ends with the same result as an uninterrupted run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from torch.func import functional_call

from .checkpoint import load_checkpoint, save_checkpoint
from .coding import candidate_scorer, candidate_source, code_blocks
from .distributed import CodingGroup
from .kl_control import BlockBeta
from .layers import _VAR_FLOOR, VariationalConv2d
from .posterior import GroupPosterior
from .signature import batch_size, call, split_batch, to_device

__all__ = ["NOISE", "Interrupted", "MiracleTrainer", "ResumableBatches", "TrainConfig"]

NOISE = ("local", "weights")


@dataclass
class TrainConfig:
    method: str = "mean-var"
    steps: int = 2000               # variational training before coding
    retrain_steps: int = 10         # I: steps after each coding round
    retrain_lr_factor: float | None = None  # lr factor while coding (default: lr_min_factor, where the decay ended)
    blocks_per_round: int = 1
    final_steps: int = 0            # steps for raw parameters once everything is coded
    lr: float = 1e-3                # means and raw parameters
    lr_scale: float = 1e-2          # log std (Mean-Var), logits and nu (Mean-KL), log sigma_p
    lr_min_factor: float = 0.1      # lr decays (cosine) to lr * lr_min_factor over `steps`, then stays
    beta0: float = 1e-2             # Mean-Var: initial KL coefficient per block (ELBO units)
    beta_eps: float = 1e-2          # Mean-Var: beta multiplied / divided by (1 + eps) per step
    kl_control: str = "block"       # Mean-Var: "block" (a beta per block, MIRACLE) or "global" (one beta, total KL)
    code: bool = True               # False: train `steps` steps and stop (allocation pre-phase)
    greedy: bool = False            # coding: largest weight instead of the seeded MIRACLE sample
    seed: int = 0
    device: str = "cpu"
    generator: str = "auto"         # candidate scorer: "native" (compiled kernels), "numpy", "torch" or "auto"
    noise: str = "local"            # "local": a normal per pre-activation (local reparameterisation) in Linear/Conv2d;
                                    # "weights": one weight sample per step, per coded value (the cost of a plain step)
    channels_last: bool = False     # coded Conv2d layers compute in channels_last memory format: on a CPU
                                    # oneDNN's convolutions and torch's max-pool run much faster in it (LeNet-5);
                                    # the sums round differently, so runs differ from the default layout's
    checkpoint: str | None = None
    checkpoint_every: int = 500     # actions between checkpoints
    trained_checkpoint: str | None = None  # state at the end of training, shared by runs that differ only in coding
    progress: bool = True
    history_every: int = 50
    num_examples: int | None = None  # training-set size for the ELBO scale (default: len(dataset))
    interrupt_after: int | None = None  # testing aid: checkpoint and raise Interrupted after this many actions


class Interrupted(RuntimeError):
    """Raised when `interrupt_after` actions are done (the checkpoint holds the state)."""


class ResumableBatches:
    """Endless batches from a DataLoader whose order and position can be saved and restored."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.epoch, self.pos = 0, 0
        self._it = None
        self._epoch_rng = None

    def _gen(self) -> torch.Generator:
        return getattr(self.loader, "generator", None) or torch.default_generator

    def _start_epoch(self) -> None:
        self._epoch_rng = self._gen().get_state()
        self._it = iter(self.loader)

    def next(self):
        if self._it is None:
            self._start_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.pos = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._it)
        self.pos += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "rng": self._epoch_rng}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]
        if s["rng"] is None:
            self._it = None
            return
        global_state = torch.get_rng_state()
        self._gen().set_state(s["rng"])
        self._epoch_rng = s["rng"]
        self._it = iter(self.loader)
        for _ in range(self.pos):
            next(self._it)
        torch.set_rng_state(global_state)


@dataclass
class _State:
    action: int = 0
    step: int = 0
    coded_rounds: int = 0
    pending: int = 0                # training steps left before the next coding round
    frozen: bool = False
    train_time: float = 0.0
    code_time: float = 0.0
    history: list = field(default_factory=list)
    coding: list = field(default_factory=list)


class MiracleTrainer:
    """Owns the variational model, the group posteriors and the schedule."""

    def __init__(self, vmodel: nn.Module, layers: dict, posteriors: list[GroupPosterior], loader,
                 config: TrainConfig, loss_fn=None, seed: int = 0, batch_transform=None, distill=None,
                 generic: list[str] | None = None, labelled: bool = True) -> None:
        """`generic`: coded parameters that are buffers of `vmodel` (`layers.make_variational`), sampled
        per step and passed with functional_call. `labelled`: batches are (inputs, target) and the data
        term is `loss_fn` (mixed with `distill` if given); otherwise a batch is the inputs alone and the
        data term is `distill`'s soft term (matching the teacher's outputs)."""
        self.cfg = config
        self.generic = list(generic or [])
        self.labelled = labelled
        if not labelled and distill is None:
            raise ValueError("a run without labels needs a teacher to match (distill)")
        self.device = torch.device(config.device)
        self.model = vmodel.to(self.device)
        self.layers = layers
        self.posteriors = nn.ModuleList(posteriors).to(self.device)
        self.batches = ResumableBatches(loader)
        self.loss_fn = loss_fn or F.cross_entropy
        self.batch_transform = batch_transform   # (x, generator) -> x on training batches (augmentation)
        self.distill = distill.to(self.device) if distill is not None else None  # distill.Distillation
        self.seed = seed
        self.num_examples = config.num_examples or len(loader.dataset)
        if config.noise not in NOISE:
            raise ValueError(f"noise must be one of {NOISE}, not {config.noise!r}")
        if config.kl_control not in ("block", "global"):
            raise ValueError(f"kl_control must be 'block' or 'global', not {config.kl_control!r}")
        self.betas = nn.ModuleList([BlockBeta(p.plan.num_blocks, config.beta0, config.beta_eps)
                                    for p in posteriors]).to(self.device)
        self.global_beta = BlockBeta(1, config.beta0, config.beta_eps).to(self.device)
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(config.seed * 2654435761 % (1 << 63) + 12345)
        for layer in layers.values():
            layer.generator = self.noise
            if isinstance(layer, VariationalConv2d):
                layer.channels_last = bool(config.channels_last)
        self._owner = {}  # coded tensor name -> posterior index
        for i, p in enumerate(posteriors):
            for name, _ in p.plan.spec.members:
                self._owner[name] = i
        self.order = sorted(((b + 0.5) / p.plan.num_blocks, i, b)
                            for i, p in enumerate(posteriors) for b in range(p.plan.num_blocks))
        self.num_rounds = math.ceil(len(self.order) / config.blocks_per_round)
        self.opt = torch.optim.Adam(self._param_groups())
        self.state = _State()
        self.gen = candidate_source(self.device, config.generator)
        self.scorer = candidate_scorer(self.device, config.generator)
        self.shard: CodingGroup | None = None   # set by compress() when coding is spread over processes
        self.fingerprint = ""  # set by compress(): the run's settings; a checkpoint of other settings is refused
        self.train_fingerprint = ""  # the settings that shape training alone (see `trained_checkpoint`)

    # --- parameters and forward -----------------------------------------------------------
    def _param_groups(self) -> list[dict]:
        scale_names = ("log_std", "logits", "nu", "log_sp")
        fast, slow = [], []
        for p in self.posteriors:
            for name, param in p.named_parameters():
                (fast if name in scale_names else slow).append(param)
        post_ids = {id(q) for q in self.posteriors.parameters()}
        raw = [q for q in self.model.parameters() if id(q) not in post_ids]
        return [{"params": slow + raw, "lr": self.cfg.lr, "base_lr": self.cfg.lr},
                {"params": fast, "lr": self.cfg.lr_scale, "base_lr": self.cfg.lr_scale}]

    @property
    def has_raw_parameters(self) -> bool:
        return any(True for _ in self.model.parameters())

    def set_moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Hand every variational layer its moments; returns {coded name: (mean, var)}.

        With `noise="weights"` in training mode every coded tensor gets one sample instead,
        (sample, None): the layers then compute their plain product with it."""
        moments = {}
        if self.cfg.noise == "weights" and self.model.training:
            for p in self.posteriors:
                moments.update({name: (w, None) for name, w in p.member_samples(self.noise).items()})
        else:
            for p in self.posteriors:
                moments.update(p.member_moments())
        for layer in self.layers.values():
            wm, wv = moments[layer.weight_name]
            bm = bv = None
            if layer.coded_bias:
                bm, bv = moments[layer.bias_name]
            layer.set_moments(wm, wv, bm, bv)
        return moments

    def _generic_weights(self, moments: dict) -> dict[str, torch.Tensor]:
        """The generic coded parameters: one sample per step in training mode (drawn in `generic` order
        from the run's noise generator), the means in eval mode."""
        out = {}
        for name in self.generic:
            mean, var = moments[name]
            if self.model.training and var is not None:
                noise = torch.randn(mean.shape, generator=self.noise, device=mean.device, dtype=mean.dtype)
                out[name] = mean + torch.sqrt(var + _VAR_FLOOR) * noise
            else:
                out[name] = mean
        return out

    def forward(self, x):
        try:
            return self._forward(x)
        except RuntimeError as e:
            if self.cfg.channels_last and "view size is not compatible" in str(e):
                raise RuntimeError(f"{e}\nWith channels_last=True the conv outputs are channels_last tensors: "
                                   "the model's forward must use .reshape (or .flatten) where it uses .view on "
                                   "them, or train without channels_last") from e
            raise

    def _forward(self, x):
        moments = self.set_moments()
        if not self.generic:
            return self.model(x) if isinstance(x, torch.Tensor) else call(self.model, x)
        weights = self._generic_weights(moments)
        if isinstance(x, dict):
            return functional_call(self.model, weights, (), dict(x), strict=False)
        args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        return functional_call(self.model, weights, args, strict=False)

    def split(self, batch) -> tuple:
        """(inputs, target) of a loader batch on the run's device (target None without labels)."""
        x, y = split_batch(batch, self.labelled)
        return to_device(x, self.device), (to_device(y, self.device) if y is not None else None)

    def data_loss(self, out, y, x) -> torch.Tensor:
        """The data term of the objective for outputs `out` of inputs `x` (targets `y`, None without labels)."""
        if not self.labelled:
            return self.distill.soft_loss(out, x)
        nll = self.loss_fn(out, y)
        return nll if self.distill is None else self.distill(out, nll, x)

    @staticmethod
    def batch_examples(x, y) -> int:
        return len(y) if y is not None else batch_size(x)

    # --- one training step ----------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        f = self.cfg.lr_min_factor
        if step >= self.cfg.steps:
            return f if self.cfg.retrain_lr_factor is None else self.cfg.retrain_lr_factor
        return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * step / max(1, self.cfg.steps)))

    def train_step(self) -> dict:
        """One optimiser step on one batch. The moments, the block KLs and their penalty are computed
        once; no per-block Python loop, and the only host sync is the returned loss."""
        cfg, st = self.cfg, self.state
        t0 = time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * self._lr_factor(st.step)
        x, y = self.split(self.batches.next())
        if self.batch_transform is not None:
            x = self.batch_transform(x, self.noise)
        self.model.train()
        out = self.forward(x)
        if self.labelled:
            nll = self.loss_fn(out, y)
            loss = nll if self.distill is None else self.distill(out, nll, x)
        else:
            nll = loss = self.distill.soft_loss(out, x)
        if st.step == 0:
            self._check_data_term(loss)
        kls = []
        if cfg.method == "mean-var" and cfg.kl_control == "global":
            # one beta on the total KL: the ELBO itself decides where the bits go (allocation pre-phase)
            total = sum((p.uncoded_mask() * p.block_kl()).sum() for p in self.posteriors)
            kls.append(total.detach())
            loss = loss + self.global_beta.beta[0] * total / self.num_examples
        elif cfg.method == "mean-var":
            penalty = 0.0
            for p, beta in zip(self.posteriors, self.betas):
                kl = p.block_kl()
                kls.append(kl.detach())
                penalty = penalty + beta.penalty(kl, p.uncoded_mask())
            loss = loss + penalty / self.num_examples
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        info = {"nll": float(nll.detach())}
        if cfg.method == "mean-var" and cfg.kl_control == "global":
            target = sum(p.kl_target * float(p.num_uncoded()) for p in self.posteriors)
            self.global_beta.update(kls[0].reshape(1), target)
        elif cfg.method == "mean-var":
            for p, beta, kl in zip(self.posteriors, self.betas, kls):
                beta.update(kl, p.kl_target)
        st.step += 1
        if st.step % cfg.history_every == 0 or st.step == 1:
            st.history.append(self._stats(info["nll"]))
        st.train_time += time.perf_counter() - t0
        return info

    def _check_data_term(self, loss: torch.Tensor) -> None:
        """Refuse a data term that cannot teach anything: one that does not depend on the coded
        weights, or is exactly 0 on a first, noisy forward pass (a divergence that is identically 0)."""
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"the loss must be a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on the model's weights (no gradient): check loss_fn")
        if float(loss.detach()) == 0.0:
            raise ValueError("the loss is exactly 0 on the first training batch, with sampled weights: it is "
                             "identically 0 (e.g. a softmax KL over a single channel) and would teach nothing; "
                             "choose another loss or divergence")
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"the loss is {float(loss.detach())} on the first training batch")

    @torch.no_grad()
    def _stats(self, nll: float) -> dict:
        kl_sum, over, total, worst = 0.0, 0, 0, 0.0
        for p in self.posteriors:
            active = ~p.coded
            kl = p.block_kl()[active]
            if kl.numel():
                kl_sum += float(kl.sum())
                over += int((kl > p.kl_target * 1.001).sum())
                worst = max(worst, float((kl / p.kl_target).max()))
                total += kl.numel()
        return {"step": self.state.step, "nll": nll, "kl_uncoded": kl_sum, "blocks_uncoded": total,
                "blocks_over_budget": over, "max_kl_ratio": worst,
                "coded_blocks": sum(int(p.coded.sum()) for p in self.posteriors)}

    # --- coding ---------------------------------------------------------------------------
    def _round(self, round_no: int) -> list[tuple[float, int, int]]:
        """The (order key, posterior index, block) entries coded in round `round_no`, in coding order."""
        n = self.cfg.blocks_per_round
        return self.order[round_no * n:(round_no + 1) * n]

    def _round_blocks(self, round_no: int) -> list[tuple[int, list[int]]]:
        """The blocks coded in round `round_no`, as (posterior index, blocks) in order of appearance."""
        by_group: dict[int, list[int]] = {}
        for _, i, b in self._round(round_no):
            by_group.setdefault(i, []).append(b)
        return list(by_group.items())

    @torch.no_grad()
    def code_round(self) -> None:
        """Code the next round's blocks: all blocks of a group in one batched call (and, with a
        `shard`, spread over its processes); the log keeps the round's block order."""
        st, cfg = self.state, self.cfg
        t0 = time.perf_counter()
        if self.shard is not None:
            self.shard.announce(st.coded_rounds)
        chosen = {}
        for i, blocks in self._round_blocks(st.coded_rounds):
            p = self.posteriors[i]
            mean, log_std = p.slot_moments()
            rows = torch.tensor(blocks, device=mean.device)
            m, ls, v = mean.detach()[rows], log_std.detach()[rows], p.valid[rows]
            scale = None
            if p.scaled:  # row scales: code on the unit scale (q and p divided by each slot's sigma, the
                # same log-weights up to a constant per block), then scale the chosen T[u] as a decoder does
                scale = p.slot_sigma().detach()[rows]
                m, ls, sp = m / scale, ls - torch.log(scale), 1.0
            else:
                sp = float(p.sigma_p())
            if self.shard is not None:
                self.shard.share_rows(len(blocks), p.plan.block_size, m, ls, v, sp)
            kl = p.block_kl().detach().cpu()
            for r, (b, choice) in enumerate(zip(blocks, code_blocks(self.seed, p.plan.gid, blocks, p.plan.block_size,
                                                                    p.plan.index_bits, sp, m, ls, v, greedy=cfg.greedy,
                                                                    scorer=self.scorer, gen=self.gen,
                                                                    shard=self.shard))):
                if scale is not None:   # float32 (sigma * scale_k) * T[u]: exact product, one rounding
                    choice.values = choice.values.to(scale) * scale[r]
                chosen[(i, b)] = (choice, float(kl[b]))
        for _, i, b in self._round(st.coded_rounds):
            p = self.posteriors[i]
            choice, kl_b = chosen[(i, b)]
            p.fix_block(b, choice.index, choice.values)
            st.coding.append({"group": p.plan.gid, "block": b, "index": choice.index, "kl": kl_b,
                              "log_weight": choice.log_weight, "max_log_weight": choice.max_log_weight})
        st.coded_rounds += 1
        st.code_time += time.perf_counter() - t0

    @torch.no_grad()
    def serve_coding(self) -> None:
        """A worker rank's whole run: score its share of each round rank 0 announces, until it says stop."""
        while True:
            round_no = self.shard.announce(None)
            if round_no is None:
                return
            for i, blocks in self._round_blocks(round_no):
                p = self.posteriors[i]
                m, ls, v, sp = self.shard.share_rows(len(blocks), p.plan.block_size)
                dev = self.device
                self.shard.scores(self.scorer, self.seed, p.plan.gid, blocks, p.plan.block_size, sp, m.to(dev),
                                  ls.to(dev), v.to(dev), 1 << p.plan.index_bits)

    def freeze(self) -> None:
        for p in self.posteriors:
            p.freeze_prior()
        self.state.frozen = True

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "train_fingerprint": self.train_fingerprint,
            "state": self.state.__dict__.copy(),
            "model": self.model.state_dict(),
            "posteriors": self.posteriors.state_dict(),
            "betas": self.betas.state_dict(),
            "global_beta": self.global_beta.state_dict(),
            "opt": self.opt.state_dict(),
            "noise": self.noise.get_state(),
            "torch_rng": torch.get_rng_state(),
            "batches": self.batches.state_dict(),
        }

    def load_state_dict(self, s: dict, *, trained_only: bool = False) -> None:
        """Restore a checkpoint of this run; `trained_only`: one taken at the end of training by a run
        whose coding settings may differ (`TrainConfig.trained_checkpoint`)."""
        if trained_only:
            st = s.get("state", {})
            if s.get("train_fingerprint", "") != self.train_fingerprint or not self.train_fingerprint:
                raise ValueError("the trained checkpoint belongs to a run with other training settings: "
                                 f"{s.get('train_fingerprint')!r} != {self.train_fingerprint!r}")
            if st.get("step") != self.cfg.steps or st.get("coded_rounds") != 0 or st.get("frozen"):
                raise ValueError(f"the trained checkpoint is not at the end of training (step {st.get('step')}, "
                                 f"{st.get('coded_rounds')} coding rounds; expected step {self.cfg.steps}, none)")
        elif s.get("fingerprint", "") != self.fingerprint:
            raise ValueError("the checkpoint belongs to a run with other settings: "
                             f"{s.get('fingerprint')!r} != {self.fingerprint!r}")
        self.state = _State(**s["state"])
        self.model.load_state_dict(s["model"])
        self.posteriors.load_state_dict(s["posteriors"])
        for p in self.posteriors:
            p.log_sp.requires_grad_(not p.frozen)
        self.betas.load_state_dict(s["betas"])
        if "global_beta" in s:
            self.global_beta.load_state_dict(s["global_beta"])
        self.opt.load_state_dict(s["opt"])
        self.noise.set_state(s["noise"])
        self.batches.load_state_dict(s["batches"])
        torch.set_rng_state(s["torch_rng"])

    def _save(self) -> None:
        if self.cfg.checkpoint:
            save_checkpoint(self.state_dict(), self.cfg.checkpoint)

    # --- the schedule ---------------------------------------------------------------------
    def total_actions(self) -> int:
        c = self.cfg
        if not c.code:
            return c.steps
        return c.steps + self.num_rounds + (self.num_rounds - 1) * c.retrain_steps + self._final_steps()

    def _final_steps(self) -> int:
        return self.cfg.final_steps if self.has_raw_parameters else 0

    def _next_action(self) -> str | None:
        st, c = self.state, self.cfg
        if st.step < c.steps:
            return "train"
        if not c.code:
            return None
        if st.coded_rounds < self.num_rounds:
            return "train" if st.pending > 0 else "code"
        return "train" if st.pending > 0 else None

    def _at_end_of_training(self) -> bool:
        st = self.state
        return st.step == self.cfg.steps and st.coded_rounds == 0 and not st.frozen

    def run(self) -> None:
        if self.shard is not None and not self.shard.coordinator:
            self.serve_coding()
            return
        try:
            self._run()
        finally:
            if self.shard is not None:
                self.shard.announce(None)   # the workers' loop ends with the run, finished or interrupted

    def _run(self) -> None:
        saved = load_checkpoint(self.cfg.checkpoint) if self.cfg.checkpoint else None
        if saved is not None:
            self.load_state_dict(saved)
        elif self.cfg.trained_checkpoint:
            trained = load_checkpoint(self.cfg.trained_checkpoint)
            if trained is not None:
                self.load_state_dict(trained, trained_only=True)
        st, c = self.state, self.cfg
        bar = tqdm(total=self.total_actions(), initial=st.action, disable=not c.progress, desc="MIRACLE",
                   unit="act", dynamic_ncols=True)
        since_save = 0
        while True:
            # the end of training: what every coding variant of this training starts from
            if c.trained_checkpoint and self._at_end_of_training() and not Path(c.trained_checkpoint).exists():
                save_checkpoint(self.state_dict(), c.trained_checkpoint)
            action = self._next_action()
            if action is None:
                break
            if action == "train":
                info = self.train_step()
                if st.pending > 0:
                    st.pending -= 1
                if st.step % 25 == 0:
                    bar.set_postfix(nll=f"{info['nll']:.3f}", coded=f"{sum(int(p.coded.sum()) for p in self.posteriors)}")
            else:
                if not st.frozen:
                    self.freeze()
                self.code_round()
                last = st.coded_rounds == self.num_rounds
                st.pending = self._final_steps() if last else c.retrain_steps
            st.action += 1
            since_save += 1
            bar.update(1)
            if c.interrupt_after is not None and st.action >= c.interrupt_after:
                self._save()
                bar.close()
                raise Interrupted(f"stopped after {st.action} actions")
            if since_save >= c.checkpoint_every:
                self._save()
                since_save = 0
        bar.close()
        self._save()
