"""Control flow: If (constant or data-dependent condition), Loop and Scan, with subgraphs that read
outer-scope values. Their builders get compiled subgraphs (objects with `run(scope, inputs)`), and
their functions take the current scope first (`fn.scoped = True`)."""
from __future__ import annotations

import torch

from .common import Unsupported

__all__ = ["OPS"]


def _scoped(fn):
    fn.scoped = True
    return fn


def _if(a):
    then_g, else_g = a["then_branch"], a["else_branch"]

    @_scoped
    def fn(scope, cond):
        if cond.numel() != 1:
            raise a.error(f"condition has {cond.numel()} elements, not 1")
        out = (then_g if bool(cond.reshape(-1)[0]) else else_g).run(scope, [])
        return tuple(out) if len(out) != 1 else out[0]
    return fn


def _loop(a):
    body = a["body"]
    n_carried = len(body.inputs) - 2

    @_scoped
    def fn(scope, m=None, cond=None, *carried):
        carried = list(carried) + [None] * (n_carried - len(carried))
        trips = None if m is None else int(m.reshape(-1)[0].item())
        go = True if cond is None else bool(cond.reshape(-1)[0])
        scans: list[list[torch.Tensor]] = []
        i = 0
        dev = carried[0].device if carried and carried[0] is not None else None
        while go and (trips is None or i < trips):
            out = body.run(scope, [torch.tensor(i, dtype=torch.int64, device=dev),
                                   torch.tensor(go, dtype=torch.bool, device=dev), *carried])
            go = bool(out[0].reshape(-1)[0]) if out[0] is not None else go
            carried = list(out[1:1 + n_carried])
            for k, s in enumerate(out[1 + n_carried:]):
                if len(scans) <= k:
                    scans.append([])
                scans[k].append(s)
            i += 1
        n_scan = len(body.outputs) - 1 - n_carried
        stacked = [torch.stack(s, 0) if s else torch.empty(0) for s in (scans + [[]] * (n_scan - len(scans)))]
        res = carried + stacked
        return tuple(res) if len(res) != 1 else res[0]
    return fn


def _scan(a):
    if a.opset < 9:
        raise Unsupported("Scan-8 (batched, with sequence_lens)")
    body = a["body"]
    n_scan_in = a["num_scan_inputs"]
    n_state = len(body.inputs) - n_scan_in
    n_scan_out = len(body.outputs) - n_state
    in_axes = list(a.get("scan_input_axes", [0] * n_scan_in))
    in_dirs = list(a.get("scan_input_directions", [0] * n_scan_in))
    out_axes = list(a.get("scan_output_axes", [0] * n_scan_out))
    out_dirs = list(a.get("scan_output_directions", [0] * n_scan_out))

    @_scoped
    def fn(scope, *args):
        state, xs = list(args[:n_state]), list(args[n_state:])
        xs = [x.movedim(ax % x.dim(), 0) for x, ax in zip(xs, in_axes)]
        xs = [x.flip(0) if d else x for x, d in zip(xs, in_dirs)]
        steps = xs[0].shape[0] if xs else 0
        outs: list[list[torch.Tensor]] = [[] for _ in range(n_scan_out)]
        for t in range(steps):
            res = body.run(scope, state + [x[t] for x in xs])
            state = list(res[:n_state])
            for k in range(n_scan_out):
                outs[k].append(res[n_state + k])
        stacked = []
        for k in range(n_scan_out):
            y = torch.stack(outs[k], 0)
            if out_dirs[k]:
                y = y.flip(0)
            stacked.append(y.movedim(0, out_axes[k] % y.dim()))
        res = state + stacked
        return tuple(res) if len(res) != 1 else res[0]
    return fn


OPS = {"If": _if, "Loop": _loop, "Scan": _scan}
