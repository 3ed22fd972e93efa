"""Mutation testing of the reader: random damage to valid files must end in either a successful
read (and decode) or an MrcError; never another exception, a hang, or an unbounded allocation.

Three kinds of damage: byte edits anywhere in the file; byte edits of the header with the
preamble's length and CRC fixed up (so the damage reaches the msgpack and field rules); and
structural edits of the decoded header tree (a field replaced, removed or added, with random
msgpack values) re-encoded with section offsets/CRCs fixed up or not.

The strict reader and the validator are cross-checked on every outcome: the reader accepts iff
the validator finds nothing, and the reader's error is the validator's first problem.
Set MRC_MUTATION_EXAMPLES to run more examples than the default.
"""
from __future__ import annotations

import copy
import os
import struct
import time
import zlib

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import make_group
from test_corrupt import BASE, header_of, rebuild, split

from mrcformat import MrcError, decode, from_bytes, to_bytes, validate_bytes
from mrcformat import limits as L
from mrcformat.container import Container, Tensor
from mrcformat.layout import Layout
from mrcformat.reader import parse

EXAMPLES = int(os.environ.get("MRC_MUTATION_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECONDS_PER_EXAMPLE = 5.0
DECODE_LIMIT = 1 << 20  # decode accepted files only up to this many declared elements


def _raw_only() -> bytes:
    rng = np.random.default_rng(1)
    tensors = [Tensor(f"t_{dt}", (2, 3), "raw", dtype=dt,
                      data=(rng.integers(0, 2, 6) if dt == "bool" else rng.integers(0, 100, 6)).astype(np.dtype(d)).reshape(2, 3))
               for dt, d in [("float16", "<f2"), ("int64", "<i8"), ("bool", "u1"), ("bfloat16", "<u2")]]
    tensors.append(Tensor("scalar", (), "raw", dtype="float64", data=np.array(3.5)))
    tensors.append(Tensor("empty", (0, 4), "raw", dtype="int8", data=np.zeros((0, 4), dtype=np.int8)))
    return to_bytes(Container(seed=5, tensors=tensors, metadata={"note": "raw only"}))


def _wide_group() -> bytes:
    rng = np.random.default_rng(2)
    g0 = make_group(500, block_size=64, index_bits=12, rng=rng, layout=Layout("affine", 7, 3), mu=-0.25, sigma=0.03)
    g1 = make_group(1, block_size=1, index_bits=32, rng=rng)
    g2 = make_group(40, block_size=4096, index_bits=3, rng=rng, hashing=True)
    tensors = [Tensor("a", (20, 25), "coded", group=0), Tensor("one", (1,), "coded", group=1),
               Tensor("h", (10, 30), "coded", group=2), Tensor("h2", (7,), "coded", group=2)]
    return to_bytes(Container(seed=2**64 - 1, groups=[g0, g1, g2], tensors=tensors))


def _empty() -> bytes:
    return to_bytes(Container(seed=0))


BASES = [BASE, _raw_only(), _wide_group(), _empty()]


def check(data: bytes) -> str:
    """The property every input must satisfy; returns 'ok' or the error code (for statistics)."""
    t0 = time.monotonic()
    collected: list[MrcError] = []
    parse(data, report=collected.append)  # the collecting reader must not raise at all
    try:
        c = from_bytes(data)
    except MrcError as e:
        assert collected, f"strict reader raised {e!r} but the collecting reader found nothing"
        first = collected[0]
        assert type(first) is type(e) and first.where == e.where, (e, collected)
        problems = validate_bytes(data)
        assert problems and type(problems[0]) is type(e)
        for p in problems:
            assert isinstance(p, MrcError) and isinstance(p.where, (int, str, type(None)))
            p.to_dict()
        outcome = e.code
    else:
        assert collected == [], collected
        assert validate_bytes(data) == []
        _check_accepted(c, data)
        outcome = "ok"
    elapsed = time.monotonic() - t0
    assert elapsed < SECONDS_PER_EXAMPLE, f"one input took {elapsed:.1f} s"
    return outcome


def _check_accepted(c: Container, data: bytes) -> None:
    # what the caps guarantee, before anything is allocated from declared sizes
    for t in c.tensors:
        assert len(t.shape) <= L.MAX_RANK and t.numel <= L.MAX_TENSOR_ELEMENTS
    for gi, g in enumerate(c.groups):
        assert g.num_values <= L.MAX_NUM_VALUES and c.group_weights(gi) <= L.MAX_GROUP_WEIGHTS
        assert 1 <= g.block_size <= L.MAX_BLOCK_SIZE and 1 <= g.index_bits <= L.MAX_INDEX_BITS
        assert len(g.indices) == g.num_blocks and (g.indices.size == 0 or int(g.indices.max()) < 2**g.index_bits)
    raw = sum(t.data.nbytes for t in c.tensors if t.encoding == "raw")
    assert raw <= len(data), "raw tensors are views of the file: never bigger than it"
    declared = sum(t.numel for t in c.tensors) + sum(g.num_values for g in c.groups)
    if declared > DECODE_LIMIT:
        return  # valid, but a decompression bomb for a unit test: the caps bound it, nothing else to check
    out = decode(c)
    assert list(out) == [t.name for t in c.tensors]
    for t in c.tensors:
        assert out[t.name].shape == tuple(t.shape)
    # an accepted file re-serialises to a file that decodes identically
    again = decode(from_bytes(to_bytes(c)))
    assert all(again[k].tobytes() == v.tobytes() for k, v in out.items())


# ------------------------------------------------------------------------------------------ byte edits

def _byte_ops(max_ops: int = 4):
    pos = st.integers(0, 2**16)
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("set"), pos, st.sampled_from([0, 1, 0x7F, 0x80, 0xC0, 0xC1, 0xCE, 0xCF, 0xD3, 0xDC, 0xDE, 0xFF])),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=9)),
        st.tuples(st.just("delete"), pos, st.integers(1, 70)),
    )
    return st.lists(op, min_size=1, max_size=max_ops)


def apply_ops(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        p = op[1] % (len(b) + 1)
        if op[0] == "flip" and p < len(b):
            b[p] ^= op[2]
        elif op[0] == "set" and p < len(b):
            b[p] = op[2]
        elif op[0] == "truncate":
            del b[p:]
        elif op[0] == "insert":
            b[p:p] = op[2]
        elif op[0] == "delete":
            del b[p:p + op[2]]
    return bytes(b)


@SETTINGS
@given(st.sampled_from(range(len(BASES))), _byte_ops())
def test_byte_mutations(which, ops):
    event(check(apply_ops(BASES[which], ops)))


@SETTINGS
@given(st.sampled_from(range(len(BASES))), _byte_ops(3), st.booleans())
def test_header_byte_mutations_with_fixed_crc(which, ops, keep_length):
    data = BASES[which]
    hlen = struct.unpack_from("<I", data, 12)[0]
    header = apply_ops(data[24:24 + hlen], ops)
    if keep_length:  # same length: the sections stay where the header says they are
        header = (header + b"\0" * hlen)[:hlen]
    pre = data[:12] + struct.pack("<II", len(header), zlib.crc32(header)) + data[20:24]
    event(check(pre + header + data[24 + hlen:]))


# ------------------------------------------------------------------------------------------ tree edits

SPECIAL_INTS = [0, 1, -1, 2, 7, 8, 32, 33, 64, 255, 256, 257, 4095, 4096, 4097, 65535, 65536, 2**24,
                2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, -2**63, 2**64 - 1]
SPECIAL_STRS = ["", "coded", "raw", "indices", "graph", "contiguous", "affine", "normal16", "float32", "bool",
                "kind", "a", "c", "w0", "b", "m", "a" * 300]
leaves = st.one_of(
    st.none(), st.booleans(), st.sampled_from(SPECIAL_INTS), st.integers(-2**63, 2**64 - 1),
    st.floats(allow_nan=True), st.sampled_from(SPECIAL_STRS), st.text(max_size=6), st.binary(max_size=2),
)
values = st.recursive(leaves, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(
    st.sampled_from(SPECIAL_STRS) | st.text(max_size=4), ch, max_size=4), max_leaves=10)


def _paths(obj, prefix=()):
    """Every (container, key) location in a header tree, parents before children."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append((obj, k))
        out.extend(_paths(v, prefix + (k,)))
    return out


def _tweak(v):
    if isinstance(v, bool):
        return st.just(not v)
    if isinstance(v, int):
        return st.sampled_from(SPECIAL_INTS) | st.integers(-3, 3).map(lambda d: min(max(v + d, -2**63), 2**64 - 1)) | st.integers(0, 2**32 - 1)
    if isinstance(v, str):
        return st.sampled_from(SPECIAL_STRS) | st.text(max_size=3).map(lambda t: v + t)
    if isinstance(v, list):
        if not v:
            return st.lists(leaves, max_size=3)
        return st.permutations(v).map(list) | st.just(v[:-1]) | st.just(v + v[-1:]) | st.just([v[-1]] + v)
    if isinstance(v, dict):
        return st.just({}) | st.just(dict(reversed(list(v.items()))))
    return values


@st.composite
def tree_mutations(draw):
    which = draw(st.sampled_from(range(len(BASES))))
    h, secs = split(BASES[which])
    h = copy.deepcopy(h)
    for _ in range(draw(st.integers(1, 3))):
        locs = _paths(h)
        action = draw(st.sampled_from(["tweak", "tweak", "tweak", "replace", "delete", "add", "copy"]))
        if not locs:
            action = "add"
        if action == "add":
            targets = [h] + [c[k] for c, k in locs if isinstance(c[k], (dict, list))]
            t = targets[draw(st.integers(0, len(targets) - 1))]
            v = draw(values)
            if isinstance(t, dict):
                t[draw(st.sampled_from(SPECIAL_STRS) | st.text(max_size=4))] = v
            else:
                t.insert(draw(st.integers(0, len(t))), v)
            continue
        parent, key = locs[draw(st.integers(0, len(locs) - 1))]
        if action == "tweak":  # a well-typed change: the damage reaches the value rules, not just type checks
            parent[key] = draw(_tweak(parent[key]))
        elif action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        else:  # copy another location's value here (a plausible, well-typed mistake)
            src_parent, src_key = locs[draw(st.integers(0, len(locs) - 1))]
            parent[key] = copy.deepcopy(src_parent[src_key])
    fix = draw(st.booleans())
    version = draw(st.sampled_from([(1, 0), (1, 0), (1, 1)]))
    return rebuild(h, secs, fix=fix, version=version)


@SETTINGS
@given(tree_mutations())
def test_header_tree_mutations(data):
    event(check(data))


def test_bases_are_valid_and_cover_features():
    for data in BASES:
        assert check(data) == "ok"
    hs = [header_of(d) for d in BASES]
    assert any(h["graph"] is not None for h in hs)
    assert any(g["hashing"] for h in hs for g in h["groups"])
    assert any(t["encoding"] == "raw" for h in hs for t in h["tensors"])
    assert any(not h["sections"] for h in hs)


def test_every_truncation_of_the_base_file():
    """All prefixes of one valid file (plus a few extensions): always a clean MrcError."""
    data = BASES[0]
    codes = {check(data[:n]) for n in range(len(data))}
    assert "ok" not in codes
    assert {"truncated", "header-size"} <= codes
    for extra in (b"\0", b"\0" * 64, b"\x01"):
        assert check(data + extra) == "trailing-bytes"


def test_single_bit_flips_of_the_base_header():
    """Every bit of the preamble and header flipped in turn: all caught (the CRCs cover the header),
    except the minor version, where any newer minor of major 1 is readable by design."""
    data = BASES[0]
    hlen = struct.unpack_from("<I", data, 12)[0]
    for i in range(24 + hlen):
        for bit in (0, 7):
            b = bytearray(data)
            b[i] ^= 1 << bit
            outcome = check(bytes(b))
            assert (outcome == "ok") == (i in (10, 11)), (i, bit, outcome)
