"""Self-decoding ONNX export: onnxruntime regenerates the weights from the stored indices.

The exported model carries, instead of float32 weights, what the `.mrc` file carries: each group's
packed index bytes and coding parameters, the file's seed, raw tensors, plus a compact exact encoding
of the normal16 table (SPEC.md section 4). Five model-local ONNX functions (domain `mrc.sd`: Round,
Philox, Values, Hash, Table) turn these into the weights with standard opset-18 operators; onnxruntime
inlines them and, since every input is a constant, folds the whole decode into initializers at session
creation (with graph optimisations off, the same nodes run in every `run` instead).

Integer work (Philox4x32-10, index unpacking, layout, hashing) runs in int64 only and every
intermediate value stays in [0, 2^63), so it is exact on any conforming runtime:

- 32-bit words live in int64 as values in [0, 2^32); shifts are Mul/Div by powers of two (ONNX
  BitShift is unsigned-only), xor/and are opset-18 BitwiseXor/BitwiseAnd on int64;
- the 32x32->64 Philox product is split into 16-bit halves of the multiplier M = Mhi*2^16 + Mlo:
  p1 = x*Mlo, p2 = x*Mhi (both < 2^48), hi = (p2 + p1 div 2^16) div 2^16,
  lo = (p1 + (p2 mod 2^16) * 2^16) mod 2^32;
- the Philox state of all counters of a group is one [4, M] tensor ordered (x0, x2, x3, x1), so a
  round is a Split, one multiply of both products, two xors and a Concat (see `_f_round`);
- only the chosen candidate of each block is generated, for all blocks of a group at once;
  affine layouts are v[i] = slot[(a*i + c) mod n] (a*i < 2^62), hashing index = (word * n) div 2^32.

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
from mrcformat.sampler import normal_table
from mrcformat.streams import DOMAIN_CANDIDATE, DOMAIN_HASH, domain_word, seed_key

from .onnx_model import ONNX_DTYPES, fill_stub, graph_model, graph_stubs, load_container, raw_initializer, wanted_names

__all__ = [
    "DOMAIN",
    "OPSET",
    "functions",
    "regenerated_weights_model",
    "self_decoding_model",
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
    """Round(S, K) -> (S', K'): one Philox round on the stacked state S = [x0, x2, x3, x1] (shape [4, M]),
    round key K = [k1, k0] (shape [2, 1]); K' = K + (W1, W0) mod 2^32 is the next round's key.

    With E = [x0, x2] and O = [x3, x1]: hi, lo = halves of E * [M0, M1]; X = hi ^ O ^ K = [y2, y0];
    S' = [X reversed, lo] = [y0, y2, y3, y1], the same arrangement.
    """
    b = _Builder("t")
    f32 = b.const(0xFFFFFFFF)
    c16 = b.const(1 << 16)
    e, o = b.op("Split", "S", axis=0, num_outputs=2, outs=2)
    p1 = b.op("Mul", e, b.const(np.array([[PHILOX_M0 & 0xFFFF], [PHILOX_M1 & 0xFFFF]])))
    p2 = b.op("Mul", e, b.const(np.array([[PHILOX_M0 >> 16], [PHILOX_M1 >> 16]])))
    hi = b.op("Div", b.op("Add", p2, b.op("Div", p1, c16)), c16)
    lo = b.op("BitwiseAnd", b.op("Add", p1, b.op("Mul", b.op("BitwiseAnd", p2, b.const(0xFFFF)), c16)), f32)
    x = b.op("BitwiseXor", b.op("BitwiseXor", hi, o), "K")
    b.op("Concat", b.op("Gather", x, b.const([1, 0]), axis=0), lo, axis=0, outs=["T"])
    b.op("BitwiseAnd", b.op("Add", "K", b.const(np.array([[PHILOX_W1], [PHILOX_W0]]))), f32, outs=["N"])
    return _function("Round", ["S", "K"], ["T", "N"], b, opset)


def _f_philox(opset: int):
    """Philox(S, K) -> S: Philox4x32-10 on the stacked counter S = [c0, c2, c3, c1] with key K = [k1, k0]."""
    b = _Builder("t")
    s, k = "S", "K"
    for r in range(10):
        s, k = b.fn("Round", s, k, outs=["X", b.fresh()] if r == 9 else 2)
    return _function("Philox", ["S", "K"], ["X"], b, opset)


def _f_values(opset: int):
    """Values(payload u8[L + 4], prm i64[9], ms f32[2], key i64[2,1], table f32[65536]) -> v f32[n].

    payload = the group's packed indices and 4 zero bytes; prm = (counter word 3, block size B, index bits w, blocks nb, values n, affine a, affine c,
    Philox calls per candidate ceil(B/8), 2^w); ms = (mu, sigma). Unpacks the chosen index of every
    block, generates only those candidates (all blocks at once), looks the samples up in the table,
    applies mu + sigma*T[u] and gathers v[i] = slot[(a*i + c) mod n] (contiguous: a=1, c=0).
    """
    b = _Builder("t")
    gw, bsz, w, nb, n, a, c, ch, pw = b.op("Split", "prm", axis=0, num_outputs=9, outs=9)
    zero, one = b.const(0), b.const(1)
    # --- index b occupies payload bits [b*w, (b+1)*w), least significant bit first (w <= 32: 5 bytes)
    blk = b.op("Range", zero, b.op("Squeeze", nb), one)
    bit = b.op("Mul", blk, w)
    five = b.op("Gather", b.op("Cast", "payload", to=7), b.op("Add", b.unsq(b.op("Div", bit, b.const(8)), 1), b.const([0, 1, 2, 3, 4])))
    v40 = b.op("ReduceSum", b.op("Mul", five, b.const([1, 1 << 8, 1 << 16, 1 << 24, 1 << 32])), b.const([1]), keepdims=0)
    shift = b.op("Gather", b.const([1, 2, 4, 8, 16, 32, 64, 128]), b.op("BitwiseAnd", bit, b.const(7)))
    idx = b.op("Mod", b.op("Div", v40, shift), pw)
    # --- Philox(counter = (j>>3, index, block, word3)) of the chosen candidate of every block
    # (state [4, nb*ch]: ONNX runtimes broadcast per-row constants over long rows fast)
    shape = b.op("Concat", nb, ch, axis=0)
    c0 = b.op("Expand", b.op("Range", zero, b.op("Squeeze", ch), one), shape)
    c1 = b.op("Expand", b.unsq(idx, 1), shape)
    c2 = b.op("Expand", b.unsq(blk, 1), shape)
    c3 = b.op("Expand", gw, shape)
    four, two = b.const([4]), b.const([2])
    s = b.op("Concat", c0, c2, c3, c1, axis=0)                                       # [4*nb, ch]
    s = b.fn("Philox", b.op("Reshape", s, b.op("Concat", four, b.op("Mul", nb, ch), axis=0)), "key")
    words = b.op("Gather", s, b.const([0, 3, 1, 2]), axis=0)                         # [x0, x1, x2, x3]
    halves = b.op("Mod", b.op("Div", b.unsq(words, 2), b.const([1, 1 << 16])), b.const(1 << 16))
    halves = b.op("Reshape", halves, b.op("Concat", four, shape, two, axis=0))       # [4, nb, ch, lo/hi]
    u = b.op("Flatten", b.op("Transpose", halves, perm=[1, 2, 0, 3]), axis=1)        # [nb, 8*ch]
    u = b.op("Flatten", b.op("Slice", u, b.const([0]), bsz, b.const([1])), axis=0)   # [1, nb*B]
    u = b.op("Slice", u, b.const([0]), n, b.const([1]))                              # [1, n]
    # --- values: mu + sigma * T[u] (the product is exact: sigma is a bfloat16), then the layout
    mu, sigma = b.op("Split", "ms", axis=0, num_outputs=2, outs=2)
    slot = b.op("Add", b.op("Mul", b.op("Gather", "table", b.op("Squeeze", u, b.const([0]))), sigma), mu)
    pos = b.op("Mod", b.op("Add", b.op("Mul", b.op("Range", zero, b.op("Squeeze", n), one), a), c), n)
    b.op("Gather", slot, pos, outs=["v"])
    return _function("Values", ["payload", "prm", "ms", "key", "table"], ["v"], b, opset)


def _f_hash(opset: int):
    """Hash(v f32[n], prm i64[4], key) -> f32[nw]; prm = (counter word 3, nw, n, ceil(nw/2)).

    Weight t: Philox(counter = (t>>1, 0, 0, word3)), lane l = t&1: index = (word[2l] * n) >> 32,
    negative iff word[2l+1] is odd; weight = v[index] * (+-1).
    """
    b = _Builder("t")
    hw, nw, n, npairs = b.op("Split", "prm", axis=0, num_outputs=4, outs=4)
    zero, one = b.const(0), b.const(1)
    c0 = b.unsq(b.op("Range", zero, b.op("Squeeze", npairs), one), 0)
    z = b.op("Mul", c0, zero)
    s = b.fn("Philox", b.op("Concat", c0, z, b.op("Add", z, hw), z, axis=0), "key")   # [4, np]
    words = b.op("Gather", s, b.const([0, 3, 1, 2]), axis=0)                          # [x0, x1, x2, x3]
    words = b.op("Reshape", words, b.op("Concat", b.const([2, 2]), npairs, axis=0))
    words = b.op("Flatten", b.op("Transpose", words, perm=[1, 2, 0]), axis=1)       # [word 2l / 2l+1, t]
    words = b.op("Slice", words, b.const([0]), nw, b.const([1]))
    iw, sw = b.op("Gather", words, zero), b.op("Gather", words, one)
    index = b.op("Div", b.op("Mul", iw, n), b.const(1 << 32))
    sign = b.op("Sub", b.const(1.0, np.float32),
                b.op("Mul", b.const(2.0, np.float32), b.op("Cast", b.op("BitwiseAnd", sw, one), to=1)))
    b.op("Mul", b.op("Gather", "v", index), sign, outs=["w"])
    return _function("Hash", ["v", "prm", "key"], ["w"], b, opset)


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


def functions(opset: int = OPSET, *, hashing: bool = True) -> list:
    """The model-local functions (FunctionProto) of domain DOMAIN, importing the default domain at `opset`."""
    fs = [_f_round(opset), _f_philox(opset), _f_values(opset), _f_table(opset, len(table_encoding()[1]) > 0)]
    return fs + ([_f_hash(opset)] if hashing else [])


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


class _Decoder:
    """Builds the main-graph part: the table, one Values (+ Hash) call per needed group, and the split of
    each group's flat weights into its tensors."""

    def __init__(self, c: Container, prefix: str):
        from onnx import numpy_helper

        self.c, self.nh = c, numpy_helper
        self.b = _Builder(prefix)
        self.inits: list = []
        self.hashing = False
        self._table = self._key = None

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

    def key(self) -> str:
        if self._key is None:  # stacked as [k1, k0], the arrangement the Round function uses
            k0, k1 = seed_key(self.c.seed)
            self._key = self.init(np.array([[k1], [k0]], dtype=np.int64))
        return self._key

    def group(self, gid: int) -> str:
        """Flat float32 weights of group gid (its coded tensors concatenated in header order)."""
        g, b = self.c.groups[gid], self.b
        payload = np.frombuffer(pack_indices(g.indices, g.index_bits) + bytes(4), dtype=np.uint8)
        a, c = (g.layout.a, g.layout.c) if g.layout.kind == "affine" else (1, 0)
        prm = np.array([domain_word(DOMAIN_CANDIDATE, gid), g.block_size, g.index_bits, g.num_blocks,
                        g.num_values, a, c, -(-g.block_size // 8), 1 << g.index_bits], dtype=np.int64)
        if g.scales is None:
            ms = np.array([g.mu_bits, g.sigma_bits << 16], dtype=np.uint32).view(np.float32)
        else:  # T[u] (mu = 0, sigma = 1 is exact), then * (sigma * scale_k) and + mu: two ops, two roundings
            ms = np.array([0.0, 1.0], dtype=np.float32)
        v = b.fn("Values", self.init(payload), self.init(prm), self.init(ms), self.key(), self.table())
        if g.scales is not None:
            from mrcformat.decoder import value_scales

            sv = value_scales(g)
            rows = b.op("Reshape", v, self.init(np.array([len(sv), g.num_values // len(sv)], dtype=np.int64)))
            scaled = b.op("Mul", rows, self.init(sv.reshape(-1, 1)))
            flat = b.op("Reshape", scaled, self.init(np.array([g.num_values], dtype=np.int64)))
            v = b.op("Add", flat, self.init(np.array(g.mu, dtype=np.float32)))
        if not g.hashing:
            return v
        self.hashing = True
        nw = self.c.group_weights(gid)
        hprm = np.array([domain_word(DOMAIN_HASH, gid), nw, g.num_values, -(-nw // 2)], dtype=np.int64)
        return b.fn("Hash", v, self.init(hprm), self.key())

    def tensors(self, wanted: set[str], rename: dict[str, str] | None = None) -> None:
        """Emit every wanted coded tensor under its own name (or under `rename[name]`)."""
        rename = rename or {}
        b = self.b
        for gid in range(len(self.c.groups)):
            members = self.c.group_members(gid)
            if not any(m.name in wanted for m in members):
                continue
            parts = [self.group(gid)]
            if len(members) > 1:
                sizes = self.init(np.array([m.numel for m in members], dtype=np.int64))
                parts = b.op("Split", parts[0], sizes, axis=0, outs=len(members))
            for m, part in zip(members, parts):
                if m.name in wanted:
                    b.op("Reshape", part, self.init(np.array(m.shape, dtype=np.int64)), outs=[rename.get(m.name, m.name)],
                         allowzero=1)

    def functions(self, opset: int) -> list:
        return functions(opset, hashing=self.hashing)


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
    return model


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
