"""The training step's fast paths against the straightforward computations they replace.

Every fast path (the sampled layer forward in reusable buffers, the gathers with a scatter-add
backward, the chunked in-place Lambert-W, the cached coded-block state) must give the same bits as
the expression written out with autograd: a run's results must not depend on which is used.
"""
import copy
import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mrcformat.encode import lambertw, posterior
from mrcformat.encode.api import coded_layer_specs
from mrcformat.encode.blocks import GroupSpec, allocate_blocks, build_plan
from mrcformat.encode.layers import _VAR_FLOOR, VariationalLayer, variationalize
from mrcformat.encode.posterior import GroupPosterior
from mrcformat.encode.train import MiracleTrainer, TrainConfig


# --- the straightforward computations -----------------------------------------------------------
def ref_layer_forward(self, x):
    w_mean, w_var, b_mean, b_var = self._moments
    out = self._op(x, w_mean, b_mean if self.coded_bias else self.bias)
    if not self.training:
        return out
    var = self._op(x * x, w_var, b_var if self.coded_bias else None)
    noise = torch.randn(out.shape, generator=self.generator, device=out.device, dtype=out.dtype)
    return out + torch.sqrt(var.clamp_min(0) + _VAR_FLOOR) * noise


def ref_weight_moments(self):
    mean, log_std = self.slot_moments()
    coded = self.coded[:, None]
    mean = torch.where(coded, self.coded_value, mean).reshape(-1)
    var = torch.where(coded, torch.zeros_like(log_std), torch.exp(2 * log_std)).reshape(-1)
    wm, wv = mean[self.slot_of_weight], var[self.slot_of_weight]
    if self.sign.numel():
        wm = wm * self.sign
    return wm, wv


def ref_solve_t(r):
    r = r.double().clamp_min(0.0)
    half_r2 = 0.5 * r * r
    c = 1.0 + half_r2
    t = torch.where(r < 2.0, -r / (1.0 - r / 6.0).clamp_min(1e-3), torch.exp(-c) - c)
    for _ in range(3):
        g1 = torch.expm1(t)
        g = g1 - t - half_r2
        den = 2.0 * g1 * g1 - g * (g1 + 1.0)
        t = torch.clamp_max(t - 2.0 * g * g1 / den, 0.0)
    return torch.where(r < 1e-6, -r - r * r / 6.0 - r ** 3 / 36.0, t)


class RefLogS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r):
        t = ref_solve_t(r)
        ctx.save_for_backward(r, t)
        return t.to(r.dtype)

    @staticmethod
    def backward(ctx, grad):
        r, t = ctx.saved_tensors
        r64 = r.double()
        em1 = torch.expm1(t)
        safe = torch.where(r64 < 1e-6, torch.full_like(em1, -1.0), em1)
        dt = torch.where(r64 < 1e-6, -1.0 - r64 / 3.0, r64 / safe)
        return grad * dt.to(grad.dtype)


def ref_mean_kl_moments(sqrt_kl, nu, sigma_p):
    mean = sigma_p * math.sqrt(2.0) * sqrt_kl * torch.tanh(nu)
    e = torch.exp(-nu.abs())
    r = 2.0 * sqrt_kl * (2.0 * e / (1.0 + e * e))
    log_std = torch.log(torch.as_tensor(sigma_p, dtype=mean.dtype, device=mean.device)) + 0.5 * RefLogS.apply(r)
    return mean, log_std


@pytest.fixture
def reference(monkeypatch):
    """Switch the encoder to the straightforward computations (for the duration of a `with`)."""
    class Switch:
        def __enter__(self):
            monkeypatch.setattr(VariationalLayer, "forward", ref_layer_forward)
            monkeypatch.setattr(GroupPosterior, "weight_moments", ref_weight_moments)
            monkeypatch.setattr(posterior, "mean_kl_moments", ref_mean_kl_moments)

        def __exit__(self, *exc):
            monkeypatch.undo()
    return Switch()


def _bits_equal(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(a), torch.signbit(b))


# --- layers -------------------------------------------------------------------------------------
class _Net(nn.Module):
    """Conv (input without grad), conv used twice (input with grad), Linear on 2-d and 3-d input."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.f1 = nn.Linear(8 * 4, 16)
        self.f2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
        x = torch.relu(self.c2(x))                          # the same layer again, same step
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 8 * 4)   # 3-d input to f1
        return self.f2(torch.relu(self.f1(x))).mean(1)


def _layer_run(weird: str, coded_bias: bool, steps: int = 3):
    torch.manual_seed(0)
    net = _Net()
    vm, layers = variationalize(net, coded_bias=coded_bias)
    gen = torch.Generator().manual_seed(5)
    params = {}
    for path, layer in layers.items():
        w = getattr(net, path).weight
        wm = w.detach().clone().requires_grad_(True)
        wv = torch.rand_like(w) * 1e-3
        if weird == "negative":
            wv[0] = -1e-2
        elif weird == "nan":
            wv.view(-1)[3] = float("nan")
        wv.requires_grad_(True)
        bm = bv = None
        if layer.coded_bias:
            b = getattr(net, path).bias
            bm = b.detach().clone().requires_grad_(True)
            bv = (torch.rand_like(b) * 1e-3).requires_grad_(True)
        params[path] = (wm, wv, bm, bv)
        layer.generator = gen
    xs = torch.Generator().manual_seed(9)
    out = []
    leaves = [p for t in params.values() for p in t if p is not None] + list(vm.parameters())
    for _ in range(steps):
        for path, layer in layers.items():
            layer.set_moments(*params[path])
        x = torch.randn(6, 3, 4, 16, generator=xs)
        y = vm(x)
        loss = F.cross_entropy(y, torch.arange(6) % 10)
        out.append((y.detach(), torch.autograd.grad(loss, leaves)))
    return out


@pytest.mark.parametrize("weird", ["none", "negative", "nan"])
@pytest.mark.parametrize("coded_bias", [True, False])
def test_sampled_layers_give_the_bits_of_the_written_out_expression(reference, weird, coded_bias):
    fast = _layer_run(weird, coded_bias)
    with reference:
        ref = _layer_run(weird, coded_bias)
    for (ya, ga), (yb, gb) in zip(fast, ref):
        _bits_equal(ya, yb)
        for a, b in zip(ga, gb):
            _bits_equal(a, b)


def _one_layer():
    torch.manual_seed(1)
    vm, layers = variationalize(nn.Sequential(nn.Linear(5, 4)))
    layer = layers["0"]
    layer.generator = torch.Generator().manual_seed(2)
    wm = torch.randn(4, 5, requires_grad=True)
    layer.set_moments(wm, torch.rand(4, 5), torch.zeros(4), torch.rand(4))
    return vm, layer, wm


def test_two_live_graphs_of_one_layer_keep_their_own_noise():
    vm, _, wm = _one_layer()
    x = torch.randn(3, 5)
    y1, y2 = vm(x), vm(x)                                   # second call while the first graph lives
    g1, = torch.autograd.grad(y1.sum(), wm)
    g2, = torch.autograd.grad(y2.sum(), wm)
    vm2, layer2, wm2 = _one_layer()
    layer2.forward = ref_layer_forward.__get__(layer2)
    r1, r2 = vm2(x), vm2(x)
    assert torch.equal(y1, r1) and torch.equal(y2, r2)
    assert torch.equal(g1, torch.autograd.grad(r1.sum(), wm2)[0])
    assert torch.equal(g2, torch.autograd.grad(r2.sum(), wm2)[0])


def test_an_old_graph_whose_buffers_were_reused_refuses_to_backpropagate():
    vm, _, _ = _one_layer()
    x = torch.randn(3, 5)
    y1 = vm(x)
    y1.sum().backward(retain_graph=True)
    vm(x).sum().backward()                                  # the next step reuses the buffers
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y1.sum().backward()


def test_eval_copy_and_pickle_drop_the_buffers():
    vm, layer, _ = _one_layer()
    vm(torch.randn(3, 5)).sum().backward()
    assert layer._ws.main.tensors
    twin = copy.deepcopy(vm)
    assert not twin[0]._ws.main.tensors
    assert not pickle.loads(pickle.dumps(layer._ws)).main.tensors
    vm.eval()
    assert not layer._ws.main.tensors


# --- posterior ----------------------------------------------------------------------------------
def _posterior(method, ratio, n=1000, bsz=37, seed=5):
    spec = GroupSpec("g", [("w", (n - 7,)), ("b", (7,))], ratio)
    plan = build_plan([spec], [bsz], 10, seed)[0]
    torch.manual_seed(seed)
    post = GroupPosterior(plan, method, torch.randn(n) * 0.05)
    with torch.no_grad():
        for p in post.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return post


@pytest.mark.parametrize("method", ["mean-var", "mean-kl"])
@pytest.mark.parametrize("ratio", [1.0, 3.0])
@pytest.mark.parametrize("coded", ["none", "some", "refine"])
def test_weight_moments_and_gradients_match_indexing(reference, method, ratio, coded):
    def run():
        post = _posterior(method, ratio)
        if coded != "none":
            for b in (0, 3, 4):
                post.fix_block(b, 7, torch.randn(post.plan.block_size))
        if coded == "refine":                              # refine() differentiates the coded values
            post.coded_value = post.coded_value.clone().requires_grad_(True)
        wm, wv = post.weight_moments()
        g = torch.Generator().manual_seed(3)
        loss = (wm * torch.randn(wm.shape, generator=g)).sum() + (wv * torch.rand(wv.shape, generator=g)).sum()
        leaves = [p for p in post.parameters() if p.requires_grad]
        if coded == "refine":
            leaves.append(post.coded_value)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)   # mean-var: log_sp is the KL's
        return (wm, wv) + tuple(torch.zeros(0) if g is None else g for g in grads)
    fast = run()
    with reference:
        ref = run()
    for a, b in zip(fast, ref):
        _bits_equal(a.detach(), b.detach())


def test_hashed_gather_adds_in_weight_order_whatever_the_threads():
    """index_put_ with accumulate adds in parallel (unordered) from 32768 elements on 2+ threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        w, s = 100_000, 3_000
        idx = torch.randint(0, s, (w,), generator=torch.Generator().manual_seed(0))
        sign = torch.where(torch.rand(w) < 0.5, -1.0, 1.0)
        src = torch.randn(s, requires_grad=True)
        g = torch.randn(w) * torch.rand(w) ** 8
        out = posterior._Gather.apply(src, idx, sign)
        assert torch.equal(out, src.detach()[idx] * sign)
        got, = torch.autograd.grad(out, src, g)
        want = np.zeros(s, dtype=np.float32)
        np.add.at(want, idx.numpy(), (g * sign).numpy())    # sequential, in weight order
        assert np.array_equal(got.numpy(), want)
        again, = torch.autograd.grad(posterior._Gather.apply(src, idx, sign), src, g)
        assert torch.equal(got, again)
    finally:
        torch.set_num_threads(before)


def test_coded_state_follows_fix_block_and_load_state_dict():
    post = _posterior("mean-var", 1.0)
    nb = post.plan.num_blocks
    assert not post.any_coded() and post.num_uncoded() == nb and torch.equal(post.uncoded_mask(), torch.ones(nb))
    state = copy.deepcopy(post.state_dict())
    post.fix_block(2, 1, torch.zeros(post.plan.block_size))
    assert post.any_coded() and post.num_uncoded() == nb - 1 and post.uncoded_mask()[2] == 0
    post.load_state_dict(state)
    assert not post.any_coded() and post.num_uncoded() == nb
    state["coded"][:] = True
    post.load_state_dict(state)
    assert post.num_uncoded() == 0 and not post.uncoded_mask().any()
    assert "invalid" not in post.state_dict()               # derived, not part of checkpoints


# --- Lambert-W ----------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [7, 64, 1 << 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_in_place_lambert_w_gives_the_formula_bits(monkeypatch, chunk, dtype):
    monkeypatch.setattr(lambertw, "_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    r = torch.cat([torch.rand(2998, generator=g) * 3, torch.rand(300, generator=g) * 1e-5, torch.zeros(7),
                   torch.rand(300, generator=g) * 60,
                   torch.tensor([1e-7, 9.99e-7, 1e-6, 1.999999, 2.0, 2.0000001, 0.5])]).to(dtype).view(-1, 7)
    assert torch.equal(lambertw._solve_t(r), ref_solve_t(r))
    a, b = r.clone().requires_grad_(True), r.clone().requires_grad_(True)
    ta, tb = lambertw.log_s_from_r(a), RefLogS.apply(b)
    assert torch.equal(ta, tb) and ta.dtype == dtype
    grad = torch.randn(ta.shape, generator=g, dtype=dtype)
    assert torch.equal(torch.autograd.grad(ta, a, grad)[0], torch.autograd.grad(tb, b, grad)[0])


# --- a whole run --------------------------------------------------------------------------------
@pytest.mark.parametrize("method,hashing,kl_control", [("mean-var", None, "block"), ("mean-var", 2.0, "global"),
                                                       ("mean-kl", None, "block"), ("mean-kl", 2.0, "block")])
def test_training_steps_give_the_bits_of_the_straightforward_step(reference, method, hashing, kl_control):
    def run():
        torch.manual_seed(0)
        net = _Net()
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(48, 3, 4, 16, generator=g), torch.randint(0, 10, (48,), generator=g)
        loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                            generator=torch.Generator().manual_seed(2))
        specs = coded_layer_specs(net, "coded", hashing)
        plans = build_plan(specs, allocate_blocks(specs, 60, 8, "sqrt"), 8, 3)
        params = dict(net.state_dict())
        posts = [GroupPosterior(p, method, torch.cat([params[n].reshape(-1) for n, _ in p.spec.members]))
                 for p in plans]
        vmodel, layers = variationalize(net)
        trainer = MiracleTrainer(vmodel, layers, posts, loader, TrainConfig(method=method, steps=6, progress=False,
                                                                            kl_control=kl_control, history_every=2),
                                 seed=3)
        losses = [trainer.train_step()["nll"] for _ in range(4)]
        trainer.freeze()
        for p in trainer.posteriors:                       # some blocks coded, as between coding rounds
            p.fix_block(0, 1, torch.randn(p.plan.block_size) * 0.01)
        losses += [trainer.train_step()["nll"] for _ in range(3)]
        return losses, trainer.state.history, [t.detach().clone() for t in trainer.posteriors.state_dict().values()]
    fast = run()
    with reference:
        ref = run()
    assert fast[0] == ref[0] and fast[1] == ref[1]
    for a, b in zip(fast[2], ref[2]):
        _bits_equal(a, b)
