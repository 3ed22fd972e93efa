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


_CHUNK = 1 << 16   # elements per pass: the float64 temporaries of a chunk stay in the CPU's caches


def _where_small(r: torch.Tensor, small: torch.Tensor, fill, out: torch.Tensor) -> torch.Tensor:
    """`out` with out[small] = fill(r[small]): torch.where(small, fill(r), out), elementwise the same.

    On a CPU only the few small entries (padding slots, values without KL) are computed; on other
    devices (no host sync) all of them."""
    if out.device.type == "cpu":
        if bool(small.any()):
            out[small] = fill(r[small])
        return out
    return torch.where(small, fill(r), out, out=out)


def _series(r: torch.Tensor) -> torch.Tensor:
    return -r - r * r / 6.0 - r ** 3 / 36.0


def _chunked(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn applied elementwise to flat chunks of equally shaped `tensors` (float64 result, their shape).

    On a CPU one full-size pass per operation is bound by memory traffic (and fresh float64
    temporaries); chunks keep the temporaries in cache. Elementwise, so the result is the same."""
    first = tensors[0]
    if first.device.type != "cpu" or first.numel() <= _CHUNK:
        return fn(*tensors)
    flat = [t.reshape(-1) for t in tensors]
    out = torch.empty(first.numel(), dtype=torch.float64)
    for i in range(0, first.numel(), _CHUNK):
        out[i:i + _CHUNK] = fn(*(t[i:i + _CHUNK] for t in flat))
    return out.view(first.shape)


def _solve_t(r: torch.Tensor) -> torch.Tensor:
    """t = ln s <= 0 with e^t - t = 1 + r^2 / 2, elementwise, float64.

    Start: the branch-point series t = -r / (1 - r / 6) for r < 2, the asymptote
    t = -c + exp(-c) beyond; then Halley steps on g(t) = expm1(t) - t - r^2 / 2 (cubic
    convergence: three steps reach float64 precision from either start).

    Each operation is the formula's own (the same roundings), done in place in a few float64
    buffers, chunk by chunk on a CPU (`_chunked`).
    """
    return _chunked(_solve_t_flat, r)


def _solve_t_flat(r: torch.Tensor) -> torch.Tensor:
    r = r.to(torch.float64, copy=True).clamp_min_(0.0)
    half_r2 = torch.mul(r, 0.5).mul_(r)                      # 0.5 * r * r
    c = torch.add(half_r2, 1.0)                              # 1 + r^2 / 2
    t = torch.neg(c).exp_().sub_(c)                          # exp(-c) - c
    a = torch.div(r, 6.0).neg_().add_(1.0).clamp_min_(1e-3)  # (1 - r / 6).clamp_min(1e-3)
    torch.div(r, a, out=a).neg_()                            # -r / (...)
    torch.where(torch.lt(r, 2.0), a, t, out=t)
    g1, g, den, tmp = a, c, torch.empty_like(t), torch.empty_like(t)
    for _ in range(_HALLEY_STEPS):
        torch.expm1(t, out=g1)
        torch.sub(g1, t, out=g).sub_(half_r2)               # g = expm1(t) - t - r^2 / 2
        torch.mul(g1, 2.0, out=den).mul_(g1)                 # den = 2 g1 g1 - g (g1 + 1)
        den.sub_(torch.add(g1, 1.0, out=tmp).mul_(g))
        t.sub_(torch.mul(g, 2.0, out=tmp).mul_(g1).div_(den)).clamp_max_(0.0)  # t -= 2 g g1 / den
    # near r = 0 the steps divide 0 by 0: the series is exact to O(r^4) there
    return _where_small(r, r < _SMALL_R, _series, t)


def _dt_dr_flat(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dt/dr = r / expm1(t), -1 - r / 3 where r is small (float64)."""
    r64 = r.double()
    small = r64 < _SMALL_R
    dt = torch.expm1(t).masked_fill_(small, -1.0)
    torch.div(r64, dt, out=dt)
    return _where_small(r64, small, lambda q: -1.0 - q / 3.0, dt)


class _LogSFromR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r: torch.Tensor) -> torch.Tensor:
        t = _solve_t(r)
        ctx.save_for_backward(r, t)
        return t.to(r.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        r, t = ctx.saved_tensors
        return _chunked(_dt_dr_flat, r, t).to(grad.dtype).mul_(grad)


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
