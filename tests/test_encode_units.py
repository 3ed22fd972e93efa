"""Encoder pieces: block KL by construction, candidate scores, KL control, block plans."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mrcformat.coder import candidates, choose_index
from mrcformat.encode.blocks import GroupSpec, allocate_blocks, build_plan
from mrcformat.encode.coding import code_block, score_candidates
from mrcformat.encode.kl_control import BlockBeta
from mrcformat.encode.lambertw import gaussian_kl
from mrcformat.encode.posterior import GroupPosterior
from mrcformat.layout import positions
from mrcformat.streams import hash_words


def _plan(n=1000, bsz=37, bits=10, ratio=1.0, seed=5):
    spec = GroupSpec("g", [("w", (n - 7,)), ("b", (7,))], ratio)
    return build_plan([spec], [bsz], bits, seed)[0]


@pytest.mark.parametrize("seed", range(3))
def test_mean_kl_block_kl_is_the_budget(seed):
    torch.manual_seed(seed)
    plan = _plan()
    post = GroupPosterior(plan, "mean-kl", torch.randn(1000) * 0.05, kl_margin=0.25)
    with torch.no_grad():                                  # arbitrary parameters, extreme ones included
        post.logits.normal_(0, 3)
        post.nu.normal_(0, 5)
        post.nu[0, :5] = torch.tensor([0.0, 40.0, -40.0, 1e-6, 9.0])
        post.log_sp.fill_(math.log(0.03))
    target = plan.index_bits * math.log(2) - 0.25
    mean, log_std = post.slot_moments()
    kl = (gaussian_kl(mean.double(), log_std.double(), post.sigma_p().double()) * post.valid).sum(1)
    assert torch.allclose(kl, torch.full_like(kl, target), rtol=2e-6, atol=0)
    assert torch.allclose(post.block_kl().double(), torch.full_like(kl, target))
    # frozen p: still exact under the bfloat16 sigma_p
    post.freeze_prior()
    mean, log_std = post.slot_moments()
    kl = (gaussian_kl(mean.double(), log_std.double(), post.sigma_p().double()) * post.valid).sum(1)
    assert torch.allclose(kl, torch.full_like(kl, target), rtol=2e-6, atol=0)


def test_score_is_log_q_minus_log_p():
    rng = np.random.default_rng(0)
    bsz, sp = 19, 0.0625
    x = torch.from_numpy(candidates(1, 0, 2, bsz, 0.0, sp, 0, 64))
    mean = torch.from_numpy(rng.normal(0, 0.05, bsz).astype(np.float32))
    log_std = torch.from_numpy(np.log(rng.uniform(0.01, 0.06, bsz)).astype(np.float32))
    valid = torch.ones(bsz, dtype=torch.bool)
    valid[-3:] = False                                     # padding slots do not count
    got = score_candidates(x, mean, log_std, valid, sp).numpy()
    xs, m, s = x.double().numpy(), mean.double().numpy(), np.exp(log_std.double().numpy())
    logq = -0.5 * ((xs - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    logp = -0.5 * (xs / sp) ** 2 - np.log(sp) - 0.5 * np.log(2 * np.pi)
    want = ((logq - logp) * valid.numpy()).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)


def test_code_block_greedy_and_sampled():
    bsz, bits, sp = 16, 8, 0.125
    mean = torch.linspace(-0.1, 0.1, bsz)
    log_std = torch.full((bsz,), math.log(0.05))
    valid = torch.ones(bsz, dtype=torch.bool)
    x = torch.from_numpy(candidates(9, 2, 4, bsz, 0.0, sp, 0, 1 << bits))
    lw = score_candidates(x, mean, log_std, valid, sp).numpy()
    g = code_block(9, 2, 4, bsz, bits, sp, mean, log_std, valid, greedy=True)
    assert g.index == int(np.argmax(lw)) and torch.equal(g.values, x[g.index])
    s = code_block(9, 2, 4, bsz, bits, sp, mean, log_std, valid)
    assert s.index == choose_index(lw, seed=9, group=2, block=4) and torch.equal(s.values, x[s.index])


def test_block_beta_moves_towards_budget():
    beta = BlockBeta(3, beta0=1.0, eps=0.1)
    beta.update(torch.tensor([5.0, 1.0, 3.0]), target=3.0)
    assert torch.allclose(beta.beta, torch.tensor([1.1, 1 / 1.1, 1 / 1.1]))


def test_plan_maps_weights_to_slots():
    plan = _plan()
    pos = positions(plan.layout, 0, 1000, 1000)
    assert torch.equal(plan.slot_of_weight, torch.from_numpy(pos))
    assert plan.valid.sum() == 1000 and plan.valid.shape == (plan.num_blocks, 37)
    hp = _plan(ratio=4.0)
    idx, sign = hash_words(5, 0, np.arange(1000, dtype=np.uint64), 250)
    assert torch.equal(hp.slot_of_weight, torch.from_numpy(positions(hp.layout, 0, 250, 250)[idx]))
    assert torch.equal(hp.sign, torch.from_numpy(sign))


def test_allocation_gives_small_layers_relatively_more_bits():
    specs = [GroupSpec("small", [("a", (500,))]), GroupSpec("big", [("b", (400_000,))])]
    small, big = allocate_blocks(specs, 1556, 12)
    assert small < big                                     # smaller blocks: more bits per weight
    plans = build_plan(specs, [small, big], 12, seed=0)
    assert sum(p.payload_bytes for p in plans) <= 1556
