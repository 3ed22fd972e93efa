"""The variational posterior q of one group's coded values, its coding distribution p, and its
coded state.

Parameters live in slot order ([num_blocks, block_size], row b = block b; see `blocks.py`).
- Mean-Var: a mean and a log standard deviation per value; each block's KL is whatever they give
  (kept near the budget by `kl_control.BlockBeta`).
- Mean-KL: per value an unconstrained mean parameter nu and a logit; block b's KL budget is split
  over its values by softmax(logits) and q's variance is recovered in closed form
  (`lambertw.mean_kl_moments`), so each block's KL equals the budget by construction.
p = N(0, sigma_p^2) per group with a learned log-scale (times a fixed bfloat16 scale per row when the
group has row scales, SPEC 4.2); `freeze_prior` rounds sigma_p to bfloat16 and fixes it before any
block of the group is coded. Coded blocks are fixed to their
chosen candidate (variance 0) and their parameters no longer matter.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from mrcformat.sampler import bf16_bits_to_float, float_to_bf16_bits

from .blocks import GroupPlan
from .lambertw import gaussian_kl, mean_kl_moments

__all__ = ["METHODS", "GroupPosterior"]

METHODS = ("mean-var", "mean-kl")
_MASKED = -1e4


class _Gather(torch.autograd.Function):
    """src[index] (times `sign`, if given) for a flat `src`, with a deterministic backward.

    The forward is an index_select; the backward adds each weight's gradient into its slot in
    weight order (scatter_add_ into zeros). That is the sum autograd's index backward forms
    (index_put_ with accumulate) when every slot is read once; with hashing, where several weights
    read a slot, index_put_ adds in parallel in an unspecified order on a CPU with more than one
    thread (not reproducible from run to run), this adds them in weight order."""

    @staticmethod
    def forward(ctx, src, index, sign):
        out = torch.index_select(src, 0, index)
        if sign is not None:
            out.mul_(sign)
        ctx.save_for_backward(index, sign)
        ctx.size = src.shape[0]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        index, sign = ctx.saved_tensors
        if sign is not None:
            grad = grad * sign
        return grad.new_zeros(ctx.size).scatter_add_(0, index, grad), None, None


class GroupPosterior(nn.Module):
    def __init__(self, plan: GroupPlan, method: str, init_weights: torch.Tensor, *,
                 init_std_ratio: float = 0.1, kl_margin: float = 0.0, init_log_std: torch.Tensor | None = None,
                 init_log_sp: float | None = None) -> None:
        """q starts at `init_weights` (member order); Mean-Var's log std at `init_log_std` (one per value,
        flat slot order as `value_moments` returns it) or at log(init_std_ratio * sigma_p); sigma_p at
        `init_log_sp` or at the values' RMS."""
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        self.plan, self.method = plan, method
        nb, bsz = plan.num_blocks, plan.block_size
        self.register_buffer("valid", plan.valid.clone())
        self.register_buffer("slot_of_weight", plan.slot_of_weight.clone())
        self.register_buffer("sign", plan.sign.clone() if plan.sign is not None else torch.ones(0))
        self.register_buffer("coded", torch.zeros(nb, dtype=torch.bool))
        self.register_buffer("index", torch.full((nb,), -1, dtype=torch.int64))
        self.register_buffer("coded_value", torch.zeros(nb, bsz))
        self.register_buffer("frozen_sigma_bits", torch.tensor(-1, dtype=torch.int64))
        self.register_buffer("invalid", ~plan.valid, persistent=False)   # padding slots
        self._coded_key, self._coded_cache = None, None
        self.kl_target = plan.budget_nats - kl_margin    # nats per block

        values = self._values_from_weights(init_weights.detach().float().cpu())  # slot order, padded
        rms = float(values[plan.valid].pow(2).mean().sqrt()) or 1e-2
        log_sp = math.log(rms) if init_log_sp is None else float(init_log_sp)
        self.log_sp = nn.Parameter(torch.tensor(log_sp))
        row_scale, slot_scale = self._row_scales(values, rms)
        self.register_buffer("row_scale", row_scale)       # bfloat16 values, fixed: SPEC 4.2 group scales
        self.register_buffer("slot_scale", slot_scale)     # each slot's row scale ([nb, bsz]; padding 1)
        # each slot's initial coding sigma. Without row scales a Python float, as before row scales
        # existed: a float32 tensor here rounds the initial log std and Mean-KL's start differently in
        # the last bit, and every run (the bundled recipes' too) then trains to another file.
        sp = math.exp(log_sp) * slot_scale if self.scaled else math.exp(log_sp)
        if method == "mean-var":
            self.mean = nn.Parameter(values)
            log_std = (torch.log(init_std_ratio * sp).reshape(-1) if self.scaled
                       else torch.full((nb * bsz,), math.log(init_std_ratio * sp)))
            if init_log_std is not None:
                log_std[:plan.num_values] = init_log_std.detach().float().cpu()
            self.log_std = nn.Parameter(log_std.view(nb, bsz))
        else:
            w2 = (values / sp) ** 2
            logits = torch.log(w2 + 0.05).masked_fill(~plan.valid, _MASKED)
            kl = self.kl_target * torch.softmax(logits, dim=1)
            ratio = values / (sp * torch.sqrt(2 * kl).clamp_min(1e-12))
            self.logits = nn.Parameter(logits)
            self.nu = nn.Parameter(torch.atanh(ratio.clamp(-0.95, 0.95)).masked_fill(~plan.valid, 0.0))

    # --- construction helpers -------------------------------------------------------------
    def _values_from_weights(self, w: torch.Tensor) -> torch.Tensor:
        """Slot-order value matrix whose weights best match `w` (mean of signed weights per value)."""
        plan = self.plan
        flat = torch.zeros(plan.num_blocks * plan.block_size)
        if plan.sign is None:
            flat[plan.slot_of_weight] = w
        else:
            count = torch.zeros_like(flat)
            flat.index_add_(0, plan.slot_of_weight, w * plan.sign)
            count.index_add_(0, plan.slot_of_weight, torch.ones_like(w))
            flat = flat / count.clamp_min(1)
        return flat.view(plan.num_blocks, plan.block_size)

    def _row_scales(self, values: torch.Tensor, rms: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row coding scales (spec.rows of them; SPEC 4.2): each row's RMS over the group's, from the
        starting weights, clamped to [1/64, 64] and rounded to bfloat16 (exactly what the file stores),
        and the scale of every slot. p for a value of row k is N(0, (sigma_p * scale_k)^2): candidates
        follow each row's magnitude, where one sigma_p for a tensor whose rows differ in scale (a
        pretrained layer, folded normalisation) spends KL on the small rows' precision."""
        plan = self.plan
        rows, n = plan.spec.rows, plan.num_values
        slot_scale = torch.ones(plan.num_blocks * plan.block_size)
        if rows == 1:
            return torch.ones(1), slot_scale.view(plan.num_blocks, plan.block_size)
        row_of_slot = torch.from_numpy(plan.value_of_slot // (n // rows))
        power = torch.zeros(rows, dtype=torch.float64).index_add_(0, row_of_slot,
                                                                  values.reshape(-1)[:n].double() ** 2)
        rel = (power / (n // rows)).sqrt() / max(rms, 1e-30)
        rel = np.clip(rel.numpy(), 1.0 / 64, 64.0)
        scale = torch.tensor([bf16_bits_to_float(float_to_bf16_bits(float(x))) for x in rel], dtype=torch.float32)
        slot_scale[:n] = scale[row_of_slot]
        return scale, slot_scale.view(plan.num_blocks, plan.block_size)

    @property
    def scaled(self) -> bool:
        """True when the group has per-row coding scales."""
        return self.plan.spec.rows > 1

    def scale_bits(self) -> np.ndarray | None:
        """The row scales as bfloat16 bit patterns (the container's `scales`), or None."""
        if not self.scaled:
            return None
        return (self.row_scale.cpu().numpy().view(np.uint32) >> 16).astype(np.uint16)   # exact bfloat16 values

    def slot_sigma(self) -> torch.Tensor:
        """Each slot's coding sigma, [num_blocks, block_size] (sigma_p times its row's scale; frozen: the
        exact float32 product a decoder forms), or sigma_p itself (a scalar) without row scales."""
        sp = self.sigma_p()
        return sp * self.slot_scale if self.scaled else sp

    # --- coding distribution --------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return int(self.frozen_sigma_bits) >= 0

    def sigma_p(self) -> torch.Tensor:
        if self.frozen:
            return torch.tensor(float(bf16_bits_to_float(int(self.frozen_sigma_bits))), device=self.log_sp.device)
        return torch.exp(self.log_sp)

    def freeze_prior(self) -> int:
        """Round sigma_p to bfloat16 and fix it; returns its bits. Idempotent."""
        if not self.frozen:
            self.frozen_sigma_bits.fill_(float_to_bf16_bits(float(torch.exp(self.log_sp.detach()))))
            self.log_sp.requires_grad_(False)
        return int(self.frozen_sigma_bits)

    # --- posterior ------------------------------------------------------------------------
    def slot_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log std) of q in slot order for all blocks (coded ones included, as trained)."""
        if self.method == "mean-var":
            return self.mean, self.log_std
        logits = self.logits.masked_fill(self.invalid, _MASKED)   # padding slots get no KL
        sqrt_kl = math.sqrt(self.kl_target) * torch.exp(0.5 * torch.log_softmax(logits, dim=1))
        return mean_kl_moments(sqrt_kl, self.nu, self.slot_sigma())

    def value_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log std) of every value in flat slot order, [num_values]: the same for any block size."""
        mean, log_std = self.slot_moments()
        n = self.plan.num_values
        return mean.reshape(-1)[:n], log_std.reshape(-1)[:n]

    def total_kl(self) -> torch.Tensor:
        """KL(q || p) of the whole group (uncoded blocks as trained)."""
        return self.block_kl().sum()

    def block_kl(self) -> torch.Tensor:
        """KL(q || p) of every block (valid slots only), [num_blocks]."""
        if self.method == "mean-kl":
            return torch.full((self.plan.num_blocks,), self.kl_target, device=self.valid.device)
        mean, log_std = self.slot_moments()
        return (gaussian_kl(mean, log_std, self.slot_sigma()) * self.valid).sum(1)

    def _coded_state(self) -> tuple[bool, int, torch.Tensor]:
        """(some block coded, uncoded blocks, uncoded mask as float), recomputed only when `coded`
        changes (its version counter): no device sync and no new tensor per step."""
        c = self.coded
        key = (id(c), c._version, c.data_ptr())
        if key != self._coded_key:
            active = (~c).float()
            n = int(active.sum())
            self._coded_key, self._coded_cache = key, (n < c.numel(), n, active)
        return self._coded_cache

    def any_coded(self) -> bool:
        return self._coded_state()[0]

    def num_uncoded(self) -> int:
        return self._coded_state()[1]

    def uncoded_mask(self) -> torch.Tensor:
        """1.0 for every uncoded block, 0.0 for every coded one, [num_blocks] (do not modify)."""
        return self._coded_state()[2]

    def weight_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of every weight of the group (member order), coded blocks fixed."""
        mean, log_std = self.slot_moments()
        var = torch.exp(2 * log_std)
        if self.any_coded() or self.coded_value.requires_grad:
            coded = self.coded[:, None]
            mean = torch.where(coded, self.coded_value, mean)
            var = torch.where(coded, 0.0, var)
        return self._gather(mean, signed=True), self._gather(var, signed=False)

    def _gather(self, slot_values: torch.Tensor, signed: bool) -> torch.Tensor:
        """Slot-order values ([num_blocks, block_size]) to the group's weights in member order (each
        weight reads its slot; with hashing times its sign when `signed`)."""
        sign = self.sign if signed and self.sign.numel() else None
        return _Gather.apply(slot_values.reshape(-1), self.slot_of_weight, sign)

    def weight_sample(self, generator: torch.Generator) -> torch.Tensor:
        """One sample of every weight of the group (member order) from q, coded blocks fixed.

        One standard normal per slot ([num_blocks, block_size], padding included, drawn like
        torch.randn of that shape): the weights that share a slot (hashing) share its sample, with
        their signs, as they share its decoded value in the file. Differentiable in q's parameters
        (reparameterisation: mean + std * noise)."""
        mean, log_std = self.slot_moments()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        value = mean + torch.exp(log_std) * noise
        if self.any_coded() or self.coded_value.requires_grad:
            value = torch.where(self.coded[:, None], self.coded_value, value)
        return self._gather(value, signed=True)

    def member_samples(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{tensor name: one weight sample} (`weight_sample`) reshaped to the member tensors' shapes."""
        return self._split(self.weight_sample(generator))

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, pos = {}, 0
        for name, shape in self.plan.spec.members:
            k = int(np.prod(shape, dtype=np.int64))
            out[name] = flat[pos:pos + k].view(shape)
            pos += k
        return out

    def member_moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{tensor name: (mean, var)} reshaped to the member tensors' shapes."""
        wm, wv = self.weight_moments()
        means, variances = self._split(wm), self._split(wv)
        return {name: (means[name], variances[name]) for name in means}

    def fix_block(self, block: int, index: int, values: torch.Tensor) -> None:
        """Mark `block` coded with candidate `index` whose values (slot order) are `values`."""
        self.coded[block] = True
        self.index[block] = index
        self.coded_value[block] = values.to(self.coded_value)

    @property
    def all_coded(self) -> bool:
        return bool(self.coded.all())
