"""Self-decoding ONNX export: onnxruntime regenerates the weights bit for bit like the numpy decoder."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrcformat_runtime import selfdecode as sd
from mrcformat_runtime.onnx_export import to_onnx_model
from onnx import TensorProto, helper
from strategies import containers, identity_graph, make_group

from mrcformat import Container, Layout, Tensor, decode
from mrcformat.errors import GraphError
from mrcformat.sampler import normal_table

LEVELS = {"folded": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "at-run": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def _session(model, level: str = "folded") -> ort.InferenceSession:
    """`folded`: onnxruntime's constant folding runs the decoder at session creation;
    `at-run`: no graph optimisation, the decoder runs as ordinary nodes in every run."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.graph_optimization_level = LEVELS[level]
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _assert_weights_exact(c: Container, level: str = "folded") -> None:
    """Both decoder forms (Philox as a Loop, and as the self-decoding model's unrolled functions) give the
    numpy decoder's bits."""
    for loop in (True, False):
        model = sd.regenerated_weights_model(c, loop=loop)
        onnx.checker.check_model(model, full_check=True)
        assert [o.name for o in model.graph.output] == [t.name for t in c.tensors]
        if not c.tensors:  # onnxruntime refuses a graph without outputs
            return
        outs = _session(model, level).run(None, {})
        for t, got in zip(c.tensors, outs):
            want = np.asarray(decode(c)[t.name])
            assert got.dtype == want.dtype and got.shape == want.shape, (t.name, loop)
            assert got.tobytes() == want.tobytes(), (t.name, loop)  # bit for bit


# --------------------------------------------------------------------------------------- table

def test_compact_table_expands_exactly():
    model = sd.table_model()
    onnx.checker.check_model(model, full_check=True)
    for level in LEVELS:
        table, = _session(model, level).run(None, {})
        assert table.dtype == np.float32 and table.shape == (65536,)
        assert table.tobytes() == normal_table().tobytes()


def test_compact_table_is_small():
    coef, pos, vals = sd.table_encoding()
    assert coef.shape == (2, 8, 2) and len(pos) == len(vals)
    assert sd.table_encoded_size() == coef.nbytes + pos.nbytes + vals.nbytes <= 512
    table_fn = next(f for f in sd.functions() if f.name == "Table")
    assert table_fn.ByteSize() < 3072  # the nodes that expand and check it
    # the numpy mirror of the in-graph formula reproduces the table with the exceptions applied
    got = sd._round16(sd._approx_positive_half(coef).astype(np.float32))
    got[pos] = vals
    assert got.tobytes() == normal_table()[32768:].tobytes()


def test_table_exception_path(monkeypatch):
    """The exception list (empty for the shipped table) is applied by ScatterElements."""
    coef, _, _ = sd.table_encoding()
    pos = np.array([0, 17, 32767], dtype=np.int64)
    vals = np.asarray(normal_table()[32768 + pos], dtype=np.float32)
    monkeypatch.setattr(sd, "table_encoding", lambda: (coef, pos, vals))
    model = sd.table_model()
    onnx.checker.check_model(model, full_check=True)
    assert any(n.op_type == "ScatterElements" for f in model.functions for n in f.node)
    table, = _session(model).run(None, {})
    assert table.tobytes() == normal_table().tobytes()


def test_table_guard_poisons_a_wrongly_rebuilt_table(monkeypatch):
    """A runtime whose float64 transcendental functions drift past the margin must fail loudly:
    simulate it with a perturbed coefficient; the in-graph checksums turn the whole table into NaN."""
    coef, pos, vals = sd.table_encoding()
    bad = coef.copy()
    bad[1, 0, 0] *= 1 + 1e-7  # tail numerator: moves some tail entries across a rounding boundary
    assert (sd._round16(sd._approx_positive_half(bad).astype(np.float32)).view(np.uint32)
            != normal_table()[32768:].view(np.uint32)).any()
    monkeypatch.setattr(sd, "table_encoding", lambda: (bad, pos, vals))
    table, = _session(sd.table_model()).run(None, {})
    assert np.isnan(table).all()


# ------------------------------------------------------------------------------ random files

@given(containers(), st.sampled_from(sorted(LEVELS)))
def test_regenerated_weights_match_numpy(c, level):
    _assert_weights_exact(c, level)


@settings(max_examples=10)
@given(containers(max_groups=2, max_elems=200, with_graph=True))
def test_self_decoding_model_matches_numpy(c):
    if c.graph is None:
        with pytest.raises(GraphError):
            sd.self_decoding_model(c)
        return
    model = to_onnx_model(c, self_decoding=True)
    onnx.checker.check_model(model, full_check=True)
    names = [t.name for t in c.tensors if t.encoding == "coded" or t.dtype == "float32"]
    if not names:
        return
    ref = decode(c)
    for name, got in zip(names, _session(model).run(None, {})):
        assert got.tobytes() == np.asarray(ref[name]).tobytes(), name


# ----------------------------------------------------------------------- chosen edge cases

def _one_group(nw: int, *, hashing_ratio: int = 1, shapes=None, seed: int = 2**64 - 1, **kw) -> Container:
    rng = np.random.default_rng(nw)
    nv = -(-nw // hashing_ratio)
    g = make_group(nv, rng=rng, hashing=hashing_ratio > 1, **kw)
    shapes = shapes or [(nw,)]
    tensors = [Tensor(f"t{i}", s, "coded", group=0) for i, s in enumerate(shapes)]
    return Container(seed=seed, groups=[g], tensors=tensors)


@pytest.mark.parametrize("kw", [
    {"block_size": 4096, "index_bits": 32},                                    # widest index, largest block
    {"block_size": 4096, "index_bits": 31, "layout": Layout("affine", 4093, 4000)},
    {"block_size": 1, "index_bits": 32, "layout": Layout("affine", 2, 1)},        # one slot per block
    {"block_size": 7, "index_bits": 5, "layout": Layout("affine", 1234, 4321)},   # 5-byte straddles
    {"block_size": 9, "index_bits": 17, "mu": -1.5, "sigma": 3.0},
    {"block_size": 33, "index_bits": 24, "mu": 1e-30, "sigma": 2.0**-60},
])
def test_edge_cases_exact(kw):
    for level in LEVELS:
        _assert_weights_exact(_one_group(5003, shapes=[(5000,), (3,), (0, 4)], **kw), level)


@pytest.mark.parametrize("ratio", [2, 7, 256])
def test_hashing_exact(ratio):
    c = _one_group(2 * 256 * 5 + 1, hashing_ratio=ratio, shapes=[(2561,), ()], block_size=13, index_bits=11,
                   layout=Layout("affine", 1, 3) if ratio == 7 else None)
    _assert_weights_exact(c)


def _groups_container(count: int, hashing: bool = False) -> Container:
    rng = np.random.default_rng(3)
    groups = [make_group(50 + i, block_size=8 + i, index_bits=4 + i, rng=rng, hashing=hashing and i % 2 == 1,
                         layout=Layout("affine", 3, i) if i % 3 == 2 else None) for i in range(count)]
    tensors = [Tensor(f"g{i}", (50 + i,), "coded", group=i) for i in range(count)]
    return Container(seed=1, groups=groups, tensors=tensors)


@pytest.mark.parametrize("hashing", [False, True])
def test_small_files_decode_in_one_batch(hashing):
    """One table and one Philox evaluation per kind of counter (candidates, hashing) for the whole file; a
    group adds only its own few nodes (layout, scale, split), no Philox."""
    def ops(c, loop=False):
        return [n.op_type for n in sd.regenerated_weights_model(c, loop=loop).graph.node]

    few, many = _groups_container(4, hashing), _groups_container(9, hashing)
    assert ops(many).count("Table") == 1 and ops(many).count("Philox") == ops(few).count("Philox") == (2 if hashing else 1)
    assert ops(many, True).count("Loop") == (2 if hashing else 1) and "Philox" not in ops(many, True)
    # a hashed group adds its counters (Range, q * 0 + word) and its index/sign/gather nodes after the
    # shared Philox: per-group constants instead of per-element parameter rows, which cost more than Philox
    assert len(ops(many)) - len(ops(few)) <= 5 * 17
    _assert_weights_exact(many)
    _assert_weights_exact(many, "at-run")


@pytest.mark.parametrize("hashing", [False, True])
def test_large_groups_decode_in_pieces(monkeypatch, hashing):
    """With tiny batch budgets every group is cut into pieces of blocks, values and pairs spread over many
    batches (what a large model gets): the same bits."""
    monkeypatch.setattr(sd._Decoder, "CALLS", 7)
    monkeypatch.setattr(sd._Decoder, "PAIRS", 5)
    monkeypatch.setattr(sd._Decoder, "VALUES", 11)
    c = _groups_container(4, hashing)
    assert [n.op_type for n in sd.regenerated_weights_model(c, loop=False).graph.node].count("Philox") >= 5
    assert [n.op_type for n in sd.regenerated_weights_model(c).graph.node].count("Loop") >= 5
    _assert_weights_exact(c)
    _assert_weights_exact(c, "at-run")


# ------------------------------------------------------------------------ whole models in ORT

def _mlp_container(opset: int = 18) -> tuple[Container, np.ndarray]:
    rng = np.random.default_rng(11)
    groups = [make_group(8 * 16 + 16, block_size=12, index_bits=9, rng=rng, layout=Layout("affine", 5, 1)),
              make_group(40, block_size=10, index_bits=6, rng=rng, hashing=True, sigma=0.25)]
    tensors = [Tensor("fc1.weight", (16, 8), "coded", group=0), Tensor("fc1.bias", (16,), "coded", group=0),
               Tensor("fc2.weight", (4, 16), "coded", group=1), Tensor("fc2.bias", (4,), "coded", group=1),
               Tensor("scale", (4,), "raw", dtype="float32", data=np.arange(1, 5, dtype=np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["o"], transB=1),
             helper.make_node("Mul", ["o", "scale"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()
    x = rng.standard_normal((5, 8)).astype(np.float32)
    return Container(seed=2024, groups=groups, tensors=tensors, graph=graph), x


@pytest.mark.parametrize("opset", [18, 13])
def test_self_decoding_mlp_equals_plain(opset):
    c, x = _mlp_container(opset)
    plain = to_onnx_model(c)
    selfm = to_onnx_model(c, self_decoding=True)
    onnx.checker.check_model(selfm, full_check=True)
    assert {o.version for o in selfm.opset_import if o.domain == ""} == {18}
    assert not any(i.data_type == TensorProto.FLOAT and i.dims == [16, 8] for i in selfm.graph.initializer)
    want, = _session(plain).run(None, {"x": x})
    got, = _session(selfm).run(None, {"x": x})  # weights folded at session creation: same kernels as plain
    assert got.tobytes() == want.tobytes()


def test_self_decoding_is_small():
    """The shipped model stays close to the .mrc: no float32 weights, a few KB of decoder."""
    rng = np.random.default_rng(5)
    groups = [make_group(50_000, block_size=20, index_bits=12, rng=rng, hashing=True)]
    tensors = [Tensor("w", (400, 1000), "coded", group=0)]
    c = Container(seed=5, groups=groups, tensors=tensors, graph=identity_graph(tensors))
    size = sd.self_decoding_model(c).ByteSize()
    payload = groups[0].payload_length
    assert payload < size < payload + 8 * 1024, (size, payload)
    assert sum(f.ByteSize() for f in sd.functions()) < 4 * 1024


def test_no_domain_clash():
    c, _ = _mlp_container()
    m = onnx.ModelProto.FromString(c.graph)
    m.opset_import.append(helper.make_opsetid(sd.DOMAIN, 1))
    c.graph = m.SerializeToString()
    with pytest.raises(GraphError):
        sd.self_decoding_model(c)


def test_internal_names_avoid_file_names():
    """Generated value names never collide with the file's or the graph's names."""
    rng = np.random.default_rng(2)
    names = ["mrc1", "mrc2", "_mrc3", "t1", "a"]
    groups = [make_group(10, block_size=3, index_bits=2, rng=rng)]
    tensors = [Tensor(n, (2,), "coded", group=0) for n in names]
    groups[0] = make_group(10, block_size=3, index_bits=2, rng=rng)
    c = Container(seed=3, groups=groups, tensors=tensors)
    _assert_weights_exact(c)


def _grid_layout(n: int) -> Layout:
    """An affine layout of n values whose gather runs by grid (the first seed that gives one)."""
    from mrcformat.layout import choose_affine

    for seed in range(100):
        lay = choose_affine(n, seed, 0)
        if sd._gather_grid(lay.a, n, sd._Decoder.VALUES) is not None:
            return lay
    raise AssertionError("no seed gives a grid")


@pytest.mark.parametrize("scaled", [False, True])
def test_large_affine_groups_gather_by_grid(monkeypatch, scaled):
    """An affine group of >= GRID_MIN_VALUES values reads its slots in the order of a [m, k] grid whose rows
    step at most GRID_MAX_STEP floats (cache lines shared), then transposes back: the same bits, in one
    chunk and in many (chunks of whole grid rows, the last one partial), with and without row scales."""
    import dataclasses

    n = 70_000
    lay = _grid_layout(n)
    m = sd._gather_grid(lay.a, n, sd._Decoder.VALUES)
    step = (lay.a * m) % n
    assert 1 <= m <= n // 16 and min(step, n - step) <= sd.GRID_MAX_STEP
    rng = np.random.default_rng(11)
    g = make_group(n, block_size=64, index_bits=8, rng=rng, layout=lay)
    if scaled:
        g = dataclasses.replace(g, sigma_bits=0x3F80, scales=rng.integers(0x3E00, 0x4000, size=100).astype(np.uint16))
    c = Container(seed=1, groups=[g], tensors=[Tensor("w", (n,), "coded", group=0)], version=(1, 1) if scaled else (1, 0))
    def transposes():
        return [node.op_type for node in sd.regenerated_weights_model(c).graph.node].count("Transpose")

    with monkeypatch.context() as mp:
        mp.setattr(sd, "GRID_MIN_VALUES", n + 1)                  # i order: no grid
        plain = transposes()
        _assert_weights_exact(c, "at-run")
    assert transposes() == plain + 1                              # one chunk, one grid
    _assert_weights_exact(c, "at-run")
    monkeypatch.setattr(sd._Decoder, "VALUES", 16 * m + 7)      # rows m: chunks of 16 columns
    assert sd._gather_grid(lay.a, n, sd._Decoder.VALUES) == m
    assert transposes() == plain + -(-n // (16 * m))
    _assert_weights_exact(c, "at-run")
    _assert_weights_exact(c)
