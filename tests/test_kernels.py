"""The compiled kernels (mrcformat.kernels) against the numpy reference: decoding bit for bit on
random groups of every index width, block size, layout and hashing, through each native code path
(generic C and AVX2) and any split over threads; scores to float64 rounding, and bit-identical
across code paths and splits; the fallback when the extension is missing."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mrcformat as m
from mrcformat import kernels
from mrcformat.layout import Layout, choose_affine

from strategies import make_group

native = pytest.mark.skipif(not kernels.available(), reason="compiled kernels not built")
ISAS = ["generic"] + (["avx2"] if kernels.available() and kernels.isa("auto") == "avx2" else [])


def _container(seed, n, bsz, bits, layout, hash_ratio, rng, mu=0.3, sigma=0.7):
    g = make_group(n, block_size=bsz, index_bits=bits, rng=rng, layout=layout, hashing=hash_ratio > 1, mu=mu,
                   sigma=sigma)
    nw = n * hash_ratio if hash_ratio > 1 else n
    return m.Container(seed=seed, groups=[g], tensors=[m.Tensor("w", (nw,), "coded", group=0)])


@st.composite
def groups(draw, max_n=3000):
    n = draw(st.integers(1, max_n))
    bsz = draw(st.sampled_from([1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 100, 511, 512, 1000, 4095, 4096]))
    bits = draw(st.integers(1, 32))
    if n > 1 and draw(st.booleans()):
        a = draw(st.integers(1, n - 1))
        while math.gcd(a, n) != 1:
            a -= 1
        layout = Layout("affine", a, draw(st.integers(0, n - 1)))
    else:
        layout = Layout() if draw(st.booleans()) or n > 1 else Layout("affine", 0, 0)
    ratio = draw(st.sampled_from([1, 1, 2, 3, 256])) if n > 1 else 1
    return n, bsz, bits, layout, ratio


@native
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups(), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.floats(-3, 3, width=32),
       st.sampled_from([1e-3, 0.05, 1.0, 7.5]))
def test_native_decode_is_the_reference(isa, grp, seed, rs, mu, sigma):
    n, bsz, bits, layout, ratio = grp
    c = _container(seed, n, bsz, bits, layout, ratio, np.random.default_rng(rs), mu=mu, sigma=sigma)
    want = m.decode_group(c, 0, backend="numpy")
    with kernels.using_isa(isa):
        got = m.decode_group(c, 0, backend="native")
        split = m.decode_group(c, 0, backend="native", chunk=7)  # chunk is the numpy path's knob: no effect
    assert got.tobytes() == want.tobytes()
    assert split.tobytes() == want.tobytes()


@native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,bsz,affine,ratio", [
    (70001, 512, True, 1),      # affine, large: calls in the order of their first value
    (262144, 96, True, 1),      # ... n and block size multiples of 8: calls enumerated directly
    (4096, 8, True, 2),         # ... also below the size threshold, with hashing
    (65536, 37, True, 1),       # ... at the threshold, block size not a multiple of 8
    (100003, 4096, True, 3),    # ... and hashing
    (300000, 64, False, 1),     # contiguous, split over threads
    (200000, 9, False, 4),
])
def test_native_large_groups_and_thread_splits(isa, n, bsz, affine, ratio, monkeypatch):
    rng = np.random.default_rng(n)
    layout = choose_affine(n, 11, 0) if affine else None
    c = _container(0xDEADBEEF12345678, n, bsz, 16, layout, ratio, rng)
    want = m.decode_group(c, 0, backend="numpy")
    with kernels.using_isa(isa):
        for t in ("1", "2", "3", "8"):
            monkeypatch.setenv("MRCFORMAT_THREADS", t)
            assert m.decode_group(c, 0, backend="native").tobytes() == want.tobytes(), t


@native
@pytest.mark.parametrize("isa", ISAS)
def test_affine_call_order_covers_any_split(isa):
    """decode_affine writes the calls whose first value lies in [i0, i1): any split of [0, n) decodes all."""
    n, bsz = 5003, 13
    c = _container(7, n, bsz, 20, choose_affine(n, 7, 0), 1, np.random.default_rng(0))
    g = c.groups[0]
    want = m.decode_group(c, 0, backend="numpy")
    a_inv = pow(g.layout.a, -1, n)
    from mrcformat.sampler import normal_table
    with kernels.using_isa(isa):
        for cuts in ([0, n], [0, 1, 2, 3, n], [0, 999, 1000, 4001, n], list(range(0, n, 617)) + [n]):
            out = np.full(n, np.nan, dtype=np.float32)
            for i0, i1 in zip(cuts[:-1], cuts[1:]):
                kernels._native.decode_affine(normal_table(), g.indices.astype(np.uint32), out, c.seed, 0, bsz, n,
                                              g.mu_bits, g.sigma_bits << 16, g.layout.a, a_inv, g.layout.c, i0, i1)
            assert out.tobytes() == want.tobytes(), cuts


@st.composite
def aligned_affine_groups(draw):
    """Affine groups whose n and block size are multiples of 8: the kernels enumerate their calls directly."""
    n = 8 * draw(st.integers(1, 3000))
    bsz = 8 * draw(st.sampled_from([1, 2, 3, 12, 64, 512]))
    a = draw(st.integers(1, max(1, n - 1)))
    while math.gcd(a, n) != 1:
        a -= 1
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=4))) | {0, n})
    return n, bsz, Layout("affine", a, draw(st.integers(0, n - 1))), cuts


@native
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60, deadline=None)
@given(aligned_affine_groups(), st.integers(0, 2**64 - 1), st.integers(1, 32), st.integers(0, 2**32 - 1))
def test_aligned_affine_calls_are_the_reference(isa, grp, seed, bits, rs):
    """Direct call enumeration (8 | n, 8 | block size), over any split of [0, n), gives the numpy bits and
    the bits of the scan it replaces."""
    from mrcformat.sampler import normal_table
    n, bsz, layout, cuts = grp
    c = _container(seed, n, bsz, bits, layout, 1, np.random.default_rng(rs))
    g = c.groups[0]
    want = m.decode_group(c, 0, backend="numpy").tobytes()
    a_inv = pow(layout.a, -1, n) if n > 1 else 0
    with kernels.using_isa(isa):
        for direct in (True, False):
            kernels._native._set_aligned_calls(direct)
            try:
                out = np.full(n, np.nan, dtype=np.float32)
                for i0, i1 in zip(cuts[:-1], cuts[1:]):
                    kernels._native.decode_affine(normal_table(), g.indices.astype(np.uint32), out, seed, 0, bsz,
                                                  n, g.mu_bits, g.sigma_bits << 16, layout.a, a_inv, layout.c, i0, i1)
            finally:
                kernels._native._set_aligned_calls(True)
            assert out.tobytes() == want, (direct, cuts)
        assert m.decode_group(c, 0, backend="native").tobytes() == want


@native
def test_native_rejects_bad_arguments():
    from mrcformat.sampler import normal_table
    t = normal_table()
    idx = np.zeros(4, np.uint32)
    out = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="out of range"):
        kernels._native.decode_blocks(t, idx, out, 1, 0, 4, 10, 0, 0x3F800000, 0, 5, 1, 0)  # b1 > blocks
    with pytest.raises(ValueError, match="need"):
        kernels._native.decode_blocks(t, idx, np.zeros(3, np.float32), 1, 0, 4, 10, 0, 0x3F800000, 0, 3, 1, 0)
    with pytest.raises(ValueError, match="out of range"):
        kernels._native.decode_affine(t, idx, out, 1, 0, 4, 10, 0, 0x3F800000, 3, 3, 0, 0, 10)  # 3*3 % 10 != 1
    with pytest.raises(TypeError):
        kernels._native.decode_blocks(t, idx, out.astype(np.float32).tobytes(), 1, 0, 4, 10, 0, 0x3F800000, 0, 3, 1, 0)


def _score_args(rng, rows, bsz):
    mean = rng.normal(0, 0.05, (rows, bsz))
    log_std = rng.normal(-3.5, 0.5, (rows, bsz))
    valid = np.ones((rows, bsz), bool)
    valid[-1, rng.integers(1, bsz + 1):] = False  # the last block's padding
    return mean, log_std, valid


@native
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**24 - 1), st.integers(1, 5), st.integers(1, 300),
       st.integers(0, 2**32 - 2000), st.integers(1, 1000), st.floats(-0.5, 0.5, width=32), st.integers(0, 2**32 - 1))
def test_native_scores_match_the_reference(isa, seed, gid, rows, bsz, start, count, mu, rs):
    rng = np.random.default_rng(rs)
    mean, log_std, valid = _score_args(rng, rows, bsz)
    blocks = rng.integers(0, 2**31 - 1, rows)
    sp = 0.0625
    ref = kernels.score_blocks(seed, gid, blocks, bsz, mu, sp, mean, log_std, valid, sp, start, count,
                               backend_choice="numpy")
    with kernels.using_isa(isa):
        got = kernels.score_blocks(seed, gid, blocks, bsz, mu, sp, mean, log_std, valid, sp, start, count,
                                   backend_choice="native", nthreads=1)
        split = kernels.score_blocks(seed, gid, blocks, bsz, mu, sp, mean, log_std, valid, sp, start, count,
                                     backend_choice="native", nthreads=3)
    scale = np.abs(ref).max() + 1.0
    assert np.abs(got - ref).max() <= 1e-12 * scale * bsz
    assert got.tobytes() == split.tobytes()  # a candidate's score does not depend on the split


@native
def test_native_scores_identical_across_code_paths_and_windows():
    rng = np.random.default_rng(3)
    mean, log_std, valid = _score_args(rng, 4, 77)
    args = (99, 5, [0, 3, 8, 1000], 77, 0.0, 0.03125, mean, log_std, valid, 0.03125)
    results = []
    for isa in ISAS:
        with kernels.using_isa(isa):
            full = kernels.score_blocks(*args, 0, 4096, backend_choice="native")
            window = kernels.score_blocks(*args, 1000, 333, backend_choice="native")
        assert window.tobytes() == full[:, 1000:1333].tobytes()
        results.append(full)
    assert all(r.tobytes() == results[0].tobytes() for r in results)


def test_numpy_scorer_is_the_encoders_definition():
    """fallback.score_blocks equals log q - log p summed over valid slots (the encoder's torch scorer)."""
    torch = pytest.importorskip("torch")
    from mrcformat.coder import candidates
    from mrcformat.encode.coding import score_candidates

    rng = np.random.default_rng(4)
    mean, log_std, valid = _score_args(rng, 2, 41)
    got = kernels.score_blocks(1, 2, [5, 6], 41, 0.0, 0.125, mean, log_std, valid, 0.125, 10, 500,
                               backend_choice="numpy")
    for r, b in enumerate([5, 6]):
        x = torch.from_numpy(candidates(1, 2, b, 41, 0.0, 0.125, 10, 500))
        want = score_candidates(x, torch.from_numpy(mean[r]), torch.from_numpy(log_std[r]),
                                torch.from_numpy(valid[r]), 0.125).numpy()
        assert np.abs(got[r] - want).max() <= 1e-10 * (np.abs(want).max() + 1)


def test_backend_choice_and_environment(monkeypatch):
    with pytest.raises(ValueError):
        kernels.backend("fast")
    assert kernels.backend("numpy") == "numpy"
    monkeypatch.setenv("MRCFORMAT_KERNELS", "numpy")
    assert kernels.backend() == "numpy"
    monkeypatch.delenv("MRCFORMAT_KERNELS")
    assert kernels.backend() == ("native" if kernels.available() else "numpy")
    monkeypatch.setenv("MRCFORMAT_THREADS", "3")
    assert kernels.threads() == 3 and kernels.threads(5) == 5


def test_without_the_extension_everything_falls_back(tmp_path):
    """A build without a C compiler has no _native module: mrcformat imports, decodes with numpy and
    gives the same bits; asking for the native backend says what is missing."""
    vec = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "mlp_graph.mrc"
    code = f"""
import sys, hashlib
sys.modules["mrcformat.kernels._native"] = None    # hide the compiled module
import mrcformat as m
from mrcformat import kernels
assert not kernels.available() and kernels.backend() == "numpy" and kernels.isa() is None
d = m.decode(m.load({str(vec)!r}))
print(hashlib.sha256(b"".join(d[k].tobytes() for k in sorted(d))).hexdigest())
try:
    kernels.backend("native")
except RuntimeError as e:
    print("refused:", "not built" in str(e))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    d = m.decode(m.load(vec))
    import hashlib
    want = hashlib.sha256(b"".join(d[k].tobytes() for k in sorted(d))).hexdigest()
    assert out.stdout.split() == [want, "refused:", "True"]
