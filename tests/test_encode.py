"""Encoder end to end on a tiny MLP and a few hundred MNIST images (CPU, seconds)."""
import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mrcformat
from mrcformat.coder import regenerate
from mrcformat.encode import Interrupted, compress
from mrcformat.encode.mnist import load_mnist
from mrcformat.layout import inverse_positions

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


def _data(n=384):
    x, y = load_mnist(DATA, "test", limit=n)
    return x[:, :, ::2, ::2].reshape(n, -1), y           # 14x14 = 196 features


def _loader(x, y, seed=0):
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def pretrained(one_thread):
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(196, 24), nn.ReLU(), nn.Linear(24, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, x, y


def _compress(model, x, y, **kw):
    opts = {"budget_bytes": 200, "method": "mean-kl", "index_bits": 8, "steps": 40, "retrain_steps": 1,
            "blocks_per_round": 8, "seed": 3, "progress": False, "example_input": x[:1]}
    opts.update(kw)
    return compress(model, _loader(x, y), **opts)


def _error(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) != y).float().mean())


@pytest.mark.parametrize("method", ["mean-kl", "mean-var"])
def test_end_to_end(pretrained, tmp_path, method):
    model, x, y = pretrained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _compress(model, x, y, method=method, budget_bytes=600)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input model untouched
    assert 590 <= result.payload_bytes <= 600
    size = result.save(tmp_path / "m.mrc")
    c = mrcformat.load(tmp_path / "m.mrc")
    assert size == (tmp_path / "m.mrc").stat().st_size
    assert [t.encoding for t in c.tensors] == ["coded"] * 4 and len(c.groups) == 2
    m2 = nn.Sequential(nn.Linear(196, 24), nn.ReLU(), nn.Linear(24, 10))
    m2.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mrcformat.decode(c).items()})
    assert _error(m2, x, y) < 0.5                              # far better than chance (0.9)
    assert all(r["index"] >= 0 for r in result.coding) and len(result.coding) == sum(g.num_blocks for g in c.groups)


def test_same_seed_same_bytes(pretrained):
    model, x, y = pretrained
    a = _compress(model, x, y).to_bytes()
    b = _compress(model, x, y).to_bytes()
    assert a == b
    assert _compress(model, x, y, seed=4).to_bytes() != a


@pytest.mark.parametrize("hashing", [None, 3.0])
def test_decoded_weights_are_the_chosen_candidates(pretrained, hashing):
    model, x, y = pretrained
    result = _compress(model, x, y, hashing=hashing, biases="raw")
    c = result.container
    decoded = mrcformat.decode(c)
    for name, w in result.trained_weights.items():               # what the encoder trained against
        assert np.array_equal(decoded[name], w.numpy()), name
    for gid, g in enumerate(c.groups):                           # and each block is candidate idx[b]
        assert g.hashing == (hashing is not None)
        values = mrcformat.decoder.decode_values(c.seed, gid, g)
        inv = inverse_positions(g.layout, g.num_values)
        for b in range(g.num_blocks):
            cand = regenerate(c.seed, gid, b, int(g.indices[b]), g.block_size, g.mu, g.sigma)
            k = min(g.block_size, g.num_values - b * g.block_size)
            assert np.array_equal(values[inv[b * g.block_size: b * g.block_size + k]], cand[:k])
    assert [t.encoding for t in c.tensors] == ["coded", "raw", "coded", "raw"]


def test_resume_gives_the_same_file(pretrained, tmp_path):
    model, x, y = pretrained
    ref = _compress(model, x, y, method="mean-var").to_bytes()
    ckpt = tmp_path / "run.ckpt"
    for stop in (25, 47, 60):                                    # in training, between and after coding rounds
        with pytest.raises(Interrupted):
            _compress(model, x, y, method="mean-var", checkpoint=str(ckpt), interrupt_after=stop)
        assert ckpt.exists()
    resumed = _compress(model, x, y, method="mean-var", checkpoint=str(ckpt)).to_bytes()
    assert resumed == ref


def test_budget_respected_for_many_budgets(pretrained):
    from mrcformat.encode.api import coded_layer_specs
    from mrcformat.encode.blocks import allocate_blocks, build_plan
    model, _, _ = pretrained
    specs = coded_layer_specs(model)
    for budget in (4, 17, 100, 333, 1000):
        for bits in (3, 8, 13):
            try:
                sizes = allocate_blocks(specs, budget, bits)
            except ValueError:
                assert budget * 8 < 2 * bits + 16
                continue
            used = sum(p.payload_bytes for p in build_plan(specs, sizes, bits, seed=1))
            assert used <= budget
            assert used >= 0.85 * budget or budget < 100   # block-size granularity of tiny groups


def test_checkpoint_of_other_settings_is_refused(pretrained, tmp_path):
    model, x, y = pretrained
    ckpt = str(tmp_path / "run.ckpt")
    with pytest.raises(Interrupted):
        _compress(model, x, y, checkpoint=ckpt, interrupt_after=5)
    with pytest.raises(ValueError, match="other settings"):
        _compress(model, x, y, checkpoint=ckpt, steps=41)


class _WithDeadLayer(nn.Module):
    """fc2(relu(fc1(x))) plus a layer whose output is multiplied by zero: its weights cannot matter."""

    def __init__(self, live: nn.Sequential) -> None:
        super().__init__()
        self.fc1, self.fc2 = live[0], live[2]
        self.dead = nn.Linear(196, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + 0.0 * self.dead(x)


def test_separate_biases_get_their_own_unhashed_groups(pretrained):
    from mrcformat.encode.api import coded_layer_specs
    model, x, y = pretrained
    specs = coded_layer_specs(model, "separate", hashing=4.0)
    assert [(s.name, s.hash_ratio) for s in specs] == [("0", 4.0), ("0.bias", 1.0), ("2", 4.0), ("2.bias", 1.0)]
    result = _compress(model, x, y, method="mean-var", biases="separate", hashing=4.0, budget_bytes=300)
    c = result.container
    assert [g.hashing for g in c.groups] == [True, False, True, False]
    assert [t.group for t in c.tensors] == [0, 1, 2, 3]
    for name, w in result.trained_weights.items():
        assert np.array_equal(mrcformat.decode(c)[name], w.numpy()), name


def test_kl_allocation_starves_a_layer_that_cannot_matter(pretrained):
    """One global beta puts the bits where they lower the loss: the dead layer ends with ~no KL."""
    from mrcformat.encode.api import coded_layer_specs
    from mrcformat.encode.blocks import allocate_blocks
    live, x, y = pretrained
    model = _WithDeadLayer(live)
    result = _compress(model, x, y, method="mean-var", biases="separate", budget_bytes=400, allocation="kl",
                       alloc_steps=300, beta_eps=0.02)
    alloc = result.allocation
    demand = {k: v["demand_nats"] for k, v in alloc.items()}
    assert demand["dead"] < 0.05 * demand["fc1"], demand
    sqrt_sizes = dict(zip([s.name for s in coded_layer_specs(model, "separate")],
                          allocate_blocks(coded_layer_specs(model, "separate"), 400, 8, "sqrt")))
    assert alloc["dead"]["block_size"] > 4 * sqrt_sizes["dead"]           # far fewer blocks than "sqrt" gives it
    assert alloc["fc1"]["block_size"] < sqrt_sizes["fc1"]                 # and the live layers get them
    assert 380 <= result.payload_bytes <= 400
    assert len(result.alloc_history) > 0
    # the pre-phase's single beta steered the total KL to the budget (within the annealing's slack)
    last = result.alloc_history[-1]
    assert last["step"] == 300
    assert 0.8 < last["kl_uncoded"] / (last["blocks_uncoded"] * (8 * np.log(2))) < 1.1


def test_kl_allocation_resumes_across_both_phases(pretrained, tmp_path):
    model, x, y = pretrained
    kw = {"method": "mean-var", "allocation": "kl", "alloc_steps": 30, "biases": "separate"}
    ref = _compress(model, x, y, **kw).to_bytes()
    ckpt = tmp_path / "run.ckpt"
    for stop in (12, 30, 55, 80):                 # in the pre-phase, at its end, in training, in coding
        with pytest.raises(Interrupted):
            _compress(model, x, y, checkpoint=str(ckpt), interrupt_after=stop, **kw)
    assert (tmp_path / "run.ckpt.alloc").exists()
    assert _compress(model, x, y, checkpoint=str(ckpt), **kw).to_bytes() == ref


def test_refinement_lowers_the_loss_and_keeps_indices_and_values_consistent(pretrained):
    model, x, y = pretrained
    base = _compress(model, x, y, method="mean-var", budget_bytes=300, greedy=True)
    result = _compress(model, x, y, method="mean-var", budget_bytes=300, greedy=True, refine_sweeps=5,
                       refine_examples=384)
    sweeps = result.refinement
    assert sweeps and all((s["loss_after"] < s["loss_before"]) == s["kept"] for s in sweeps)
    assert any(s["kept"] for s in sweeps)
    assert len(result.to_bytes()) == len(base.to_bytes())            # same size: only indices change
    changed = [gid for gid, (a, b) in enumerate(zip(base.container.groups, result.container.groups))
               if not np.array_equal(a.indices, b.indices)]
    assert changed
    c = result.container
    decoded = mrcformat.decode(c)
    for name, w in result.trained_weights.items():                   # coded values follow the new indices
        assert np.array_equal(decoded[name], w.numpy()), name

    def loss(r):
        m = nn.Sequential(nn.Linear(196, 24), nn.ReLU(), nn.Linear(24, 10))
        r.load_into(m)
        with torch.no_grad():
            return float(nn.functional.cross_entropy(m(x), y))
    assert loss(result) < loss(base)          # the refinement examples are the whole (tiny) training set


def test_random_shift_translates_with_zero_fill():
    from mrcformat.encode.augment import RandomShift
    x = torch.rand(64, 1, 6, 7) + 1.0
    out = RandomShift(2)(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert torch.equal(RandomShift(2)(x, torch.Generator().manual_seed(1)), out)   # generator decides
    assert torch.equal(RandomShift(0)(x), x)
    for i in range(64):                                   # each image is x[i] moved by one (dy, dx)
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.equal(out[i], torch.roll(x[i], (dy, dx), (1, 2)) * _window(dy, dx, 6, 7))]
        assert len(hits) == 1, i


def _window(dy, dx, h, w):
    m = torch.zeros(1, h, w)
    m[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = 1
    return m


def test_augmented_run_resumes_to_the_same_file(tmp_path):
    from mrcformat.encode.augment import RandomShift
    torch.manual_seed(0)
    x, y = load_mnist(DATA, "test", limit=256)
    x = x[:, :, ::2, ::2]                                          # 14x14 images
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))
    kw = {"budget_bytes": 150, "method": "mean-var", "index_bits": 8, "steps": 30, "retrain_steps": 1,
          "blocks_per_round": 16, "seed": 2, "progress": False, "example_input": x[:1],
          "batch_transform": RandomShift(1)}
    ref = compress(model, _loader(x, y), **kw).to_bytes()
    assert compress(model, _loader(x, y), **{**kw, "batch_transform": None}).to_bytes() != ref
    ckpt = tmp_path / "aug.ckpt"
    with pytest.raises(Interrupted):
        compress(model, _loader(x, y), checkpoint=str(ckpt), interrupt_after=17, **kw)
    with pytest.raises(ValueError, match="other settings"):
        compress(model, _loader(x, y), checkpoint=str(ckpt), **{**kw, "batch_transform": RandomShift(2)})
    assert compress(model, _loader(x, y), checkpoint=str(ckpt), **kw).to_bytes() == ref


def test_distillation_soft_term_is_zero_at_the_teacher_and_scaled_by_t_squared():
    from mrcformat.encode.distill import Distillation
    torch.manual_seed(0)
    teacher = nn.Linear(5, 4)
    x = torch.randn(32, 5)
    d = Distillation(teacher, temperature=3.0, weight=0.5)
    assert float(d.soft_loss(teacher(x).detach(), x)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(32, 4)
    p_t = torch.softmax(teacher(x).detach() / 3, 1)
    want = 9.0 * float((p_t * (p_t.log() - torch.log_softmax(student / 3, 1))).sum(1).mean())
    assert float(d.soft_loss(student, x)) == pytest.approx(want, rel=1e-5)
    hard = torch.tensor(2.0)
    assert float(d(student, hard, x)) == pytest.approx(0.5 * 2.0 + 0.5 * want, rel=1e-5)
    assert d(student, hard, x * 0 + 1) is not None and Distillation(teacher, weight=0.0)(student, hard, x) is hard
    with pytest.raises(ValueError):
        Distillation(teacher, temperature=0.0)
    with pytest.raises(ValueError):
        Distillation(teacher, weight=1.5)
    teacher.weight.data.add_(1.0)                               # a frozen copy: later edits do not leak in
    assert float(d.soft_loss(student, x)) == pytest.approx(want, rel=1e-5)


def test_distillation_teaches_the_teacher_even_from_wrong_labels(pretrained):
    """From a fresh network and shuffled labels only the soft term carries the task: weight 1 learns
    the teacher's function, weight 0 cannot."""
    model, x, y = pretrained
    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(196, 24), nn.ReLU(), nn.Linear(24, 10))
    wrong = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    with torch.no_grad():
        teacher_pred = model(x).argmax(1)
    agree = {}
    for weight in (0.0, 1.0):
        res = _compress(fresh, x, wrong, teacher=model, distill_weight=weight, distill_temperature=2.0,
                        method="mean-var", budget_bytes=300, steps=300, lr=1e-2)
        m = res.load_into(nn.Sequential(nn.Linear(196, 24), nn.ReLU(), nn.Linear(24, 10)))
        with torch.no_grad():
            agree[weight] = float((m(x).argmax(1) == teacher_pred).float().mean())
    assert agree[1.0] > 0.8 and agree[0.0] < 0.3, agree        # measured: 0.89 and 0.06


def test_distilled_run_resumes_and_refuses_another_teacher(pretrained, tmp_path):
    model, x, y = pretrained
    kw = {"teacher": model, "distill_weight": 0.7, "method": "mean-var"}
    ref = _compress(model, x, y, **kw).to_bytes()
    assert _compress(model, x, y, method="mean-var").to_bytes() != ref
    ckpt = tmp_path / "kd.ckpt"
    with pytest.raises(Interrupted):
        _compress(model, x, y, checkpoint=str(ckpt), interrupt_after=25, **kw)
    other = nn.Sequential(nn.Linear(196, 24), nn.ReLU(), nn.Linear(24, 10))
    with pytest.raises(ValueError, match="other settings"):
        _compress(model, x, y, checkpoint=str(ckpt), **{**kw, "teacher": other})
    assert _compress(model, x, y, checkpoint=str(ckpt), **kw).to_bytes() == ref


def test_retrain_lr_factor_changes_only_the_coding_phase(pretrained):
    from mrcformat.encode.train import MiracleTrainer, TrainConfig
    cfg = TrainConfig(steps=100, lr=1e-3, lr_min_factor=0.1, retrain_lr_factor=0.5)
    t = MiracleTrainer.__new__(MiracleTrainer)
    t.cfg = cfg
    assert t._lr_factor(0) == pytest.approx(1.0) and t._lr_factor(99) < 0.11 and t._lr_factor(100) == 0.5
    t.cfg = TrainConfig(steps=100, lr_min_factor=0.1)
    assert t._lr_factor(100) == pytest.approx(0.1)
    model, x, y = pretrained
    assert _compress(model, x, y, retrain_lr_factor=3.0).to_bytes() != _compress(model, x, y).to_bytes()


def test_trained_checkpoint_is_shared_by_coding_variants(pretrained, tmp_path):
    """One training, several codings: each variant's file equals the one its own full run makes."""
    model, x, y = pretrained
    trained = tmp_path / "trained.ckpt"
    kw = {"method": "mean-var", "trained_checkpoint": str(trained)}
    first = _compress(model, x, y, **kw).to_bytes()
    assert trained.exists()
    assert first == _compress(model, x, y, method="mean-var").to_bytes()
    before = trained.stat().st_mtime_ns
    for variant in ({"retrain_steps": 3}, {"greedy": True, "blocks_per_round": 5}, {"retrain_lr_factor": 0.5}):
        forked = _compress(model, x, y, **kw, **variant).to_bytes()
        assert forked == _compress(model, x, y, method="mean-var", **variant).to_bytes()
        assert forked != first
    assert trained.stat().st_mtime_ns == before            # written once, by the first run
    with pytest.raises(ValueError, match="other training settings"):
        _compress(model, x, y, **kw, lr=2e-3)


def test_trained_checkpoint_must_be_at_the_end_of_training(pretrained, tmp_path):
    model, x, y = pretrained
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        _compress(model, x, y, method="mean-var", checkpoint=str(ckpt), interrupt_after=60)  # mid-coding
    with pytest.raises(ValueError, match="not at the end of training"):
        _compress(model, x, y, method="mean-var", trained_checkpoint=str(ckpt))


def test_trained_checkpoint_with_learned_allocation(pretrained, tmp_path):
    model, x, y = pretrained
    kw = {"method": "mean-var", "allocation": "kl", "alloc_steps": 12}
    trained = tmp_path / "trained.ckpt"
    _compress(model, x, y, trained_checkpoint=str(trained), **kw)
    assert Path(f"{trained}.alloc").exists()
    forked = _compress(model, x, y, trained_checkpoint=str(trained), retrain_steps=2, **kw).to_bytes()
    assert forked == _compress(model, x, y, retrain_steps=2, **kw).to_bytes()


def test_checkpoints_of_another_starting_network_are_refused(pretrained, tmp_path):
    """The starting weights are part of a run's settings: a checkpoint trained from other weights is not resumed."""
    model, x, y = pretrained
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    ckpt, trained = tmp_path / "run.ckpt", tmp_path / "trained.ckpt"
    with pytest.raises(Interrupted):
        _compress(model, x, y, method="mean-var", checkpoint=str(ckpt), interrupt_after=25)
    _compress(model, x, y, method="mean-var", trained_checkpoint=str(trained))
    with pytest.raises(ValueError, match="other settings"):
        _compress(other, x, y, method="mean-var", checkpoint=str(ckpt))
    with pytest.raises(ValueError, match="other training settings"):
        _compress(other, x, y, method="mean-var", trained_checkpoint=str(trained))


def test_checkpoints_load_without_running_code(pretrained, tmp_path):
    """A checkpoint holds tensors, numbers and strings only; one that would unpickle an object is refused."""
    import pickle

    from mrcformat.encode.checkpoint import load_checkpoint, save_checkpoint
    model, x, y = pretrained
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        _compress(model, x, y, checkpoint=str(ckpt), interrupt_after=35, allocation="kl", alloc_steps=10)
    assert load_checkpoint(ckpt)["state"]
    bad = tmp_path / "bad.ckpt"
    save_checkpoint({"state": nn.Linear(2, 2)}, bad)            # a module: only unpickling could make it
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(bad)
