"""Write -> read -> write is byte-identical; decoding is deterministic and chunk-independent;
`save` is atomic."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import containers
from test_corrupt import base_container, header_of

from mrcformat import decode, from_bytes, load, save, to_bytes, validate_bytes
from mrcformat.coder import regenerate
from mrcformat.container import DTYPES
from mrcformat.decoder import decode_group, iter_decode
from mrcformat.layout import inverse_positions, positions
from mrcformat.streams import hash_words

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _same_container(a, b) -> None:
    assert (a.seed, a.graph, a.metadata) == (b.seed, b.graph, b.metadata)
    assert len(a.groups) == len(b.groups)
    for ga, gb in zip(a.groups, b.groups):
        assert (ga.mu_bits, ga.sigma_bits, ga.block_size, ga.index_bits, ga.num_values, ga.layout, ga.hashing) == \
               (gb.mu_bits, gb.sigma_bits, gb.block_size, gb.index_bits, gb.num_values, gb.layout, gb.hashing)
        assert np.array_equal(ga.indices, gb.indices)
    assert [(t.name, tuple(t.shape), t.encoding, t.group, t.dtype) for t in a.tensors] == \
           [(t.name, tuple(t.shape), t.encoding, t.group, t.dtype) for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        if ta.encoding == "raw":
            assert np.asarray(ta.data, dtype=DTYPES[ta.dtype]).tobytes() == tb.data.tobytes()
            assert tb.data.dtype == np.dtype(DTYPES[ta.dtype]) and tb.data.shape == tuple(ta.shape)


@SETTINGS
@given(containers(with_graph=True))
def test_write_read_write_identical(c):
    data = to_bytes(c)
    assert data[:8] == b"\x89MRC\r\n\x1a\n"
    h = header_of(data)
    end = 24 + int.from_bytes(data[12:16], "little")
    for s in h["sections"]:  # each section at the next 64-byte boundary, zero padding, no trailing bytes
        assert s["offset"] % 64 == 0 and s["offset"] - end < 64 and not any(data[end:s["offset"]])
        end = s["offset"] + s["length"]
    assert len(data) == end
    back = from_bytes(data)
    _same_container(c, back)
    assert to_bytes(back) == data
    assert validate_bytes(data) == []
    assert to_bytes(from_bytes(memoryview(data))) == data


@SETTINGS
@given(containers(max_groups=2, max_elems=200))
def test_decode_deterministic_and_chunk_independent(c):
    c = from_bytes(to_bytes(c))
    ref = decode(c)
    assert list(ref) == [t.name for t in c.tensors]
    again = decode(from_bytes(to_bytes(c)))
    for chunk in (1, 3, 64, 1000):
        other = decode(c, chunk=chunk)
        assert list(other) == list(ref)
        for name, arr in ref.items():
            assert other[name].dtype == arr.dtype and other[name].shape == arr.shape
            assert other[name].tobytes() == arr.tobytes(), (name, chunk)
            assert again[name].tobytes() == arr.tobytes()
    for t in c.tensors:
        arr = ref[t.name]
        assert arr.shape == tuple(t.shape)
        if t.encoding == "coded":
            assert arr.dtype == np.float32 and np.all(np.isfinite(arr))
        else:
            assert arr.dtype == np.dtype(DTYPES[t.dtype])
    assert [n for n, _ in iter_decode(c, chunk=7)] == list(ref)


@SETTINGS
@given(containers(max_groups=2, max_elems=120))
def test_decode_matches_per_block_regeneration(c):
    """Independent recomputation of every group from its definition: value i of the group is slot
    pi(i) % B of the candidate regenerated for block pi(i) // B; with hashing, weight w takes value
    h(w) times its sign."""
    c = from_bytes(to_bytes(c))
    for gi, g in enumerate(c.groups):
        cand = np.concatenate([regenerate(c.seed, gi, b, int(k), g.block_size, g.mu, g.sigma)
                               for b, k in enumerate(g.indices)])
        pos = positions(g.layout, 0, g.num_values, g.num_values)
        assert np.array_equal(np.sort(pos), np.arange(g.num_values))  # a bijection
        assert np.array_equal(inverse_positions(g.layout, g.num_values)[pos], np.arange(g.num_values))
        values = cand[pos]
        nw = c.group_weights(gi)
        if g.hashing:
            index, sign = hash_words(c.seed, gi, np.arange(nw, dtype=np.uint64), g.num_values)
            assert np.all((index >= 0) & (index < g.num_values))
            want = values[index] * sign
        else:
            want = values
        assert decode_group(c, gi, chunk=5).tobytes() == want.astype(np.float32).tobytes()


def test_save_load_roundtrip(tmp_path):
    c = base_container()
    path = tmp_path / "m.mrc"
    n = save(c, path)
    assert n == path.stat().st_size
    assert path.read_bytes() == to_bytes(c)
    _same_container(c, load(path))
    assert sorted(os.listdir(tmp_path)) == ["m.mrc"]


@pytest.mark.parametrize("fail_at", ["os.replace", "os.fsync"])
def test_save_is_atomic(tmp_path, monkeypatch, fail_at):
    c = base_container()
    path = tmp_path / "m.mrc"
    path.write_bytes(b"the old file")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    name = fail_at.split(".")[1]
    monkeypatch.setattr(os, name, boom)
    with pytest.raises(OSError):
        save(c, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"the old file"
    assert os.listdir(tmp_path) == ["m.mrc"], "the temporary file was removed"
    save(c, path)
    assert load(path).seed == c.seed


def test_save_refuses_invalid_container_without_touching_file(tmp_path):
    from mrcformat import MrcError

    c = base_container()
    c.tensors[1].name = c.tensors[0].name  # duplicate names: the writer's self-check rejects it
    path = tmp_path / "m.mrc"
    path.write_bytes(b"old")
    with pytest.raises(MrcError):
        save(c, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.mrc"]


def test_save_gives_ordinary_permissions(tmp_path):
    """Atomic saves go through mkstemp (0600); the result must carry the usual mode, or the old file's."""
    import stat

    from mrcformat import Container, save

    target = tmp_path / "m.mrc"
    save(Container(seed=1), target)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    target.chmod(0o640)
    save(Container(seed=2), target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
