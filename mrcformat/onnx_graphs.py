"""Walking ONNX graphs without importing onnx: the top graph and every nested subgraph.

Control-flow nodes (If, Loop, Scan) hold bodies in graph-valued attributes. The walk is
iterative, so a deeply nested (possibly hostile) model cannot exhaust Python's recursion.
"""
from __future__ import annotations

from typing import Iterator

__all__ = ["all_graphs"]


def all_graphs(graph) -> Iterator:
    """Yield `graph` (an onnx GraphProto) and all its subgraphs, depth first."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in reversed(g.node):
            for a in reversed(node.attribute):
                stack.extend(reversed(a.graphs))
                if a.HasField("g"):
                    stack.append(a.g)
