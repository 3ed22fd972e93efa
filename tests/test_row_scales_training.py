"""Per-row coding scales in MIRACLE training (`compress(per_row=True)`, `finetune_onnx`'s default):
p of row k is N(0, (sigma_p * scale_k)^2), stored as format 1.1 group scales (SPEC.md 4.2)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import mrcformat as m  # noqa: E402
from mrcformat.encode.blocks import GroupSpec, build_plan, scale_rows  # noqa: E402
from mrcformat.encode.lambertw import gaussian_kl  # noqa: E402
from mrcformat.encode.posterior import GroupPosterior  # noqa: E402
from mrcformat.sampler import bf16_bits_to_float, float_to_bf16_bits  # noqa: E402

from test_any_model import Mixed, _mixed_compress, _mixed_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def _layered(rows=8, cols=24, seed=0) -> torch.Tensor:
    """A weight whose row k has RMS about 2^(k - 4): rows differing 128x in magnitude."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * (2.0 ** (torch.arange(rows, dtype=torch.float32) - 4))[:, None]


@pytest.mark.parametrize("method", ["mean-var", "mean-kl"])
def test_row_scales_follow_each_rows_magnitude(method):
    w = _layered()
    spec = GroupSpec("w", [("w", tuple(w.shape))], rows=8)
    (plan,) = build_plan([spec], [5], 8, seed=3)
    post = GroupPosterior(plan, method, w.reshape(-1))
    rms = w.pow(2).mean(1).sqrt()
    want = [bf16_bits_to_float(float_to_bf16_bits(float(r / w.pow(2).mean().sqrt()))) for r in rms]
    assert post.row_scale.tolist() == want
    assert list(post.scale_bits()) == [float_to_bf16_bits(x) for x in want]
    # every slot carries its value's row scale; padding slots 1
    n = plan.num_values
    flat = post.slot_scale.reshape(-1)
    rows_of_values = np.arange(n) // (n // 8)
    pos = np.empty(n, dtype=np.int64)
    pos[plan.value_of_slot] = np.arange(n)           # slot of each value
    assert torch.equal(flat[pos], post.row_scale[rows_of_values])
    assert torch.all(flat[n:] == 1)
    # frozen: each slot's sigma is the exact float32 product of two bfloat16s, as a decoder forms it
    post.freeze_prior()
    sig = post.slot_sigma().reshape(-1)[pos].numpy()
    sp = np.float32(bf16_bits_to_float(int(post.frozen_sigma_bits)))
    assert np.array_equal(sig, (sp * post.row_scale.numpy()[rows_of_values]).astype(np.float32))


def test_mean_kl_blocks_carry_their_budget_under_row_scales():
    w = _layered(rows=6, cols=40, seed=1)
    spec = GroupSpec("w", [("w", tuple(w.shape))], rows=6)
    (plan,) = build_plan([spec], [7], 10, seed=5)
    post = GroupPosterior(plan, "mean-kl", w.reshape(-1))
    with torch.no_grad():
        post.nu.add_(torch.randn_like(post.nu))
        mean, log_std = post.slot_moments()
        kl = (gaussian_kl(mean.double(), log_std.double(), post.slot_sigma().double()) * post.valid).sum(1)
    np.testing.assert_allclose(kl.numpy(), post.kl_target, rtol=1e-4)
    # and the means start near the weights, row by row (the prior follows each row's magnitude)
    assert torch.allclose(post.weight_moments()[0].reshape(w.shape).abs().mean(1) / w.abs().mean(1),
                          torch.ones(6), rtol=0.5)


def test_group_spec_refuses_rows_it_cannot_have():
    with pytest.raises(ValueError, match="coding scales"):
        GroupSpec("g", [("a", (4, 8)), ("b", (4,))], rows=4)
    with pytest.raises(ValueError, match="coding scales"):
        GroupSpec("g", [("a", (4, 8))], hash_ratio=2.0, rows=4)
    with pytest.raises(ValueError, match="coding scales"):
        GroupSpec("g", [("a", (4, 8))], rows=5)
    assert scale_rows((64, 3, 3)) == 64 // 8 and scale_rows((10,)) == 1 and scale_rows((256, 512)) == 256


@pytest.mark.parametrize("method", ["mean-var", "mean-kl"])
def test_per_row_file_decodes_to_the_trained_values_in_every_loader(tmp_path, method):
    from mrcformat_runtime.ort import session
    from mrcformat_runtime.torch_load import load_state_dict

    torch.manual_seed(0)
    model = Mixed()
    tokens, images = _mixed_data()
    r = _mixed_compress(model, tokens, images, 400, steps=20, blocks_per_round=32, seed=2, per_row=True,
                        group_by="tensor", method=method, refine_sweeps=1, refine_examples=32)
    c = r.container
    assert c.version >= (1, 1)
    scaled = {t.name: c.groups[t.group] for t in c.tensors if t.encoding == "coded" and c.groups[t.group].scales is not None}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(scaled) == {t.name for t in c.tensors if t.encoding == "coded" and scale_rows(shapes[t.name]) > 1}
    assert {"emb.weight", "conv.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0"} <= set(scaled)
    for name, g in scaled.items():
        assert len(g.scales) == scale_rows(shapes[name])
    path = tmp_path / "rows.mrc"
    r.save(path)
    decoded = m.decode(m.load(path))
    assert r.trained_weights and all(np.array_equal(decoded[k].view(np.uint32), v.numpy().view(np.uint32))
                                     for k, v in r.trained_weights.items())
    sd = load_state_dict(path)
    assert all(np.array_equal(sd[k].numpy().view(np.uint32), decoded[k].view(np.uint32)) for k in r.trained_weights)
    ref = Mixed()
    ref.load_state_dict(sd)
    tok, img = _mixed_data(4, seed=9)
    with torch.no_grad():
        want = ref.eval()(tok, img)
    got = session(path).run(None, {"input": tok.numpy(), "input1": img.numpy()})
    np.testing.assert_allclose(got[0], want["logits"].numpy(), rtol=1e-4, atol=1e-5)


def test_per_row_changes_the_run_and_its_checkpoint_fingerprint(tmp_path):
    torch.manual_seed(0)
    model = Mixed()
    tokens, images = _mixed_data(32)

    def run(**kw):
        return _mixed_compress(model, tokens, images, 300, steps=6, blocks_per_round=64, seed=4, group_by="tensor",
                               **kw)

    plain, rows = run().to_bytes(), run(per_row=True).to_bytes()
    assert rows != plain and run(per_row=True).to_bytes() == rows
    ck = tmp_path / "ck.pt"
    run(checkpoint=str(ck))
    with pytest.raises(ValueError, match="other settings"):
        run(per_row=True, checkpoint=str(ck))


@pytest.mark.parametrize("method", ["mean-var", "mean-kl"])
def test_groups_without_row_scales_start_where_they_did_before_row_scales(method):
    """Unscaled groups compute their start with sigma_p as a Python float, as before row scales existed:
    Mean-Var's log std is float32(log(ratio * sigma_p)) rounded once (a float32 product and log differ in
    the last bit for some sigma_p, e.g. LeNet-5's conv2, and the bundled recipe then trained to another
    file), Mean-KL's logits and nu the expressions with that float."""
    import math

    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, generator=g) * 0.05
    spec = GroupSpec("w", [("w", (300,))])
    (plan,) = build_plan([spec], [9], 8, seed=3)
    for log_sp in torch.linspace(-6.0, 1.0, 400, dtype=torch.float64).tolist():
        post = GroupPosterior(plan, method, w, init_log_sp=log_sp, init_std_ratio=0.1)
        sp = math.exp(log_sp)
        if method == "mean-var":
            assert torch.equal(post.log_std.detach(), torch.full_like(post.log_std, math.log(0.1 * sp))), log_sp
        else:
            values = post._values_from_weights(w)
            logits = torch.log((values / sp) ** 2 + 0.05).masked_fill(~plan.valid, -1e4)
            kl = post.kl_target * torch.softmax(logits, dim=1)
            nu = torch.atanh((values / (sp * torch.sqrt(2 * kl).clamp_min(1e-12))).clamp(-0.95, 0.95))
            assert torch.equal(post.logits.detach(), logits), log_sp
            assert torch.equal(post.nu.detach(), nu.masked_fill(~plan.valid, 0.0)), log_sp
