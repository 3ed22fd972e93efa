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


def _allocate_one_block_at_a_time(specs, budget_bytes, index_bits, allocation):
    """The former allocate_blocks: after the same start, raise the lowest group's target (blocks / share) by
    one block at a time while the budget allows; minutes on a 3 M-weight model."""
    from mrcformat import limits as L
    from mrcformat.bitpack import packed_length
    from mrcformat.layout import num_blocks

    ns = [s.num_values for s in specs]
    shares = ([math.sqrt(n) for n in ns] if allocation == "sqrt" else [float(n) for n in ns] if allocation == "size"
              else [float(allocation.get(s.name, 0.0)) for s in specs])
    min_blocks = [num_blocks(n, L.MAX_BLOCK_SIZE) for n in ns]
    total = (8 * budget_bytes) // index_bits
    target = [max(mb, min(n, int(total * sh / sum(shares)))) for n, mb, sh in zip(ns, min_blocks, shares)]

    def sizes(tgt):
        bs = [min(L.MAX_BLOCK_SIZE, max(1, math.ceil(n / max(1, t)))) for n, t in zip(ns, tgt)]
        return bs, sum(packed_length(num_blocks(n, b), index_bits) for n, b in zip(ns, bs))

    bs, used = sizes(target)
    if sum(packed_length(mb, index_bits) for mb in min_blocks) > budget_bytes:
        raise ValueError("below the minimum")
    while used > budget_bytes:
        ratios = [(t / sh if sh > 0 else math.inf) if t > mb else -1 for t, sh, mb in zip(target, shares, min_blocks)]
        g = int(np.argmax(ratios))
        target[g] -= max(1, target[g] // 200)
        bs, used = sizes(target)
    while True:
        order = np.argsort([t / sh if sh > 0 else math.inf for t, sh in zip(target, shares)], kind="stable")
        for g in order:
            if shares[g] <= 0 or target[g] >= ns[g]:
                continue
            trial = list(target)
            trial[g] += 1
            tbs, tused = sizes(trial)
            if tused <= budget_bytes:
                target, bs, used = trial, tbs, tused
                break
        else:
            return bs


@pytest.mark.parametrize("seed", range(40))
def test_allocation_matches_growing_one_block_at_a_time(seed):
    """allocate_blocks jumps each group straight to its next block-size change, in the order the one-block
    loop reaches them: the same block sizes (groups of distinct sizes, so no ties), and no group could take
    one more step within the budget."""
    from mrcformat.bitpack import packed_length
    from mrcformat.layout import num_blocks

    rng = np.random.default_rng(seed)
    sizes = rng.choice(np.arange(1, 4000), size=int(rng.integers(1, 12)), replace=False)
    specs = [GroupSpec(f"g{i}", [(f"w{i}", (int(n),))]) for i, n in enumerate(sizes)]
    bits = int(rng.choice([4, 8, 12, 16]))
    full = sum(packed_length(int(n), bits) for n in sizes)
    budget = int(rng.integers(max(1, full // 100), full + 2))
    allocation = ["sqrt", "size", {s.name: float(rng.random()) for s in specs}][seed % 3]
    try:
        want = _allocate_one_block_at_a_time(specs, budget, bits, allocation)
    except ValueError:
        with pytest.raises(ValueError):
            allocate_blocks(specs, budget, bits, allocation)
        return
    got = allocate_blocks(specs, budget, bits, allocation)
    assert got == want
    used = [packed_length(num_blocks(int(n), b), bits) for n, b in zip(sizes, got)]
    assert sum(used) <= budget
    shares = {"sqrt": np.sqrt(sizes), "size": sizes}.get(allocation) if isinstance(allocation, str) else \
        [allocation[s.name] for s in specs]
    for g, (n, b) in enumerate(zip(sizes, got)):  # no group's next block-size step fits any more
        if b > 1 and shares[g] > 0:
            nb = -(-int(n) // -(-int(n) // (b - 1)))
            assert sum(used) - used[g] + packed_length(num_blocks(int(n), nb), bits) > budget, g
