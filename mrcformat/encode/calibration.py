"""Calibration inputs and the probe: the model run in onnxruntime with its weights fed as inputs.

Calibration inputs are an `.npz` file (one feed: {input name: array}), a folder of them (one feed
each, in name order), or a list of such dicts. The *probe* is a copy of the model in which every
weight to be coded is a graph input, so one onnxruntime session evaluates the model under any
weights: the original (reference outputs), perturbed ones (importance) and decoded ones (measured
distortion), without rebuilding a session. Distortion is the output error the compressor minimises:

    D = sum over float outputs o of  mean over feeds |y_o' - y_o|^2 / mean over feeds |y_o|^2

(the squared error of each output relative to that output's mean power over all feeds, so outputs of
different scales count alike, while feeds keep their own weight: a per-feed normalisation made a speech
detector's silent frames, whose probabilities are ~1e-3, dominate D and the importances measured with it).

Recurrent models (state in, state out, e.g. a streaming VAD) are calibrated as they run: with
`state={"state": "stateN"}` consecutive feeds form sequences of `sequence_length` steps, and each step
after the first takes the previous step's state output in place of its recorded state. Errors then
accumulate through the state as they do in use, and D averages the other outputs over every step; a
single-step calibration (each feed with its recorded state) sees one step's error only. Measured on
silero-vad (bench/results/onnx_silero_calibration.md): D then is the distortion in use, but the
allocation it leads to was no better than single-step calibration over as many feeds (within the
coder's seed spread); more feeds helped far more.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .onnx_ingest import OnnxInputError, WeightSite, locate

__all__ = ["Probe", "load_feeds", "state_candidates"]

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


def state_candidates(inputs, outputs) -> list[tuple[str, str]]:
    """(input, output) pairs that look like a recurrent state: same float type and same shape (dynamic
    dims named alike), output named after the input (`state` -> `stateN`, `h0` -> `hn`, ...). Used only
    to suggest `state=` to the user, never applied silently."""
    def stem(name: str) -> str:
        n = name.lower()
        for suffix in ("_in", "in", "0", "_out", "out", "n", "_new", "new", "_next", "next"):
            if n.endswith(suffix) and len(n) > len(suffix):
                n = n[: -len(suffix)]
                break
        return n.rstrip("_.")

    pairs = []
    for i in inputs:
        for o in outputs:
            if i.name != o.name and i.type == o.type and "float" in i.type and list(i.shape) == list(o.shape) \
                    and stem(i.name) == stem(o.name):
                pairs.append((i.name, o.name))
    return pairs


class Probe:
    """One onnxruntime session of the probe model over fixed calibration feeds, run one by one or, with
    `state`, as sequences of `sequence_length` consecutive feeds with the state carried (module doc)."""

    def __init__(self, model, sites: list[WeightSite], feeds_src, *, threads: int | None = None,
                 max_feeds: int | None = None, state: Mapping[str, str] | None = None,
                 sequence_length: int | None = None):
        import onnxruntime as ort

        self.sites = sites
        pm, self.input_names = probe_model(model, sites)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(pm.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        model_inputs = [i for i in self.session.get_inputs() if i.name not in set(self.input_names)]
        outputs = self.session.get_outputs()
        self.state = dict(state or {})
        ins, outs = {i.name: i for i in model_inputs}, {o.name: o for o in outputs}
        for i, o in self.state.items():
            if i not in ins or o not in outs:
                raise OnnxInputError(f"state {i}={o}: the model's inputs are {sorted(ins)} and its outputs "
                                     f"{sorted(outs)}")
            a, b = ins[i].shape, outs[o].shape
            if ins[i].type != outs[o].type or len(a) != len(b) or any(
                    isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b)):
                raise OnnxInputError(f"state {i}={o}: output {o} ({outs[o].type} {outs[o].shape}) cannot be fed "
                                     f"back as input {i} ({ins[i].type} {ins[i].shape})")
        if sequence_length is not None and sequence_length < 1:
            raise OnnxInputError("sequence_length must be at least 1")
        feeds = load_feeds(feeds_src, model_inputs)
        # sequences of consecutive feeds (one feed each without state); max_feeds keeps whole sequences
        length = (sequence_length or len(feeds)) if self.state else 1
        seqs = [list(range(a, min(a + length, len(feeds)))) for a in range(0, len(feeds), length)]
        if max_feeds is not None and len(feeds) > max_feeds:
            keep = max(1, max_feeds // length)
            pick = sorted(set(np.linspace(0, len(seqs) - 1, keep).round().astype(int).tolist()))
            seqs = [seqs[i] for i in pick]
            if self.state and len(seqs) == 1 and len(seqs[0]) > max_feeds:
                seqs = [seqs[0][:max_feeds]]
        used = [i for q in seqs for i in q]
        self.feeds = [feeds[i] for i in used]
        renumber = {old: new for new, old in enumerate(used)}
        self.sequences = [[renumber[i] for i in q] for q in seqs]
        floats = [o.name for o in outputs if o.type in ("tensor(float)", "tensor(double)")]
        measured = [n for n in floats if n not in set(self.state.values())]
        self.output_names = measured or floats
        if not self.output_names:
            raise OnnxInputError("the model has no floating-point output to measure distortion on")
        self._fetch = self.output_names + [o for o in self.state.values() if o not in self.output_names]
        self.original = [s.array for s in sites]
        # per feed (sequences are consecutive runs of feed indices, in order) its reference outputs
        try:
            self.reference = [ys for q in self.sequences for ys in self._run_sequence(self.original, q)]
        except Exception as e:  # noqa: BLE001  onnxruntime's own classes (InvalidArgument, Fail, ...)
            raise OnnxInputError(f"the model does not run on these calibration feeds"
                                 f"{' with the state carried' if self.state else ''}: {type(e).__name__}: {e}") from e
        self._power = [max(float(np.mean([np.mean(np.square(ys[o])) for ys in self.reference])), 1e-30)
                       for o in range(len(self.output_names))]   # per output, over all feeds (module doc)

    def _run_sequence(self, weights, seq: list[int]) -> list[list[np.ndarray]]:
        """Outputs `output_names` of every step of one sequence, the state carried between steps."""
        carried: dict[str, np.ndarray] = {}
        outs = []
        n = len(self.output_names)
        for i in seq:
            full = dict(self.feeds[i])
            full.update(carried)
            full.update(zip(self.input_names, weights))
            ys = self.session.run(self._fetch, full)
            got = dict(zip(self._fetch, ys))
            carried = {inp: got[out] for inp, out in self.state.items()}
            outs.append([np.asarray(y, dtype=np.float64) for y in ys[:n]])
        return outs

    def feed_distortion(self, i: int, outputs: list[np.ndarray]) -> float:
        """Feed i's term of D: per measured output, mean squared error against the reference / its power."""
        return sum(float(np.mean(np.square(y - r))) / m for y, r, m in zip(outputs, self.reference[i], self._power))

    @property
    def output_power(self) -> dict[str, float]:
        """{measured output: its mean power over the calibration feeds}, the denominators of D."""
        return dict(zip(self.output_names, self._power))

    def subset(self, count: int | None) -> list[int]:
        """Sequence indices (feed indices without `state`) spread evenly, covering about `count` feeds
        (all when count is None or larger)."""
        n = len(self.sequences)
        if count is None or count >= len(self.feeds):
            return list(range(n))
        per = max(1, round(len(self.feeds) / n))
        k = max(1, count // per)
        return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))

    def distortion(self, overrides: Mapping[int, np.ndarray], sequences: list[int] | None = None) -> float:
        """D (module doc) with weights `overrides` {site index: array}, the rest original; over the
        sequences `sequences` (indices from `subset`; default all)."""
        weights = list(self.original)
        for k, v in overrides.items():
            weights[k] = np.asarray(v, dtype=np.float32).reshape(self.original[k].shape)
        which = range(len(self.sequences)) if sequences is None else sequences
        total, steps = 0.0, 0
        for q in which:
            for i, ys in zip(self.sequences[q], self._run_sequence(weights, self.sequences[q])):
                total += self.feed_distortion(i, ys)
                steps += 1
        return total / max(steps, 1)
