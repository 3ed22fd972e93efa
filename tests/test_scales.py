"""SPEC.md 4.2 / 7.5 (format 1.1): group scales, the same bits on every decode path, strict checks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mrcformat as m
from mrcformat import kernels
from mrcformat.container import Container, Tensor
from mrcformat.errors import CodingParameterError, ScalesError
from mrcformat.layout import choose_affine
from mrcformat.sampler import float_to_bf16_bits, normal_table
from mrcformat.streams import candidate_u16
from spec_helpers import unchecked_bytes
from strategies import make_group


def _reference(c: Container, gid: int) -> np.ndarray:
    """SPEC.md 4.2 literally: per slot, sigma_k from the value index, product then sum in float32."""
    g = c.groups[gid]
    n, bsz = g.num_values, g.block_size
    u = candidate_u16(c.seed, gid, np.arange(g.num_blocks), g.indices, bsz).reshape(-1)[:n]
    from mrcformat.layout import inverse_positions_range

    i = inverse_positions_range(g.layout, 0, n, n)
    sk = (g.scales.astype(np.uint32) << 16).view(np.float32) * np.float32(g.sigma)
    out = np.empty(n, np.float32)
    prod = (sk[i // (n // len(sk))] * normal_table()[u]).astype(np.float32)
    out[i] = (np.float32(g.mu) + prod).astype(np.float32)
    return out


@st.composite
def scaled(draw):
    count = draw(st.integers(1, 12))
    run = draw(st.integers(1, 40))
    n = count * run
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lay = choose_affine(n, 1, 0) if draw(st.booleans()) else None
    g = make_group(n, block_size=draw(st.integers(1, 64)), index_bits=draw(st.integers(1, 20)), rng=rng, layout=lay,
                   mu=draw(st.floats(-3, 3, width=32)), sigma=draw(st.sampled_from([2.0 ** -20, 0.01, 0.5, 3.0])))
    g.scales = np.array([float_to_bf16_bits(float(x)) for x in rng.lognormal(0, 3, count).clip(1e-12, 1e12)],
                        dtype=np.uint16)
    return Container(seed=draw(st.integers(0, 2**64 - 1)), groups=[g], tensors=[Tensor("w", (count, run), "coded", group=0)],
                     version=(1, 1))


@settings(max_examples=60, deadline=None)
@given(scaled())
def test_every_decode_path_gives_the_spec_bits(c):
    c = m.from_bytes(m.to_bytes(c))
    want = _reference(c, 0).view(np.uint32)
    assert np.array_equal(m.decode(c, backend="numpy")["w"].reshape(-1).view(np.uint32), want)
    if kernels.available():
        assert np.array_equal(m.decode(c, backend="native")["w"].reshape(-1).view(np.uint32), want)
    torch = pytest.importorskip("torch")
    from mrcformat_runtime.torch_decode import decode as tdecode

    for backend in ("torch", "auto"):
        got = tdecode(c, "cpu", backend=backend)["w"].reshape(-1).numpy().view(np.uint32)
        assert np.array_equal(got, want), backend
    del torch


def test_self_decoding_onnx_gives_the_spec_bits():
    pytest.importorskip("onnxruntime")
    from mrcformat_runtime.ort import ort_decoded_arrays

    c = m.load(__import__("pathlib").Path(__file__).resolve().parents[1] / "spec" / "vectors" / "scales.mrc")
    got = dict((t.name, a) for t, a in ort_decoded_arrays(c, {t.name for t in c.tensors}))
    for gid, t in enumerate(c.tensors):
        assert np.array_equal(got[t.name].reshape(-1).view(np.uint32), _reference(c, gid).view(np.uint32))


def _one(scales, *, hashing=False, sigma=0.5, n=12):
    g = make_group(n, block_size=4, index_bits=3, rng=np.random.default_rng(0), hashing=hashing, sigma=sigma)
    g.scales = np.asarray(scales, dtype=np.uint16)
    return Container(seed=1, groups=[g], tensors=[Tensor("w", (n,), "coded", group=0)], version=(1, 1))


@pytest.mark.parametrize("c, error, where", [
    (_one([0x3F80] * 5), ScalesError, "groups[0].scales"),                       # 5 does not divide 12
    (_one([0x3F80] * 3, hashing=True, n=12), ScalesError, "groups[0].scales"),
    (_one([0x3F80, 0xBF80, 0x3F80]), CodingParameterError, "groups[0].scales[1]"),  # negative
    (_one([0x3F80, 0x0000, 0x3F80]), CodingParameterError, "groups[0].scales[1]"),  # zero
    (_one([0x3F80, float_to_bf16_bits(2.0 ** 40), 0x3F80], sigma=2.0 ** 30), CodingParameterError,
     "groups[0].scales[1]"),                                                     # product above 2^64
])
def test_bad_scales_are_rejected(c, error, where):
    data = unchecked_bytes(c)
    with pytest.raises(error) as e:
        m.from_bytes(data)
    assert e.value.where == where


def test_scales_need_minor_1():
    from mrcformat.errors import UnknownFieldError

    c = _one([0x3F80] * 3)
    c.version = (1, 0)
    with pytest.raises(UnknownFieldError):
        m.from_bytes(unchecked_bytes(c))
