"""Core primitives: Philox4x32-10, the normal16 table, FMA-invariance, bit packing, the block coder."""
from __future__ import annotations

import hashlib
import importlib.util
from fractions import Fraction
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcformat import coder
from mrcformat.bitpack import pack_indices, packed_length, padding_bits_are_zero, unpack_indices
from mrcformat.container import Container, Group, Tensor
from mrcformat.decoder import decode
from mrcformat.layout import Layout
from mrcformat.philox import philox4x32, philox4x32_scalar
from mrcformat.sampler import (
    TABLE_SHA256,
    TABLE_SIZE,
    bf16_bits_to_float,
    f32_bits_to_float,
    float_to_bf16_bits,
    is_valid_sigma_bits,
    normal_table,
    values_from_u16,
)
from mrcformat.streams import candidate_u16

U32 = st.integers(0, 2**32 - 1)

# ---------------------------------------------------------------------------------------------- Philox

# Random123 known-answer tests for Philox4x32-10: (counter, key, output)
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers_scalar(counter, key, expected):
    assert philox4x32_scalar(counter, key) == expected


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers_vector(counter, key, expected):
    out = philox4x32(*counter, key)
    assert out.dtype == np.uint32 and out.shape == (4,)
    assert tuple(int(x) for x in out) == expected
    # as one row of a batch, and through a preallocated output
    batch = philox4x32(*(np.array([c, c ^ 1], dtype=np.uint64) for c in counter), key)
    assert tuple(int(x) for x in batch[0]) == expected
    buf = np.zeros((2, 4), dtype=np.uint32)
    philox4x32(*(np.array([c, c], dtype=np.uint64) for c in counter), key, out=buf)
    assert [tuple(map(int, r)) for r in buf] == [expected, expected]


@given(st.lists(st.tuples(U32, U32, U32, U32), min_size=1, max_size=16), U32, U32)
def test_philox_vector_equals_scalar(counters, k0, k1):
    cols = [np.array([c[i] for c in counters], dtype=np.uint64) for i in range(4)]
    out = philox4x32(*cols, (k0, k1))
    for row, c in zip(out, counters):
        assert tuple(int(x) for x in row) == philox4x32_scalar(c, (k0, k1))


@given(U32, U32, U32)
def test_philox_broadcasting(c3, k0, k1):
    c0 = np.arange(5, dtype=np.uint64)[:, None]
    c1 = np.arange(3, dtype=np.uint64)[None, :]
    out = philox4x32(c0, c1, 7, c3, (k0, k1))
    assert out.shape == (5, 3, 4)
    for i in range(5):
        for j in range(3):
            assert tuple(map(int, out[i, j])) == philox4x32_scalar((i, j, 7, c3), (k0, k1))


# ---------------------------------------------------------------------------------------------- table


def _make_table_module():
    path = Path(__file__).resolve().parents[1] / "spec" / "make_table.py"
    spec = importlib.util.spec_from_file_location("make_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_hash_and_size():
    raw = resources.files("mrcformat").joinpath("_data/normal16.f32").read_bytes()
    assert len(raw) == TABLE_SIZE * 4 == 262144
    assert hashlib.sha256(raw).hexdigest() == TABLE_SHA256
    t = normal_table()
    assert t.dtype == np.float32 and t.shape == (TABLE_SIZE,)
    assert not t.flags.writeable
    assert np.array_equal(t, np.frombuffer(raw, dtype="<f4"))


def test_table_shape_of_values():
    t = normal_table()
    assert np.all(np.isfinite(t))
    assert np.all(np.diff(t) > 0), "strictly increasing"
    assert np.array_equal(t, -t[::-1]), "antisymmetric: T[65535 - u] = -T[u]"
    assert np.all(t[: TABLE_SIZE // 2] < 0) and np.all(t[TABLE_SIZE // 2:] > 0)
    bits = t.view(np.uint32)
    assert np.all(bits & 0xFF == 0), "at most 16 significant bits (8 + 1 implicit of 24 dropped)"
    exp = (bits >> 23) & 0xFF
    assert np.all((exp > 0) & (exp < 255)), "all entries are normal floats"
    assert 4.0 < t[-1] < 4.5 and abs(float(t[32768]) - 1.9124e-5) < 1e-8
    assert abs(float(t.astype(np.float64).mean())) < 1e-12
    assert abs(float((t.astype(np.float64) ** 2).mean()) - 1.0) < 1e-3


def test_table_matches_definition_on_sample():
    """Rebuild a sample of entries with spec/make_table.py's rule (exact float32 rounding of
    Phi^-1((u + 0.5)/65536) in mpmath, then its 16-significant-bit rounding) and compare bits."""
    mpmath = pytest.importorskip("mpmath")
    mt = _make_table_module()
    rng = np.random.default_rng(2024)
    sample = sorted(set(rng.integers(0, TABLE_SIZE, 200).tolist()) | {0, 1, 2, 32767, 32768, 65534, 65535})
    table = normal_table()
    with mpmath.workdps(40):
        for i in sample:
            x = mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(2 * i + 1) / (2 * mt.N) - 1)
            approx = np.float32(float(x))
            lo = hi = approx
            if mpmath.mpf(float(approx)) > x:
                lo = np.nextafter(approx, np.float32(-np.inf))
            else:
                hi = np.nextafter(approx, np.float32(np.inf))
            dlo, dhi = x - mpmath.mpf(float(lo)), mpmath.mpf(float(hi)) - x
            f32 = lo if dlo < dhi else hi if dhi < dlo else (lo if int(np.float32(lo).view(np.uint32)) & 1 == 0 else hi)
            want = mt.round_to_16_significant_bits(np.array([f32], dtype=np.float32))[0]
            assert want.view(np.uint32) == table[i].view(np.uint32), i


def test_round_to_16_significant_bits_ties_to_even():
    mt = _make_table_module()
    r = lambda b: int(mt.round_to_16_significant_bits(np.array([b], dtype=np.uint32).view(np.float32)).view(np.uint32)[0])
    assert r(0x3F800080) == 0x3F800000  # tie, kept part even: down
    assert r(0x3F800180) == 0x3F800200  # tie, kept part odd: up
    assert r(0x3F800081) == 0x3F800100  # above half: up
    assert r(0x3F80007F) == 0x3F800000  # below half: down
    assert r(0x3FFFFF80) == 0x40000000  # carry into the exponent


# ---------------------------------------------------------------------------------------------- sampler

# every valid pattern built directly (a filter over all 2^16 keeps 1 in 4 and trips hypothesis' health check):
# positive, biased exponent 63..190 with any mantissa, or exactly 2^64
VALID_SIGMA_BITS = st.one_of(
    st.builds(lambda e, m: (e << 7) | m, st.integers(127 - 64, 127 + 63), st.integers(0, 127)),
    st.just((127 + 64) << 7))


def test_sigma_bits_domain():
    assert is_valid_sigma_bits(float_to_bf16_bits(1.0)) and is_valid_sigma_bits(float_to_bf16_bits(2.0**-64))
    assert is_valid_sigma_bits(float_to_bf16_bits(2.0**64))
    for bad in (0, 0x8000 | 0x3F80, 0x7F80, 0x7FC0, float_to_bf16_bits(2.0**-65), ((127 + 64) << 7) | 1, 1):
        assert not is_valid_sigma_bits(bad), hex(bad)
    assert float(bf16_bits_to_float(float_to_bf16_bits(0.1))) == 0.10009765625
    assert float_to_bf16_bits(1.0 + 2**-8) == 0x3F80  # tie to even, down
    assert float_to_bf16_bits(1.0 + 3 * 2**-8) == 0x3F82  # tie to even, up


@settings(max_examples=30)
@given(VALID_SIGMA_BITS)
def test_sigma_times_table_is_exact(sigma_bits):
    """The FMA-invariance argument: sigma (8 significant bits) x T[u] (16) fits float32's 24,
    so the float32 product equals the exact (float64) product for every table entry; hence
    mu + sigma*T rounds once, with or without a fused multiply-add."""
    t = normal_table()
    sigma = bf16_bits_to_float(sigma_bits)
    p32 = t * np.float32(sigma)
    p64 = t.astype(np.float64) * np.float64(sigma)
    assert p32.dtype == np.float32
    assert np.array_equal(p32.astype(np.float64), p64)
    assert np.all(np.abs(p32[t != 0]) >= np.finfo(np.float32).tiny), "products stay normal"


def _round_to_f32(x: Fraction) -> np.float32:
    """Correct rounding of an exact rational to float32, ties to even (what a fused multiply-add does)."""
    approx = np.float32(float(x))
    cands = [np.nextafter(approx, np.float32(-np.inf)), approx, np.nextafter(approx, np.float32(np.inf))]
    dist = [abs(Fraction(float(c)) - x) for c in cands]
    best = min(dist)
    ties = [c for c, d in zip(cands, dist) if d == best]
    return min(ties, key=lambda c: int(np.float32(c).view(np.uint32)) & 1)


@settings(max_examples=30)
@given(VALID_SIGMA_BITS, st.floats(-100, 100, width=32), st.lists(st.integers(0, 65535), min_size=1, max_size=32))
def test_values_from_u16_equal_fused_multiply_add(sigma_bits, mu, us):
    """mu + sigma*T[u] computed as float32 ops (two roundings) equals the exactly rounded
    mu + sigma*T[u] (one rounding, as with FMA): the product's rounding is exact."""
    u = np.array(us, dtype=np.uint16)
    sigma = bf16_bits_to_float(sigma_bits)
    got = values_from_u16(u, np.float32(mu), sigma)
    t = normal_table()[u.astype(np.intp)]
    for g, tv in zip(got, t):
        fused = _round_to_f32(Fraction(float(np.float32(mu))) + Fraction(float(sigma)) * Fraction(float(tv)))
        assert g.view(np.uint32) == np.float32(fused).view(np.uint32)


def test_f32_bits_helpers():
    assert float(f32_bits_to_float(0x3F800000)) == 1.0
    assert f32_bits_to_float(0x7FC00000) != f32_bits_to_float(0x7FC00000)  # NaN


# ---------------------------------------------------------------------------------------------- bit packing


def test_bitpack_hand_examples():
    # width 3, indices 5 (101), 2 (010), 7 (111): stream bits LSB first = 1,0,1, 0,1,0, 1,1,1
    # byte 0 = bits 0..7 = 0b11010101 = 0xD5, byte 1 = bit 8 = 1
    assert pack_indices(np.array([5, 2, 7]), 3) == b"\xd5\x01"
    assert unpack_indices(b"\xd5\x01", 3, 3).tolist() == [5, 2, 7]
    # width 12: 0xABC then 0x123 = the 24-bit little-endian integer 0x123ABC
    assert pack_indices(np.array([0xABC, 0x123]), 12) == b"\xbc\x3a\x12"
    assert pack_indices(np.array([1, 0, 1, 1]), 1) == b"\x0d"
    assert pack_indices(np.array([0x01020304]), 32) == b"\x04\x03\x02\x01"
    assert pack_indices(np.array([0xFFFF, 1]), 16) == b"\xff\xff\x01\x00"
    assert pack_indices(np.array([], dtype=np.int64), 7) == b""
    assert packed_length(3, 3) == 2 and packed_length(0, 32) == 0 and packed_length(5, 32) == 20
    with pytest.raises(ValueError):
        pack_indices(np.array([8]), 3)
    with pytest.raises(ValueError):
        unpack_indices(b"\x00", 3, 3)


@given(st.integers(1, 32).flatmap(lambda w: st.tuples(st.just(w), st.lists(st.integers(0, 2**w - 1), max_size=40))))
def test_bitpack_roundtrip(args):
    width, values = args
    idx = np.array(values, dtype=np.int64)
    payload = pack_indices(idx, width)
    assert len(payload) == packed_length(len(values), width)
    assert padding_bits_are_zero(payload, len(values), width)
    back = unpack_indices(payload, len(values), width)
    assert back.dtype == np.int64 and back.tolist() == values
    # the definition, bit by bit
    stream = int.from_bytes(payload, "little")
    assert [(stream >> (k * width)) & ((1 << width) - 1) for k in range(len(values))] == values
    assert stream >> (len(values) * width) == 0


def test_padding_bits_detection():
    assert padding_bits_are_zero(b"\xd5\x01", 3, 3)
    assert not padding_bits_are_zero(b"\xd5\x03", 3, 3)  # bit 9 is unused but set
    assert not padding_bits_are_zero(b"\xd5\x81", 3, 3)
    assert padding_bits_are_zero(b"\xff\xff", 2, 8)  # no unused bits


# ---------------------------------------------------------------------------------------------- coder

SEED = st.integers(0, 2**64 - 1)


@settings(max_examples=25)
@given(SEED, st.integers(0, 2**24 - 1), st.integers(0, 2**31), st.integers(1, 40), st.integers(1, 10),
       st.floats(-1, 1, width=32), st.integers(0x3800, 0x4100))
def test_regenerate_equals_candidates_row(seed, group, block, block_size, bits, mu, sigma_bits):
    sigma = bf16_bits_to_float(sigma_bits)
    k = 2**bits
    cands = coder.candidates(seed, group, block, block_size, mu, sigma, start=0, count=k)
    assert cands.shape == (k, block_size) and cands.dtype == np.float32
    for idx in {0, k - 1, k // 3}:
        assert coder.regenerate(seed, group, block, idx, block_size, mu, sigma).tobytes() == cands[idx].tobytes()
    # a window of candidates equals the same rows of the full set
    part = coder.candidates(seed, group, block, block_size, mu, sigma, start=k // 2, count=k - k // 2)
    assert part.tobytes() == cands[k // 2:].tobytes()
    # and candidates are the sampler applied to the stream's 16-bit samples
    u = candidate_u16(seed, group, np.full(k, block), np.arange(k), block_size)
    assert cands.tobytes() == values_from_u16(u, np.float32(mu), sigma).reshape(k, block_size).tobytes()


def test_candidate_slots_follow_the_stream_definition():
    seed, group, block, index = 0x0123456789ABCDEF, 5, 9, 3
    u = candidate_u16(seed, group, [block], [index], 20)[0]
    for j in range(20):
        words = philox4x32_scalar((j >> 3, index, block, group), (seed & 0xFFFFFFFF, seed >> 32))
        lane = j & 7
        w = words[lane >> 1]
        assert int(u[j]) == (w >> 16 if lane & 1 else w & 0xFFFF)


def test_choose_index_rules():
    lw = np.array([0.0, 3.0, 3.0, -np.inf, 1.0])
    assert coder.choose_index(lw, greedy=True) == 1  # lowest index on ties
    only = np.array([-np.inf, -np.inf, 2.0, -np.inf])
    assert all(coder.choose_index(only, seed=s, block=b) == 2 for s in range(5) for b in range(5))
    for bad in ([], [np.nan, 0.0], [np.inf, 0.0], [-np.inf, -np.inf]):
        with pytest.raises(ValueError):
            coder.choose_index(np.array(bad, dtype=np.float64))
    u = coder.choice_uniform(1, 2, 3)
    assert 0.0 <= u < 1.0 and u == coder.choice_uniform(1, 2, 3) and u != coder.choice_uniform(1, 2, 4)
    # sampled choices follow the softmax: a weight of 0 vs log(3) picks index 1 about 3/4 of the time
    picks = [coder.choose_index(np.array([0.0, np.log(3.0)]), seed=s, block=7) for s in range(2000)]
    assert 0.70 < sum(picks) / len(picks) < 0.80


@settings(max_examples=25)
@given(SEED, st.integers(0, 1000), st.integers(1, 24), st.integers(1, 8), st.integers(1, 5), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_chosen_index_regenerates_scored_candidate(seed, group, block_size, bits, nblocks, greedy, rs):
    """Encoder view vs decoder view: per block, score all candidates against a target, choose
    an index, store it; the decoder regenerates exactly the candidate that was scored."""
    rng = np.random.default_rng(rs)
    mu, sigma = np.float32(0.0), bf16_bits_to_float(float_to_bf16_bits(0.5))
    n = block_size * nblocks - rng.integers(0, block_size)  # a partial last block
    target = rng.normal(0, 0.5, size=nblocks * block_size).astype(np.float32)
    chosen, scored = [], []
    for b in range(nblocks):
        cands = coder.candidates(seed, group, b, block_size, mu, sigma, count=2**bits)
        lw = -((cands - target[b * block_size:(b + 1) * block_size]) ** 2).sum(axis=1, dtype=np.float64) / 0.02
        k = coder.choose_index(lw, greedy=greedy, seed=seed, group=group, block=b)
        assert k == coder.choose_index(lw, greedy=greedy, seed=seed, group=group, block=b)  # deterministic
        if greedy:
            assert lw[k] == lw.max()
        assert np.isfinite(lw[k])
        chosen.append(k)
        scored.append(cands[k])
        assert coder.regenerate(seed, group, b, k, block_size, mu, sigma).tobytes() == cands[k].tobytes()
    g = Group(0, float_to_bf16_bits(0.5), block_size, bits, int(n), Layout(), False, np.array(chosen, dtype=np.int64))
    c = Container(seed=seed, groups=[None] * group + [g], tensors=[Tensor("w", (int(n),), "coded", group=group)])
    w = decode(c)["w"]
    assert w.tobytes() == np.concatenate(scored)[:n].tobytes()


def test_altered_table_is_refused(monkeypatch):
    from mrcformat import sampler
    from mrcformat.errors import TableError

    raw = bytearray(resources.files("mrcformat").joinpath("_data/normal16.f32").read_bytes())
    raw[1000] ^= 1

    class Fake:
        def files(self, pkg):
            return self

        def joinpath(self, name):
            return self

        def read_bytes(self):
            return bytes(raw)

    monkeypatch.setattr(sampler, "resources", Fake())
    with pytest.raises(TableError):
        sampler.normal_table.__wrapped__()  # the cached table in use is untouched
