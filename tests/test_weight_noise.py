"""Training with one weight sample per step (`noise="weights"`) instead of local reparameterisation.

The sample is drawn per coded value (slot), so hashed copies share it as they share the decoded
value; coded blocks are their chosen candidates exactly; layers compute their plain product with
it; q's parameters get gradients through it; a run is reproducible, resumable and makes a valid file.
"""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mrcformat
from mrcformat.encode import Interrupted, compress
from mrcformat.encode.api import coded_layer_specs
from mrcformat.encode.blocks import allocate_blocks, build_plan
from mrcformat.encode.layers import make_variational
from mrcformat.encode.posterior import GroupPosterior
from mrcformat.encode.train import MiracleTrainer, TrainConfig
from mrcformat.validate import validate_file

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


class _Net(nn.Module):
    """Conv2d and Linear (fast layers) and a Conv1d (generic: sampled through functional_call)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 6, 3, padding=1)
        self.f1 = nn.Linear(6 * 8, 16)
        self.f2 = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.c1(x)), 2)              # 8 x 4x8
        x = torch.relu(self.c2(x.mean(2)))                       # 6 x 8
        return self.f2(torch.relu(self.f1(x.flatten(1))))


def _data(n=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 16, generator=g)
    return x, (x.mean((1, 2, 3)) * 8).long().clamp(-2, 1) + 2


def _loader(x, y, seed=0):
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _trainer(method="mean-var", hashing=2.0, noise="weights", net_class=None, **config):
    """A trainer set up as compress does (80-byte budget, 8-bit blocks); `config`: more TrainConfig fields."""
    torch.manual_seed(0)
    net = (net_class or _Net)()
    x, y = _data()
    specs = coded_layer_specs(net, "coded", hashing)
    plans = build_plan(specs, allocate_blocks(specs, 80, 8, "sqrt"), 8, 3)
    params = dict(net.state_dict())
    posts = [GroupPosterior(p, method, torch.cat([params[n].reshape(-1) for n, _ in p.spec.members]))
             for p in plans]
    vmodel, layers, generic = make_variational(net, {n for s in specs for n, _ in s.members})
    cfg = TrainConfig(method=method, steps=6, progress=False, noise=noise, **config)
    return MiracleTrainer(vmodel, layers, posts, _loader(x, y), cfg, seed=3, generic=generic), x


def _reference_samples(trainer, generator):
    """The sample written out: mean + exp(log_std) * randn per slot, coded slots fixed, gathered with signs."""
    out = {}
    for p in trainer.posteriors:
        mean, log_std = p.slot_moments()
        value = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator)
        value = torch.where(p.coded[:, None], p.coded_value, value).reshape(-1)
        w = value[p.slot_of_weight] * (p.sign if p.sign.numel() else 1.0)
        pos = 0
        for name, shape in p.plan.spec.members:
            k = int(np.prod(shape))
            out[name] = w[pos:pos + k].view(shape)
            pos += k
    return out


@pytest.mark.parametrize("method", ["mean-var", "mean-kl"])
@pytest.mark.parametrize("hashing", [None, 2.0])
def test_layers_get_one_sample_per_slot_with_coded_blocks_fixed(method, hashing):
    trainer, _ = _trainer(method, hashing)
    trainer.freeze()
    for p in trainer.posteriors:                                 # a coded block, as between coding rounds
        p.fix_block(1, 7, torch.randn(p.plan.block_size) * 0.01)
    trainer.model.train()
    state = trainer.noise.get_state()
    moments = trainer.set_moments()
    ref = _reference_samples(trainer, torch.Generator().set_state(state))
    assert set(moments) == set(ref)
    for name, (w, var) in moments.items():
        assert var is None
        assert torch.equal(w.detach(), ref[name].detach()), name
    for layer in trainer.layers.values():
        assert layer._moments[1] is None and layer._moments[3] is None
    for p in trainer.posteriors:                                 # hashed copies share their slot's sample
        flat = torch.cat([moments[n][0].detach().reshape(-1) for n, _ in p.plan.spec.members])
        signs = p.sign if p.sign.numel() else torch.ones_like(flat)
        by_slot = {}
        for slot, v in zip(p.slot_of_weight.tolist(), (flat * signs).tolist()):
            assert by_slot.setdefault(slot, v) == v
        coded_slots = set(range(p.plan.block_size, 2 * p.plan.block_size))
        for slot in coded_slots & set(by_slot):
            assert by_slot[slot] == float(p.coded_value.reshape(-1)[slot])
        if hashing:
            assert len(by_slot) < flat.numel()
    trainer.model.eval()                                         # eval: the means, no noise drawn
    before = trainer.noise.get_state()
    for name, (w, var) in trainer.set_moments().items():
        assert var is not None
    assert torch.equal(trainer.noise.get_state(), before)


def test_sampled_layers_compute_their_plain_product():
    trainer, x = _trainer(hashing=None)
    trainer.model.train()
    moments = trainer.set_moments()
    layer = trainer.layers["f1"]
    h = torch.randn(5, 48)
    w, _ = moments["f1.weight"]
    b, _ = moments["f1.bias"]
    assert torch.equal(layer(h), F.linear(h, w, b))
    conv = trainer.layers["c1"]
    assert torch.equal(conv(x[:3]), F.conv2d(x[:3], moments["c1.weight"][0], moments["c1.bias"][0], padding=1))


def test_samples_follow_q():
    trainer, _ = _trainer(hashing=None)
    trainer.model.train()
    p = trainer.posteriors[0]
    with torch.no_grad():
        p.log_std.add_(torch.randn(p.log_std.shape) * 0.3)
        draws = torch.stack([p.weight_sample(trainer.noise) for _ in range(4000)])
        mean, var = p.weight_moments()
    z = (draws.mean(0) - mean) / (var / 4000).sqrt()
    assert float(z.abs().max()) < 5.0
    assert float((draws.var(0) / var - 1).abs().max()) < 0.25


@pytest.mark.parametrize("method", ["mean-var", "mean-kl"])
def test_a_step_trains_q_through_the_sample(method):
    trainer, _ = _trainer(method)
    p = trainer.posteriors[0]
    scale = p.log_std if method == "mean-var" else p.logits
    before = [t.detach().clone() for t in (scale, p.mean if method == "mean-var" else p.nu)]
    trainer.train_step()
    after = [scale, p.mean if method == "mean-var" else p.nu]
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, after))
    assert scale.grad is not None and float(scale.grad.abs().sum()) > 0


def test_unknown_noise_is_refused():
    with pytest.raises(ValueError, match="noise must be one of"):
        _trainer(noise="activations")


# --- whole runs ------------------------------------------------------------------------------------
def _compress(net_class=None, **kw):
    torch.manual_seed(0)
    net = (net_class or _Net)()
    x, y = _data()
    opts = {"budget_bytes": 120, "method": "mean-var", "index_bits": 8, "steps": 30, "retrain_steps": 1,
            "blocks_per_round": 8, "seed": 3, "progress": False, "example_input": x[:1], "noise": "weights",
            "hashing": 2.0}
    opts.update(kw)
    return compress(net, _loader(x, y), **opts)


def test_runs_are_reproducible_resumable_and_make_valid_files(tmp_path: Path):
    ref = _compress()
    data = ref.to_bytes()
    assert _compress().to_bytes() == data
    assert _compress(noise="local").to_bytes() != data
    ckpt = tmp_path / "run.ckpt"
    for stop in (12, 33):                                        # in training, and between coding rounds
        with pytest.raises(Interrupted):
            _compress(checkpoint=str(ckpt), interrupt_after=stop)
    with pytest.raises(ValueError, match="other settings"):     # a checkpoint of the other noise is refused
        _compress(checkpoint=str(ckpt), noise="local")
    assert _compress(checkpoint=str(ckpt)).to_bytes() == data
    ref.save(tmp_path / "m.mrc")
    assert validate_file(tmp_path / "m.mrc") == []
    decoded = mrcformat.decode(mrcformat.load(tmp_path / "m.mrc"))
    for name, w in ref.trained_weights.items():
        assert np.array_equal(decoded[name], w.numpy()), name


def test_checkpoints_of_local_noise_runs_keep_their_fingerprint(tmp_path: Path):
    """The default is left out of the run's settings, so checkpoints made before the option resume."""
    from mrcformat.encode.checkpoint import load_checkpoint
    for noise in ("local", "weights"):
        ckpt = tmp_path / f"{noise}.ckpt"
        with pytest.raises(Interrupted):
            _compress(checkpoint=str(ckpt), interrupt_after=12, noise=noise)
        state = load_checkpoint(ckpt)
        for key in ("fingerprint", "train_fingerprint"):
            assert ("'noise': 'weights'" in state[key]) == (noise == "weights")
            assert ("'noise'" in state[key]) == (noise == "weights")

