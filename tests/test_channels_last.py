"""Training with the coded convolutions in channels_last memory format (`TrainConfig.channels_last`).

The layers hand oneDNN channels_last weights (a 1-input-channel weight too, which `.contiguous`
would leave as it is), so the products and everything after them run in that layout; local noise is
the generator's stream in memory order; a step computes what the default layout computes up to
rounding; runs are reproducible, resumable, refuse the other layout's checkpoints and make valid files.
"""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import test_weight_noise as wn  # its data, loader, trainer and compress set-ups, with this file's net
import torch.nn.functional as F
from test_weight_noise import _data, _loader
from torch import nn

import mrcformat
from mrcformat.encode import Interrupted, compress
from mrcformat.encode.layers import VariationalConv2d
from mrcformat.validate import validate_file

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py
CL = torch.channels_last


class _Net(nn.Module):
    """A 1-input-channel conv, a multi-channel conv (oneDNN sums differently per layout), pools, Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.f1 = nn.Linear(6 * 2 * 4, 4)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.c1(x)), 2)              # 8 x 4x8
        x = F.max_pool2d(torch.relu(self.c2(x)), 2)              # 6 x 2x4
        return self.f1(x.flatten(1))


def _layer(cin, cout, channels_last=True):
    torch.manual_seed(cin * 10 + cout)
    layer = VariationalConv2d(nn.Conv2d(cin, cout, 3, padding=1), "w", "b", True)
    layer.channels_last = channels_last
    return layer


@pytest.mark.parametrize("cin", [1, 8])
def test_layers_compute_in_channels_last(cin):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, cin, 6, 10, generator=g)
    w, b = torch.randn(5, cin, 3, 3, generator=g), torch.randn(5, generator=g)
    layer = _layer(cin, 5)
    layer.set_moments(w, None, b, None)                          # a weight sample: the plain product
    y = layer(x)
    assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()
    assert torch.allclose(y, F.conv2d(x, w, b, padding=1), rtol=1e-5, atol=1e-5)
    off = _layer(cin, 5, channels_last=False)
    off.set_moments(w, None, b, None)
    assert torch.equal(off(x), F.conv2d(x, w, b, padding=1))     # the default layout: as before


def test_local_noise_is_the_stream_in_memory_order_and_its_gradients_are_autograds():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 8, 6, 10, generator=g).requires_grad_()
    wm = torch.randn(5, 8, 3, 3, generator=g).requires_grad_()
    wv = (torch.rand(5, 8, 3, 3, generator=g) * 0.01).requires_grad_()
    bm, bv = torch.randn(5, generator=g).requires_grad_(), (torch.rand(5, generator=g) * 0.01).requires_grad_()
    layer = _layer(8, 5)
    layer.generator = torch.Generator().manual_seed(9)
    layer.set_moments(wm, wv, bm, bv)
    y = layer(x)
    assert y.is_contiguous(memory_format=CL)
    # the expression written out, with the noise drawn as one contiguous run in memory (N, H, W, C) order
    out = F.conv2d(x, wm.to(memory_format=CL), bm, padding=1)
    var = F.conv2d(x * x, wv.to(memory_format=CL), bv, padding=1)
    noise = torch.randn(3, 6, 10, 5, generator=torch.Generator().manual_seed(9)).permute(0, 3, 1, 2)
    ref = out + torch.sqrt(var.clamp_min(0) + 1e-16) * noise
    assert torch.equal(y, ref)
    gy = torch.randn(y.shape, generator=g)
    got = torch.autograd.grad(y, (x, wm, wv, bm, bv), gy)
    want = torch.autograd.grad(ref, (x, wm, wv, bm, bv), gy)
    for a, b_ in zip(got, want):
        assert torch.equal(a, b_)


def test_off_a_channels_last_input_keeps_the_noise_of_the_default_layout():
    """Batches with channels_last strides (RandomShift's 1-channel ones) make channels_last products even
    with the option off; the noise must still be drawn in NCHW order, as before the option existed (the
    bundled recipes' files depend on it)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 8, 6, 10, generator=g).to(memory_format=CL)
    wm, wv = torch.randn(5, 8, 3, 3, generator=g), torch.rand(5, 8, 3, 3, generator=g) * 0.01
    bm, bv = torch.randn(5, generator=g), torch.rand(5, generator=g) * 0.01
    layer = _layer(8, 5, channels_last=False)
    layer.generator = torch.Generator().manual_seed(9)
    layer.set_moments(wm, wv, bm, bv)
    y = layer(x)
    assert y.is_contiguous(memory_format=CL)                   # oneDNN followed the input's layout
    out, var = F.conv2d(x, wm, bm, padding=1), F.conv2d(x * x, wv, bv, padding=1)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))      # NCHW order
    assert torch.equal(y, out + torch.sqrt(var.clamp_min(0) + 1e-16) * noise)


def _trainer(channels_last, method="mean-var"):
    return wn._trainer(method, noise="weights", net_class=_Net, channels_last=channels_last)[0]


@pytest.mark.parametrize("method", ["mean-var", "mean-kl"])
def test_a_step_computes_what_the_default_layout_computes(method):
    """Weight noise draws per coded value, so both layouts see the same sample: the same step up to rounding."""
    a, b = _trainer(False, method), _trainer(True, method)
    assert all(layer.channels_last for layer in b.layers.values() if isinstance(layer, VariationalConv2d))
    for _ in range(3):
        a.train_step()
        b.train_step()
    for pa, pb in zip(a.posteriors.parameters(), b.posteriors.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-5)


def _compress(**kw):
    return wn._compress(_Net, **{"budget_bytes": 100, "channels_last": True, **kw})


@pytest.mark.parametrize("noise", ["local", "weights"])
def test_runs_are_reproducible_resumable_and_make_valid_files(tmp_path: Path, noise):
    ref = _compress(noise=noise)
    data = ref.to_bytes()
    assert _compress(noise=noise).to_bytes() == data
    ckpt = tmp_path / "run.ckpt"
    for stop in (12, 33):                                        # in training, and between coding rounds
        with pytest.raises(Interrupted):
            _compress(noise=noise, checkpoint=str(ckpt), interrupt_after=stop)
    with pytest.raises(ValueError, match="other settings"):     # the default layout's run is another run
        _compress(noise=noise, checkpoint=str(ckpt), channels_last=False)
    assert _compress(noise=noise, checkpoint=str(ckpt)).to_bytes() == data
    ref.save(tmp_path / "m.mrc")
    assert validate_file(tmp_path / "m.mrc") == []
    decoded = mrcformat.decode(mrcformat.load(tmp_path / "m.mrc"))
    for name, w in ref.trained_weights.items():
        assert np.array_equal(decoded[name], w.numpy()), name


def test_the_default_is_left_out_of_the_run_settings(tmp_path: Path):
    from mrcformat.encode.checkpoint import load_checkpoint
    for on in (False, True):
        ckpt = tmp_path / f"{on}.ckpt"
        with pytest.raises(Interrupted):
            _compress(checkpoint=str(ckpt), interrupt_after=12, channels_last=on)
        state = load_checkpoint(ckpt)
        for key in ("fingerprint", "train_fingerprint"):
            assert ("'channels_last'" in state[key]) == on


class _Viewing(_Net):
    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.c1(x)), 2)
        x = F.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.f1(x.view(x.shape[0], -1))                  # fine on NCHW, not on channels_last


def test_a_forward_that_views_a_channels_last_output_gets_a_clear_error():
    torch.manual_seed(0)
    x, y = _data()
    opts = dict(budget_bytes=100, index_bits=8, steps=3, progress=False, example_input=x[:1], noise="weights")
    compress(_Viewing(), _loader(x, y), **opts)                 # the default layout trains
    with pytest.raises(RuntimeError, match=r"channels_last=True .* \.reshape"):
        compress(_Viewing(), _loader(x, y), channels_last=True, **opts)
