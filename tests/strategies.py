"""Hypothesis strategies and small builders for random `.mrc` containers, shared by the tests."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from mrcformat.container import DTYPES, Container, Group, Tensor
from mrcformat.layout import Layout, num_blocks
from mrcformat.sampler import float_to_bf16_bits, float_to_f32_bits

RAW_DTYPES = sorted(DTYPES)


def make_group(num_values: int, *, block_size: int, index_bits: int, rng: np.random.Generator,
               layout: Layout | None = None, hashing: bool = False, mu: float = 0.0, sigma: float = 0.1) -> Group:
    nb = num_blocks(num_values, block_size)
    return Group(float_to_f32_bits(mu), float_to_bf16_bits(sigma), block_size, index_bits, num_values,
                 layout or Layout(), hashing, rng.integers(0, 2**index_bits, size=nb, dtype=np.int64))


@st.composite
def layouts(draw, n: int) -> Layout:
    if n == 1 or draw(st.booleans()):
        return Layout() if draw(st.booleans()) else Layout("affine", 0 if n == 1 else 1, 0)
    a = draw(st.integers(1, n - 1))
    while math.gcd(a, n) != 1:
        a -= 1
    return Layout("affine", a, draw(st.integers(0, n - 1)))


@st.composite
def containers(draw, max_groups: int = 3, max_elems: int = 300, with_graph: bool = False) -> Container:
    """Random valid containers: groups (hashing or not, any layout and bit width), coded and raw
    tensors with random names/shapes/dtypes, optional metadata. Sizes stay small for speed."""
    seed = draw(st.integers(0, 2**64 - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups, tensors, names = [], [], set()

    def name() -> str:
        n = draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12))
        while n in names:
            n += "_"
        names.add(n)
        return n

    for gi in range(draw(st.integers(0, max_groups))):
        shapes = draw(st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=3), min_size=1, max_size=3))
        sizes = [int(np.prod(s)) if s else 1 for s in shapes]
        nw = sum(sizes)
        if nw == 0:
            shapes, sizes, nw = [[1]], [1], 1
        hashing = draw(st.booleans()) and nw > 1
        nv = draw(st.integers(max(1, -(-nw // 256)), nw)) if hashing else nw
        bits = draw(st.integers(1, 32))
        bsz = draw(st.integers(1, min(4096, max(1, nv + 3))))
        mu = draw(st.floats(-2, 2, width=32))
        sigma = draw(st.floats(1e-3, 4.0))
        groups.append(make_group(nv, block_size=bsz, index_bits=bits, rng=rng, layout=draw(layouts(nv)),
                                 hashing=hashing, mu=mu, sigma=sigma))
        for s in shapes:
            tensors.append(Tensor(name(), tuple(s), "coded", group=gi))
    for _ in range(draw(st.integers(0, 3))):
        dt = draw(st.sampled_from(RAW_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        npdt = np.dtype(DTYPES[dt])
        numel = int(np.prod(shape)) if shape else 1
        data = rng.integers(0, 256, size=numel * npdt.itemsize, dtype=np.uint8).view(npdt)
        if dt == "bool":
            data = data & np.uint8(1)
        tensors.append(Tensor(name(), shape, "raw", dtype=dt, data=data.reshape(shape)))
    order = draw(st.permutations(range(len(tensors))))
    tensors = [tensors[i] for i in order]
    metadata = draw(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20), max_size=4))
    graph = None
    if with_graph and tensors and draw(st.booleans()):
        graph = identity_graph([t for t in tensors if t.encoding == "coded" or t.dtype == "float32"])
    return Container(seed=seed, groups=groups, tensors=tensors, graph=graph, metadata=metadata)


def identity_graph(tensors: list[Tensor]) -> bytes:
    """A tiny ONNX model that outputs each given tensor through Identity (weights removed)."""
    from onnx import TensorProto, helper

    nodes, outputs = [], []
    for i, t in enumerate(tensors):
        nodes.append(helper.make_node("Identity", [t.name], [f"out{i}"]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, list(t.shape)))
    g = helper.make_graph(nodes, "identity", [], outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
