"""Seeded mutations of valid `.mrc` files, and every loader run on each (issue 15, item 5).

Shared by the CI campaign (tests/test_fuzz.py, about a minute) and the long one (bench/fuzz_campaign.py).
One integer seed gives one mutated file, so any finding is reproduced by its seed alone.

Kinds of damage, chosen per seed:
* header-bytes: byte edits of the msgpack header, the preamble's length and CRC fixed after the edit;
* header-tree: a field of the decoded header changed, deleted, added or copied, sections' offsets,
  lengths and CRCs fixed (so the damage reaches the schema and semantic checks);
* section-bytes: byte edits of one section (indices, raw data, scales, graph), its CRC fixed;
* onnx: the stored graph's protobuf edited (nodes dropped, duplicated or reordered; inputs and outputs
  renamed; opset, domain, op type, attributes, shapes and types changed; constant bombs added; stubs
  altered), then written as a file whose header and CRCs are valid, so only the graph is wrong.

`run_loaders` puts one file through `mrcformat.load`, `validate_file`, `mrcformat_runtime.ort.session`,
the two-step and the self-decoding exports opened in onnxruntime, `load_state_dict` and `load_module`,
and returns each one's outcome: "ok", an error code, or (a finding) "FOREIGN <class>: <message>" for an exception outside
mrcformat.errors.
"""
from __future__ import annotations

import copy
import os
import random
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np

import mrcformat as m
from mrcformat.errors import MrcError

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent / "spec"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from strategies import make_group  # noqa: E402
from test_corrupt import BASE, rebuild, split  # noqa: E402

KINDS = ("header-bytes", "header-tree", "section-bytes", "onnx", "onnx")  # graphs get two shares
LOADERS = ("load", "validate", "session", "two_step", "self_decoding", "load_state_dict", "load_module")
FUZZ_BUDGET = 64 << 20  # memory budget of every load in the campaign: bombs are refused, not allocated

SPECIAL_INTS = [0, 1, -1, 2, 3, 7, 8, 16, 31, 32, 33, 64, 255, 256, 4095, 4096, 4097, 65535, 65536, 2**20, 2**24,
                2**28, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, -2**63, 2**64 - 1]
SPECIAL_STRS = ["", "coded", "raw", "indices", "graph", "scales", "contiguous", "affine", "normal16", "float32",
                "bfloat16", "int64", "bool", "kind", "a", "c", "w", "x", "y", "\u00e9", "a" * 300]
OP_TYPES = ["Identity", "Relu", "Conv", "MaxPool", "AveragePool", "Gemm", "MatMul", "Add", "Mul", "Reshape", "If",
            "Loop", "Scan", "Constant", "ConstantOfShape", "Expand", "Tile", "Resize", "Flatten", "Transpose",
            "Concat", "Split", "Slice", "Gather", "Unsqueeze", "Squeeze", "Cast", "Softmax", "Pad", "LSTM", "Range",
            "BatchNormalization", "Einsum", "TopK", "NonZero", "Frobnicate"]
ATTR_NAMES = ["kernel_shape", "pads", "strides", "dilations", "axis", "axes", "perm", "transA", "transB", "alpha",
              "group", "value", "to", "keepdims", "ceil_mode", "auto_pad", "body", "then_branch", "mode"]


# ---------------------------------------------------------------------------------------------- bases


def _cnn() -> m.Container:
    """x[1,1,8,8] -> Conv(w1, b1) -> Relu -> MaxPool 2 -> Flatten -> Gemm(w2, b2): coded and raw tensors."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    groups = [make_group(36, block_size=6, index_bits=5, rng=rng, sigma=0.3),
              make_group(360, block_size=24, index_bits=7, rng=rng, sigma=0.1)]
    tensors = [m.Tensor("w1", (4, 1, 3, 3), "coded", group=0),
               m.Tensor("b1", (4,), "raw", dtype="float32", data=rng.normal(size=4).astype("<f4")),
               m.Tensor("w2", (36, 10), "coded", group=1),
               m.Tensor("b2", (10,), "raw", dtype="float32", data=rng.normal(size=10).astype("<f4"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"])]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    return m.Container(seed=5, groups=groups, tensors=tensors, graph=model.SerializeToString(),
                       metadata={"model": "fuzz cnn"})


def _stubs() -> m.Container:
    from make_vectors import stubs_container

    return stubs_container(np.random.default_rng(3))


def _widening() -> m.Container:
    from make_vectors import widening_container

    return widening_container()


def _mixed() -> m.Container:
    from make_vectors import mixed_stubs_container

    return mixed_stubs_container(np.random.default_rng(13))


def _hashed_identity() -> m.Container:
    """Hashing, an affine layout and an int64 raw tensor, read through Identity/Reshape."""
    from onnx import TensorProto, helper

    from mrcformat.layout import Layout

    rng = np.random.default_rng(9)
    g0 = make_group(40, block_size=8, index_bits=6, rng=rng, hashing=True)
    g1 = make_group(30, block_size=10, index_bits=4, rng=rng, layout=Layout("affine", 7, 3))
    tensors = [m.Tensor("h", (10, 12), "coded", group=0), m.Tensor("a", (30,), "coded", group=1),
               m.Tensor("shape", (2,), "raw", dtype="int64", data=np.array([5, 6], "<i8"))]
    nodes = [helper.make_node("Reshape", ["a", "shape"], ["ra"]), helper.make_node("Identity", ["h"], ["yh"])]
    g = helper.make_graph(nodes, "hashed", [], [helper.make_tensor_value_info("ra", TensorProto.FLOAT, [5, 6]),
                                                helper.make_tensor_value_info("yh", TensorProto.FLOAT, [10, 12])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m.Container(seed=2**63 + 1, groups=[g0, g1], tensors=tensors, graph=model.SerializeToString())


_BASES: list[tuple[str, bytes]] | None = None


def bases() -> list[tuple[str, bytes]]:
    """The valid files every mutation starts from (built once per process)."""
    global _BASES
    if _BASES is None:
        _BASES = [("cnn", m.to_bytes(_cnn())), ("stubs-1.1", m.to_bytes(_stubs())),
                  ("hashed", m.to_bytes(_hashed_identity())), ("no-graph", BASE),
                  ("widening-1.2", m.to_bytes(_widening())), ("mixed-1.2", m.to_bytes(_mixed()))]
    return _BASES


# ---------------------------------------------------------------------------------------------- header


def _byte_edits(r: random.Random, data: bytes, max_ops: int = 4) -> bytes:
    b = bytearray(data)
    for _ in range(r.randint(1, max_ops)):
        p = r.randrange(len(b) + 1)
        op = r.choice(["flip", "set", "truncate", "insert", "delete"])
        if op == "flip" and p < len(b):
            b[p] ^= r.randrange(1, 256)
        elif op == "set" and p < len(b):
            b[p] = r.choice([0, 1, 0x7F, 0x80, 0xC0, 0xC1, 0xCE, 0xCF, 0xD3, 0xDC, 0xDE, 0xFF])
        elif op == "truncate" and r.random() < 0.2:
            del b[p:]
        elif op == "insert":
            b[p:p] = bytes(r.randrange(256) for _ in range(r.randint(1, 9)))
        elif op == "delete":
            del b[p:p + r.randint(1, 16)]
    return bytes(b)


def mutate_header_bytes(r: random.Random, data: bytes) -> bytes:
    hlen = struct.unpack_from("<I", data, 12)[0]
    header = _byte_edits(r, data[24:24 + hlen], 3)
    if r.random() < 0.5:  # same length: the sections stay where the header says they are
        header = (header + b"\0" * hlen)[:hlen]
    pre = data[:12] + struct.pack("<II", len(header), zlib.crc32(header)) + data[20:24]
    return pre + header + data[24 + hlen:]


def _random_value(r: random.Random, depth: int = 0):
    c = r.randrange(9 if depth < 2 else 7)
    if c == 0:
        return None
    if c == 1:
        return r.random() < 0.5
    if c == 2:
        return r.choice(SPECIAL_INTS)
    if c == 3:
        return r.randint(-2**63, 2**64 - 1)
    if c == 4:
        return r.choice([0.5, -0.0, float("nan"), float("inf"), 1e300])
    if c == 5:
        return r.choice(SPECIAL_STRS)
    if c == 6:
        return bytes(r.randrange(256) for _ in range(r.randint(0, 3)))
    if c == 7:
        return [_random_value(r, depth + 1) for _ in range(r.randint(0, 3))]
    return {r.choice(SPECIAL_STRS): _random_value(r, depth + 1) for _ in range(r.randint(0, 3))}


def _locations(obj) -> list[tuple[object, object]]:
    out, stack = [], [obj]
    while stack:
        o = stack.pop()
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            out.append((o, k))
            stack.append(v)
    return out


def _tweak(r: random.Random, v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return r.choice([r.choice(SPECIAL_INTS), min(max(v + r.randint(-3, 3), -2**63), 2**64 - 1),
                         r.randrange(2**32)])
    if isinstance(v, str):
        return r.choice([r.choice(SPECIAL_STRS), v + r.choice(SPECIAL_STRS)[:3]])
    if isinstance(v, list) and v:
        return r.choice([v[:-1], v + v[-1:], [v[-1]] + v, list(reversed(v))])
    if isinstance(v, dict):
        return r.choice([{}, dict(reversed(list(v.items())))])
    return _random_value(r)


def mutate_header_tree(r: random.Random, data: bytes) -> bytes:
    h, secs = split(data)
    h = copy.deepcopy(h)
    for _ in range(r.randint(1, 3)):
        locs = _locations(h)
        action = r.choice(["tweak", "tweak", "tweak", "replace", "delete", "add", "copy"]) if locs else "add"
        if action == "add":
            targets = [h] + [p[k] for p, k in locs if isinstance(p[k], (dict, list))]
            t = r.choice(targets)
            if isinstance(t, dict):
                t[r.choice(SPECIAL_STRS)] = _random_value(r)
            else:
                t.insert(r.randint(0, len(t)), _random_value(r))
            continue
        parent, key = r.choice(locs)
        if action == "tweak":
            parent[key] = _tweak(r, parent[key])
        elif action == "replace":
            parent[key] = _random_value(r)
        elif action == "delete":
            del parent[key]
        else:
            sp, sk = r.choice(locs)
            parent[key] = copy.deepcopy(sp[sk])
    version = r.choice([(1, 0), (1, 1), (1, 1), (1, 2), (1, 3)])
    try:
        return rebuild(h, secs, fix=True, version=version)
    except (TypeError, ValueError, OverflowError, msgpack.PackException, RecursionError):
        return rebuild(split(data)[0], secs, fix=True, version=version)  # unpackable: the version edit only


def mutate_section_bytes(r: random.Random, data: bytes) -> bytes:
    h, secs = split(data)
    if not secs:
        return mutate_header_bytes(r, data)
    i = r.randrange(len(secs))
    secs = list(secs)
    secs[i] = _byte_edits(r, secs[i], 4)
    return rebuild(h, secs, fix=True, version=struct.unpack_from("<HH", data, 8))


# ---------------------------------------------------------------------------------------------- onnx


def _graphs(model) -> list:
    from mrcformat.onnx_graphs import all_graphs

    return list(all_graphs(model.graph))


def _names(model) -> list[str]:
    names = set()
    for g in _graphs(model):
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
        names.update(i.name for i in g.input)
        names.update(o.name for o in g.output)
        names.update(t.name for t in g.initializer)
    return sorted(names) + ["", "ghost", "x", "w"]


def _mutate_onnx_once(r: random.Random, model, c: m.Container) -> None:
    from onnx import TensorProto, helper

    graphs = _graphs(model)
    g = r.choice(graphs)
    nodes = g.node
    op = r.choice(["drop", "dup", "swap", "rename-in", "rename-out", "opset", "domain", "op-type", "attr-drop",
                   "attr-int", "attr-add", "attr-type", "shape", "elem-type", "bomb", "graph-io", "stub", "ir"])
    if op == "drop" and len(nodes):
        del nodes[r.randrange(len(nodes))]
    elif op == "dup" and len(nodes):
        n = nodes[r.randrange(len(nodes))]
        nodes.insert(r.randint(0, len(nodes)), copy.deepcopy(n))
    elif op == "swap" and len(nodes) > 1:
        i, j = r.sample(range(len(nodes)), 2)
        a, b = copy.deepcopy(nodes[i]), copy.deepcopy(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    elif op in ("rename-in", "rename-out") and len(nodes):
        n = nodes[r.randrange(len(nodes))]
        field = n.input if op == "rename-in" else n.output
        names = _names(model)
        if len(field) and r.random() < 0.8:
            field[r.randrange(len(field))] = r.choice(names)
        else:
            field.append(r.choice(names))
    elif op == "opset":
        imp = model.opset_import[r.randrange(len(model.opset_import))] if len(model.opset_import) else None
        if imp is not None and r.random() < 0.7:
            imp.version = r.choice([0, 1, 6, 7, 9, 11, 13, 17, 18, 21, 22, 23, 1000, -1])
        else:
            model.opset_import.append(helper.make_opsetid(r.choice(["", "ai.onnx.ml", "com.microsoft", "nowhere"]),
                                                          r.choice([1, 18, 1000])))
    elif op == "domain" and len(nodes):
        nodes[r.randrange(len(nodes))].domain = r.choice(["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "nowhere"])
    elif op == "op-type" and len(nodes):
        nodes[r.randrange(len(nodes))].op_type = r.choice(OP_TYPES)
    elif op.startswith("attr") and len(nodes):
        n = nodes[r.randrange(len(nodes))]
        attrs = n.attribute
        if op == "attr-drop" and len(attrs):
            del attrs[r.randrange(len(attrs))]
        elif op == "attr-int" and len(attrs):
            a = attrs[r.randrange(len(attrs))]
            if len(a.ints):
                a.ints[r.randrange(len(a.ints))] = r.choice(SPECIAL_INTS[:-1] + [-2, -3])
            elif r.random() < 0.5:
                a.i = r.choice(SPECIAL_INTS[:-1])
            else:
                a.ints.extend([r.choice([0, 1, 2, 3, -1]) for _ in range(r.randint(0, 5))])
        elif op == "attr-add":
            name = r.choice(ATTR_NAMES)
            if name not in {a.name for a in attrs}:
                value = r.choice([r.choice([0, 1, 2, -1, 2**31]), [r.choice([0, 1, 2, 3, -1]) for _ in range(r.randint(0, 6))],
                                  r.choice(["NOTSET", "SAME_UPPER", "VALID", "bogus"]), 0.5])
                attrs.append(helper.make_attribute(name, value, attr_type=None if value != [] else 7))
        elif op == "attr-type" and len(attrs):
            attrs[r.randrange(len(attrs))].type = r.choice(list(range(0, 15)))
    elif op == "shape":
        vis = list(g.input) + list(g.output) + list(g.value_info)
        if vis:
            vi = r.choice(vis)
            dims = vi.type.tensor_type.shape.dim
            if len(dims) and r.random() < 0.7:
                d = dims[r.randrange(len(dims))]
                if r.random() < 0.8:
                    d.dim_value = r.choice([0, 1, 2, 3, 5, 7, 2**31, 2**40])
                else:
                    d.dim_param = r.choice(["N", "", "batch"])
            elif r.random() < 0.5:
                vi.type.tensor_type.shape.dim.add().dim_value = r.choice([1, 2, 3])
            else:
                vi.type.tensor_type.ClearField("shape")
    elif op == "elem-type":
        vis = list(g.input) + list(g.output)
        if vis:
            r.choice(vis).type.tensor_type.elem_type = r.choice([0, 1, 2, 6, 7, 9, 10, 11, 16, 17, 40])
    elif op == "bomb":  # a small graph that asks for a huge constant at load or run time
        n = r.choice([2**10, 2**20, 2**24, 2**26, 2**28, 2**30, 2**34])
        tag = f"bomb{r.randrange(1000)}"
        g.initializer.append(helper.make_tensor(f"{tag}_shape", TensorProto.INT64, [1], [n]))
        kind = r.choice(["ConstantOfShape", "Expand", "Tile", "Range"])
        if kind == "ConstantOfShape":
            nodes.append(helper.make_node("ConstantOfShape", [f"{tag}_shape"], [tag]))
        elif kind == "Expand":
            g.initializer.append(helper.make_tensor(f"{tag}_one", TensorProto.FLOAT, [1], [1.0]))
            nodes.append(helper.make_node("Expand", [f"{tag}_one", f"{tag}_shape"], [tag]))
        elif kind == "Tile":
            g.initializer.append(helper.make_tensor(f"{tag}_one", TensorProto.FLOAT, [1], [1.0]))
            nodes.append(helper.make_node("Tile", [f"{tag}_one", f"{tag}_shape"], [tag]))
        else:
            g.initializer.append(helper.make_tensor(f"{tag}_s", TensorProto.INT64, [], [0]))
            g.initializer.append(helper.make_tensor(f"{tag}_d", TensorProto.INT64, [], [1]))
            g.initializer.append(helper.make_tensor(f"{tag}_e", TensorProto.INT64, [], [n]))
            nodes.append(helper.make_node("Range", [f"{tag}_s", f"{tag}_e", f"{tag}_d"], [tag]))
        if r.random() < 0.7:
            g.output.append(helper.make_tensor_value_info(tag, TensorProto.FLOAT, None))
    elif op == "graph-io":
        if len(g.output) and r.random() < 0.4:
            del g.output[r.randrange(len(g.output))]
        elif len(g.input) and r.random() < 0.4:
            del g.input[r.randrange(len(g.input))]
        else:
            g.input.append(helper.make_tensor_value_info(r.choice(_names(model)) or "new", TensorProto.FLOAT, [2]))
    elif op == "stub":  # the data-less tensors that file tensors fill (1.1): dims, type, data
        stubs = [t for gg in graphs for t in gg.initializer] + [
            a.t for gg in graphs for n in gg.node for a in n.attribute if a.HasField("t")]
        if stubs:
            t = r.choice(stubs)
            choice = r.randrange(4)
            if choice == 0 and len(t.dims):
                t.dims[r.randrange(len(t.dims))] = r.choice([0, 1, 3, 4, 2**31])
            elif choice == 1:
                t.data_type = r.choice([0, 1, 2, 7, 10, 16])
            elif choice == 2:
                t.float_data.extend([0.0] * r.randint(1, 4))
            else:
                t.name = r.choice(_names(model) + [tt.name for tt in c.tensors])
    elif op == "ir":
        model.ir_version = r.choice([0, 1, 3, 4, 7, 8, 9, 10, 11, 12, 100])


def mutate_onnx(r: random.Random, data: bytes) -> bytes:
    import onnx

    from spec_helpers import unchecked_bytes

    c = m.from_bytes(data)
    if c.graph is None:
        return mutate_header_tree(r, data)
    model = onnx.ModelProto.FromString(bytes(c.graph))
    for _ in range(r.randint(1, 3)):
        _mutate_onnx_once(r, model, c)
    try:
        c.graph = model.SerializeToString()
    except Exception:  # noqa: BLE001  # an edit protobuf will not serialise: the graph's bytes garbled instead
        c.graph = _byte_edits(r, bytes(c.graph), 3)
    return unchecked_bytes(c)


MUTATORS = {"header-bytes": mutate_header_bytes, "header-tree": mutate_header_tree,
            "section-bytes": mutate_section_bytes, "onnx": mutate_onnx}


def mutated(seed: int) -> tuple[str, str, bytes]:
    """(base name, kind, bytes) of the file for `seed`."""
    r = random.Random(seed)
    name, data = r.choice(bases())
    kind = r.choice(KINDS)
    return name, kind, MUTATORS[kind](r, data)


# ---------------------------------------------------------------------------------------------- loaders


def _outcome(fn) -> str:
    try:
        fn()
    except MrcError as e:
        return e.code
    except Exception as e:  # noqa: BLE001  # a finding: a class outside mrcformat.errors
        return f"FOREIGN {type(e).__name__}: {str(e)[:200]}"
    return "ok"


def _quiet_session(model, optimise: bool):
    """onnxruntime.InferenceSession with logging off, CPU only, and no provider fallback (which prints a
    banner on stdout); optimisations off when `optimise` is False (a decoder run once)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"], enable_fallback=0)


def _two_step_outcome(path: Path, budget: int, session_outcome: str | None) -> str:
    """`export_two_step`, then both files opened in onnxruntime as a user would (decoder: optimisations
    off, run once; network). A graph without coded tensors is refused with a ValueError ("no-coded"); an
    onnxruntime refusal is expected only where onnxruntime refuses the plain export too (graph-runtime):
    the two-step form must not break a graph that runs."""
    from mrcformat.errors import RuntimeGraphError
    from mrcformat_runtime.load_budget import check_export_budget
    from mrcformat_runtime.onnx_export import export_two_step

    with tempfile.TemporaryDirectory() as d:
        weights, network = Path(d) / "w.onnx", Path(d) / "n.onnx"
        try:
            c = m.load(path, max_decoded_bytes=budget)
            check_export_budget(c, path.stat().st_size, budget, two_step=True)
            export_two_step(c, weights, network)
        except MrcError as e:
            return e.code
        except Exception as e:  # noqa: BLE001  # a finding, as in _outcome, but for the documented refusal
            if isinstance(e, ValueError) and "reads no coded tensor" in str(e):
                return "no-coded"
            return f"FOREIGN {type(e).__name__}: {str(e)[:200]}"
        try:
            _quiet_session(str(weights), optimise=False).run(None, {})
            _quiet_session(str(network), optimise=True)
        except Exception as e:  # noqa: BLE001
            if session_outcome == RuntimeGraphError.code or _plain_export_refused(path, budget):
                return RuntimeGraphError.code
            return f"FOREIGN two-step refused by onnxruntime, the plain export not: {str(e)[:200]}"
    return "ok"


def _self_decoding_outcome(path: Path, budget: int, session_outcome: str | None) -> str:
    """The self-decoding export opened in onnxruntime with default options (its decoder folded), as a user
    ships it. A refusal is expected only where onnxruntime refuses the plain export too (graph-runtime)."""
    from mrcformat.errors import RuntimeGraphError
    from mrcformat_runtime.load_budget import check_export_budget
    from mrcformat_runtime.onnx_export import to_onnx_model

    try:
        c = m.load(path, max_decoded_bytes=budget)
        check_export_budget(c, path.stat().st_size, budget, self_decoding=True)
        model = to_onnx_model(c, self_decoding=True).SerializeToString()
    except MrcError as e:
        return e.code
    except Exception as e:  # noqa: BLE001  # a finding, as in _outcome
        return f"FOREIGN {type(e).__name__}: {str(e)[:200]}"
    try:
        _quiet_session(model, optimise=True)
    except Exception as e:  # noqa: BLE001
        if session_outcome == RuntimeGraphError.code or _plain_export_refused(path, budget, optimise=True):
            return RuntimeGraphError.code
        return f"FOREIGN self-decoding export refused by onnxruntime, the plain export not: {str(e)[:200]}"
    return "ok"


def _plain_export_refused(path: Path, budget: int, optimise: bool = False) -> bool:
    """Whether onnxruntime refuses the plain export of the file too (the graph itself is wrong), opened
    with the options of the form it is compared with (the self-decoding model: default options)."""
    from mrcformat_runtime.onnx_export import to_onnx_model

    try:
        _quiet_session(to_onnx_model(m.load(path, max_decoded_bytes=budget)).SerializeToString(), optimise=optimise)
    except Exception:  # noqa: BLE001
        return True
    return False


def run_loaders(path: Path, loaders=LOADERS, budget: int = FUZZ_BUDGET) -> dict[str, str]:
    """Each loader's outcome on the file at `path` (see the module docstring); every load with `budget`."""
    out: dict[str, str] = {}
    for name in loaders:
        if name == "load":
            out[name] = _outcome(lambda: m.load(path, max_decoded_bytes=budget))
        elif name == "validate":
            problems = m.validate_file(path, max_decoded_bytes=budget)
            codes = [p.code for p in problems]
            if "internal-error" in codes:
                out[name] = "FOREIGN internal-error: " + str(problems[codes.index("internal-error")])[:200]
            elif "load" in out and (out["load"] == "ok") != (not problems):
                out[name] = f"FOREIGN disagreement: load {out['load']}, validate {codes[:3]}"
            else:
                out[name] = codes[0] if codes else "ok"
        elif name == "session":
            from mrcformat_runtime import ort as mrc_ort

            out[name] = _outcome(lambda: mrc_ort.session(path, max_decoded_bytes=budget))
        elif name == "two_step":
            out[name] = _two_step_outcome(path, budget, out.get("session"))
        elif name == "self_decoding":
            out[name] = _self_decoding_outcome(path, budget, out.get("session"))
        elif name == "load_state_dict":
            from mrcformat_runtime.torch_load import load_state_dict

            out[name] = _outcome(lambda: load_state_dict(path, max_decoded_bytes=budget))
        elif name == "load_module":
            from mrcformat_runtime.torch_load import load_module

            out[name] = _outcome(lambda: load_module(path, max_decoded_bytes=budget))
    return out


def fuzz_one(seed: int, folder: Path, loaders=LOADERS, budget: int = FUZZ_BUDGET) -> dict:
    """Mutate, write, load: {'seed', 'base', 'kind', 'seconds', 'outcomes', 'stdout'}. `stdout` is what
    the loads printed (must be empty)."""
    base, kind, data = mutated(seed)
    path = folder / f"fuzz-{seed}.mrc"
    path.write_bytes(data)
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as capture:  # file descriptor 1 itself: C++ prints are caught too
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(capture.fileno(), 1)
        try:
            outcomes = run_loaders(path, loaders, budget)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        printed = capture.read(4096).decode("utf-8", "replace")
    seconds = time.monotonic() - t0
    path.unlink()
    return {"seed": seed, "base": base, "kind": kind, "seconds": seconds, "outcomes": outcomes, "stdout": printed}
