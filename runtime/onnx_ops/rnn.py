"""Recurrent ONNX operators: LSTM, GRU and RNN in every form exporters emit.

The common forms (default activations, no clip/peepholes/input_forget, GRU with linear_before_reset=1,
full-length sequences) run on torch's fused kernels; everything else (custom activations, clip, peepholes,
coupled input-forget gates, GRU with linear_before_reset=0, per-batch `sequence_lens`) runs a step loop
that follows the ONNX equations literally. Both are differentiable. Layout 0 and 1, forward, reverse and
bidirectional, optional initial states.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .common import Unsupported

__all__ = ["OPS"]

_LSTM_ORDER = [0, 2, 3, 1]   # ONNX i, o, f, c  ->  torch i, f, g(=c), o
_GRU_ORDER = [1, 0, 2]       # ONNX z, r, h     ->  torch r, z, n(=h)
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}

# activation name -> (number of alpha/beta values it takes, defaults, function)
_ACTS = {
    "relu": (0, (), lambda x: torch.relu(x)),
    "tanh": (0, (), torch.tanh),
    "sigmoid": (0, (), torch.sigmoid),
    "softsign": (0, (), lambda x: x / (1 + x.abs())),
    "softplus": (0, (), lambda x: torch.log(torch.exp(x) + 1)),
    "leakyrelu": (1, (0.01,), lambda x, al: F.leaky_relu(x, al)),
    "thresholdedrelu": (1, (1.0,), lambda x, al: torch.where(x > al, x, torch.zeros_like(x))),
    "elu": (1, (1.0,), lambda x, al: F.elu(x, al)),
    "affine": (2, (1.0, 0.0), lambda x, al, be: al * x + be),
    "scaledtanh": (2, (1.0, 1.0), lambda x, al, be: al * torch.tanh(be * x)),
    "hardsigmoid": (2, (0.2, 0.5), lambda x, al, be: torch.clamp(al * x + be, 0, 1)),
}


def _activations(a, kind: str, ndirs: int) -> list:
    names = a.get("activations") or _DEFAULT_ACTS[kind] * ndirs
    per_dir = len(_DEFAULT_ACTS[kind])
    if len(names) == per_dir and ndirs == 2:
        names = list(names) * 2
    if len(names) != per_dir * ndirs:
        raise a.error(f"{len(names)} activations for {ndirs} direction(s)")
    alphas, betas = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
    out = []
    for name in names:
        key = name.lower()
        if key not in _ACTS:
            raise Unsupported(f"{kind} activation {name!r}")
        n, defaults, f = _ACTS[key]
        args = []
        if n >= 1:
            args.append(alphas.pop(0) if alphas else defaults[0])
        if n >= 2:
            args.append(betas.pop(0) if betas else defaults[1])
        out.append(functools.partial(_apply, f, tuple(args)))
    return [out[i * per_dir:(i + 1) * per_dir] for i in range(ndirs)]


def _apply(f, args: tuple, x: torch.Tensor) -> torch.Tensor:
    return f(x, *args)


def _regate(w: torch.Tensor, order: list[int]) -> torch.Tensor:
    parts = w.chunk(len(order), 0)
    return torch.cat([parts[i] for i in order], 0)


def _step_loop(kind, x, w, r, wb, rb, p, h, c, lens, reverse, acts, clip, input_forget, lbr):
    """One direction, the ONNX equations step by step. x [seq, batch, in]; h, c [batch, hidden]."""
    seq = x.shape[0]
    xw = x @ w.t()
    if wb is not None:
        xw = xw + wb
    hidden = h.shape[-1]
    ys = [None] * seq
    cl = (lambda v: v.clamp(-clip, clip)) if clip is not None else (lambda v: v)
    for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
        if kind == "LSTM":
            f, g, hh = acts
            gates = xw[t] + h @ r.t()
            if rb is not None:
                gates = gates + rb
            gi, go, gf, gc = gates.split(hidden, -1)
            if p is not None:
                pi, po, pf = p.split(hidden, -1)
                gi, gf = gi + pi * c, gf + pf * c
            i = f(cl(gi))
            ft = 1 - i if input_forget else f(cl(gf))
            c_new = ft * c + i * g(cl(gc))
            if p is not None:
                go = go + po * c_new
            h_new = f(cl(go)) * hh(c_new)
        elif kind == "GRU":
            f, g = acts
            rz, rr, rh = r.split(hidden, 0)
            bz = br = bh = None
            if rb is not None:
                bz, br, bh = rb.split(hidden, -1)
            xz, xr, xh = xw[t].split(hidden, -1)
            z = h @ rz.t() + xz
            rg = h @ rr.t() + xr
            if rb is not None:
                z, rg = z + bz, rg + br
            z, rg = f(cl(z)), f(cl(rg))
            if lbr:
                lin = h @ rh.t()
                if bh is not None:
                    lin = lin + bh
                n = g(cl(xh + rg * lin))
            else:
                n = (rg * h) @ rh.t() + xh
                if bh is not None:
                    n = n + bh
                n = g(cl(n))
            h_new = (1 - z) * n + z * h
            c_new = c
        else:
            (f,) = acts
            pre = xw[t] + h @ r.t()
            if rb is not None:
                pre = pre + rb
            h_new = f(cl(pre))
            c_new = c
        if lens is not None:
            valid = (t < lens).unsqueeze(-1)
            h = torch.where(valid, h_new, h)
            c = torch.where(valid, c_new, c) if kind == "LSTM" else c
            ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            ys[t] = h_new
    return torch.stack(ys, 0), h, c


def _rnn(kind: str):
    def build(a):
        direction = a.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise a.error(f"direction {direction!r}")
        ndirs = 2 if direction == "bidirectional" else 1
        acts = _activations(a, kind, ndirs)
        names = a.get("activations")
        default = [s.lower() for s in _DEFAULT_ACTS[kind]]
        default_acts = names is None or [s.lower() for s in names] in (default, default * ndirs)
        clip = a.get("clip")
        input_forget = bool(a.get("input_forget", 0))
        lbr = bool(a.get("linear_before_reset", 0))
        batch_first = bool(a.get("layout", 0))
        hidden = a["hidden_size"]
        ngates = _GATES[kind]
        fusable_attrs = (kind != "RNN" and default_acts and not a.get("activation_alpha")
                         and not a.get("activation_beta") and clip is None and not input_forget
                         and (kind == "LSTM" or lbr))

        def fn(x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
            if batch_first:
                x = x.transpose(0, 1)
                h0 = None if h0 is None else h0.transpose(0, 1)
                c0 = None if c0 is None else c0.transpose(0, 1)
            seq, batch = x.shape[0], x.shape[1]
            if w.shape[0] != ndirs or w.shape[1] != ngates * hidden:
                raise a.error(f"W has shape {tuple(w.shape)}, expected [{ndirs}, {ngates * hidden}, input]")
            lens = None
            if seq_lens is not None and bool((seq_lens.to(torch.int64) != seq).any()):
                lens = seq_lens.to(device=x.device, dtype=torch.int64)
            zeros = x.new_zeros(ndirs, batch, hidden)
            h0 = zeros if h0 is None else h0
            c0 = zeros if c0 is None else c0
            if fusable_attrs and lens is None and p is None:
                y, states = _fused(kind, x, w, r, b, h0, c0, direction, ndirs)
            else:
                ys, hs, cs = [], [], []
                for d in range(ndirs):
                    wb = rb = None
                    if b is not None:
                        wb, rb = b[d].chunk(2, 0)
                        if kind != "GRU":  # GRU keeps Rb apart: Rbh sits inside the h gate
                            wb, rb = wb + rb, None
                    pd = p[d] if p is not None else None
                    rev = direction == "reverse" or d == 1
                    yd, hd, cd = _step_loop(kind, x, w[d], r[d], wb, rb, pd, h0[d], c0[d], lens, rev, acts[d],
                                            clip, input_forget, lbr)
                    ys.append(yd)
                    hs.append(hd)
                    cs.append(cd)
                y = torch.stack(ys, 1)  # [seq, dirs, batch, hidden]
                states = [torch.stack(hs, 0)] + ([torch.stack(cs, 0)] if kind == "LSTM" else [])
            if batch_first:
                y = y.permute(2, 0, 1, 3)
                states = [s.transpose(0, 1) for s in states]
            return (y, *states)
        return fn
    return build


def _fused(kind, x, w, r, b, h0, c0, direction, ndirs):
    order = _LSTM_ORDER if kind == "LSTM" else _GRU_ORDER
    seq, batch, hidden = x.shape[0], x.shape[1], h0.shape[-1]
    params = []
    for d in range(ndirs):
        params += [_regate(w[d], order), _regate(r[d], order)]
        if b is not None:
            bi, bh = b[d].chunk(2, 0)
            params += [_regate(bi, order), _regate(bh, order)]
    hx = [h0, c0] if kind == "LSTM" else h0
    if direction == "reverse":
        x = x.flip(0)
    f = torch.lstm if kind == "LSTM" else torch.gru
    res = f(x, hx, params, b is not None, 1, 0.0, False, ndirs == 2, False)
    y = res[0]
    if direction == "reverse":
        y = y.flip(0)
    y = y.reshape(seq, batch, ndirs, hidden).permute(0, 2, 1, 3)
    return y, list(res[1:])


OPS = {"LSTM": _rnn("LSTM"), "GRU": _rnn("GRU"), "RNN": _rnn("RNN")}
