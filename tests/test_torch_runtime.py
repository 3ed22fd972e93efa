"""The torch runtime is bit-identical to the numpy reference: Philox words, candidate samples and
values, and whole decodes of random containers, on CPU and (where present) CUDA."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import mrcformat  # noqa: E402
from mrcformat.coder import candidates as np_candidates  # noqa: E402
from mrcformat.container import Container, Tensor  # noqa: E402
from mrcformat.layout import Layout, choose_affine  # noqa: E402
from mrcformat.philox import philox4x32 as np_philox  # noqa: E402
from mrcformat.sampler import bf16_bits_to_float  # noqa: E402
from mrcformat.streams import candidate_u16 as np_candidate_u16  # noqa: E402
from mrcformat_runtime import torch_decode as td  # noqa: E402
from mrcformat_runtime.torch_philox import philox4x32  # noqa: E402
from strategies import containers, make_group  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]

M32 = 2**32 - 1
KATS = [  # Random123 known-answer vectors for Philox4x32-10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def bits(x) -> bytes:
    """Exact bytes of a tensor or array, bfloat16 and bool included."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.view(torch.int16)
        x = x.contiguous().numpy()
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    return x.tobytes()


# ----------------------------------------------------------------------------- Philox

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("counter, key, expect", KATS)
def test_philox_known_answers(device, counter, key, expect):
    out = philox4x32(*counter, key=key, device=device)
    assert out.dtype == torch.int64 and out.device.type == device
    assert tuple(out.tolist()) == expect


word = st.one_of(st.sampled_from([0, 1, 2**31 - 1, 2**31, M32 - 1, M32]), st.integers(0, M32))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=50, deadline=None)
@given(counters=st.lists(st.tuples(word, word, word, word), min_size=1, max_size=40), key=st.tuples(word, word))
def test_philox_matches_numpy(device, counters, key):
    c = np.array(counters, dtype=np.uint64).T
    want = np_philox(c[0], c[1], c[2], c[3], key)
    got = philox4x32(*(torch.from_numpy(x.astype(np.int64)) for x in c), key=key, device=device)
    assert np.array_equal(got.cpu().numpy(), want.astype(np.int64))


def test_philox_broadcasts_ints_and_arrays():
    c0 = np.arange(5, dtype=np.uint64)[:, None]
    c1 = np.arange(3, dtype=np.uint64)[None, :]
    want = np_philox(c0, c1, 7, M32, (1, 2))
    got = philox4x32(c0.astype(np.int64), torch.arange(3), 7, M32, key=(1, 2))
    assert got.shape == (5, 3, 4)
    assert np.array_equal(got.numpy(), want.astype(np.int64))


# ----------------------------------------------------------------------------- candidates

seeds = st.one_of(st.sampled_from([0, 2**64 - 1]), st.integers(0, 2**64 - 1))
sigma_bits = st.integers(0x2000, 0x5F7F).map(lambda b: b & 0x7FFF)  # positive bfloat16 in range


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(seed=seeds, group=st.integers(0, 2**24 - 1), block=st.integers(0, 2**31 - 1),
       block_size=st.integers(1, 70), sb=sigma_bits, mu=st.floats(-4, 4, width=32),
       start=st.integers(0, 2**32 - 33), count=st.integers(1, 32))
def test_candidates_match_numpy(device, seed, group, block, block_size, sb, mu, start, count):
    sigma = float(bf16_bits_to_float(sb))
    want = np_candidates(seed, group, block, block_size, mu, sigma, start=start, count=count)
    got = td.candidates(seed, group, block, block_size, mu, sigma, start, count, device=device)
    assert got.shape == (count, block_size) and got.dtype == torch.float32 and got.device.type == device
    assert bits(got) == bits(want)
    # chunked generation and a preallocated output give the same bits
    out = torch.empty(count * block_size, device=device)
    again = td.candidates(seed, group, block, block_size, mu, sigma, start, count, device=device, out=out, chunk=1)
    assert again.data_ptr() == out.data_ptr() and bits(again) == bits(want)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(seed=seeds, group=st.integers(0, 2**24 - 1),
       pairs=st.lists(st.tuples(st.integers(0, M32), st.integers(0, M32)), min_size=1, max_size=20),
       block_size=st.integers(1, 40))
def test_candidate_u16_matches_numpy(device, seed, group, pairs, block_size):
    b = np.array([p[0] for p in pairs], dtype=np.uint64)
    k = np.array([p[1] for p in pairs], dtype=np.uint64)
    want = np_candidate_u16(seed, group, b, k, block_size)
    got = td.candidate_u16(seed, group, b.astype(np.int64), k.astype(np.int64), block_size, device=device, chunk=3)
    assert got.shape == want.shape
    assert np.array_equal(got.cpu().numpy(), want.astype(np.int64))


@pytest.mark.parametrize("device", DEVICES)
def test_candidates_batch_rows_are_candidates(device):
    blocks = torch.tensor([0, 5, 2**31 + 3], device=device)
    got = td.candidates_batch(11, 3, blocks, 13, 0.5, 0.25, start=100, count=17)
    assert got.shape == (3, 17, 13) and got.device.type == device
    for i, b in enumerate(blocks.tolist()):
        assert bits(got[i]) == bits(np_candidates(11, 3, b, 13, 0.5, 0.25, start=100, count=17))


def test_normal_table_is_cached_and_exact():
    t = td.normal_table("cpu")
    assert t is td.normal_table(torch.device("cpu"))
    assert bits(t) == bits(mrcformat.sampler.normal_table())


# ----------------------------------------------------------------------------- decoding

# CPU: the tensor-op decoder (what runs on CUDA) and the default (compiled kernels when built)
DECODE_PATHS = [("cpu", "torch"), ("cpu", "auto"), pytest.param("cuda", "auto", marks=[pytest.mark.cuda, CUDA])]


def assert_same_decode(c: Container, device: str, backend: str = "auto", **kw):
    want = mrcformat.decode(c, backend="numpy")
    got = td.decode(c, device, backend=backend, **kw)
    assert list(got) == list(want)
    for name, arr in want.items():
        t = got[name]
        assert t.device.type == device
        assert tuple(t.shape) == arr.shape, name
        assert bits(t) == bits(arr), name


@pytest.mark.parametrize("device,backend", DECODE_PATHS)
@settings(deadline=None)
@given(c=containers())
def test_decode_random_containers_bit_exact(device, backend, c):
    assert_same_decode(c, device, backend)


@pytest.mark.parametrize("device,backend", DECODE_PATHS)
@settings(max_examples=15, deadline=None)
@given(c=containers(max_groups=2), chunk=st.integers(1, 100))
def test_decode_any_chunk_bit_exact(device, backend, c, chunk):
    assert_same_decode(c, device, backend, chunk=chunk)


@pytest.mark.parametrize("device,backend", DECODE_PATHS)
@pytest.mark.parametrize("layout, hashing, chunk", [
    ("contiguous", False, None), ("affine", False, None), ("affine", True, None), ("affine", True, 4100)])
def test_decode_multi_chunk_group(device, backend, layout, hashing, chunk):
    """A group larger than the default chunk: chunk boundaries inside blocks, padding, hashing
    (chunk 4100 makes hash batches of 1025 weights: batches starting at odd weights, lane 1)."""
    rng = np.random.default_rng(1)
    nw = 300_007
    nv = nw // 3 if hashing else nw
    lay = Layout() if layout == "contiguous" else choose_affine(nv, 99, 0)
    g = make_group(nv, block_size=37, index_bits=20, rng=rng, layout=lay, hashing=hashing, mu=0.125, sigma=0.03)
    c = Container(seed=2**63 + 12345, groups=[g],
                  tensors=[Tensor("a", (nw - 7,), "coded", group=0), Tensor("b", (7,), "coded", group=0)])
    assert_same_decode(c, device, backend, chunk=chunk)


def test_raw_dtypes_map_to_torch():
    c = Container(seed=1, tensors=[
        Tensor("bf", (2,), "raw", dtype="bfloat16", data=np.array([0x3F80, 0xC000], dtype="<u2")),
        Tensor("b", (3,), "raw", dtype="bool", data=np.array([0, 1, 1], dtype=np.uint8)),
        Tensor("s", (), "raw", dtype="int64", data=np.array(5, dtype="<i8")),
        Tensor("h", (1, 2), "raw", dtype="float16", data=np.array([[1.5, -2]], dtype="<f2")),
    ])
    got = td.decode(c, "cpu")
    assert got["bf"].dtype == torch.bfloat16 and got["bf"].tolist() == [1.0, -2.0]
    assert got["b"].dtype == torch.bool and got["b"].tolist() == [False, True, True]
    assert got["s"].dtype == torch.int64 and got["s"].shape == () and int(got["s"]) == 5
    assert got["h"].dtype == torch.float16 and got["h"].tolist() == [[1.5, -2.0]]
    got["h"][0, 0] = 0  # a copy: the container's (read-only) data is untouched
    assert c.tensor("h").data[0, 0] == 1.5


def test_spec_vectors_decode_bit_exact():
    import pathlib

    vectors = sorted(pathlib.Path(__file__).resolve().parents[1].joinpath("spec", "vectors").glob("*.mrc"))
    if not vectors:
        pytest.skip("no spec vectors in this checkout")
    for path in vectors:
        for backend in ("torch", "auto"):
            assert_same_decode(mrcformat.load(path), "cpu", backend)


def test_load_state_dict_does_not_import_onnx(tmp_path):
    """load_state_dict of a file without a graph needs no ONNX library: it imported onnx for its budget
    check (0.9 s with ml_dtypes 0.7 in every fresh process, 10x the load of a VGG-16-sized file). A file
    with a graph imports it in the reader, which must check the graph (SPEC.md 7.6)."""
    import dataclasses
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "examples" / "lenet5-small.mrc"
    path = tmp_path / "no-graph.mrc"
    mrcformat.save(dataclasses.replace(mrcformat.load(src), graph=None), path)
    code = ("import sys\nfrom mrcformat_runtime.torch_load import load_state_dict\n"
            f"sd = load_state_dict({str(path)!r})\nassert sd\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
