"""Mean-KL math: variance recovery over the whole domain, exact KL, finite gradients."""
import math

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given
from hypothesis import strategies as st

from mrcformat.encode.lambertw import gaussian_kl, log_s_from_c, log_s_from_r, mean_kl_moments, s_from_c


@given(kl=st.floats(1e-8, 200.0), frac=st.floats(-1.0, 1.0), log_sp=st.floats(-12.0, 4.0))
def test_recovered_s_solves_the_equation(kl, frac, log_sp):
    sp = math.exp(log_sp)
    mu = frac * sp * math.sqrt(2 * kl)                     # any mean with mu^2 <= 2 KL sigma_p^2
    c = 2 * kl + 1 - (mu / sp) ** 2
    c_t = torch.tensor([c], dtype=torch.float64)
    t = float(log_s_from_c(c_t))
    assert t <= 0
    assert abs((math.exp(t) - t) - c) <= 1e-6 * c         # s - ln s = c (relative)
    # and the KL of the recovered Gaussian is the requested one
    kl_back = 0.5 * (math.exp(t) - 1 - t + (mu / sp) ** 2)
    assert abs(kl_back - kl) <= 1e-6 * max(kl, 1e-3)


@given(kl=st.floats(1e-10, 200.0), nu=st.floats(-30.0, 30.0), log_sp=st.floats(-10.0, 3.0))
def test_mean_kl_moments_exact_kl_and_finite_gradients(kl, nu, log_sp):
    sqrt_kl = torch.tensor([math.sqrt(kl)], dtype=torch.float64, requires_grad=True)
    nu_t = torch.tensor([nu], dtype=torch.float64, requires_grad=True)
    sp = math.exp(log_sp)
    mean, log_std = mean_kl_moments(sqrt_kl, nu_t, sp)
    assert float(mean.detach()) ** 2 <= 2 * kl * sp * sp * (1 + 1e-12)
    got = float(gaussian_kl(mean, log_std, sp).detach())
    assert got == pytest.approx(kl, rel=1e-6, abs=1e-12)
    (mean.sum() + log_std.sum()).backward()
    assert torch.isfinite(sqrt_kl.grad).all() and torch.isfinite(nu_t.grad).all()


def test_branch_point_and_large_c():
    c = torch.tensor([1.0, 1.0 + 1e-15, 1.0 + 1e-9, 1.5, 50.0, 800.0, 1e6], dtype=torch.float64)
    s = s_from_c(c)
    assert s[0] == 1.0 and (s <= 1).all() and (s >= 0).all()
    t = log_s_from_c(c)
    assert torch.isfinite(t).all()
    assert float(t[-1]) == pytest.approx(-1e6, rel=1e-12)  # s ~ exp(-c): ln s stays finite


def test_gradient_matches_finite_differences():
    r = torch.tensor([1e-4, 0.05, 0.7, 1.99, 2.01, 6.0, 40.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(log_s_from_r, (r,))
    r0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    log_s_from_r(r0).backward()
    assert float(r0.grad) == -1.0                            # the branch point's limit


def test_float32_inputs_stay_float32():
    r = torch.linspace(0, 20, 1001, requires_grad=True)
    t = log_s_from_r(r)
    assert t.dtype == torch.float32
    t.sum().backward()
    assert torch.isfinite(r.grad).all()
