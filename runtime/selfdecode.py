"""Self-decoding ONNX export: onnxruntime regenerates the weights from the stored indices.

The exported model carries, instead of float32 weights, what the `.mrc` file carries: the groups' packed
index bytes (concatenated), a few int64/float32 parameters per group, the file's seed, raw tensors, plus
a compact exact encoding of the normal16 table (SPEC.md section 4). Standard opset-18 operators and two
model-local functions (domain `mrc.sd`: Round, Table) turn these into the weights; onnxruntime inlines
them and, since every input is a constant, folds the whole decode into initializers at session creation
(with graph optimisations off, the same nodes run in every `run` instead).

The decoder is a fixed set of ~260 vectorised nodes (after inlining) whatever the number of groups (`_Decoder`), because
onnxruntime's constant folding costs per node and per byte: it runs one node at a time and turns every
output into an initializer (copied into a TensorProto and kept until the pass ends). So:

- all counters of the file go through ONE Philox4x32-10 evaluation: the chosen candidate of every block
  of every group, and every pair of hashed weights; per-group parameters become per-element rows by one
  CumSum over each segment's jumps (`_Segments`), never by a loop over groups;
- Philox runs in uint64: a 32-bit word times a 32-bit multiplier is exact (< 2^64), hi = p >> 32,
  lo = p & (2^32 - 1); the state is two [2, N] tensors E = (x0, x2), O = (x3, x1), so a round is six
  nodes (`_f_round`); index unpacking, layout and slot arithmetic stay in int64 below 2^63;
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

import numpy as np

from mrcformat.bitpack import pack_indices
from mrcformat.container import Container
from mrcformat.errors import GraphError
from mrcformat.onnx_graphs import all_graphs
from mrcformat.decoder import value_scales
from mrcformat.sampler import check_coding_parameters, normal_table
from mrcformat.streams import DOMAIN_CANDIDATE, DOMAIN_HASH, domain_word, seed_key

from .onnx_model import ONNX_DTYPES, fill_stub, graph_model, graph_stubs, load_container, raw_initializer, wanted_names

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


def _f_table(opset: int, exceptions: bool):
    """Table(cab f64[8,2], ccd f64[8,2][, epos i64[E], evals f32[E]]) -> T f32[65536] (see module doc)."""
    b = _Builder("t")
    powers = b.op("Range", b.const(0.0, np.float64), b.const(8.0, np.float64), b.const(1.0, np.float64))
    d17 = b.const(131072.0, np.float64)

    def rational(r: str, cf: str) -> str:
        num, den = b.op("Split", b.op("MatMul", b.op("Pow", r, powers), cf), axis=1, num_outputs=2, outs=2)
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
    return [_f_round(opset), _f_table(opset, len(table_encoding()[1]) > 0)]


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


def _prefix(taken: set[str]) -> str:
    p = "mrc"
    while any(n.startswith(p) for n in taken):
        p = "_" + p
    return p


class _Segments:
    """Per-element parameters of a run of concatenated per-group segments (the groups' calls, values or
    weights, in group order), [1, total] each: `local` (the position within its own segment) and one row per
    column, constant within a segment. All rows come from one CumSum over a [rows, total] matrix that holds
    each row's step at every element (1 for `local`, 0 for the others) and, at each segment start, the jump
    to that segment's value: a handful of nodes and passes over the data whatever the number of groups.
    Float columns are gathered by the segment number. Groups with an empty segment are left out; a single
    segment needs no per-element parameters at all (its columns are [1, 1] constants that broadcast)."""

    def __init__(self, dec: "_Decoder", lengths: list[int], columns: dict[str, list[int]],
                 floats: dict[str, list[float]] | None = None):
        b = dec.b
        floats = floats or {}
        keep = [k for k, n in enumerate(lengths) if n > 0]
        total = int(sum(lengths))
        self.cols: dict[str, str] = {}
        if len(keep) == 1:
            self.local = b.unsq(b.op("Range", b.const(0), b.const(total), b.const(1)), 0)
            for table, dtype in ((columns, np.int64), (floats, np.float32)):
                for name, values in table.items():
                    self.cols[name] = dec.init(np.array([[values[keep[0]]]], dtype=dtype))
            return
        starts = np.cumsum([0] + [lengths[k] for k in keep])[:-1]
        rows = {"local": [0] + [1 - lengths[k] for k in keep[:-1]]}
        for name, values in columns.items():
            kept = [int(values[k]) for k in keep]
            rows[name] = [kept[0]] + [y - x for x, y in zip(kept, kept[1:])]
        if floats:
            rows["seg"] = [0] + [1] * (len(keep) - 1)
        steps = np.array([[1] if name == "local" else [0] for name in rows], dtype=np.int64)
        base = b.op("Expand", dec.init(steps), b.const([len(rows), total]))
        jumps = b.op("ScatterElements", base, dec.init(np.tile(starts.astype(np.int64), (len(rows), 1))),
                     dec.init(np.array(list(rows.values()), dtype=np.int64)), axis=1)
        out = b.op("Split", b.op("CumSum", jumps, b.const(1)), axis=0, num_outputs=len(rows), outs=len(rows))
        named = dict(zip(rows, out))
        self.local = named.pop("local")
        seg = named.pop("seg", None)
        self.cols.update(named)
        for name, values in floats.items():
            self.cols[name] = b.op("Gather", dec.init(np.array([values[k] for k in keep], dtype=np.float32)), seg)


class _Decoder:
    """Builds the main-graph part that regenerates the coded tensors of the needed groups with a fixed
    number of vectorised nodes, whatever the number of groups: the table, one Philox evaluation of every
    counter the file uses (the chosen candidate of each block, the hashing pairs), the values, the weights,
    and the split of the flat weights into tensors. Every integer is exact in int64/uint64."""

    def __init__(self, c: Container, prefix: str):
        from onnx import numpy_helper

        self.c, self.nh = c, numpy_helper
        self.b = _Builder(prefix)
        self.inits: list = []
        self._table = None

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
        """Ten Round calls; the round keys (k + r*W mod 2^32) are computed here from the file's seed."""
        b = self.b
        k0, k1 = seed_key(self.c.seed)
        keys = np.array([[[(k1 + r * PHILOX_W1) & 0xFFFFFFFF], [(k0 + r * PHILOX_W0) & 0xFFFFFFFF]]
                         for r in range(10)], dtype=np.uint64).reshape(20, 1)
        rk = b.op("Split", self.init(keys), axis=0, num_outputs=10, outs=10)
        m = self.init(np.array([[PHILOX_M0], [PHILOX_M1]], dtype=np.uint64))
        s = self.init(np.array([32], dtype=np.uint64))
        f = self.init(np.array([0xFFFFFFFF], dtype=np.uint64))
        for r in range(10):
            e, o = b.fn("Round", e, o, rk[r], m, s, f, outs=2)
        return e, o

    def flat_weights(self, gids: list[int]) -> list[tuple[str, list]]:
        """The weights of groups `gids` (ascending) as flat vectors, each with its plan: (size, member tensor or
        None for a piece to drop), in order. The values vector holds the groups without hashing (and the hashed
        groups' values, dropped), the hashed-weights vector the groups with hashing (two lanes per pair)."""
        b, c = self.b, self.c
        groups = [c.groups[g] for g in gids]
        nws = [c.group_weights(g) for g in gids]
        u64 = 13
        # --- packed indices of all groups, each from a byte boundary, plus 5 zero bytes to read past the end
        chunks = [pack_indices(g.indices, g.index_bits) for g in groups]
        bitbase = (8 * np.cumsum([0] + [len(x) for x in chunks])[:-1]).tolist()
        payload = self.init(np.frombuffer(b"".join(chunks) + bytes(5), dtype=np.uint8))
        chs = [-(-g.block_size // 8) for g in groups]
        ncalls = [g.num_blocks * ch for g, ch in zip(groups, chs)]
        cstart = np.cumsum([0] + ncalls)[:-1].tolist()
        # --- one Philox counter per candidate call: (j >> 3, chosen index, block, candidate domain word)
        calls = _Segments(self, ncalls, {"ch": chs, "bit": bitbase, "w": [g.index_bits for g in groups],
                                         "word": [domain_word(DOMAIN_CANDIDATE, g) for g in gids]})
        col = calls.cols
        local = calls.local
        blk = b.op("Div", local, col["ch"])
        k = b.op("Sub", local, b.op("Mul", blk, col["ch"]))
        bit = b.op("Add", col["bit"], b.op("Mul", blk, col["w"]))                          # [1, NC]
        byte = b.op("Add", b.op("Div", b.op("Transpose", bit, perm=[1, 0]), b.const(8)), b.const([0, 1, 2, 3, 4]))
        five = b.op("Gather", b.op("Cast", payload, to=7), byte)                            # [NC, 5]
        v40 = b.op("ReduceSum", b.op("Mul", five, b.const([1, 1 << 8, 1 << 16, 1 << 24, 1 << 32])), b.const([1]),
                   keepdims=0)
        v40 = b.op("Div", b.unsq(v40, 0), b.op("Pow", b.const(2), b.op("Mod", bit, b.const(8))))
        idx = b.op("Mod", v40, b.op("Pow", b.const(2), col["w"]))                          # chosen candidates
        e_parts = [b.op("Concat", k, blk, axis=0)]
        o_parts = [b.op("Concat", b.op("Add", b.op("Mul", local, b.const(0)), col["word"]), idx, axis=0)]
        nvs = [g.num_values for g in groups]
        vstart = np.cumsum([0] + nvs)[:-1].tolist()
        # --- one Philox counter per pair of hashed weights: (t >> 1, 0, 0, hashing domain word)
        hashed = [i for i, g in enumerate(groups) if g.hashing and nws[i] > 0]
        npairs = [(nws[i] + 1) // 2 if i in hashed else 0 for i in range(len(gids))]
        if hashed:
            pairs = _Segments(self, npairs, {"word": [domain_word(DOMAIN_HASH, g) for g in gids],
                                             "n": nvs, "vstart": vstart})
            pl = pairs.local
            pad = b.const([0, 0, 1, 0])
            e_parts.append(b.op("Pad", pl, pad))
            o_parts.append(b.op("Pad", b.op("Add", b.op("Mul", pl, b.const(0)), pairs.cols["word"]), pad))
        e = b.op("Cast", e_parts[0] if len(e_parts) == 1 else b.op("Concat", *e_parts, axis=1), to=u64)
        o = b.op("Cast", o_parts[0] if len(o_parts) == 1 else b.op("Concat", *o_parts, axis=1), to=u64)
        e, o = self._philox(e, o)
        nc = sum(ncalls)
        # --- values: v[i] = mu + m(i) * T[u(slot (a*i + c) mod n)], m = sigma, or sigma * scale_k by rows of n/K
        words = b.op("Concat", e, o, axis=0)                                                # [x0, x2, x3, x1]
        if hashed:
            words = b.op("Slice", words, b.const([0]), b.const([nc]), b.const([1]))
        words = b.op("Reshape", b.op("Gather", words, b.const([0, 3, 1, 2]), axis=0), b.const([-1]))  # x0|x1|x2|x3
        mults, mbase, mdiv, mus = [], [], [], []
        for g in groups:
            mu, sigma = check_coding_parameters(g.mu_bits, g.sigma_bits)
            sv = [sigma] if g.scales is None else list(value_scales(g))
            mbase.append(len(mults))
            mults.extend(sv)
            mdiv.append(g.num_values // len(sv))
            mus.append(float(mu))
        lay = [(g.layout.a, g.layout.c) if g.layout.kind == "affine" else (1, 0) for g in groups]
        vals = _Segments(self, nvs, {"a": [a for a, _ in lay], "c": [cc for _, cc in lay], "n": nvs,
                                     "B": [g.block_size for g in groups], "ch": chs, "cstart": cstart,
                                     "mbase": mbase, "mdiv": mdiv}, {"mu": mus})
        col = vals.cols
        i = vals.local
        p = i if all(x == (1, 0) for x in lay) else b.op("Mod", b.op("Add", b.op("Mul", i, col["a"]), col["c"]), col["n"])
        blk = b.op("Div", p, col["B"])
        j = b.op("Sub", p, b.op("Mul", blk, col["B"]))
        call = b.op("Add", b.op("Add", col["cstart"], b.op("Mul", blk, col["ch"])), b.op("Div", j, b.const(8)))
        lane = b.op("Mod", j, b.const(8))
        at = b.op("Add", b.op("Mul", b.op("Div", lane, b.const(2)), b.const(nc)), call)
        half = b.op("Cast", b.op("Mul", b.op("Mod", lane, b.const(2)), b.const(16)), to=u64)
        u = b.op("BitwiseAnd", b.op("BitShift", b.op("Gather", words, at), half, direction="RIGHT"),
                 b.const(np.uint64(0xFFFF), np.uint64))
        tv = b.op("Gather", self.table(), b.op("Cast", u, to=7))
        m = b.op("Gather", self.init(np.array(mults, dtype=np.float32)),
                 b.op("Add", col["mbase"], b.op("Div", i, col["mdiv"])))
        v = b.op("Reshape", b.op("Add", b.op("Mul", tv, m), col["mu"]), b.const([-1]))      # [NV]
        plan_v = [(nvs[k], None) if k in hashed else (m.numel, m) for k, gid in enumerate(gids)
                  for m in ([None] if k in hashed else c.group_members(gid))]
        if not hashed:
            return [(v, plan_v)]
        # --- hashed weights, two per Philox pair: w[2q + l] = v[(x_2l * n) >> 32] * (-1)^(x_2l+1)
        pw = b.op("Slice", e, b.const([nc]), b.const([nc + sum(npairs)]), b.const([1]))    # [x0, x2]: lanes 0, 1
        po = b.op("Slice", o, b.const([nc]), b.const([nc + sum(npairs)]), b.const([1]))    # [x3, x1]: lanes 1, 0
        index = b.op("Cast", b.op("BitShift", b.op("Mul", pw, b.op("Cast", pairs.cols["n"], to=u64)),
                                  b.const(np.array([32], dtype=np.uint64), np.uint64), direction="RIGHT"), to=7)
        odd = b.op("Cast", b.op("BitwiseAnd", b.op("Gather", po, b.const([1, 0]), axis=0),
                                b.const(np.uint64(1), np.uint64)), to=1)
        sign = b.op("Sub", b.const(1.0, np.float32), b.op("Mul", b.const(2.0, np.float32), odd))
        w = b.op("Mul", b.op("Gather", v, b.op("Add", index, pairs.cols["vstart"])), sign)  # [2, NP]
        hw = b.op("Reshape", b.op("Transpose", w, perm=[1, 0]), b.const([-1]))
        plan_h = []
        for k in hashed:
            plan_h.extend((m.numel, m) for m in c.group_members(gids[k]))
            plan_h.append((2 * npairs[k] - nws[k], None))  # the odd group's unused last lane
        return [(v, plan_v), (hw, plan_h)]

    def tensors(self, wanted: set[str], rename: dict[str, str] | None = None) -> None:
        """Emit every wanted coded tensor under its own name (or under `rename[name]`)."""
        rename = rename or {}
        b, c = self.b, self.c
        gids = [g for g in range(len(c.groups)) if any(m.name in wanted for m in c.group_members(g))]
        if not gids:
            return
        for flat, plan in self.flat_weights(gids):
            parts = [flat]
            if len(plan) > 1:
                parts = b.op("Split", flat, self.init(np.array([n for n, _ in plan], dtype=np.int64)), axis=0,
                             outs=len(plan))
            for (_, m), part in zip(plan, parts):
                if m is not None and m.name in wanted:
                    b.op("Reshape", part, self.init(np.array(m.shape, dtype=np.int64)),
                         outs=[rename.get(m.name, m.name)], allowzero=1)

    def functions(self, opset: int) -> list:
        return functions(opset)


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
        model = version_converter.convert_version(model, OPSET)
    except Exception as e:
        raise GraphError(f"the graph uses opset {opset}; converting it to opset {OPSET} for the self-decoding "
                         f"export failed: {e}", "graph") from e
    drop = {t.name for t in added}
    keep = [i for i in model.graph.input if i.name not in drop]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


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
    opset = _default_opset(model)
    if opset is None:
        model.opset_import.append(helper.make_opsetid("", OPSET))
        opset = OPSET
    wanted = wanted_names(c, model)
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
            fill_stub(stub, t.data)
            continue
        if stub.node is not None:
            node = stub.node
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
            node.input.append(rename[name])
            continue
        keep = [i for i in stub.graph.initializer if i is not stub.tensor and i.name != name]
        del stub.graph.initializer[:]
        stub.graph.initializer.extend(keep)
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


def regenerated_weights_model(container: str | os.PathLike | Container):
    """A model without inputs whose outputs are all the file's tensors, by name, regenerated in-graph.

    Coded tensors come out as float32, raw ones as `mrcformat.decode` returns them: their stored dtype,
    except bfloat16 as its uint16 bit patterns (onnxruntime's Python API cannot return bfloat16) and
    bool as uint8 0/1."""
    from onnx import helper

    c = load_container(container)
    dec = _Decoder(c, _prefix({t.name for t in c.tensors}))
    dec.tensors({t.name for t in c.tensors})
    outputs = []
    for t in c.tensors:
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
