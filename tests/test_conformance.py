"""Conformance: spec/ vectors, machine-readable constants, and an independent decoder written
from SPEC.md alone (scalar, no code shared with the package beyond msgpack and the table file)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest

import mrcformat
from mrcformat import limits
from mrcformat.errors import MrcError
from mrcformat.philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, philox4x32_scalar
from mrcformat.sampler import TABLE_SHA256
from mrcformat.streams import DOMAIN_CANDIDATE, DOMAIN_CHOICE, DOMAIN_HASH, DOMAIN_LAYOUT

SPEC = Path(__file__).resolve().parent.parent / "spec"
VECTORS = SPEC / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text(encoding="utf-8"))
CONSTANTS = json.loads((SPEC / "constants.json").read_text(encoding="utf-8"))


def test_constants_json_matches_code():
    p = CONSTANTS["philox4x32_10"]
    assert [int(p[k], 16) for k in ("M0", "M1", "W0", "W1")] == [PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1]
    for kat in p["known_answers"]:
        out = philox4x32_scalar(tuple(int(x, 16) for x in kat["counter"]), tuple(int(x, 16) for x in kat["key"]))
        assert [f"{x:08x}" for x in out] == kat["output"]
    assert CONSTANTS["domains"] == {"candidate": DOMAIN_CANDIDATE, "hash": DOMAIN_HASH,
                                    "choice": DOMAIN_CHOICE, "layout": DOMAIN_LAYOUT}
    assert CONSTANTS["sampler"]["table_sha256"] == TABLE_SHA256
    assert bytes.fromhex(CONSTANTS["format"]["magic_hex"]) == mrcformat.container.MAGIC
    for key, value in CONSTANTS["limits"].items():
        assert getattr(limits, key.upper()) == value, key


def _le_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _decode_paths():
    """Every decoder of the package: the numpy reference and each code path of the compiled kernels."""
    from mrcformat import kernels

    paths = [("numpy", None)]
    if kernels.available():
        paths += [("native", "generic")] + ([("native", "avx2")] if kernels.isa("auto") == "avx2" else [])
    return paths


@pytest.mark.parametrize("backend,isa", _decode_paths())
@pytest.mark.parametrize("name", sorted(MANIFEST["valid"]))
def test_valid_vector_decodes_to_manifest(name, backend, isa):
    from mrcformat import kernels

    data = (VECTORS / name).read_bytes()
    entry = MANIFEST["valid"][name]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    with kernels.using_isa(isa):
        decoded = mrcformat.decode(mrcformat.from_bytes(data), backend=backend)
    assert set(decoded) == set(entry["tensors"])
    for tname, t in entry["tensors"].items():
        assert list(decoded[tname].shape) == t["shape"]
        assert hashlib.sha256(_le_bytes(decoded[tname])).hexdigest() == t["sha256"], tname


@pytest.mark.parametrize("name", sorted(MANIFEST["invalid"]))
def test_invalid_vector_is_rejected_with_its_code(name):
    data = (VECTORS / name).read_bytes()
    with pytest.raises(MrcError) as e:
        mrcformat.from_bytes(data)
    assert (e.value.code, e.value.where) == (MANIFEST["invalid"][name]["code"], MANIFEST["invalid"][name]["where"])


def test_vectors_regenerate_byte_identically():
    spec = importlib.util.spec_from_file_location("make_vectors", SPEC / "make_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files, manifest = mod.build()
    for name, data in files.items():
        assert (VECTORS / name).read_bytes() == data, name
    assert manifest == MANIFEST


# --------------------------------------------------------------------------------------------
# An independent decoder, written from SPEC.md sections 3-7 and 10 only: one element at a time.

def _philox(c, k):
    c0, c1, c2, c3 = c
    k0, k1 = k
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF
    return c0, c1, c2, c3


def _spec_table() -> tuple[float, ...]:
    table_bytes = (Path(mrcformat.__file__).parent / "_data" / "normal16.f32").read_bytes()
    assert hashlib.sha256(table_bytes).hexdigest() == CONSTANTS["sampler"]["table_sha256"]
    return struct.unpack("<65536f", table_bytes)


def _spec_u(seed: int, g: int, b: int, k: int, j: int) -> int:
    """SPEC.md 4.2: the 16-bit sample of slot j of candidate k of block b of group g."""
    x = _philox((j >> 3, k, b, (0 << 24) | g), (seed & 0xFFFFFFFF, seed >> 32))
    lane = j & 7
    return (x[lane >> 1] >> (16 * (lane & 1))) & 0xFFFF


def _spec_hash(seed: int, g: int, n: int, t: int) -> tuple[int, int]:
    """SPEC.md 5.3: (h(t), s(t)) of weight position t."""
    x = _philox((t >> 1, 0, 0, (1 << 24) | g), (seed & 0xFFFFFFFF, seed >> 32))
    lane = t & 1
    return (x[2 * lane] * n) >> 32, -1 if x[2 * lane + 1] & 1 else 1


def _spec_decode(data: bytes) -> dict[str, bytes]:
    assert data[:8] == b"\x89MRC\r\n\x1a\n"
    hlen = struct.unpack_from("<I", data, 12)[0]
    h = msgpack.unpackb(data[24:24 + hlen], raw=False)
    table = _spec_table()
    seed = h["seed"]
    out: dict[str, bytes] = {}
    stream_pos = h["sections"][h["indices"]]["offset"] if h["indices"] is not None else 0
    for g, grp in enumerate(h["groups"]):
        n, bsz, w = grp["num_values"], grp["block_size"], grp["index_bits"]
        nb = (n + bsz - 1) // bsz
        plen = (nb * w + 7) // 8
        payload = data[stream_pos:stream_pos + plen]
        stream_pos += plen
        idx = []
        for b in range(nb):
            val = 0
            for bit in range(w):
                m = b * w + bit
                val |= ((payload[m // 8] >> (m % 8)) & 1) << bit
            idx.append(val)
        mu = np.float32(struct.unpack("<f", struct.pack("<I", grp["mu"]))[0])
        sigma = np.float32(struct.unpack("<f", struct.pack("<I", grp["sigma"] << 16))[0])
        lay = grp["layout"]
        scales = None
        if "scales" in grp:  # 1.1: sigma_k = sigma * r[k] for value i, k = i div (n / count)
            sec = h["sections"][grp["scales"]]
            count = sec["length"] // 2
            r = struct.unpack(f"<{count}H", data[sec["offset"]:sec["offset"] + sec["length"]])
            scales = (count, [sigma * np.float32(struct.unpack("<f", struct.pack("<I", x << 16))[0]) for x in r])

        def pi(i):
            return i if lay["kind"] == "contiguous" else (lay["a"] * i + lay["c"]) % n

        def value(i):
            p = pi(i)
            b, j = divmod(p, bsz)
            u = _spec_u(seed, g, b, idx[b], j)
            if scales is None:
                return mu + sigma * np.float32(table[u])
            count, sk = scales
            return mu + sk[i // (n // count)] * np.float32(table[u])

        members = [t for t in h["tensors"] if t["encoding"] == "coded" and t["group"] == g]
        m = sum(math.prod(t["shape"]) for t in members)
        weights = []
        for t in range(m):
            if grp["hashing"]:
                hv, s = _spec_hash(seed, g, n, t)
                weights.append(np.float32(s) * value(hv))
            else:
                weights.append(value(t))
        pos = 0
        for t in members:
            k = math.prod(t["shape"])
            out[t["name"]] = np.array(weights[pos:pos + k], dtype="<f4").tobytes()
            pos += k
    for t in h["tensors"]:
        if t["encoding"] == "raw":
            s = h["sections"][t["section"]]
            out[t["name"]] = data[s["offset"]:s["offset"] + s["length"]]
    return out


@pytest.mark.parametrize("name", sorted(MANIFEST["valid"]))
def test_independent_spec_decoder_matches_manifest(name):
    decoded = _spec_decode((VECTORS / name).read_bytes())
    for tname, t in MANIFEST["valid"][name]["tensors"].items():
        assert hashlib.sha256(decoded[tname]).hexdigest() == t["sha256"], tname


# --------------------------------------------------------------------------------------------
# Known answers (spec/known_answers.json): intermediate values, reproduced by the package and by the
# spec-text functions above.

KNOWN = json.loads((SPEC / "known_answers.json").read_text(encoding="utf-8"))


def _f32(bits: int) -> np.float32:
    return np.array([bits], dtype="<u4").view("<f4")[0]


def _candidate_value(case: dict, table_u: np.float32) -> np.float32:
    mu, sigma = _f32(int(case["mu_bits"], 16)), _f32(int(case["sigma_bits"], 16) << 16)
    if "scale_bits" in case:
        sigma = np.float32(sigma * _f32(int(case["scale_bits"], 16) << 16))
    return np.float32(mu + np.float32(sigma * table_u))


def _bits(x: np.float32) -> str:
    return f"{int(np.array([x], '<f4').view('<u4')[0]):08x}"


def test_known_answers_cover_the_edges():
    c, h = KNOWN["candidates"], KNOWN["hashing"]
    assert len(c) >= 5 and len(h) >= 5
    assert {e["slot"] & 7 for e in c} >= {0, 1, 7} and any(e["slot"] >= 8 for e in c)
    assert any(e["seed"] == 2**64 - 1 for e in c) and any("scale_bits" in e for e in c)
    assert {e["s"] for e in h} == {-1, 1} and {e["t"] & 1 for e in h} == {0, 1}


@pytest.mark.parametrize("case", KNOWN["candidates"], ids=lambda c: f"seed{c['seed']}-g{c['group']}-b{c['block']}-k{c['index']}-j{c['slot']}")
def test_known_candidate_answers_reference(case):
    from mrcformat.sampler import normal_table
    from mrcformat.streams import candidate_u16, seed_key

    counter = tuple(int(x, 16) for x in case["philox_counter"])
    assert counter == (case["slot"] >> 3, case["index"], case["block"], case["group"])
    assert [f"{x:08x}" for x in philox4x32_scalar(counter, seed_key(case["seed"]))] == case["philox_output"]
    u = candidate_u16(case["seed"], case["group"], np.array([case["block"]]), np.array([case["index"]]), case["slot"] + 1)
    assert int(u[0, case["slot"]]) == case["u"]
    t = normal_table()[case["u"]]
    assert _bits(t) == case["table_u_bits"]
    assert _bits(_candidate_value(case, t)) == case["value_bits"]


@pytest.mark.parametrize("case", KNOWN["candidates"], ids=lambda c: f"seed{c['seed']}-g{c['group']}-b{c['block']}-k{c['index']}-j{c['slot']}")
def test_known_candidate_answers_spec_text(case):
    key = (case["seed"] & 0xFFFFFFFF, case["seed"] >> 32)
    counter = (case["slot"] >> 3, case["index"], case["block"], (0 << 24) | case["group"])
    assert [f"{x:08x}" for x in _philox(counter, key)] == case["philox_output"]
    u = _spec_u(case["seed"], case["group"], case["block"], case["index"], case["slot"])
    assert u == case["u"]
    t = np.float32(_spec_table()[u])
    assert _bits(t) == case["table_u_bits"]
    assert _bits(_candidate_value(case, t)) == case["value_bits"]


@pytest.mark.parametrize("case", KNOWN["hashing"], ids=lambda c: f"seed{c['seed']}-g{c['group']}-n{c['num_values']}-t{c['t']}")
def test_known_hashing_answers(case):
    from mrcformat.streams import hash_words

    key = (case["seed"] & 0xFFFFFFFF, case["seed"] >> 32)
    counter = (case["t"] >> 1, 0, 0, (1 << 24) | case["group"])
    assert [f"{x:08x}" for x in _philox(counter, key)] == case["philox_output"]
    assert _spec_hash(case["seed"], case["group"], case["num_values"], case["t"]) == (case["h"], case["s"])
    h, s = hash_words(case["seed"], case["group"], np.array([case["t"]], dtype=np.uint64), case["num_values"])
    assert (int(h[0]), int(s[0])) == (case["h"], case["s"])
