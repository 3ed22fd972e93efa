"""Walking ONNX graphs without importing onnx: the top graph, every nested subgraph, and the
weight stubs of SPEC.md 7.6 (format 1.1).

Control-flow nodes (If, Loop, Scan) hold bodies in graph-valued attributes. The walks are
iterative, so a deeply nested (possibly hostile) model cannot exhaust Python's recursion.

A *stub* is where a file tensor goes back into the graph at the place it was taken from: an
initializer of any (sub)graph, or the `value` of a Constant node, whose TensorProto keeps its name,
type and dims but holds no data. Loaders fill stubs with the decoded tensor; file tensors without a
stub become initializers of the top graph (format 1.0's rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["CONSTANT_DOMAINS", "Stub", "all_graphs", "constant_value", "find_stubs", "graphs_with_paths", "has_data"]

CONSTANT_DOMAINS = ("", "ai.onnx")
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def all_graphs(graph) -> Iterator:
    """Yield `graph` (an onnx GraphProto) and all its subgraphs, depth first."""
    for g, _ in graphs_with_paths(graph):
        yield g


def graphs_with_paths(graph, root: str = "graph") -> Iterator[tuple[Any, str]]:
    """(graph, path) for `graph` and all its subgraphs, depth first; a path reads like
    `graph/node[3]:If_0.then_branch/node[0]:Loop_2.body`."""
    stack = [(graph, root)]
    while stack:
        g, path = stack.pop()
        yield g, path
        found = []
        for i, node in enumerate(g.node):
            where = f"{path}/node[{i}]:{node.name or node.op_type}"
            for a in node.attribute:
                if a.HasField("g"):
                    found.append((a.g, f"{where}.{a.name}"))
                found.extend((sub, f"{where}.{a.name}[{j}]") for j, sub in enumerate(a.graphs))
        stack.extend(reversed(found))


def has_data(t) -> bool:
    """Whether a TensorProto carries data of any kind (inline, typed fields or external)."""
    return bool(len(t.raw_data) or len(t.float_data) or len(t.int32_data) or len(t.string_data)
                or len(t.int64_data) or len(t.double_data) or len(t.uint64_data) or len(t.external_data)
                or t.data_location == _EXTERNAL)


@dataclass
class Stub:
    """A place in the graph that a file tensor fills (SPEC.md 7.6)."""

    name: str            # the file tensor's name
    tensor: Any          # the TensorProto to fill (initializer, or the Constant's `value`)
    graph: Any           # the GraphProto that holds it
    node: Any | None     # the Constant node, or None for an initializer
    path: str            # where it is, e.g. "graph/node[4]:If_0.then_branch/node[1]:Constant_3"

    @property
    def kind(self) -> str:
        return "initializer" if self.node is None else "constant"


def constant_value(node):
    """The `value` attribute of a Constant node that has only that attribute, else None."""
    if node.op_type != "Constant" or node.domain not in CONSTANT_DOMAINS or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    return a.t if a.name == "value" and a.HasField("t") else None


def find_stubs(graph, names: set[str] | frozenset[str]) -> tuple[list[Stub], list[tuple[str, str]]]:
    """Every place in `graph` (any depth) that claims one of `names`: initializers with that name and
    Constant nodes with that output. Returns (stubs, problems); a problem is (message, path) for a
    claim that is not a valid stub (it has data, is a Constant with other attributes, or is a sparse
    initializer: SPEC.md 7.6)."""
    stubs: list[Stub] = []
    problems: list[tuple[str, str]] = []
    for g, path in graphs_with_paths(graph):
        for i, t in enumerate(g.initializer):
            if t.name in names:
                where = f"{path}/initializer[{i}]"
                if has_data(t):
                    problems.append((f"initializer {t.name!r} has the name of a file tensor but holds data", where))
                else:
                    stubs.append(Stub(t.name, t, g, None, where))
        for i, sp in enumerate(g.sparse_initializer):  # a sparse initializer holds data: never a stub
            if sp.values.name in names:
                problems.append((f"sparse initializer {sp.values.name!r} has the name of a file tensor",
                                 f"{path}/sparse_initializer[{i}]"))
        for i, node in enumerate(g.node):
            if node.op_type != "Constant" or node.domain not in CONSTANT_DOMAINS:
                continue
            out = node.output[0] if len(node.output) else ""
            if out not in names:
                continue
            where = f"{path}/node[{i}]:{node.name or node.op_type}"
            value = constant_value(node)
            if value is None:
                problems.append((f"Constant node producing file tensor {out!r} has no lone `value` attribute", where))
            elif has_data(value):
                problems.append((f"Constant node producing file tensor {out!r} holds data", where))
            else:
                stubs.append(Stub(out, value, g, node, where))
    return stubs, problems
