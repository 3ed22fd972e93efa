"""The loaders hand over the decoded tensors themselves, not copies of them (issue 13).

torch: `load_state_dict` / `load_module` tensors are views of each group's one decoded buffer, and
`load_into` decodes a one-tensor group straight into the parameter's memory. onnxruntime: the external
initializers wrap the decoded arrays (no copy), onnxruntime copies them while loading, and `session`
drops them afterwards. Checked by buffer identity, weak references and tracemalloc, never by timing.
"""
from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest
from strategies import identity_graph, make_group

from mrcformat import Container, Tensor, decode
from mrcformat.layout import Layout


def _container(scale: int = 1, seed: int = 11) -> Container:
    """Groups of one tensor (contiguous, affine, hashing) and one of two tensors; raw float32/int64."""
    rng = np.random.default_rng(seed)
    n = 96 * scale
    groups = [
        make_group(n, block_size=16, index_bits=8, rng=rng),                                      # w1
        make_group(3 * n, block_size=24, index_bits=10, rng=rng, layout=Layout("affine", 5, 7)),  # w2 + w3
        make_group(n // 2, block_size=8, index_bits=6, rng=rng, hashing=True),                     # w4 (2x hashed)
    ]
    tensors = [
        Tensor("w1", (n // 8, 8), "coded", group=0),
        Tensor("b", (8,), "raw", dtype="float32", data=rng.normal(size=8).astype(np.float32)),
        Tensor("w2", (n, 2), "coded", group=1),
        Tensor("w3", (n,), "coded", group=1),
        Tensor("w4", (n // 4, 4), "coded", group=2),
        Tensor("k", (3,), "raw", dtype="int64", data=np.arange(3, dtype=np.int64)),
    ]
    graph = identity_graph([t for t in tensors if t.encoding == "coded" or t.dtype == "float32"])
    return Container(seed=seed, groups=groups, tensors=tensors, graph=graph)


# ----------------------------------------------------------------------------- torch

def _torch():
    return pytest.importorskip("torch")


def _spy(monkeypatch, module, calls: list):
    """Record every decode_group call of `module`: (out passed in, buffer returned)."""
    real = module.decode_group

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        calls.append((kwargs.get("out"), res))
        return res

    monkeypatch.setattr(module, "decode_group", spy)


def _inside(t, buffers) -> bool:
    p = t.data_ptr()
    return any(b.data_ptr() <= p and p + t.numel() * t.element_size() <= b.data_ptr() + b.numel() * 4
               for b in buffers)


@pytest.mark.parametrize("loader", ["load_state_dict", "load_module"])
def test_torch_loaders_hand_over_the_group_buffers(monkeypatch, loader):
    """Each group is decoded once, and every coded tensor handed over lies in that group's buffer."""
    torch = _torch()
    pytest.importorskip("onnx")
    from mrcformat_runtime import torch_decode, torch_load

    c = _container()
    calls: list = []
    _spy(monkeypatch, torch_decode, calls)
    res = getattr(torch_load, loader)(c)
    get = res.__getitem__ if loader == "load_state_dict" else res.tensor
    buffers = [b for _, b in calls]
    assert sorted(b.numel() for b in buffers) == sorted(c.group_weights(g) for g in range(len(c.groups)))
    ref = decode(c)
    for t in c.tensors:
        x = get(t.name)
        assert x.detach().numpy().tobytes() == np.asarray(ref[t.name]).tobytes(), t.name
        if t.encoding == "coded":
            assert _inside(x, buffers), t.name
    # the two tensors of group 1 share one storage, in header order
    assert get("w2").untyped_storage().data_ptr() == get("w3").untyped_storage().data_ptr()
    assert get("w3").data_ptr() == get("w2").data_ptr() + get("w2").numel() * 4
    if loader == "load_module":
        assert all(isinstance(p, torch.nn.Parameter) for p in res.parameters())


def _model(torch, c: Container, half: str | None = None):
    m = torch.nn.Module()
    for t in c.tensors:
        dtype = torch.float32 if t.encoding == "coded" else getattr(torch, t.dtype)
        if t.name == half:
            dtype = torch.float16
        x = torch.full(t.shape, 7, dtype=dtype)
        if x.is_floating_point():
            m.register_parameter(t.name, torch.nn.Parameter(x))
        else:
            m.register_buffer(t.name, x)
    return m


def test_load_into_decodes_in_place(monkeypatch):
    torch = _torch()
    from mrcformat_runtime import torch_load

    c = _container()
    model = _model(torch, c, half="w4")
    ptrs = {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()}
    calls: list = []
    _spy(monkeypatch, torch_load, calls)
    assert torch_load.load_into(model, c) == ([], [])

    ref = decode(c)
    for t in c.tensors:
        got = getattr(model, t.name).detach()
        want = np.asarray(ref[t.name])
        if t.name == "w4":
            want = want.astype(np.float16)  # a float16 parameter gets the decoded values converted
        assert got.numpy().tobytes() == want.tobytes(), t.name
        assert got.data_ptr() == ptrs[t.name]  # the model's own tensors were filled, not replaced
    outs = {id(out): out for out, _ in calls if out is not None}
    # w1 (one tensor, float32): decoded straight into the parameter; w2+w3 and w4 through a buffer
    assert len(calls) == 3 and len(outs) == 1
    (out,) = outs.values()
    assert out.data_ptr() == ptrs["w1"] and out.numel() == model.w1.numel()
    assert all(out is None for out, res in calls if res.numel() != model.w1.numel())


def test_load_into_checks_names_and_shapes_before_writing():
    torch = _torch()
    from mrcformat_runtime import torch_load

    c = _container()
    model = _model(torch, c)
    model.w3 = torch.nn.Parameter(torch.zeros(5))  # wrong shape
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch for w3"):
        torch_load.load_into(model, c)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    model = _model(torch, c)
    model.register_buffer("extra", torch.zeros(2))
    del model.k
    with pytest.raises(RuntimeError, match="(?s)Unexpected key.*'k'.*Missing key.*'extra'"):
        torch_load.load_into(model, c)
    res = torch_load.load_into(model, c, strict=False)
    assert res.missing_keys == ["extra"] and res.unexpected_keys == ["k"]
    assert model.w2.detach().numpy().tobytes() == np.asarray(decode(c)["w2"]).tobytes()

    with torch.device("meta"):
        meta = _model(torch, c)
    with pytest.raises(RuntimeError, match="meta device"):
        torch_load.load_into(meta, c)


# ----------------------------------------------------------------------------- onnxruntime

def _ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _assert_reference_bits(c: Container, outs) -> None:
    ref = decode(c)
    names = [t.name for t in c.tensors if t.encoding == "coded" or t.dtype == "float32"]
    assert len(outs) == len(names)
    for name, got in zip(names, outs):
        assert got.tobytes() == np.asarray(ref[name]).tobytes(), name


def test_ortvalue_from_numpy_shares_cpu_memory():
    """What `session` relies on: an OrtValue made from a CPU array is that array's memory."""
    ort = _ort()
    a = np.arange(1000, dtype=np.float32)
    assert ort.OrtValue.ortvalue_from_numpy(a).data_ptr() == a.ctypes.data


def _spy_arrays(monkeypatch) -> list:
    from mrcformat_runtime import onnx_model

    refs: list = []
    real = onnx_model.decode_group

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        owner = res
        while isinstance(owner.base, np.ndarray):  # the array that owns the memory
            owner = owner.base
        refs.append(weakref.ref(owner))
        return res

    monkeypatch.setattr(onnx_model, "decode_group", spy)
    return refs


def test_session_drops_the_decoded_arrays(monkeypatch):
    """Default options: the session keeps no reference to our arrays and gives the reference bits even
    once their memory is reused; it refuses to be re-created in place."""
    _ort()
    from mrcformat_runtime.ort import session

    c = _container(scale=64)
    refs = _spy_arrays(monkeypatch)
    sess = session(c, external_min_bytes=0)
    gc.collect()
    assert len(refs) == len(c.groups) and all(r() is None for r in refs)
    junk = [np.full(c.group_weights(g), np.nan, dtype=np.float32) for g in range(len(c.groups)) for _ in range(4)]
    _assert_reference_bits(c, sess.run(None, {}))
    del junk
    with pytest.raises(RuntimeError, match="re-created"):
        sess.set_providers(["CPUExecutionProvider"])


def test_session_with_caller_options_keeps_arrays_while_options_live(monkeypatch):
    ort = _ort()
    from mrcformat_runtime.ort import session

    c = _container(scale=64)
    refs = _spy_arrays(monkeypatch)
    so = ort.SessionOptions()
    sess = session(c, sess_options=so, external_min_bytes=0)
    gc.collect()
    assert refs and all(r() is not None for r in refs)
    sess.set_providers(["CPUExecutionProvider"])  # re-created from `so`, which still points at them
    _assert_reference_bits(c, sess.run(None, {}))
    del sess
    gc.collect()
    assert all(r() is not None for r in refs)
    del so
    gc.collect()
    assert all(r() is None for r in refs)


def test_session_holds_one_copy_at_most():
    """tracemalloc sees numpy's buffers and Python bytes (not onnxruntime's own memory): while the
    session is built at most one copy of the weights exists on our side, and none afterwards."""
    _ort()
    from mrcformat_runtime.ort import session

    c = _container(scale=1 << 12)  # ~5 MiB of float32 weights
    weights = sum(c.group_weights(g) for g in range(len(c.groups))) * 4
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sess = session(c)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 1.25 * weights + (1 << 20), (peak - base, weights)
    assert current - base < 0.05 * weights, (current - base, weights)
    _assert_reference_bits(c, sess.run(None, {}))
