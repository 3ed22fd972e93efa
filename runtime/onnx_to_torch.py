"""An ONNX interpreter as a torch.nn.Module: runs an ONNX graph (a `.mrc` file's architecture graph, or
any ONNX model) in torch, so it can be loaded, differentiated and fine-tuned.

`OnnxModule(model, tensors)` takes an ONNX ModelProto (or its bytes, or a path) and optional tensors by
name that fill (or replace) initializers and Constant outputs anywhere in the graph (a `.mrc` file's
decoded tensors fill its weight stubs). Nodes run in order with torch ops, subgraphs (If/Loop/Scan)
included; the operator implementations live in `mrcformat_runtime.onnx_ops`. No code generation, no
tracing: shapes are read at run time, so every input shape the graph accepts works.

Building checks the whole graph first: every unsupported operator or operator form, at any depth, is
listed in one `UnsupportedOnnxError` (a NotImplementedError); a missing required attribute or an
undefined input name is a `GraphError` naming the node.

Weights: the given tensors and every floating-point initializer or Constant-node value (exporters put
weights in either; silero-vad's are Constant nodes inside If branches) become parameters
(requires_grad=False; call `requires_grad_()` to train them), except values used only as operator
settings (Resize scales, Clip bounds, ...), which stay buffers like integer tensors. Parameter names are
the ONNX names with '.' replaced by '_' (`onnx_parameters()` maps the ONNX names themselves). Constant
shape arithmetic (nodes whose inputs are all constant buffers) is evaluated once when the module is built.
"""
from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Iterator

import torch
from torch import nn

from mrcformat.errors import GraphError

from .onnx_ops import MAX_OUTPUTS, SUPPORTED_OPS, UnsupportedOnnxError, onnx_dtype_to_torch
from .onnx_ops.common import Unsupported, node_attrs, tensor_from_proto

__all__ = ["SUPPORTED_OPS", "OnnxModule", "UnsupportedOnnxError", "onnx_dtype_to_torch"]

# (op type, input index) where a floating-point tensor is a setting, not a weight: kept as a buffer
_SETTING_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1), ("Clip", 1), ("Clip", 2), ("Pad", 2),
                   ("Dropout", 1), ("Range", 0), ("Range", 1), ("Range", 2), ("ConstantOfShape", 0),
                   ("Reshape", 1), ("Expand", 1), ("Tile", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3),
                   ("Slice", 4), ("Squeeze", 1), ("Unsqueeze", 1), ("Split", 1), ("TopK", 1), ("CumSum", 1),
                   ("OneHot", 1), ("OneHot", 2), ("Trilu", 1), ("Loop", 0), ("Loop", 1), ("If", 0)}


def _constant_value(a: dict) -> torch.Tensor:
    if "value" in a:
        return tensor_from_proto(a["value"])
    for key, dt in (("value_float", torch.float32), ("value_floats", torch.float32),
                    ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dt)
    raise Unsupported(f"Constant with attribute {sorted(a)}")


def _reads(node) -> set[str]:
    """Every value name a node reads, its subgraphs' reads (outer-scope values) included."""
    names = set(node.input)
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == 5 else list(attr.graphs) if attr.type == 10 else []):
            for n in sub.node:
                names |= _reads(n)
            names |= {o.name for o in sub.output}
    names.discard("")
    return names


def _outer_reads(g) -> set[str]:
    """Names a subgraph (nested ones included) reads without defining them: its outer-scope values."""
    reads: set[str] = set()
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}

    def walk(graph):
        defined.update(i.name for i in graph.input)
        defined.update(t.name for t in graph.initializer)
        for n in graph.node:
            reads.update(n.input)
            defined.update(n.output)
            for attr in n.attribute:
                for sub in ([attr.g] if attr.type == 5 else list(attr.graphs) if attr.type == 10 else []):
                    walk(sub)
        reads.update(o.name for o in graph.output)
    walk(g)
    return reads - defined - {""}


def _sorted_nodes(nodes: list, path: str) -> list:
    """The nodes in a topological order: as given when they already are (ONNX requires it; some
    writers do not comply, and onnxruntime sorts), else a stable topological sort."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[r] for r in _reads(n) if r in producer and producer[r] != i} for i, n in enumerate(nodes)]
    if all(d < i for i, ds in enumerate(deps) for d in ds):
        return nodes
    import heapq

    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    waiting = [len(ds) for ds in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if waiting[i]]
        raise GraphError(f"the graph has a cycle through nodes {stuck[:5]}", f"graph{path}.node")
    return [nodes[i] for i in order]


def _with_frees(steps: list, outputs: list[str]) -> list:
    """Steps with, for each, the values it produces or reads for the last time (graph outputs kept)."""
    last: dict[str, int] = {}
    produced: set[str] = set()
    for i, (_, _, outs, _, reads) in enumerate(steps):
        for n in reads:
            last[n] = i
        for n in outs:
            if n:
                produced.add(n)
                last.setdefault(n, i)
                last[n] = max(last[n], i)
    keep = set(outputs)
    frees: list[list[str]] = [[] for _ in steps]
    for n in produced - keep:
        frees[last[n]].append(n)
    return [(fn, ins, outs, scoped, frees[i]) for i, (fn, ins, outs, scoped, _) in enumerate(steps)]


_FOLD_MAX_ELEMENTS = 1 << 16  # constant results larger than this stay steps (no big tensors baked in)


def _fold_size(op_type: str, args: list) -> float:
    """Elements a size-making node would produce from its constant inputs, known before running it
    (Range, ConstantOfShape, Expand, Tile; 0 for other ops): a hostile graph's Range(0, 2**40) must not
    be allocated just to learn it is too big to fold (issue 15). inf when it cannot be told."""
    import math

    try:
        if op_type == "Range":
            start, limit, delta = (float(a.item()) for a in args[:3])
            return max(math.ceil((limit - start) / delta), 0) if delta else math.inf
        if op_type == "ConstantOfShape":
            return math.prod(int(d) for d in args[0].reshape(-1).tolist()) if args[0].numel() <= 64 else math.inf
        if op_type == "Expand":
            shape = [int(d) for d in args[1].reshape(-1).tolist()] if args[1].numel() <= 64 else None
            return math.inf if shape is None else math.prod(torch.broadcast_shapes(tuple(args[0].shape), tuple(shape)))
        if op_type == "Tile":
            reps = [int(d) for d in args[1].reshape(-1).tolist()] if args[1].numel() <= 64 else None
            return math.inf if reps is None else args[0].numel() * math.prod(reps)
    except Exception:  # noqa: BLE001  # malformed inputs: not folded; the step reports it at run time
        return math.inf
    return 0


_STORE = "\x00store"  # env key of the module holding the weights (not a legal ONNX value name in practice)


class _Graph:
    """A compiled (sub)graph: its constants (name -> attribute of the weight store), its steps, its input
    and output names. `run(scope, inputs)` evaluates it in a scope that sees the enclosing values; the
    weight store is looked up in the scope at run time, so copies of the module (deepcopy,
    functional_call) use their own weights in subgraphs too."""

    def __init__(self, consts, inputs, outputs, steps):
        self.consts, self.inputs, self.outputs, self.steps = consts, inputs, outputs, steps

    def run(self, scope, inputs) -> list:
        local = {}
        store = scope[_STORE]
        params, buffers = store._parameters, store._buffers  # what functional_call swaps, read directly
        for name, key in self.consts:
            local[name] = params[key] if key in params else buffers[key]
        env = ChainMap(local, scope)
        for name, value in zip(self.inputs, inputs):
            env[name] = value
        for fn, ins, outs, scoped, frees in self.steps:
            args = [env[n] if n else None for n in ins]
            while args and args[-1] is None:
                args.pop()
            res = fn(env, *args) if scoped else fn(*args)
            if isinstance(res, tuple):
                for n, r in zip(outs, res):
                    if n:
                        env[n] = r
            else:
                env[outs[0]] = res
            for n in frees:  # values no later step reads: freed as onnxruntime does (peak memory)
                del env[n]
        return [env[n] for n in self.outputs]


class OnnxModule(nn.Module):
    """Runs an ONNX graph with torch ops; `tensors` (name -> tensor) fill or replace graph tensors.

    forward(*inputs) takes the graph inputs in order (those not supplied by `tensors` or initializers),
    or by name, and returns the output tensor, or a tuple if the graph has several outputs. The graph is
    an inference graph: BatchNormalization uses its running statistics and Dropout is the identity in
    train() mode too (fine-tuning keeps normalisation frozen).
    """

    def __init__(self, model, tensors: dict[str, torch.Tensor] | None = None):
        super().__init__()
        import onnx

        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        elif isinstance(model, (bytes, bytearray, memoryview)):
            model = onnx.ModelProto.FromString(bytes(model))
        if len(model.functions):  # model-local functions: their bodies inlined (onnx's own inliner)
            import onnx.inliner

            model = onnx.inliner.inline_local_functions(model)
        tensors = dict(tensors or {})
        self._problems: list[tuple[str, str, str, str]] = []
        self._opset = 1
        for imp in model.opset_import:  # other domains: their nodes are listed as unsupported
            if imp.domain in ("", "ai.onnx"):
                self._opset = imp.version
        self._names: dict[str, str] = {}   # ONNX name -> attribute name in self._weights
        self._weights = nn.Module()
        self._settings = self._setting_names(model.graph)
        # the given tensors first: they fill stubs anywhere, and stripped graphs read them by name
        self._tensors = {name: self._store(name, t, parameter=t.is_floating_point()) for name, t in tensors.items()}
        g = model.graph
        self._graph = self._compile(g, "", outer=set(), given=list(self._tensors.items()))
        del self._tensors, self._settings
        if self._problems:
            problems, self._problems = self._problems, []
            raise UnsupportedOnnxError(problems)
        supplied = {t.name for t in g.initializer} | set(tensors)
        self.input_names = [i.name for i in g.input if i.name not in supplied]
        self.output_names = [o.name for o in g.output]
        self._graph.inputs = self.input_names

    # ------------------------------------------------------------------ building
    @staticmethod
    def _setting_names(g) -> set[str]:
        """Names whose values reach only setting positions (Resize scales, Reshape shapes, ...), directly or
        through nodes whose outputs all do (a Concat of float scales feeding a Resize), anywhere in the model."""
        uses: dict[str, list[tuple[str, int, list[str]]]] = {}   # name -> (op type, input index, node outputs)
        data: set[str] = set()

        def walk(graph):
            for node in graph.node:
                sub_graphs = [a.g for a in node.attribute if a.type == 5] + \
                    [s for a in node.attribute if a.type == 10 for s in a.graphs]
                for i, n in enumerate(node.input):
                    uses.setdefault(n, []).append((node.op_type, i, [] if sub_graphs else list(node.output)))
                for sub in sub_graphs:
                    walk(sub)
                    data.update(_outer_reads(sub))                 # outer values read inside a subgraph
                    data.update(o.name for o in sub.output)      # a subgraph output is data
            data.update(o.name for o in graph.output)
        walk(g)
        settings: dict[str, bool] = {}

        def only_settings(name: str, depth: int = 0) -> bool:
            if name in settings:
                return settings[name]
            settings[name] = False  # cycles and deep chains count as data
            if name in data or name not in uses or depth > 64:
                return False
            ok = all((op, i) in _SETTING_INPUTS or (outs and all(only_settings(o, depth + 1) for o in outs if o))
                     for op, i, outs in uses[name])
            settings[name] = ok
            return ok
        return {n for n in uses if only_settings(n)}

    def _store(self, name: str, t: torch.Tensor, parameter: bool) -> str:
        base = name.replace(".", "_") or "tensor"
        key, k = base, 0
        while key in self._weights._parameters or key in self._weights._buffers or hasattr(self._weights, key):
            k += 1
            key = f"{base}_{k}"
        if parameter:
            self._weights.register_parameter(key, nn.Parameter(t, requires_grad=False))
        else:
            self._weights.register_buffer(key, t)
        self._names.setdefault(name, key)
        return key

    def _const(self, name: str, t: torch.Tensor | None) -> str:
        """An initializer's or Constant node's value in the store: floating-point ones are parameters
        (exporters put weights in either) unless used only as settings."""
        if name in self._tensors:  # a given (file) tensor fills a stub or replaces the value
            return self._tensors[name]
        return self._store(name, t, parameter=t.is_floating_point() and name not in self._settings)

    def _problem(self, path: str, node, why: str) -> None:
        op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        self._problems.append((path, node.name or (node.output[0] if node.output else ""), op, why))

    def _buffer_value(self, name: str, key: str, foldable: ChainMap) -> None:
        """Record a constant that is a buffer (not a parameter, not a given tensor) as foldable."""
        if name not in self._tensors and key in self._weights._buffers:
            foldable[name] = self._weights._buffers[key]

    def _fold(self, fn, node, foldable: ChainMap, consts: list) -> bool:
        """Evaluate a node whose inputs are all constant buffers now (shape arithmetic on constants,
        as onnxruntime folds it): its outputs become buffers and it is no step. False if not foldable."""
        if not all(n in foldable for n in node.input if n):
            return False
        args = [foldable[n] if n else None for n in node.input]
        while args and args[-1] is None:
            args.pop()
        if _fold_size(node.op_type, args) > _FOLD_MAX_ELEMENTS:
            return False
        try:
            with torch.no_grad():
                res = fn(*args)
        except (RuntimeError, ValueError, IndexError, TypeError, GraphError):
            return False  # left to run time, where the same error names its cause
        res = res if isinstance(res, tuple) else (res,)
        if not all(isinstance(r, torch.Tensor) and r.numel() <= _FOLD_MAX_ELEMENTS for r in res):
            return False
        for n, r in zip(node.output, res):
            if n:
                key = self._store(n, r.clone() if r._base is not None else r, parameter=False)
                consts.append((n, key))
                foldable[n] = self._weights._buffers[key]
        return True

    def _compile(self, g, path: str, outer: set[str], given: list[tuple[str, str]] = (),
                 outer_foldable: ChainMap | None = None) -> _Graph:
        foldable = (outer_foldable or ChainMap()).new_child()
        consts: list[tuple[str, str]] = list(given)
        known = set(outer) | {i.name for i in g.input} | {""} | {name for name, _ in given}
        for t in g.initializer:
            try:
                value = tensor_from_proto(t) if t.name not in self._tensors else None
            except Unsupported as e:
                self._problems.append((path, t.name, "initializer", str(e)))
                continue
            consts.append((t.name, self._const(t.name, value)))
            self._buffer_value(t.name, consts[-1][1], foldable)
            known.add(t.name)
        for t in g.sparse_initializer:
            self._problems.append((path, t.values.name, "sparse_initializer", "sparse initializers"))
        steps = []
        for node in _sorted_nodes(list(g.node), path):
            where = f"{path}" if path else ""
            missing = [n for n in node.input if n not in known]
            if missing:
                raise GraphError(f"{node.op_type} node {node.name!r} reads {missing}, which no graph input, "
                                 "initializer or earlier node defines", f"graph{where}.node[{node.name!r}]")
            if node.domain not in ("", "ai.onnx"):
                self._problem(path, node, f"operator domain {node.domain!r} (only the default ONNX domain)")
                known.update(node.output)
                continue
            a = node_attrs(node, where, self._opset)
            if node.op_type == "Constant":
                try:
                    value = _constant_value(a) if node.output[0] not in self._tensors else None
                    consts.append((node.output[0], self._const(node.output[0], value)))
                    self._buffer_value(node.output[0], consts[-1][1], foldable)
                except Unsupported as e:
                    self._problem(path, node, str(e))
                known.update(node.output)
                continue
            if node.op_type not in SUPPORTED_OPS:
                self._problem(path, node, "no implementation")
                known.update(node.output)
                continue
            most = MAX_OUTPUTS.get(node.op_type, 1)
            if most is not None and a.num_outputs > most:
                self._problem(path, node, f"{a.num_outputs} outputs (only the first {most} are implemented)")
                known.update(node.output)
                continue
            for attr in node.attribute:
                if attr.type == 5:
                    sub = f"{path}/{node.op_type}[{node.name!r}].{attr.name}"
                    a[attr.name] = self._compile(attr.g, sub, known, outer_foldable=foldable)
                elif attr.type == 10:
                    self._problem(path, node, f"graph-list attribute {attr.name!r}")
            try:
                fn = SUPPORTED_OPS[node.op_type](a)
            except Unsupported as e:
                self._problem(path, node, str(e))
                known.update(node.output)
                continue
            scoped = bool(getattr(fn, "scoped", False))
            known.update(node.output)
            if not scoped and self._fold(fn, node, foldable, consts):
                continue
            steps.append((fn, list(node.input), list(node.output), scoped, _reads(node)))
        outputs = [o.name for o in g.output]
        undefined = [n for n in outputs if n not in known]
        if undefined:
            raise GraphError(f"graph outputs {undefined} are never defined", f"graph{path}.output")
        return _Graph(consts, [i.name for i in g.input], outputs, _with_frees(steps, outputs))

    # ------------------------------------------------------------------ use
    def tensor(self, name: str) -> torch.Tensor:
        """A weight or constant of the graph by its ONNX / file name."""
        return getattr(self._weights, self._names[name])

    def onnx_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(ONNX name, parameter) for every parameter: the names a `.mrc` file or the ONNX model uses."""
        for name, key in self._names.items():
            if key in self._weights._parameters:
                yield name, self._weights._parameters[key]

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor):
        """The graph outputs for the graph inputs, in `input_names` order or by name (or both)."""
        if named:
            unknown = sorted(set(named) - set(self.input_names))
            if unknown:
                raise TypeError(f"unknown input name(s) {unknown}; the inputs are {self.input_names}")
            given = dict(zip(self.input_names, inputs))
            twice = sorted(set(given) & set(named))
            if twice:
                raise TypeError(f"input(s) {twice} given both by position and by name")
            given.update(named)
            missing = [n for n in self.input_names if n not in given]
            if missing:
                raise TypeError(f"missing input(s) {missing}")
            inputs = tuple(given[n] for n in self.input_names)
        if len(inputs) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        outs = self._graph.run({"": None, _STORE: self._weights}, inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)



