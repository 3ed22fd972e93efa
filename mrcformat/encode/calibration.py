"""Calibration inputs and the probe: the model run in onnxruntime with its weights fed as inputs.

Calibration inputs are an `.npz` file (one feed: {input name: array}), a folder of them (one feed
each, in name order), or a list of such dicts. The *probe* is a copy of the model in which every
weight to be coded is a graph input, so one onnxruntime session evaluates the model under any
weights: the original (reference outputs), perturbed ones (importance) and decoded ones (measured
distortion), without rebuilding a session. Distortion is the output error the compressor minimises:

    D = mean over feeds of  sum over float outputs o of  |y_o' - y_o|^2 / |y_o|^2

(relative squared error of each output, so outputs of different scales count alike).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .onnx_ingest import OnnxInputError, WeightSite, locate

__all__ = ["Probe", "load_feeds"]

_ORT_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise OnnxInputError(f"{path}: not a readable .npz of arrays ({e})") from e


def load_feeds(src: str | os.PathLike | Iterable[Mapping[str, np.ndarray]], inputs) -> list[dict[str, np.ndarray]]:
    """Calibration feeds checked against the model's inputs (`session.get_inputs()`): every input
    present, no extra name, dtypes as the model declares them (safe casts are made), ranks right."""
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix == ".npz")
            if not files:
                raise OnnxInputError(f"{p}: no .npz files in this folder")
            raw = [_read_npz(f) for f in files]
            where = [str(f) for f in files]
        elif p.is_file():
            raw, where = [_read_npz(p)], [str(p)]
        else:
            raise OnnxInputError(f"{p}: calibration inputs not found (give an .npz file or a folder of them)")
    else:
        raw = [dict(f) for f in src]
        where = [f"feed {i}" for i in range(len(raw))]
        if not raw:
            raise OnnxInputError("no calibration feeds")
    wanted = {i.name: i for i in inputs}
    feeds = []
    for w, feed in zip(where, raw):
        missing = sorted(set(wanted) - set(feed))
        extra = sorted(set(feed) - set(wanted))
        if missing or extra:
            raise OnnxInputError(f"{w}: the model's inputs are {sorted(wanted)}; this feed "
                                 + (f"lacks {missing}" if missing else "") + (" and " if missing and extra else "")
                                 + (f"has unknown {extra}" if extra else ""))
        out = {}
        for name, arr in feed.items():
            info = wanted[name]
            dt = _ORT_NUMPY.get(info.type)
            arr = np.asarray(arr)
            if dt is not None and arr.dtype != dt:
                if not np.can_cast(arr.dtype, dt, casting="same_kind"):
                    raise OnnxInputError(f"{w}: input {name!r} is {arr.dtype}, the model wants {info.type}")
                arr = arr.astype(dt)
            if info.shape is not None and len(info.shape) != arr.ndim:
                raise OnnxInputError(f"{w}: input {name!r} has shape {arr.shape}, the model wants rank "
                                     f"{len(info.shape)} ({info.shape})")
            out[name] = arr
        feeds.append(out)
    return feeds


def _prefix(model) -> str:
    from mrcformat.onnx_graphs import all_graphs

    names = set()
    for g in all_graphs(model.graph):
        names.update(i.name for i in g.input)
        names.update(i.name for i in g.initializer)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
    p = "mrc_probe_"
    while any(n.startswith(p) for n in names):
        p = "_" + p
    return p


def probe_model(model, sites: list[WeightSite]):
    """A copy of `model` whose weights `sites` come from top-level inputs `<prefix><i>` (an Identity
    hands each to its place: the Constant node becomes it, an initializer is replaced by one)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    prefix = _prefix(m)
    names = {s.name: f"{prefix}{i}" for i, s in enumerate(sites)}
    top = m.graph
    top_nodes = []
    for name, graph, node, tensor in list(locate(m, sites)):  # all located before the graph changes
        feed_name = names[name]
        if node is not None:
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
            node.input.append(feed_name)
        else:
            keep = [t for t in graph.initializer if t.name != name]  # names are unique within a graph
            del graph.initializer[:]
            graph.initializer.extend(keep)
            ident = helper.make_node("Identity", [feed_name], [name])
            if graph is top:
                top_nodes.append(ident)
                inputs = [i for i in top.input if i.name != name]  # IR < 4: initializers listed as inputs
                del top.input[:]
                top.input.extend(inputs)
            else:
                graph.node.insert(0, ident)
    for i, s in enumerate(sites):
        top.input.append(helper.make_tensor_value_info(names[s.name], onnx.TensorProto.FLOAT, list(s.array.shape)))
    nodes = top_nodes + list(top.node)
    del top.node[:]
    top.node.extend(nodes)
    return m, [names[s.name] for s in sites]


class Probe:
    """One onnxruntime session of the probe model over fixed calibration feeds."""

    def __init__(self, model, sites: list[WeightSite], feeds_src, *, threads: int | None = None,
                 max_feeds: int | None = None):
        import onnxruntime as ort

        self.sites = sites
        pm, self.input_names = probe_model(model, sites)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(pm.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        model_inputs = [i for i in self.session.get_inputs() if i.name not in set(self.input_names)]
        self.feeds = load_feeds(feeds_src, model_inputs)
        if max_feeds is not None and len(self.feeds) > max_feeds:
            pick = np.linspace(0, len(self.feeds) - 1, max_feeds).round().astype(int)
            self.feeds = [self.feeds[i] for i in pick]
        self.output_names = [o.name for o in self.session.get_outputs() if o.type in ("tensor(float)", "tensor(double)")]
        if not self.output_names:
            raise OnnxInputError("the model has no floating-point output to measure distortion on")
        self.original = [s.array for s in sites]
        self.reference = [self._run(self.original, f) for f in self.feeds]
        self._norm = [[max(float(np.mean(np.square(y, dtype=np.float64))), 1e-30) for y in ys] for ys in self.reference]

    def _run(self, weights, feed):
        full = dict(feed)
        full.update(zip(self.input_names, weights))
        return [np.asarray(y, dtype=np.float64) for y in self.session.run(self.output_names, full)]

    def subset(self, count: int | None) -> list[int]:
        """`count` feed indices spread evenly over the feeds (all when count is None or larger)."""
        n = len(self.feeds)
        if count is None or count >= n:
            return list(range(n))
        return sorted(set(np.linspace(0, n - 1, max(1, count)).round().astype(int).tolist()))

    def distortion(self, overrides: Mapping[int, np.ndarray], feeds: list[int] | None = None) -> float:
        """D (module doc) with weights `overrides` {site index: array}, the rest original; over the feeds
        `feeds` (indices; default all)."""
        weights = list(self.original)
        for k, v in overrides.items():
            weights[k] = np.asarray(v, dtype=np.float32).reshape(self.original[k].shape)
        which = range(len(self.feeds)) if feeds is None else feeds
        total = 0.0
        for i in which:
            ys = self._run(weights, self.feeds[i])
            total += sum(float(np.mean(np.square(y - r))) / n for y, r, n in zip(ys, self.reference[i], self._norm[i]))
        return total / len(which)
