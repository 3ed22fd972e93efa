"""Two readers, one verdict (issue 16): `spec/independent_validator.py`, written from SPEC.md alone (its own
msgpack parser, a protobuf wire-format walk instead of ONNX), must report the same first code and `where`
as the reference reader on every conformance vector and on randomly damaged files."""
from __future__ import annotations

import copy
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_helpers import assemble, split_file

from mrcformat import MrcError, from_bytes

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text(encoding="utf-8"))
import sys

sys.path.insert(0, str(ROOT / "spec"))
from independent_validator import check

EXAMPLES = int(os.environ.get("MRC_MUTATION_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BASES = ["mlp_graph.mrc", "graph_stubs.mrc", "graph_deflate.mrc", "scales.mrc", "hashing.mrc", "edge_groups.mrc",
         "section_order.mrc", "raw_dtypes.mrc", "minor_3_unknown_fields.mrc", "no_sections.mrc", "widening_stubs.mrc"]
FILES = {n: (VECTORS / n).read_bytes() for n in BASES}


def reference(data: bytes):
    try:
        from_bytes(data, max_decoded_bytes=None)  # the format's rules only, not this reader's own limits
    except MrcError as e:
        return e.code, e.where
    return None


@pytest.mark.parametrize("name", sorted(MANIFEST["valid"]) + sorted(MANIFEST["invalid"]))
def test_vectors(name):
    expected = None if name in MANIFEST["valid"] else (MANIFEST["invalid"][name]["code"], MANIFEST["invalid"][name]["where"])
    assert check((VECTORS / name).read_bytes()) == expected


def _paths(obj, prefix=()):
    """Every place in a header tree: (path tuple) for each map entry and array element."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


EDGE_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 31, 32, 33, 255, 256, 257, 1024, 1025, 4095, 4096, 4097, 65535, 65536, 65537,
             2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, -(2**63), 0x7FC00000, 0x7F800000, 0x1F80,
             0x5F80, 0x5F81, 0x1F7F, 0x8000, 0x3F80]
STRINGS = st.sampled_from(["", "x", "w0", "normal16", "coded", "raw", "affine", "contiguous", "indices", "graph",
                           "scales", "float32", "bool", "int64", "bfloat16", "é" * 513, "k" * 257])
SCALARS = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-(2**63), 2**64 - 1), st.booleans(), st.none(), STRINGS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.sampled_from(["kind", "a", "c", "x"]), inner,
                                                                        max_size=3)), max_leaves=6)


@st.composite
def header_edit(draw):
    name = draw(st.sampled_from(BASES))
    version, h, payloads = split_file(FILES[name])
    paths = [p for p in _paths(h) if p]
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths))
        parent = h
        try:
            for k in path[:-1]:
                parent = parent[k]
        except (KeyError, IndexError, TypeError):
            continue
        action = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        key = path[-1]
        if not isinstance(parent, (dict, list)) or isinstance(parent, dict) != isinstance(key, str):
            continue  # an earlier edit replaced this place
        if isinstance(parent, list) and key >= len(parent):
            continue
        if action == "set":
            old = parent[key] if not isinstance(parent, dict) or key in parent else None
            same = {int: st.one_of(st.sampled_from(EDGE_INTS), st.integers(-3, 3).map(lambda d, o=old: o + d)),
                    str: STRINGS, bool: st.booleans(), list: st.lists(SCALARS, max_size=9)}.get(type(old))
            parent[key] = draw(same if same is not None and draw(st.integers(0, 4)) else VALUES)
        elif action == "delete" and isinstance(parent, dict):
            parent.pop(key, None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["note", "scales", "graph_size", "a", "kind"]))] = draw(VALUES)
        elif action == "add" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[0]) if parent and draw(st.booleans()) else draw(VALUES))
    minor = draw(st.sampled_from([version[1], 0, 1, 2]))
    try:
        return assemble(h, payloads, (1, minor), fix=draw(st.booleans()))
    except (TypeError, ValueError, KeyError, AttributeError):  # an edit the layout helper cannot lay out
        return FILES[name]


@st.composite
def byte_edit(draw):
    name = draw(st.sampled_from(BASES))
    data = bytearray(FILES[name])
    version, h, payloads = split_file(bytes(data))
    region = draw(st.sampled_from(["anywhere", "header", "section", "graph"]))
    hlen = struct.unpack_from("<I", data, 12)[0]
    if region in ("section", "graph") and h["sections"]:
        graph = region == "graph" and h["graph"] is not None
        si = h["graph"] if graph else draw(st.integers(0, len(h["sections"]) - 1))
        p = bytearray(payloads[si])
        if p:
            for _ in range(draw(st.integers(1, 3))):
                i = draw(st.integers(0, len(p) - 1))
                p[i] = draw(st.integers(0, 255))
        if draw(st.booleans()) and len(p) > 1:
            p = p[:draw(st.integers(0, len(p) - 1))]
        payloads[si] = bytes(p)
        return assemble(h, payloads, version)  # section CRCs right: the payload rules are reached
    lo, hi = (24, 24 + hlen) if region == "header" else (0, len(data))
    for _ in range(draw(st.integers(1, 3))):
        data[draw(st.integers(lo, hi - 1))] = draw(st.integers(0, 255))
    if region == "header":
        struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[24:24 + hlen])))
    return bytes(data)


@SETTINGS
@given(header_edit())
def test_header_edits_agree(data):
    assert check(data) == reference(data)


@SETTINGS
@given(byte_edit())
def test_byte_edits_agree(data):
    assert check(data) == reference(data)


def _nested_graph(depth: int) -> bytes:
    """A ModelProto whose messages nest `depth` deep (ModelProto = 1): graph, node, attribute, graph, ..."""
    def ld(num: int, payload: bytes) -> bytes:
        key, n = (num << 3) | 2, len(payload)
        return bytes([key]) + (bytes([n]) if n < 128 else bytes([(n & 0x7F) | 0x80, n >> 7])) + payload

    chain = ["G", "N", "A"] * depth
    payload = b""
    for i in range(depth - 2, -1, -1):
        parent = chain[i - 1] if i else "M"
        payload = ld({("M", "G"): 7, ("G", "N"): 1, ("N", "A"): 5, ("A", "G"): 6}[(parent, chain[i])], payload)
    return payload


@pytest.mark.parametrize("depth,ok", [(101, True), (102, False)])
def test_protobuf_nesting_limit(depth, ok):
    """SPEC.md 7.6 rule 1: at most 100 levels below the ModelProto, in both readers."""
    from make_vectors import graph_file

    data = graph_file(_nested_graph(depth))
    expected = None if ok else ("graph", "sections[1]")
    assert reference(data) == expected
    assert check(data) == expected


GRAPH_BASES = ["graph_stubs.mrc", "mlp_graph.mrc", "section_order.mrc", "graph_deflate.mrc"]


@st.composite
def graph_edit(draw):
    """A semantic edit of the stored ONNX model (names, stubs, data, external data, inputs), re-stored
    with every CRC right, at the file's minor or at minor 0/1."""
    import onnx
    from onnx import TensorProto, helper

    from mrcformat.onnx_graphs import all_graphs

    name = draw(st.sampled_from(GRAPH_BASES))
    version, h, payloads = split_file(FILES[name])
    raw = payloads[h["graph"]]
    model = onnx.ModelProto.FromString(zlib.decompress(raw) if "graph_size" in h else raw)
    graphs = list(all_graphs(model.graph))
    files = [t["name"] for t in h["tensors"]]
    for _ in range(draw(st.integers(1, 2))):
        g = draw(st.sampled_from(graphs))
        action = draw(st.sampled_from(["rename-init", "data", "dims", "dtype", "sparse", "constant", "input",
                                       "external", "attr", "drop-graph", "drop-node"]))
        inits, nodes = list(g.initializer), list(g.node)
        if action == "rename-init" and inits:
            draw(st.sampled_from(inits)).name = draw(st.sampled_from(files + ["other"]))
        elif action == "data" and inits:
            draw(st.sampled_from(inits)).raw_data = b"\0" * 4
        elif action == "dims" and inits:
            draw(st.sampled_from(inits)).dims.append(1)
        elif action == "dtype" and inits:
            draw(st.sampled_from(inits)).data_type = draw(st.sampled_from([1, 2, 7, 16]))
        elif action == "sparse":
            values = helper.make_tensor(draw(st.sampled_from(files + ["s"])), TensorProto.FLOAT, [1], [1.0])
            g.sparse_initializer.append(helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [1], [0]), [4]))
        elif action == "constant":
            value = TensorProto(data_type=TensorProto.FLOAT, dims=draw(st.sampled_from([[4], [2, 3], [3, 3], [3]])))
            g.node.insert(0, helper.make_node("Constant", [], [draw(st.sampled_from(files))], value=value))
        elif action == "input" and nodes:
            node = draw(st.sampled_from(nodes))
            if len(node.input):
                node.input[0] = draw(st.sampled_from(files + ["nowhere", ""]))
        elif action == "external" and inits:
            t = draw(st.sampled_from(inits))
            t.data_location = TensorProto.EXTERNAL
        elif action == "attr" and nodes:
            node = draw(st.sampled_from(nodes))
            if node.op_type == "Constant":
                node.attribute.append(helper.make_attribute("value_float", 1.0))
        elif action == "drop-graph":
            model.ClearField("graph")
        elif action == "drop-node" and nodes:
            g.node.remove(draw(st.sampled_from(nodes)))
    out = model.SerializeToString()
    payloads[h["graph"]] = zlib.compress(out, 9) if "graph_size" in h else out
    if "graph_size" in h:
        h["graph_size"] = max(len(out), 1)
    minor = draw(st.sampled_from([version[1], 0, 1]))
    return assemble(h, payloads, (1, minor))


@SETTINGS
@given(graph_edit())
def test_graph_edits_agree(data):
    assert check(data) == reference(data)
