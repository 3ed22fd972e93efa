"""Mean-KL math: recover the posterior variance from (mean, KL) in closed form.

For q = N(mu, sigma^2) and p = N(0, sigma_p^2), with s = sigma^2 / sigma_p^2,

    KL(q || p) = (s - 1 - ln s + mu^2 / sigma_p^2) / 2,

so a target KL and a mean with mu^2 <= 2 KL sigma_p^2 fix s through s - ln s = c,
c = 2 KL + 1 - mu^2 / sigma_p^2 >= 1; the root with s <= 1 is s = -W0(-exp(-c)).

Numerics. Near the branch point (c -> 1) s = 1 - sqrt(2 (c - 1)) + ..., so ds/dc diverges
although s is a smooth function of r = sqrt(2 (c - 1)). Everything is therefore written in
r and in t = ln s: solve expm1(t) - t = r^2 / 2 for t <= 0 (Halley steps in float64 from
a series / asymptotic start), with dt/dr = r / expm1(t) (-> -1 at r = 0). With
mu = sigma_p sqrt(2 KL) tanh(nu) one has r = 2 sqrt(KL) sech(nu) directly, so no
cancellation in c - 1 and finite gradients everywhere, and ln s stays finite for any
large c (where s ~ exp(-c) underflows).
"""
from __future__ import annotations

import math

import torch

__all__ = ["gaussian_kl", "log_s_from_c", "log_s_from_r", "mean_kl_moments", "s_from_c"]

_SMALL_R = 1e-6
_HALLEY_STEPS = 3


def _solve_t(r: torch.Tensor) -> torch.Tensor:
    """t = ln s <= 0 with e^t - t = 1 + r^2 / 2, elementwise, float64.

    Start: the branch-point series t = -r / (1 - r / 6) for r < 2, the asymptote
    t = -c + exp(-c) beyond; then Halley steps on g(t) = expm1(t) - t - r^2 / 2 (cubic
    convergence: three steps reach float64 precision from either start).
    """
    r = r.double().clamp_min(0.0)
    half_r2 = 0.5 * r * r
    c = 1.0 + half_r2
    t = torch.where(r < 2.0, -r / (1.0 - r / 6.0).clamp_min(1e-3), torch.exp(-c) - c)
    for _ in range(_HALLEY_STEPS):
        g1 = torch.expm1(t)
        g = g1 - t - half_r2
        den = 2.0 * g1 * g1 - g * (g1 + 1.0)
        t = torch.clamp_max(t - 2.0 * g * g1 / den, 0.0)
    # near r = 0 the steps divide 0 by 0: the series is exact to O(r^4) there
    return torch.where(r < _SMALL_R, -r - r * r / 6.0 - r ** 3 / 36.0, t)


class _LogSFromR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r: torch.Tensor) -> torch.Tensor:
        t = _solve_t(r)
        ctx.save_for_backward(r, t)
        return t.to(r.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        r, t = ctx.saved_tensors
        r64 = r.double()
        em1 = torch.expm1(t)
        safe = torch.where(r64 < _SMALL_R, torch.full_like(em1, -1.0), em1)
        dt = torch.where(r64 < _SMALL_R, -1.0 - r64 / 3.0, r64 / safe)
        return grad * dt.to(grad.dtype)


def log_s_from_r(r: torch.Tensor) -> torch.Tensor:
    """ln s where s - ln s = 1 + r^2 / 2 and s <= 1 (r >= 0). Differentiable, finite gradient everywhere."""
    return _LogSFromR.apply(r)


def log_s_from_c(c: torch.Tensor) -> torch.Tensor:
    """ln s for s - ln s = c (c >= 1), s in (0, 1]: ln(-W0(-exp(-c)))."""
    return log_s_from_r(torch.sqrt((2.0 * (c - 1.0)).clamp_min(0.0)))


def s_from_c(c: torch.Tensor) -> torch.Tensor:
    """s = -W0(-exp(-c)) for c >= 1 (the root of s - ln s = c with s <= 1)."""
    return torch.exp(log_s_from_c(c))


def _sech(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(-x.abs())
    return 2.0 * e / (1.0 + e * e)


def mean_kl_moments(sqrt_kl: torch.Tensor, nu: torch.Tensor, sigma_p: torch.Tensor | float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log std) of q from sqrt(KL_i), the unconstrained mean parameter nu and sigma_p.

    mu = sigma_p sqrt(2 KL) tanh(nu) keeps mu^2 <= 2 KL sigma_p^2, and then
    KL(q || N(0, sigma_p^2)) = KL exactly: r = sqrt(2 (c - 1)) = 2 sqrt(KL) sech(nu).
    """
    mean = sigma_p * math.sqrt(2.0) * sqrt_kl * torch.tanh(nu)
    r = 2.0 * sqrt_kl * _sech(nu)
    log_std = torch.log(torch.as_tensor(sigma_p, dtype=mean.dtype, device=mean.device)) + 0.5 * log_s_from_r(r)
    return mean, log_std


def gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor, sigma_p: torch.Tensor | float) -> torch.Tensor:
    """KL(N(mean, exp(log_std)^2) || N(0, sigma_p^2)), elementwise."""
    log_sp = torch.log(torch.as_tensor(sigma_p, dtype=mean.dtype, device=mean.device))
    ratio = torch.exp(2.0 * (log_std - log_sp))
    return 0.5 * (ratio - 1.0 - 2.0 * (log_std - log_sp) + (mean * mean) * torch.exp(-2.0 * log_sp))
