"""Learned rate allocation: how many of the budget's blocks each group (layer) gets.

The fixed rules ("sqrt", "size") live in `blocks.allocate_blocks`. `allocation="kl"` learns the
split instead. A Mean-Var posterior over every coded value is trained under ONE KL penalty,
beta * sum of all KLs, whose beta is steered (x/÷ 1+eps per step) so that the total KL meets
the whole budget. With a single beta the ELBO spends each nat where it lowers the expected
loss most: the rate-distortion optimum, at which the loss saved per extra nat is equal for
every weight (for a quadratic loss this is reverse water-filling on the Hessian diagonal,
Fisher-weighted distortion). The KL each group holds at the end is its share of the blocks.

This is what MIRACLE gets by permuting all layers' weights into common blocks; the format keeps
one coding distribution per group, so here the shares are learned first and the blocks laid
out per group afterwards. The pre-phase posterior (means, log stds, sigma_p, beta, raw
parameters) also warm-starts the main training, so its steps are not lost.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from .blocks import GroupSpec, allocate_blocks, build_plan
from .layers import make_variational
from .posterior import GroupPosterior
from .train import MiracleTrainer, TrainConfig

__all__ = ["LearnedAllocation", "learn_allocation"]


@dataclass
class LearnedAllocation:
    """What the pre-phase learned, per group (spec order)."""

    demand_nats: list[float]                  # KL of each group at the end: its share of the budget
    weights: list[torch.Tensor]               # q's means in member order (concatenated members)
    log_std: list[torch.Tensor]               # q's log std per value, flat slot order
    log_sp: list[float]                       # learned log sigma_p (not yet rounded or frozen)
    beta: float                               # the global beta reached: a good start for every block's beta
    raw_state: dict = field(default_factory=dict, repr=False)  # the variational model's own parameters
    history: list = field(default_factory=list)
    train_seconds: float = 0.0

    def shares(self, specs: list[GroupSpec]) -> dict[str, float]:
        return {s.name: max(d, 0.0) for s, d in zip(specs, self.demand_nats)}


def learn_allocation(model: torch.nn.Module, train_loader, specs: list[GroupSpec], budget_bytes: int,
                     index_bits: int, seed: int, cfg: TrainConfig, *, steps: int, coded_bias: bool,
                     layout: str = "affine", kl_margin: float = 0.0, init_std_ratio: float = 0.1,
                     loss_fn=None, fingerprint: str = "", batch_transform=None, distill=None,
                     labelled: bool = True) -> LearnedAllocation:
    """Train `steps` Mean-Var steps under one global KL penalty at the full budget; see the module doc.

    The provisional layout uses the "sqrt" rule (only the total number of blocks matters: one beta
    sees only the sum). With `cfg.checkpoint` set, the pre-phase is checkpointed to
    `<checkpoint>.alloc` and resumes like the main run.
    """
    block_sizes = allocate_blocks(specs, budget_bytes, index_bits, "sqrt")
    plans = build_plan(specs, block_sizes, index_bits, seed, layout)
    params = dict(model.state_dict())
    posteriors = []
    for plan in plans:
        w = torch.cat([params[name].detach().reshape(-1).float().cpu() for name, _ in plan.spec.members])
        posteriors.append(GroupPosterior(plan, "mean-var", w, init_std_ratio=init_std_ratio, kl_margin=kl_margin))
    vmodel, layers, generic = make_variational(model, {name for s in specs for name, _ in s.members})
    stop = cfg.interrupt_after if cfg.interrupt_after is not None and cfg.interrupt_after <= steps else None
    pre = dataclasses.replace(cfg, method="mean-var", steps=steps, kl_control="global", code=False,
                              lr_min_factor=1.0, final_steps=0, interrupt_after=stop,
                              checkpoint=f"{where}.alloc" if (where := cfg.checkpoint or cfg.trained_checkpoint) else None,
                              trained_checkpoint=None)
    trainer = MiracleTrainer(vmodel, layers, posteriors, train_loader, pre, loss_fn=loss_fn, seed=seed,
                             batch_transform=batch_transform, distill=distill, generic=generic, labelled=labelled)
    trainer.fingerprint = f"allocation pre-phase {steps} steps; {fingerprint}"
    trainer.run()
    with torch.no_grad():
        demand = [float(p.total_kl()) for p in trainer.posteriors]
        weights = [p.weight_moments()[0].detach().cpu().clone() for p in trainer.posteriors]
        log_std = [p.value_moments()[1].detach().cpu().clone() for p in trainer.posteriors]
        log_sp = [float(p.log_sp) for p in trainer.posteriors]
    if not all(math.isfinite(d) for d in demand):
        raise FloatingPointError(f"allocation pre-phase diverged: group KLs {demand}")
    return LearnedAllocation(demand, weights, log_std, log_sp, float(trainer.global_beta.beta[0]),
                             {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
                             trainer.state.history, trainer.state.train_time)
