"""Self-decoding ONNX export: onnxruntime regenerates the weights from the stored indices.

The exported model carries, instead of float32 weights, what the `.mrc` file carries: the groups' packed
index bytes (concatenated), a few int64/float32 parameters per group, the file's seed, raw tensors, plus
a compact exact encoding of the normal16 table (SPEC.md section 4). Standard opset-18 operators and three
model-local functions (domain `mrc.sd`: Round, Philox, Table) turn these into the weights; onnxruntime inlines
them and, since every input is a constant, folds the whole decode into initializers at session creation
(with graph optimisations off, the same nodes run in every `run` instead).

The decoder is vectorised over the groups (`_Decoder`), because onnxruntime's constant folding costs per
node and per byte: it runs one node at a time and turns every output into an initializer (copied into a
TensorProto and kept until the pass ends). A small model is a fixed set of ~260 nodes (after inlining)
plus a few per group; a large one is cut into batches so that, when the decoder runs as nodes (graph
optimisations off, as `ort.session(self_decoding=True)` does), only one batch's intermediates live at once:

- the counters of a batch go through ONE Philox4x32-10 evaluation: the chosen candidate of every block
  of every group (or piece of a group) in it, or every pair of hashed weights. Candidates: per-group
  parameters become per-element rows by one CumSum over each segment's jumps (`_Segments`). Hashing
  pairs (LeNet-5: 215k, 40x its candidates' calls): each group's counters are a Range (and its word) of
  its own, concatenated, and after the shared Philox each group's index, sign and gather use its own
  constants: per-element parameter rows cost onnxruntime more than Philox there (Expand/CumSum/Split
  of int64 rows: 12 ms against 20 ms, one thread);
- Philox runs in uint64: a 32-bit word times a 32-bit multiplier is exact (< 2^64), hi = p >> 32,
  lo = p & (2^32 - 1); the state is two [2, N] tensors E = (x0, x2), O = (x3, x1), so a round is six
  nodes (`_f_round`); index unpacking, layout and slot arithmetic stay in int64 below 2^63. Decoders
  that run once (`regenerated_weights_model`: the two-step form, `ort.session(self_decoding=True)`) run
  Philox as a Loop over the rounds instead (`_Decoder._philox_loop`): onnxruntime opens a graph in time
  per node, and a Loop is one node where the unrolled rounds are seventy;
- affine layouts are v[i] = slot[(a*i + c) mod n] (a*i < 2^62); hashed weights come two per pair,
  index = (word * n) >> 32, sign from the next word's low bit.

The table (65,536 float32 = 256 KiB) is rebuilt from 32 float64 coefficients (256 bytes) plus an
exception list, empty for the shipped table (see `table_encoding`). T[i] is defined as Phi^-1 evaluated
exactly, rounded to float32, then to 16 significant bits (ties to even). The graph evaluates Phi^-1 on
the positive half with the rational approximations of Wichura's AS241 (PPND16, relative error ~1e-16)
in float64, rounds to float32 (Cast), then to 16 significant bits by a Veltkamp split in float32
(c = f * 257; c - (c - f), exact IEEE operations), and mirrors it (T[65535 - i] = -T[i]). An entry
whose float64 value lies within a relative 2^-40 of a float32 rounding boundary, or that the formula
does not reproduce, would go to the exception list; so the rebuild is exact on any runtime whose
float64 log/pow/matmul are accurate to 2^-40 relative (a margin of ~2^12 over ordinary libm error)
and whose float32 arithmetic is IEEE round-to-nearest. The graph checks this where it runs: two
order-independent exact float64 checksums of the rebuilt table (`table_checksums`) must match, or every
table entry becomes NaN, so a runtime outside that margin fails loudly instead of decoding other bits.
"""
from __future__ import annotations

import functools
import os

from collections.abc import Iterable

import numpy as np

from mrcformat.bitpack import pack_indices
from mrcformat.container import Container
from mrcformat.errors import GraphError
from mrcformat.onnx_graphs import all_graphs, constant_value
from mrcformat.decoder import value_scales
from mrcformat.sampler import check_coding_parameters, normal_table
from mrcformat.streams import DOMAIN_CANDIDATE, DOMAIN_HASH, domain_word, seed_key

from .onnx_model import ONNX_DTYPES, fill_stub, graph_model, graph_stubs, load_container, put_tensors, raw_initializer, \
    stub_array, wanted_names

__all__ = [
    "DOMAIN",
    "OPSET",
    "functions",
    "regenerated_weights_model",
    "self_decoding_model",
    "self_decoding_model_sources",
    "table_checksums",
    "table_encoded_size",
    "table_encoding",
    "table_model",
]

DOMAIN = "mrc.sd"  # model-local functions; short because every call node repeats it
OPSET = 18  # BitwiseXor / BitwiseAnd
_IR_MIN = 8  # model-local functions

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_HALF = 32768
_CENTRAL = 27853  # positive-half entries u with (2u+1)/131072 <= 0.425 (AS241's central region)
_MARGIN = 2.0**-40  # relative distance to a float32 rounding boundary below which an entry is an exception

# Wichura, Algorithm AS 241 (PPND16), ascending powers. Rows: central numerator, central denominator
# (in r = 0.180625 - q^2), tail numerator, tail denominator (in r = sqrt(-log q) - 1.6).
_AS241 = np.array([
    [3.387132872796366608, 133.14166789178437745, 1971.5909503065514427, 13731.693765509461125,
     45921.953931549871457, 67265.770927008700853, 33430.575583588128105, 2509.0809287301226727],
    [1.0, 42.313330701600911252, 687.1870074920579083, 5394.1960214247511077,
     21213.794301586595867, 39307.89580009271061, 28729.085735721942674, 5226.495278852854561],
    [1.42343711074968357734, 4.6303378461565452959, 5.7694972214606914055, 3.64784832476320460504,
     1.27045825245236838258, 0.24178072517745061177, 0.0227238449892691845833, 7.7454501427834140764e-4],
    [1.0, 2.05319162663775882187, 1.6763848301838038494, 0.68976733498510000455,
     0.14810397642748007459, 0.0151986665636164571966, 5.475938084995344946e-4, 1.05075007164441684324e-9],
], dtype=np.float64)


# ----------------------------------------------------------------------------- compact table

def _approx_positive_half(coef: np.ndarray) -> np.ndarray:
    """The float64 values the graph computes for T[32768 + u], u in [0, 32768) (same formula)."""
    e = np.arange(8, dtype=np.float64)
    q = np.arange(1.0, 2.0 * _CENTRAL + 1, 2.0)[:, None] / 131072.0
    nd = ((0.180625 - q * q) ** e) @ coef[0]
    yc = q * (nd[:, :1] / nd[:, 1:])
    q = np.arange(65535.0 - 2 * _CENTRAL, 0.0, -2.0)[:, None] / 131072.0
    nd = ((np.sqrt(-np.log(q)) - 1.6) ** e) @ coef[1]
    yt = nd[:, :1] / nd[:, 1:]
    return np.concatenate([yc, yt]).reshape(-1)


def _round16(f: np.ndarray) -> np.ndarray:
    """float32 -> 16 significant bits as the graph does it (Veltkamp split with 2^8 + 1, in float32)."""
    f = np.asarray(f, dtype=np.float32)
    c = f * np.float32(257.0)
    return c - (c - f)


@functools.cache
def table_encoding() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coefficients float64 [2, 8, 2], exception positions int64 [E], exception values float32 [E]).

    coef[0] / coef[1]: AS241's central / tail numerator and denominator coefficients (columns), by
    ascending power (rows). Positions index the positive half (T[32768 + pos]). An entry is an exception
    if the formula does not reproduce it, or if its float64 value lies within a relative 2^-40 of a
    float32 rounding boundary, so a runtime whose float64 log/pow/matmul differ from numpy's by less
    than that rebuilds the same table. With the shipped table there are no exceptions.
    """
    coef = np.ascontiguousarray(_AS241.reshape(2, 2, 8).transpose(0, 2, 1))
    target = normal_table()[_HALF:]
    y = _approx_positive_half(coef)
    f = y.astype(np.float32)
    got = _round16(f)
    # distance to the nearest float32 rounding boundary (the midpoints with both neighbours)
    fd = f.astype(np.float64)
    below = np.nextafter(f, np.float32(-np.inf)).astype(np.float64)
    above = np.nextafter(f, np.float32(np.inf)).astype(np.float64)
    dist = np.minimum(np.abs(y - (fd + below) / 2), np.abs(y - (fd + above) / 2))
    bad = (got.view(np.uint32) != target.view(np.uint32)) | (dist < _MARGIN * np.abs(y))
    pos = np.nonzero(bad)[0].astype(np.int64)
    vals = np.ascontiguousarray(target[pos], dtype=np.float32)
    for arr in (coef, pos, vals):
        arr.flags.writeable = False
    return coef, pos, vals


def table_encoded_size() -> int:
    """Bytes of tensor data the graph stores for the table (coefficients + exceptions)."""
    coef, pos, vals = table_encoding()
    return coef.nbytes + pos.nbytes + vals.nbytes


# ----------------------------------------------------------------------------- graph building

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _short(i: int) -> str:
    """A short name for counter value i (base 62): names are repeated in every node that uses them."""
    out = ""
    while True:
        i, r = divmod(i, 62)
        out = _DIGITS[r] + out
        if not i:
            return out


class _Builder:
    """Collects nodes; fresh value names are `prefix` + counter. Constants are Constant nodes (cached)."""

    def __init__(self, prefix: str):
        from onnx import helper, numpy_helper

        self.h, self.nh = helper, numpy_helper
        self.prefix, self.count, self.nodes, self._consts = prefix, 0, [], {}

    def fresh(self) -> str:
        self.count += 1
        return self.prefix + _short(self.count)

    def op(self, op_type: str, *inputs: str, outs: int | list[str] = 1, domain: str = "", **attrs):
        names = list(outs) if isinstance(outs, list) else [self.fresh() for _ in range(outs)]
        self.nodes.append(self.h.make_node(op_type, list(inputs), names, domain=domain or None, **attrs))
        return names[0] if len(names) == 1 else names

    def fn(self, fname: str, *inputs: str, outs: int | list[str] = 1):
        return self.op(fname, *inputs, outs=outs, domain=DOMAIN)

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._consts:
            return self._consts[key]
        if arr.dtype == np.int64 and arr.ndim == 0:
            name = self.op("Constant", value_int=int(arr))
        elif arr.dtype == np.int64 and arr.ndim == 1:
            name = self.op("Constant", value_ints=[int(x) for x in arr])
        elif arr.dtype == np.float32 and arr.ndim == 0:
            name = self.op("Constant", value_float=float(arr))
        else:
            name = self.op("Constant", value=self.nh.from_array(arr))
        self._consts[key] = name
        return name

    def unsq(self, x: str, *axes: int) -> str:
        return self.op("Unsqueeze", x, self.const(list(axes)))


def _function(name: str, inputs: list[str], outputs: list[str], b: _Builder, opset: int):
    from onnx import helper

    return helper.make_function(DOMAIN, name, inputs, outputs, b.nodes,
                                [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])


def _f_round(opset: int):
    """Round(E, O, K, M, S, F) -> (E', O'): one Philox4x32 round on all counters at once, in uint64.

    E = [x0, x2] and O = [x3, x1] (shape [2, N]), K = the round key [k1, k0] ([2, 1]), M = [M0, M1] ([2, 1]),
    S = 32, F = 2^32 - 1. P = E * M is exact (< 2^64); hi = P >> 32, lo = P & F; X = hi ^ O ^ K = [y2, y0];
    E' = [y0, y2] (X reversed), O' = lo = [y3, y1]: the same arrangement, six vectorised nodes.
    """
    b = _Builder("t")
    p = b.op("Mul", "E", "M")
    x = b.op("BitwiseXor", b.op("BitwiseXor", b.op("BitShift", p, "S", direction="RIGHT"), "O"), "K")
    b.op("Gather", x, b.const([1, 0]), axis=0, outs=["X"])
    b.op("BitwiseAnd", p, "F", outs=["L"])
    return _function("Round", ["E", "O", "K", "M", "S", "F"], ["X", "L"], b, opset)


def _f_philox(opset: int):
    """Philox(E, O, K, M, S, F) -> (E, O): Philox4x32-10, ten Round calls; K = the ten round keys
    ([k1, k0] + r * [W1, W0] mod 2^32, stacked [20, 1]), the other inputs as for Round."""
    b = _Builder("t")
    keys = b.op("Split", "K", axis=0, num_outputs=10, outs=10)
    e, o = "E", "O"
    for r in range(10):
        e, o = b.fn("Round", e, o, keys[r], "M", "S", "F", outs=["X", "L"] if r == 9 else 2)
    return _function("Philox", ["E", "O", "K", "M", "S", "F"], ["X", "L"], b, opset)


def _f_table(opset: int, exceptions: bool):
    """Table(cab f64[8,2], ccd f64[8,2][, epos i64[E], evals f32[E]]) -> T f32[65536] (see module doc)."""
    b = _Builder("t")
    d17 = b.const(131072.0, np.float64)

    def rational(r: str, cf: str) -> str:
        # [1, r, ..., r^7] by repeated multiplication ([N, 1] operands: onnxruntime's fast elementwise path;
        # Pow of [N, 1] by [8] broadcasts and cost 10x more); the products differ from pow's by ~1e-16
        # relative, far inside the 2^-40 margin of the table encoding (checksums guard it)
        pw = [b.op("Mul", r, b.const(0.0, np.float64)), r]
        pw[0] = b.op("Add", pw[0], b.const(1.0, np.float64))
        for _ in range(6):
            pw.append(b.op("Mul", pw[-1], r))
        num, den = b.op("Split", b.op("MatMul", b.op("Concat", *pw, axis=1), cf), axis=1, num_outputs=2, outs=2)
        return b.op("Div", num, den)

    def odd_range(start: float, stop: float, step: float) -> str:
        rng = b.op("Range", *(b.const(v, np.float64) for v in (start, stop, step)))
        return b.op("Div", b.unsq(rng, 1), d17)

    # central region, u < 27853: q = (2u+1)/2^17, y = q * A(r) / B(r) with r = 0.180625 - q^2
    q = odd_range(1.0, 2.0 * _CENTRAL + 1, 2.0)
    yc = b.op("Mul", q, rational(b.op("Sub", b.const(0.180625, np.float64), b.op("Mul", q, q)), "cab"))
    # tail: 1 - p = (65535 - 2u)/2^17, y = C(r) / D(r) with r = sqrt(-log(1 - p)) - 1.6
    q = odd_range(65535.0 - 2 * _CENTRAL, 0.0, -2.0)
    yt = rational(b.op("Sub", b.op("Sqrt", b.op("Neg", b.op("Log", q))), b.const(1.6, np.float64)), "ccd")
    # round to float32 (Cast), then to 16 significant bits (Veltkamp split: c = f*(2^8+1); c - (c - f))
    f = b.op("Cast", b.op("Reshape", b.op("Concat", yc, yt, axis=0), b.const([-1])), to=1)
    c = b.op("Mul", f, b.const(257.0, np.float32))
    pos = b.op("Sub", c, b.op("Sub", c, f))
    if exceptions:
        pos = b.op("ScatterElements", pos, "epos", "evals", axis=0)
    pos = _guard_table(b, pos)
    rev = b.op("Range", b.const(_HALF - 1), b.const(-1), b.const(-1))
    b.op("Concat", b.op("Neg", b.op("Gather", pos, rev)), pos, axis=0, outs=["T"])
    inputs = ["cab", "ccd"] + (["epos", "evals"] if exceptions else [])
    return _function("Table", inputs, ["T"], b, opset)


@functools.cache
def table_checksums() -> tuple[float, float]:
    """(sum T[32768+u], sum T[32768+u] * (u mod 32 + 1)) over the positive half, in float64.

    Every positive entry is a multiple of 2^-31 (16 significant bits, smallest entry in [2^-16, 2^-15))
    and both sums stay below 2^20, so every partial sum is exact in float64 whatever the summation
    order: the checksums are the same on every IEEE runtime, and any entry off by one unit changes them.
    """
    half = normal_table()[_HALF:].astype(np.float64)
    weights = (np.arange(_HALF) % 32 + 1).astype(np.float64)
    return float(half.sum()), float((half * weights).sum())


def _guard_table(b: _Builder, half: str) -> str:
    """Make a wrongly rebuilt table fail loudly: if the positive half's exact checksums differ from
    `table_checksums()` (a runtime whose float64 log/pow is off by more than the 2^-40 margin), every
    entry becomes NaN, so no weight is ever silently different from the reference."""
    s1, s2 = table_checksums()
    h64 = b.op("Cast", half, to=11)
    weights = b.op("Cast", b.op("Add", b.op("Mod", b.op("Range", b.const(0), b.const(_HALF), b.const(1)),
                                          b.const(32)), b.const(1)), to=11)
    ok = b.op("And", b.op("Equal", b.op("ReduceSum", h64, keepdims=0), b.const(s1, np.float64)),
              b.op("Equal", b.op("ReduceSum", b.op("Mul", h64, weights), keepdims=0), b.const(s2, np.float64)))
    poison = b.op("Where", ok, b.const(0.0, np.float32), b.const(np.nan, np.float32))
    return b.op("Add", half, poison)


def functions(opset: int = OPSET) -> list:
    """The model-local functions (FunctionProto) of domain DOMAIN, importing the default domain at `opset`."""
    return [_f_round(opset), _f_philox(opset), _f_table(opset, len(table_encoding()[1]) > 0)]


def _all_names(model) -> set[str]:
    names: set[str] = set()
    for g in all_graphs(model.graph):
        names.update(i.name for i in g.initializer)
        names.update(i.name for i in g.input)
        names.update(o.name for o in g.output)
        names.update(v.name for v in g.value_info)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _prefix(taken: set) -> str:
    """A name prefix no existing name starts with. Names are str, or bytes where a proto2 string field holds
    invalid UTF-8 (python protobuf returns those as bytes)."""
    names = [n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else n for n in taken]
    p = "mrc"
    while any(n.startswith(p) for n in names):
        p = "_" + p
    return p


class _Segments:
    """Per-element parameters of a run of concatenated segments (a batch's groups or pieces of groups, in
    order), [1, total] each: `local` (the position within its own segment) and one row per column, constant
    within a segment. All rows come from one CumSum over a [rows, total] matrix that holds each row's step at
    every element (1 for `local`, 0 for the others) and, at each segment start, the jump to that segment's
    value: a handful of nodes and passes over the data whatever the number of segments. Empty segments are
    left out; a single segment needs no per-element rows at all (its columns are [1, 1] constants)."""

    def __init__(self, dec: "_Decoder", lengths: list[int], columns: dict[str, list[int]]):
        b = dec.b
        keep = [k for k, n in enumerate(lengths) if n > 0]
        total = int(sum(lengths))
        self.cols: dict[str, str] = {}
        if len(keep) == 1:
            self.local = b.unsq(b.op("Range", b.const(0), b.const(total), b.const(1)), 0)
            for name, values in columns.items():
                self.cols[name] = dec.init(np.array([[values[keep[0]]]], dtype=np.int64))
            return
        starts = np.cumsum([0] + [lengths[k] for k in keep])[:-1]
        rows = {"local": [0] + [1 - lengths[k] for k in keep[:-1]]}
        for name, values in columns.items():
            kept = [int(values[k]) for k in keep]
            rows[name] = [kept[0]] + [y - x for x, y in zip(kept, kept[1:])]
        steps = np.array([[1] if name == "local" else [0] for name in rows], dtype=np.int64)
        base = b.op("Expand", dec.init(steps), b.const([len(rows), total]))
        jumps = b.op("ScatterElements", base, dec.init(np.tile(starts.astype(np.int64), (len(rows), 1))),
                     dec.init(np.array(list(rows.values()), dtype=np.int64)), axis=1)
        out = b.op("Split", b.op("CumSum", jumps, b.const(1)), axis=0, num_outputs=len(rows), outs=len(rows))
        named = dict(zip(rows, out))
        self.local = named.pop("local")
        self.cols.update(named)


class _Decoder:
    """Builds the main-graph part that regenerates the coded tensors of the needed groups: the table, the
    chosen candidates' samples of every block (slot order), the values (layout, sigma or scales, mu), the
    hashed weights, and the split into tensors. Work is cut into batches of at most `CALLS` Philox calls
    (candidates), `PAIRS` hashing pairs and `VALUES` values; a batch is vectorised over all the groups (or
    pieces of a large group) in it, so a small model is a fixed set of nodes whatever its number of groups,
    and a large one never holds more than a batch's intermediates at a time when the decoder runs as nodes.
    Every integer is exact in int64/uint64."""

    CALLS = 1 << 17
    PAIRS = 1 << 19
    VALUES = 1 << 20

    def __init__(self, c: Container, prefix: str, loop: bool = False):
        from onnx import numpy_helper

        self.c, self.nh, self.loop = c, numpy_helper, loop
        self.b = _Builder(prefix)
        self.inits: list = []
        self._table = None
        self._round_consts = None

    def init(self, arr: np.ndarray) -> str:
        name = self.b.fresh()
        self.inits.append(self.nh.from_array(np.asarray(arr, order="C"), name))
        return name

    def table(self) -> str:
        if self._table is None:
            coef, pos, vals = table_encoding()
            extra = [self.init(pos), self.init(vals)] if len(pos) else []
            self._table = self.b.fn("Table", self.init(coef[0]), self.init(coef[1]), *extra)
        return self._table

    def _philox(self, e: str, o: str) -> tuple[str, str]:
        """Philox4x32-10 of counters E = [c0, c2], O = [c3, c1] (int64 [2, N]) -> ([x0, x2], [x3, x1]) in uint64."""
        b = self.b
        e, o = b.op("Cast", e, to=13), b.op("Cast", o, to=13)
        if self._round_consts is None:  # round keys k + r*W mod 2^32 from the file's seed, shared by all batches
            k0, k1 = seed_key(self.c.seed)
            keys = np.array([[(k1 + r * PHILOX_W1) & 0xFFFFFFFF, (k0 + r * PHILOX_W0) & 0xFFFFFFFF] for r in range(10)],
                            dtype=np.uint64)                                                    # [10, 2]: k1, k0
            u64 = lambda *v: self.init(np.array(v, dtype=np.uint64))  # noqa: E731
            if self.loop:  # per round [1] k0 and k1 (Gather by the iteration number), M0 and M1 apart
                self._round_consts = (self.init(keys[:, 1:].copy()), self.init(keys[:, :1].copy()),
                                      u64(PHILOX_M0), u64(PHILOX_M1), u64(32), u64(0xFFFFFFFF))
            else:
                self._round_consts = (self.init(keys.reshape(20, 1)), self.init(np.array([[PHILOX_M0], [PHILOX_M1]],
                                                                                         dtype=np.uint64)),
                                      u64(32), u64(0xFFFFFFFF))
        if self.loop:
            return self._philox_loop(e, o, *self._round_consts)
        return b.fn("Philox", e, o, *self._round_consts, outs=2)

    def _philox_loop(self, e: str, o: str, k0s: str, k1s: str, m0: str, m1: str, s: str, f: str) -> tuple[str, str]:
        """Philox as a Loop over the ten rounds, for decoders that run once (`regenerated_weights_model`).

        onnxruntime opens a graph in time per node (measured: ~0.05 ms a node in Python, ~0.4 ms in
        onnxruntime-web), and ten unrolled rounds are 70 nodes per Philox; a Loop body is one small graph.
        The body keeps the four words as separate [1, N] rows: 10 N element operations a round instead of
        the [2, N] form's 12 N (no reversing Gather). A Loop is not constant-folded, which is why the
        self-decoding model keeps the unrolled functions."""
        from onnx import TensorProto, helper

        b = self.b
        x0, x2 = self._split(e, [1, 1])
        x3, x1 = self._split(o, [1, 1])
        count = b.const(10)
        outer, saved = b.nodes, b._consts
        b.nodes, b._consts = [], {}
        it, cond = b.fresh(), b.fresh()
        ins = [b.fresh() for _ in range(4)]                                                    # x0, x1, x2, x3
        k0, k1 = b.op("Gather", k0s, it, axis=0), b.op("Gather", k1s, it, axis=0)          # [1]
        p0, p1 = b.op("Mul", ins[0], m0), b.op("Mul", ins[2], m1)
        y0 = b.op("BitwiseXor", b.op("BitwiseXor", b.op("BitShift", p1, s, direction="RIGHT"), ins[1]), k0)
        y2 = b.op("BitwiseXor", b.op("BitwiseXor", b.op("BitShift", p0, s, direction="RIGHT"), ins[3]), k1)
        y1, y3 = b.op("BitwiseAnd", p1, f), b.op("BitwiseAnd", p0, f)
        cond_out = b.op("Identity", cond)
        vi, u64 = helper.make_tensor_value_info, TensorProto.UINT64
        body = helper.make_graph(b.nodes, "philox_round",
                                 [vi(it, TensorProto.INT64, []), vi(cond, TensorProto.BOOL, [])]
                                 + [vi(x, u64, None) for x in ins],
                                 [vi(cond_out, TensorProto.BOOL, [])] + [vi(y, u64, None) for y in (y0, y1, y2, y3)])
        b.nodes, b._consts = outer, saved
        y0, y1, y2, y3 = b.op("Loop", count, "", x0, x1, x2, x3, outs=4, body=body)
        return b.op("Concat", y0, y2, axis=0), b.op("Concat", y3, y1, axis=0)

    def _split(self, x: str, sizes: list[int], axis: int = 0) -> list[str]:
        """x cut along `axis` into consecutive pieces of `sizes`."""
        if len(sizes) == 1:
            return [x]
        return self.b.op("Split", x, self.init(np.array(sizes, dtype=np.int64)), axis=axis, outs=len(sizes))

    def _concat(self, parts: list[str]) -> str:
        return parts[0] if len(parts) == 1 else self.b.op("Concat", *parts, axis=0)

    @staticmethod
    def _batches(pieces: list[tuple], size, budget: int) -> list[list[tuple]]:
        """Consecutive pieces grouped greedily so that each batch's total size stays within `budget`."""
        out, cur, total = [], [], 0
        for p in pieces:
            if cur and total + size(p) > budget:
                out.append(cur)
                cur, total = [], 0
            cur.append(p)
            total += size(p)
        return out + ([cur] if cur else [])

    def _slots(self, gids: list[int]) -> dict[int, str]:
        """gid -> float32 [n]: T[u] of every slot in slot order (the chosen candidate's samples; padding cut)."""
        b, c = self.b, self.c
        pieces = []  # (gid, first block, blocks)
        for gid in gids:
            g = c.groups[gid]
            per = max(1, self.CALLS // -(-g.block_size // 8))
            pieces += [(gid, b0, min(per, g.num_blocks - b0)) for b0 in range(0, g.num_blocks, per)]
        out: dict[int, list[str]] = {gid: [] for gid in gids}
        payload = {}
        chunks = {gid: pack_indices(c.groups[gid].indices, c.groups[gid].index_bits) for gid in gids}
        for batch in self._batches(pieces, lambda p: p[2] * -(-c.groups[p[0]].block_size // 8), self.CALLS):
            groups = [c.groups[gid] for gid, _, _ in batch]
            # --- the batch's packed indices: each piece's from its first byte, plus 5 zero bytes to read past the end
            data, bitbase = [], []
            for (gid, b0, nb), g in zip(batch, groups):
                first = b0 * g.index_bits // 8
                last = -(-(b0 + nb) * g.index_bits // 8)
                bitbase.append(8 * sum(len(x) for x in data) + b0 * g.index_bits - 8 * first)
                data.append(chunks[gid][first:last])
            key = b"".join(data) + bytes(5)
            if key not in payload:
                payload[key] = self.init(np.frombuffer(key, dtype=np.uint8))
            chs = [-(-g.block_size // 8) for g in groups]
            ncalls = [nb * ch for (_, _, nb), ch in zip(batch, chs)]
            # --- one Philox counter per call: (j >> 3, chosen index, block, candidate domain word)
            calls = _Segments(self, ncalls, {"ch": chs, "bit": bitbase, "w": [g.index_bits for g in groups],
                                             "b0": [b0 for _, b0, _ in batch],
                                             "word": [domain_word(DOMAIN_CANDIDATE, gid) for gid, _, _ in batch]})
            col, local = calls.cols, calls.local
            blk = b.op("Div", local, col["ch"])
            k = b.op("Sub", local, b.op("Mul", blk, col["ch"]))
            bit = b.op("Add", col["bit"], b.op("Mul", blk, col["w"]))                          # [1, NC]
            byte = b.op("Add", b.op("Div", b.op("Transpose", bit, perm=[1, 0]), b.const(8)), b.const([0, 1, 2, 3, 4]))
            five = b.op("Gather", b.op("Cast", payload[key], to=7), byte)                       # [NC, 5]
            v40 = b.op("ReduceSum", b.op("Mul", five, b.const([1, 1 << 8, 1 << 16, 1 << 24, 1 << 32])), b.const([1]),
                       keepdims=0)
            v40 = b.op("Div", b.unsq(v40, 0), b.op("Pow", b.const(2), b.op("Mod", bit, b.const(8))))
            idx = b.op("Mod", v40, b.op("Pow", b.const(2), col["w"]))                          # chosen candidates
            e = b.op("Concat", k, b.op("Add", blk, col["b0"]), axis=0)
            o = b.op("Concat", b.op("Add", b.op("Mul", local, b.const(0)), col["word"]), idx, axis=0)
            e, o = self._philox(e, o)
            # --- the 8 samples of each call: words x0..x3 by call, low half then high half: u [NC * 8] in
            # (block, call, lane) order, so a piece's slots are its rows [blocks, 8 * ch] cut to the block size
            words = b.op("Transpose", b.op("Gather", b.op("Concat", e, o, axis=0), b.const([0, 3, 1, 2]), axis=0),
                         perm=[1, 0])                                                          # [NC, 4]
            u = b.op("BitwiseAnd", b.op("BitShift", b.unsq(words, 2), b.const(np.array([0, 16], dtype=np.uint64),
                                                                               np.uint64), direction="RIGHT"),
                     b.const(np.uint64(0xFFFF), np.uint64))                                    # [NC, 4, 2]
            t = b.op("Gather", self.table(), b.op("Reshape", b.op("Cast", u, to=7), b.const([-1])))
            sizes = [8 * x for x in ncalls]
            for (gid, b0, nb), g, ch, part in zip(batch, groups, chs, self._split(t, sizes)):
                if g.block_size != 8 * ch:
                    part = b.op("Slice", b.op("Reshape", part, b.const([nb, 8 * ch])), b.const([0]),
                                b.const([g.block_size]), b.const([1]))
                    part = b.op("Reshape", part, b.const([-1]))
                count = min((b0 + nb) * g.block_size, g.num_values) - b0 * g.block_size
                if count != nb * g.block_size:  # the last block's padding
                    part = b.op("Slice", part, b.const([0]), b.const([count]))
                out[gid].append(part)
        return {gid: self._concat(parts) for gid, parts in out.items()}

    def _values(self, gid: int, slot: str) -> str:
        """float32 [n]: v[i] = T[u(slot (a*i + c) mod n)] * m(i) + mu, m = sigma, or sigma * scale_k by rows of n/K."""
        b, g = self.b, self.c.groups[gid]
        n = g.num_values
        mu, sigma = check_coding_parameters(g.mu_bits, g.sigma_bits)
        mu_c = b.const(np.float32(mu), np.float32)
        if g.scales is None and g.layout.kind != "affine":
            return b.op("Add", b.op("Mul", slot, b.const(np.float32(sigma), np.float32)), mu_c)
        sv = None if g.scales is None else self.init(np.asarray(value_scales(g), dtype=np.float32))
        grid = _gather_grid(g.layout.a, n, self.VALUES) if g.layout.kind == "affine" else None
        step = self.VALUES if grid is None else (self.VALUES // grid) * grid   # chunks of whole grid rows
        parts = []
        for i0 in range(0, n, step):
            i1 = min(n, i0 + step)
            i = b.op("Range", b.const(i0), b.const(i1), b.const(1))
            if grid is not None:
                t = self._grid_gather(slot, g.layout.a, g.layout.c, n, i0, i1, grid)
            elif g.layout.kind == "affine":
                p = b.op("Mod", b.op("Add", b.op("Mul", i, b.const(g.layout.a)), b.const(g.layout.c)), b.const(n))
                t = b.op("Gather", slot, p)
            else:
                t = b.op("Slice", slot, b.const([i0]), b.const([i1]))
            m = (b.const(np.float32(sigma), np.float32) if sv is None
                 else b.op("Gather", sv, b.op("Div", i, b.const(n // len(g.scales)))))
            parts.append(b.op("Add", b.op("Mul", t, m), mu_c))
        return self._concat(parts)

    def _grid_gather(self, slot: str, a: int, c: int, n: int, i0: int, i1: int, m: int) -> str:
        """slot[(a*i + c) mod n] for i in [i0, i1), gathered in the order of a [m, k] grid, i = i0 + col*m + row,
        then transposed back: along a grid row p moves by a*m mod n, a few floats (`_gather_grid`), so
        consecutive reads share cache lines where i order jumps by a across the whole tensor."""
        b = self.b
        k = -(-(i1 - i0) // m)
        rows = b.unsq(b.op("Mul", b.op("Range", b.const(0), b.const(m), b.const(1)), b.const(a)), 1)      # [m, 1]
        cols = b.unsq(b.op("Mul", b.op("Range", b.const(0), b.const(k), b.const(1)), b.const(a * m)), 0)  # [1, k]
        p = b.op("Mod", b.op("Add", b.op("Add", rows, cols), b.const(a * i0 + c)), b.const(n))           # < 2^62
        t = b.op("Reshape", b.op("Transpose", b.op("Gather", slot, p), perm=[1, 0]), b.const([-1]))
        return t if k * m == i1 - i0 else b.op("Slice", t, b.const([0]), b.const([i1 - i0]))

    def _hashed(self, gids: list[int], values: dict[int, str]) -> dict[int, str]:
        """gid -> float32 [nw] for hashed groups: two weights per Philox pair,
        w[2q + l] = v[(x_2l * n) >> 32] * (-1)^(x_2l+1 & 1), with counter (q, 0, 0, hashing domain word)."""
        b, c = self.b, self.c
        pieces = []  # (gid, first pair, pairs)
        for gid in gids:
            npairs = (c.group_weights(gid) + 1) // 2
            pieces += [(gid, q0, min(self.PAIRS, npairs - q0)) for q0 in range(0, npairs, self.PAIRS)]
        out: dict[int, list[str]] = {gid: [] for gid in gids}
        for batch in self._batches(pieces, lambda p: p[2], self.PAIRS):
            # counters of the batch's pieces side by side: E = [q, 0], O = [word, 0] (per piece a Range from its
            # first pair, and the word as q * 0 + word: the operator set stays small), then ONE Philox for all
            counts = [np_ for _, _, np_ in batch]
            qs = [b.op("Range", b.const(q0), b.const(q0 + cnt), b.const(1)) for _, q0, cnt in batch]
            q = self._concat(qs)
            word = self._concat([b.op("Add", b.op("Mul", qk, b.const(0)), b.const(domain_word(DOMAIN_HASH, gid)))
                                 for qk, (gid, _, _) in zip(qs, batch)])
            pad = b.const([0, 0, 1, 0])
            e, o = self._philox(b.op("Pad", b.unsq(q, 0), pad), b.op("Pad", b.unsq(word, 0), pad))  # [x0, x2], [x3, x1]
            odd = b.op("Cast", b.op("BitwiseAnd", b.op("Gather", o, b.const([1, 0]), axis=0),
                                    b.const(np.uint64(1), np.uint64)), to=1)
            sign = b.op("Sub", b.const(1.0, np.float32), b.op("Mul", b.const(2.0, np.float32), odd))   # [2, P]
            # per piece, with its group's n and values as constants: index = (word * n) >> 32, both weights
            # of each pair, in pair order (no per-element parameter rows: those cost more than Philox here)
            es = self._split(e, counts, axis=1)
            signs = self._split(sign, counts, axis=1)
            for (gid, _, _), ek, sk in zip(batch, es, signs):
                n = b.const(np.array([c.groups[gid].num_values], dtype=np.uint64), np.uint64)
                index = b.op("Cast", b.op("BitShift", b.op("Mul", ek, n),
                                          b.const(np.array([32], dtype=np.uint64), np.uint64), direction="RIGHT"), to=7)
                w = b.op("Mul", b.op("Gather", values[gid], index), sk)                                # [2, p]
                out[gid].append(b.op("Reshape", b.op("Transpose", w, perm=[1, 0]), b.const([-1])))
        result = {}
        for gid, parts in out.items():
            w = self._concat(parts)
            nw = c.group_weights(gid)
            result[gid] = w if nw % 2 == 0 else b.op("Slice", w, b.const([0]), b.const([nw]))
        return result

    def tensors(self, wanted: set[str], rename: dict[str, str] | None = None) -> None:
        """Emit every wanted coded tensor under its own name (or under `rename[name]`)."""
        rename = rename or {}
        b, c = self.b, self.c
        gids = [g for g in range(len(c.groups)) if any(m.name in wanted for m in c.group_members(g))
                and c.group_weights(g) > 0]
        slots = self._slots(gids)
        values = {gid: self._values(gid, slots[gid]) for gid in gids}
        hashed = self._hashed([gid for gid in gids if c.groups[gid].hashing], values)
        for gid in range(len(c.groups)):
            members = c.group_members(gid)
            if not any(m.name in wanted for m in members):
                continue
            if gid not in values:  # no weights at all: empty tensors
                parts = [self.init(np.zeros(0, dtype=np.float32)) for _ in members]
            else:
                parts = self._split(hashed.get(gid, values[gid]), [m.numel for m in members])
            for m, part in zip(members, parts):
                if m.name in wanted:
                    b.op("Reshape", part, self.init(np.array(m.shape, dtype=np.int64)),
                         outs=[rename.get(m.name, m.name)], allowzero=1)

    def functions(self, opset: int) -> list:
        """The model-local functions the decoder calls (with Loop-Philox only Table)."""
        return [f for f in functions(opset) if not self.loop or f.name == "Table"]


GRID_MIN_VALUES = 1 << 16   # below this a group's slots (256 KiB) sit in cache in any order
GRID_MAX_STEP = 16           # floats a grid row may move per read and still share cache lines


def _gather_grid(a: int, n: int, chunk: int) -> int | None:
    """Rows m of the read grid for an affine layout's gather (a*i + c) mod n: the m in [1, chunk / 16]
    whose step a*m mod n lies closest to 0 (either side), if that step is at most GRID_MAX_STEP floats;
    else None (gather in i order). Measured on a 2.36 M-value group (onnxruntime, one thread): 68 ms
    in i order, 28 ms by the grid with its transpose (m = 10,360, step 8)."""
    if n < GRID_MIN_VALUES:
        return None
    ms = np.arange(1, max(2, min(n // 16, chunk // 16) + 1), dtype=np.int64)
    d = (a * ms) % n
    step = np.minimum(d, n - d)
    best = int(np.argmin(step))
    return int(ms[best]) if step[best] <= GRID_MAX_STEP else None


def _default_opset(model) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _make_model(nodes, inits, outputs, name: str, dec: _Decoder):
    from onnx import helper

    graph = helper.make_graph(nodes, name, [], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                              functions=dec.functions(OPSET), producer_name="mrcformat_runtime")
    model.ir_version = _IR_MIN
    return model


def _convert_opset(model, c: Container, wanted: set[str], opset: int, stubbed: frozenset = frozenset()):
    """onnx.version_converter to OPSET; the file's tensors are declared as graph inputs meanwhile
    (the converter wants every value defined) and dropped again afterwards."""
    from onnx import helper, version_converter

    declared = {i.name for i in model.graph.input}
    added = [t for t in c.tensors if t.name in wanted and t.name not in declared and t.name not in stubbed]
    model.graph.input.extend(helper.make_tensor_value_info(t.name, ONNX_DTYPES[t.dtype], list(t.shape)) for t in added)
    try:
        converted = version_converter.convert_version(model, OPSET)
    except Exception as e:
        raise GraphError(f"the graph uses opset {opset}; converting it to opset {OPSET} for the self-decoding "
                         f"export failed: {e}", "graph") from e
    _check_conversion(model, converted, opset)
    model = converted
    drop = {t.name for t in added}
    keep = [i for i in model.graph.input if i.name not in drop]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def _check_conversion(before, after, opset: int) -> None:
    """GraphError if ONNX's strict shape inference fails on the opset-18 graph but not on the stored one
    (the file's tensors declared as inputs of their shapes in both): a later operator version checks more
    (Gemm-13 unifies its inner dimension, Gemm-9 and -11 do not), so a contradiction the stored graph
    never surfaced, e.g. a declared input shape that no run could feed, would make onnxruntime refuse
    the exported model. Declared value_info and output shapes are left out of both checks: onnxruntime
    merges those leniently (a converted Reshape may then disagree with a stale value_info, and the model
    still opens: ddddocr's common.onnx). Failures of the stored graph itself (unknown operators, ...) pass."""
    from onnx import shape_inference

    try:
        shape_inference.infer_shapes(_without_shape_hints(after), strict_mode=True)
    except Exception as e:  # onnx raises InferenceError, ValidationError or RuntimeError
        try:
            shape_inference.infer_shapes(_without_shape_hints(before), strict_mode=True)
        except Exception:  # noqa: BLE001
            return
        raise GraphError(f"the graph uses opset {opset}, and the self-decoding export needs opset {OPSET}; at opset "
                         f"{OPSET} its shapes contradict each other (ONNX shape inference: "
                         f"{str(e).strip()[:300]}): onnxruntime would refuse the exported model. Export it "
                         "plain or as two steps (export_two_step), which keep the stored opset", "graph") from e


def _without_shape_hints(model):
    """A copy of `model` whose graphs (subgraphs too) have no value_info and outputs of unknown shape."""
    copy = type(model)()
    copy.CopyFrom(model)
    for g in all_graphs(copy.graph):
        del g.value_info[:]
        for o in g.output:
            if o.type.HasField("tensor_type"):
                o.type.tensor_type.ClearField("shape")
    return copy


def self_decoding_model(container: str | os.PathLike | Container):
    """The stored graph plus a decoder that regenerates the file's tensors inside onnxruntime.

    Graphs whose default opset is below 18 are converted to opset 18 first (onnx.version_converter),
    since the decoder needs opset-18 bitwise operators; GraphError if that fails or there is no graph.
    """
    return self_decoding_model_sources(container)[0]


def self_decoding_model_sources(container: str | os.PathLike | Container) -> tuple:
    """(`self_decoding_model`, {file tensor name: the top-graph value that holds it once decoded}) for every
    coded tensor the graph uses: its own name, or for a stub the decoder's value that the stub reads."""
    from onnx import helper

    c = load_container(container)
    model = graph_model(c)
    if any(imp.domain == DOMAIN for imp in model.opset_import):
        raise GraphError(f"the stored graph already uses the operator domain {DOMAIN!r} of the self-decoding export",
                         "graph")
    wanted = wanted_names(c, model)
    if not any(t.encoding == "coded" and t.name in wanted for t in c.tensors):
        # nothing to decode: the plain model, not the stored graph moved to opset 18 and IR 8 for a decoder it
        # does not hold (a later IR reads the graph differently: fuzz seed 63954, an IR-1 graph whose input
        # shadows a raw Constant stub, which onnxruntime opened plain and refused once moved to IR 8)
        put_tensors(c, model, graph_stubs(c, model), wanted)
        return model, {}
    defaults = [imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")]
    if len(defaults) > 1:  # which one a runtime takes is not defined; the decoder's nodes need to know
        raise GraphError(f"the graph imports the default ONNX operator set {len(defaults)} times (versions "
                         f"{', '.join(map(str, defaults))}); the self-decoding export needs exactly one", "graph")
    opset = _default_opset(model)
    if opset is None:
        model.opset_import.append(helper.make_opsetid("", OPSET))
        opset = OPSET
    if not model.graph.output:  # onnxruntime fails inside its initialisation on a decoder nothing reads
        raise GraphError("the graph has no outputs: its self-decoding export would decode weights nothing reads",
                         "graph")
    if opset < OPSET:
        model = _convert_opset(model, c, wanted, opset, frozenset(graph_stubs(c, model)))
        opset = OPSET
    g = model.graph
    stubs = graph_stubs(c, model)
    taken = _all_names(model) | {t.name for t in c.tensors}
    dec = _Decoder(c, _prefix(taken))
    coded = {t.name for t in c.tensors if t.encoding == "coded"}
    # a stubbed coded tensor is decoded under a fresh name in the top graph and handed to its place by an
    # Identity: a Constant stub becomes that Identity, an initializer stub is replaced by one in its graph
    rename = {name: dec.b.fresh() for name in sorted(stubs) if name in coded}
    dec.tensors(wanted, rename)
    top_identities = []
    for name, stub in stubs.items():
        t = c.tensor(name)
        if t.encoding == "raw":
            fill_stub(stub, stub_array(stub, t, t.data)[1])
            continue
        # the stub is deleted in place (rebuilding a list would copy its messages and detach the graph's other
        # stubs: a raw one listed after it was then filled in a copy and onnxruntime refused the model), and an
        # Identity of the decoded value goes to the front of its graph. In place of a Constant it could stand
        # after its consumers: onnxruntime turns Constants into initializers, so such a graph opens plain, but
        # an Identity there leaves it unsorted, which onnxruntime refuses (fuzz seed 33718)
        if stub.node is not None:
            nodes = stub.graph.node
            for k in reversed(range(len(nodes))):
                if constant_value(nodes[k]) is not None and nodes[k].output and nodes[k].output[0] == name:
                    del nodes[k]
        else:
            inits = stub.graph.initializer
            for k in reversed(range(len(inits))):
                if inits[k].name == name:
                    del inits[k]
        ident = helper.make_node("Identity", [rename[name]], [name], name=dec.b.fresh())
        if stub.graph is g:
            top_identities.append(ident)
        else:
            stub.graph.node.insert(0, ident)
    raws = [raw_initializer(t.name, t.dtype, t.data) for t in c.tensors
            if t.encoding == "raw" and t.name in wanted and t.name not in stubs]
    nodes = list(dec.b.nodes) + top_identities + list(g.node)  # decoder first: nodes stay topologically sorted
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(dec.inits + raws)
    keep = [i for i in g.input if i.name not in coded]  # IR < 4 graphs list weights as inputs too
    del g.input[:]
    g.input.extend(keep)
    model.functions.extend(dec.functions(opset))
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    model.ir_version = max(model.ir_version, _IR_MIN)
    return model, {name: rename.get(name, name) for name in sorted(wanted & coded)}


_AS_DECODED = {"bfloat16": "uint16", "bool": "uint8"}  # raw dtypes numpy/mrcformat.decode represent differently


def regenerated_weights_model(container: str | os.PathLike | Container, names: Iterable[str] | None = None, *,
                              loop: bool = True):
    """A model without inputs whose outputs are the file's tensors (all, or those called `names`, in header
    order), by name, regenerated in-graph: a decoder to run once (graph optimisations off).

    `loop`: Philox as an ONNX Loop over its ten rounds (fewer nodes, so it opens faster: the two-step
    decoder and `ort.session(self_decoding=True)`); False: the unrolled functions of the self-decoding
    model, which onnxruntime can constant-fold.

    Coded tensors come out as float32, raw ones as `mrcformat.decode` returns them: their stored dtype,
    except bfloat16 as its uint16 bit patterns (onnxruntime's Python API cannot return bfloat16) and
    bool as uint8 0/1."""
    from onnx import helper

    c = load_container(container)
    chosen = {t.name for t in c.tensors} if names is None else set(names)
    dec = _Decoder(c, _prefix({t.name for t in c.tensors}), loop=loop)
    dec.tensors(chosen)
    outputs = []
    for t in (t for t in c.tensors if t.name in chosen):
        dtype = "float32" if t.encoding == "coded" else _AS_DECODED.get(t.dtype, t.dtype)
        if t.encoding == "raw":
            inner = dec.b.fresh()
            dec.inits.append(raw_initializer(inner, dtype, t.data))
            dec.b.op("Identity", inner, outs=[t.name])
        outputs.append(helper.make_tensor_value_info(t.name, ONNX_DTYPES[dtype], list(t.shape)))
    return _make_model(dec.b.nodes, dec.inits, outputs, "mrc_weights", dec)


def table_model():
    """A model without inputs whose single output `T` is the normal16 table rebuilt in-graph."""
    from onnx import TensorProto, helper

    dec = _Decoder(Container(seed=0), "mrc/")
    dec.b.op("Identity", dec.table(), outs=["T"])
    return _make_model(dec.b.nodes, dec.inits, [helper.make_tensor_value_info("T", TensorProto.FLOAT, [65536])],
                       "normal16", dec)
