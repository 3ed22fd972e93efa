"""Diagonal importance of every weight for the output distortion D of `calibration` (Gao et al. 2019):
D(w + d) - D(w) ~ sum_i h_i d_i^2 for small, independent errors d.

Estimators (`ESTIMATORS`):
- "uniform": h = 1 for every weight (plain weight MSE; the baseline).
- "tensor": one h per tensor, measured: add Gaussian noise of a tenth of the tensor's RMS to that
  tensor alone, run the calibration feeds in onnxruntime, h = D / (numel * noise variance), averaged over
  `trials` draws. Works for any operator, inside any subgraph.
- "activation": "tensor", redistributed inside each tensor read by a top-level MatMul, Gemm or Conv
  in proportion to the mean square of the input channel the weight multiplies (the diagonal of
  E[x x^T], the layer-wise Hessian of GPTQ/OBQ); other tensors keep "tensor".
- "channel": also across rows (C order, axis 0: a Conv's output channels). Two measurements
  per tensor, one with noise of equal size everywhere, one with noise proportional to each row's RMS,
  fix the exponent g of h_row ~ rms_row^(-2g) (g = 0: every weight alike; g = 1: every row needs the
  same *relative* precision, as when batch norm folded into a conv rescales its rows and the next
  layer undoes it), then the activation profile spreads it over columns. Needs no gradients and
  works inside subgraphs. Measured: identical to "activation" on LeNet-5 (its rows are alike, g = 0);
  on silero-vad (rows 100x apart after batch-norm folding) it lowers the calibration distortion 3-9x
  but not the streaming frame agreement (0.855 / 0.935 at 3 / 4 bits per weight, against 0.935 / 0.958),
  which single-step calibration feeds do not capture; so it is not the default.
Weights that the calibration inputs never reach (an If branch not taken) measure h = 0; they get
`floor` times the median importance instead, so that they are not thrown away.
"""
from __future__ import annotations

import numpy as np

from .calibration import Probe

__all__ = ["ESTIMATORS", "estimate_importance", "tensor_sensitivity"]

ESTIMATORS = ("uniform", "tensor", "activation", "channel")
GAMMA_MAX = 1.5


def tensor_sensitivity(probe: Probe, *, rel_noise: float = 0.1, trials: int = 2, seed: int = 0,
                       feeds: int | None = 16, progress=None) -> np.ndarray:
    """Measured mean importance of each site's weights (see module doc), float64 [num_sites], over
    `feeds` calibration feeds (spread evenly; None: all): cost = sites x trials x feeds model runs."""
    rng = np.random.default_rng(seed)
    which = probe.subset(feeds)
    out = np.zeros(len(probe.sites))
    for k, s in enumerate(probe.sites):
        w = s.array
        rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
        sd = rel_noise * (rms if rms > 0 else 1e-3)
        acc = 0.0
        for _ in range(trials):
            noise = rng.standard_normal(w.shape).astype(np.float32) * np.float32(sd)
            acc += probe.distortion({k: w + noise}, which) / (w.size * sd * sd)
        out[k] = acc / trials
        if progress is not None:
            progress(1)
    return out


def row_sensitivity(probe: Probe, *, rel_noise: float = 0.1, seed: int = 0, feeds: int | None = 16,
                    progress=None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per site: the mean importance under equal noise (as `tensor_sensitivity` with one trial) and the
    per-row importance profile rms_row^(-2g), mean 1, from a second, row-relative measurement."""
    rng = np.random.default_rng(seed)
    which = probe.subset(feeds)
    mean = np.zeros(len(probe.sites))
    profiles = []
    for k, s in enumerate(probe.sites):
        w = s.array
        rows = w.reshape(w.shape[0], -1).astype(np.float64) if w.ndim >= 2 else w.reshape(1, -1).astype(np.float64)
        rms_t = float(np.sqrt(np.mean(rows * rows))) or 1e-3
        r = np.maximum(np.sqrt(np.mean(rows * rows, axis=1)) / rms_t, 1e-3)        # row RMS / tensor RMS
        sd = rel_noise * rms_t
        d_eq = probe.distortion({k: w + (rng.standard_normal(w.shape) * sd).astype(np.float32)}, which)
        rel = (rng.standard_normal(rows.shape) * (rel_noise * rms_t * r)[:, None]).reshape(w.shape)
        d_rel = probe.distortion({k: w + rel.astype(np.float32)}, which)
        gamma = _fit_gamma(r, d_rel / d_eq if d_eq > 0 else 1.0)
        prof = r ** (-2 * gamma)
        prof /= prof.mean()
        mean[k] = d_eq / (w.size * sd * sd)
        profiles.append(prof)
        if progress is not None:
            progress(1)
    return mean, profiles


def _fit_gamma(r: np.ndarray, measured: float) -> float:
    """g with sum(r^(2-2g)) / sum(r^-2g) = measured (the ratio of the two measurements under the model
    h_row ~ r^-2g); decreasing in g from mean(r^2) = 1 at g = 0; clamped to [0, GAMMA_MAX]."""
    def ratio(g: float) -> float:
        return float(np.sum(r ** (2 - 2 * g)) / np.sum(r ** (-2 * g)))

    if not np.isfinite(measured) or measured >= ratio(0.0):
        return 0.0
    if measured <= ratio(GAMMA_MAX):
        return GAMMA_MAX
    lo, hi = 0.0, GAMMA_MAX
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) > measured else (lo, mid)
    return 0.5 * (lo + hi)


def _activation_profiles(probe: Probe, model) -> dict[int, np.ndarray]:
    """For sites read as the weight of a top-level MatMul/Gemm/Conv: the per-weight mean square of the
    input value it multiplies, normalised to mean 1 over the tensor."""
    from onnx import helper

    index = {s.name: k for k, s in enumerate(probe.sites)}
    uses: dict[int, tuple] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2 or node.input[1] not in index:
            continue
        k = index[node.input[1]]
        w = probe.sites[k].array
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul" and w.ndim == 2:
            uses[k] = ("matmul", node.input[0], False)
        elif node.op_type == "Gemm" and w.ndim == 2 and not attrs.get("transA", 0):
            uses[k] = ("matmul", node.input[0], bool(attrs.get("transB", 0)))
        elif node.op_type == "Conv" and w.ndim >= 3:
            uses[k] = ("conv", node.input[0], int(attrs.get("group", 1)))
    if not uses:
        return {}
    # run the probe model with the activations as extra outputs (a fresh session over the same feeds)
    import onnxruntime as ort

    from .calibration import probe_model

    pm, names = probe_model(model, probe.sites)
    acts = sorted({u[1] for u in uses.values()})
    known = {o.name for o in pm.graph.output}
    pm.graph.output.extend(helper.make_empty_tensor_value_info(a) for a in acts if a not in known)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(pm.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    for f in probe.feeds:
        feed = dict(f)
        feed.update(zip(names, probe.original))
        for a, y in zip(acts, sess.run(acts, feed)):
            y = np.asarray(y, dtype=np.float64)
            kinds = {u[0] for u in uses.values() if u[1] == a}
            if "conv" in kinds and y.ndim >= 2:   # channels on axis 1
                ms = np.mean(np.square(np.moveaxis(y, 1, 0).reshape(y.shape[1], -1)), axis=1)
            else:                                  # features on the last axis
                ms = np.mean(np.square(y.reshape(-1, y.shape[-1])), axis=0)
            sums[a] = sums.get(a, 0) + ms
    profiles = {}
    for k, (kind, a, extra) in uses.items():
        ms = sums[a] / len(probe.feeds)
        w = probe.sites[k].array
        if kind == "matmul":
            p = ms[None, :] if extra else ms[:, None]           # transB: w [N, K]; else w [K, N]
            if p.size != (w.shape[1] if extra else w.shape[0]):
                continue
            prof = np.broadcast_to(p, w.shape)
        else:
            groups, cin = extra, w.shape[1]
            if ms.size != groups * cin:
                continue
            per_out = (np.arange(w.shape[0]) // (w.shape[0] // groups))[:, None] * cin + np.arange(cin)[None, :]
            prof = ms[per_out].reshape(w.shape[:2] + (1,) * (w.ndim - 2))
            prof = np.broadcast_to(prof, w.shape)
        mean = float(prof.mean())
        if mean > 0 and np.isfinite(mean):
            profiles[k] = np.ascontiguousarray(prof / mean)
    return profiles


def estimate_importance(probe: Probe, model, estimator: str = "activation", *, floor: float = 0.01, trials: int = 2,
                        seed: int = 0, feeds: int | None = 16, progress=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-weight importance of every site (float64 arrays of the sites' shapes) and the measured
    per-tensor means (zeros for "uniform")."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"importance estimator must be one of {ESTIMATORS}, not {estimator!r}")
    if estimator == "uniform":
        return [np.ones(s.array.shape) for s in probe.sites], np.zeros(len(probe.sites))
    rows = None
    if estimator == "channel":
        per_tensor, rows = row_sensitivity(probe, seed=seed, feeds=feeds, progress=progress)
    else:
        per_tensor = tensor_sensitivity(probe, trials=trials, seed=seed, feeds=feeds, progress=progress)
    positive = per_tensor[per_tensor > 0]
    low = floor * (float(np.median(positive)) if positive.size else 1.0)
    h = [np.full(s.array.shape, max(v, low)) for s, v in zip(probe.sites, per_tensor)]
    if rows is not None:
        h = [hk * prof.reshape((-1,) + (1,) * (hk.ndim - 1)) if hk.ndim >= 1 and prof.size == hk.shape[0] else hk
             for hk, prof in zip(h, rows)]
    if estimator in ("activation", "channel"):
        for k, prof in _activation_profiles(probe, model).items():
            h[k] = np.maximum(h[k] * prof, low * 1e-3)
    return h, per_tensor
