"""Benchmark for compressing the Silero VAD voice-activity model (silero_vad.onnx).

Why: `mrc compress MODEL.onnx` must keep a real model's behaviour, and for a VAD
"behaviour" is the per-frame speech probability and the speech segments derived from
it.  A candidate (e.g. a compressed and decompressed copy) is run through the same
streaming loop as silero's own `OnnxWrapper` (512-sample frames at 16 kHz, 64 samples
of context prepended, LSTM state carried between frames, `sr` fed as an int64 scalar),
and its probabilities/segments are compared with the original's on held-out audio.

Needs, in the benchmark venv:  pip install --no-deps silero-vad  (the wheel ships the
.onnx files; torch is only needed for silero's `get_speech_timestamps_from_probs`,
imported lazily by `evaluate`), and the `espeak-ng` binary (apt-get install espeak-ng)
to synthesise speech offline.

Data lives outside the repo in DATA_DIR = $MRC_BENCH_DATA/silero (default
/work/benchdata/silero).  It is deterministic for a given espeak-ng version and seed:
delete the folder, or call `prepare(DATA_DIR)`, or run
`python -m bench.real_models.silero_vad`, to regenerate it.  Layout:
  calib_audio.npy, heldout_audio.npy   float32 mono 16 kHz (~20 s / ~60 s, disjoint
                                       sentences and voices; silences, white/pink noise)
  meta.json                            what was synthesised (text, voice, noise, SNR)
  calib/NNN.npz                        one feed of silero_vad.onnx each:
                                       input (1, 576) f32, state (2, 1, 128) f32, sr () i64,
                                       recorded from the original model's streaming loop

Only 16 kHz is exercised: silero_vad.onnx's 8 kHz weights (the else branch of its top If
on sr) never run here, so damage to them cannot show in these metrics.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

DATA_DIR = Path(os.environ.get("MRC_BENCH_DATA", "/work/benchdata")) / "silero"
SR = 16000
FRAME = 512  # samples per model step at 16 kHz (OnnxWrapper: num_samples)
CONTEXT = 64  # samples of the previous frame prepended (OnnxWrapper: context_size)
THRESHOLD = 0.5  # silero's default speech threshold (prob >= threshold is speech)

# Short keys for the files the wheel ships (silero-vad 6.2.3); unknown ones keep their stem.
_KEYS = {
    "silero_vad.onnx": "default",  # opset 16, 8k+16k weights in If branches on sr
    "silero_vad_16k_op15.onnx": "op15",
    "silero_vad_op18_ifless.onnx": "op18",
    "silero_vad_half.onnx": "half",  # no sr input; NOT the same weights (another trained model)
    "silero_vad_openvino_16k.onnx": "openvino",  # fixed batch 1, no sr input
    "silero_vad_16k_sequence.onnx": "sequence",  # input [T, 576], h/c instead of state
}

_CALIB_SENTENCES = [
    "Please turn off the lights in the kitchen before you go to bed.",
    "The train to Edinburgh leaves from platform nine at a quarter past seven.",
    "I would like two coffees, one with milk and one without sugar.",
    "Can you remind me to call the dentist on Thursday afternoon?",
]
_HELDOUT_SENTENCES = [
    "Good morning, this is your captain speaking from the flight deck.",
    "The quarterly report shows a modest increase in overall revenue.",
    "Could you spell your surname for me, letter by letter?",
    "Thirty seven, forty two, and ninety nine are the winning numbers.",
    "After the concert we walked home along the quiet river path.",
    "Remember to back up your files before installing the update.",
    "The museum is closed on Mondays but open late on Fridays.",
    "He said yes. Then he said no. Then he left without a word.",
    "A gentle breeze moved through the tall grass of the meadow.",
    "Press one for billing, two for technical support, or stay on the line.",
    "The experiment failed twice before the results finally made sense.",
    "Why does the printer always jam when I am in a hurry?",
    "I can't believe it's already the end of November.",
]
# Training audio for MIRACLE fine-tuning (bench/silero_finetune.py): sentences of neither list above,
# the calibration voices (never a held-out voice), so the held-out metrics stay held out.
_TRAIN_SENTENCES = [
    "Our neighbours are painting their fence a bright shade of yellow.",
    "Add the flour slowly and keep stirring until the sauce thickens.",
    "The library will extend its opening hours during the exam period.",
    "Turn left at the roundabout and the station is on your right.",
    "She practised the violin every evening for almost ten years.",
    "Several flights were delayed because of fog over the airport.",
    "Please leave a message after the tone and I will call you back.",
    "The recipe needs three eggs, a cup of sugar and some butter.",
    "A small boat drifted slowly past the lighthouse at sunset.",
    "We should book the hotel before the prices go up again.",
    "The children built a sandcastle with towers and a deep moat.",
    "Nobody expected the match to end in a draw after extra time.",
]
_CALIB_VOICES = ["en-us", "en-gb+f3", "en-029+m3", "en-gb-x-rp+f1"]
_HELDOUT_VOICES = ["en-gb-scotland+f4", "en-us+m7", "en-gb-x-gbclan+f2", "en-us+klatt",
                   "en-gb-x-gbcwmd+m2", "en-gb+f5", "en-us+whisper"]


def model_paths() -> dict[str, Path]:
    """The .onnx files inside the installed silero_vad wheel, by short key (no torch import)."""
    here = Path(__file__).resolve().parent  # run as a file, this folder is on sys.path and holds silero_vad.py
    path = [p for p in sys.path if Path(p or ".").resolve() != here]
    spec = importlib.machinery.PathFinder.find_spec("silero_vad", path)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("pip install --no-deps silero-vad")
    data = Path(spec.origin).parent / "data"
    return {_KEYS.get(p.name, p.stem): p for p in sorted(data.glob("*.onnx"))}


def _session(model: str | Path | bytes) -> ort.InferenceSession:
    """One-thread CPU session (deterministic; the same options as silero's OnnxWrapper)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the op18 file has unused initializers: ORT warns on each load
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def _frames(audio: np.ndarray) -> np.ndarray:
    """[T, 576] model inputs: each zero-padded 512-sample frame behind the previous one's last 64.

    Reproduces OnnxWrapper: the context starts as zeros and becomes x[..., -64:] of the
    concatenated input, i.e. the last 64 samples of the previous frame; the last partial
    frame is zero-padded (get_speech_timestamps pads each short chunk)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = -(-audio.size // FRAME)
    padded = np.zeros(n * FRAME, np.float32)
    padded[: audio.size] = audio
    frames = padded.reshape(n, FRAME)
    ctx = np.zeros((n, CONTEXT), np.float32)
    ctx[1:] = frames[:-1, -CONTEXT:]
    return np.concatenate([ctx, frames], axis=1)


def stream_probs(model: str | Path | bytes, audio: np.ndarray,
                 on_step: Callable[[int, dict[str, np.ndarray]], None] | None = None) -> np.ndarray:
    """Per-frame speech probabilities of `model` over 16 kHz `audio`, one streaming step per frame.

    Feeds exactly what OnnxWrapper feeds: input (1, 576) f32, state (2, 1, 128) f32 (zeros,
    then the model's stateN), sr = int64 scalar 16000 (only if the model has an `sr` input).
    The `sequence` variant (input [T, 576], h, c) is run in 512-frame blocks as silero's
    sequence_vad does.  `on_step(t, feed)` sees each feed before it is run (used by prepare)."""
    sess = _session(model)
    names = {i.name for i in sess.get_inputs()}
    x = _frames(audio)
    if {"h", "c"} <= names:
        h = c = np.zeros((1, 1, 128), np.float32)
        out = []
        for s in range(0, len(x), 512):
            p, h, c = sess.run(None, {"input": x[s: s + 512], "h": h, "c": c})
            out.append(np.asarray(p, np.float32).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SR, dtype=np.int64)
    probs = np.empty(len(x), np.float32)
    for t in range(len(x)):
        feed = {"input": x[t: t + 1], "state": state}
        if "sr" in names:
            feed["sr"] = sr
        if on_step is not None:
            on_step(t, feed)
        out, state = sess.run(None, feed)[:2]
        probs[t] = out.reshape(-1)[0]
    return probs


# ---------------------------------------------------------------- audio synthesis

def _resample(x: np.ndarray, sr_in: int, sr_out: int = SR) -> np.ndarray:
    """Band-limited FFT resampling (no scipy in the venv); fine for whole utterances."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    m = int(round(x.size * sr_out / sr_in))
    spec = np.fft.rfft(x.astype(np.float64))
    keep = np.zeros(m // 2 + 1, complex)
    k = min(keep.size, spec.size)
    keep[:k] = spec[:k]
    return (np.fft.irfft(keep, m) * (m / x.size)).astype(np.float32)


def _say(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng speech as float32 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
                        "-w", str(wav_path), text], check=True, capture_output=True)
        with wave.open(str(wav_path)) as w:
            assert w.getnchannels() == 1 and w.getsampwidth() == 2
            sr_in = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return _resample(pcm.astype(np.float32) / 32768.0, sr_in)


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white or pink (1/f power) noise."""
    w = rng.standard_normal(n)
    if kind == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        w = np.fft.irfft(spec / np.sqrt(f), n)
    return (w / (np.sqrt(np.mean(w ** 2)) + 1e-12)).astype(np.float32)


def _track(sentences: list[str], voices: list[str], rng: np.random.Generator,
           noise_only_s: float) -> tuple[np.ndarray, list[dict]]:
    """Utterances separated by 0.3-1.5 s gaps, each (gap+speech) with its own noise and SNR,
    then a noise-only stretch (a VAD must stay quiet there)."""
    parts, meta = [], []
    for i, text in enumerate(sentences):
        voice = voices[i % len(voices)]
        speed, pitch = int(rng.integers(140, 231)), int(rng.integers(20, 81))
        speech = _say(text, voice, speed, pitch)
        speech *= rng.uniform(0.1, 0.9) / max(float(np.abs(speech).max()), 1e-9)
        seg = np.concatenate([np.zeros(int(rng.uniform(0.3, 1.5) * SR), np.float32), speech])
        kind = ("none", "white", "pink")[i % 3]
        snr = float(rng.choice([20.0, 10.0, 5.0, 0.0])) if kind != "none" else None
        if snr is not None:
            voiced = speech[np.abs(speech) > 1e-3]
            level = np.sqrt(np.mean(voiced ** 2)) if voiced.size else 0.1
            seg = seg + _noise(kind, seg.size, rng) * level / 10 ** (snr / 20)
        parts.append(seg)
        meta.append(dict(text=text, voice=voice, speed=speed, pitch=pitch, noise=kind,
                         snr_db=snr, start_s=sum(p.size for p in parts[:-1]) / SR))
    parts.append(_noise("pink", int(noise_only_s * SR), rng) * 0.02)
    parts.append(np.zeros(SR // 2, np.float32))
    return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32), meta


def prepare(out_dir: Path = DATA_DIR, seed: int = 0, n_feeds: int = 128) -> None:
    """Synthesise calibration/held-out audio and record `n_feeds` calibration feeds.

    The feeds are real streaming steps of silero_vad.onnx over the calibration audio (so
    `state` is what the LSTM really carries), subsampled evenly; batch 1, because the
    openvino variant only takes batch 1 and the streaming states are per stream."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    calib, calib_meta = _track(_CALIB_SENTENCES, _CALIB_VOICES, rng, noise_only_s=1.5)
    heldout, heldout_meta = _track(_HELDOUT_SENTENCES, _HELDOUT_VOICES, rng, noise_only_s=3.0)
    (out_dir / "calib").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "calib").glob("*.npz"):
        old.unlink()
    np.save(out_dir / "calib_audio.npy", calib)
    np.save(out_dir / "heldout_audio.npy", heldout)

    steps: list[dict[str, np.ndarray]] = []
    stream_probs(model_paths()["default"], calib,
                 on_step=lambda t, feed: steps.append({k: np.array(v) for k, v in feed.items()}))
    picks = np.unique(np.linspace(0, len(steps) - 1, n_feeds).round().astype(int))
    for j, t in enumerate(picks):
        np.savez(out_dir / "calib" / f"{j:03d}.npz", **steps[t])
    (out_dir / "meta.json").write_text(json.dumps(dict(
        seed=seed, sr=SR, calib_seconds=calib.size / SR, heldout_seconds=heldout.size / SR,
        calib_steps=[int(t) for t in picks], calib=calib_meta, heldout=heldout_meta), indent=1))


def training_feeds(batch: int = 64, data_dir: Path = DATA_DIR, seed: int = 1,
                   streams: bool = False, tracks: int = 1) -> list[dict[str, np.ndarray]]:
    """Feeds for fine-tuning: every streaming step of the original over `tracks` training tracks (each:
    the calibration sentences and `_TRAIN_SENTENCES`, calibration voices, ~70 s, its own speeds,
    pitches, gaps and noise from seed `seed + k`), `batch` steps stacked per feed: input (B, 576), state
    (2, B, 128) as the original carried it, sr. `streams`: the steps cut into `batch` contiguous
    stretches, feed t holding step t of each (in time order, so that consecutive feeds continue each
    lane's stream: for calibration with the state carried). Synthesised once into
    data_dir/train_audio.npy (track 0) and train_audio_K.npy."""
    steps: list[dict[str, np.ndarray]] = []
    for k in range(tracks):
        path = Path(data_dir) / ("train_audio.npy" if k == 0 else f"train_audio_{k}.npy")
        if not path.exists():
            rng = np.random.default_rng(seed + k)
            audio, _ = _track(_CALIB_SENTENCES + _TRAIN_SENTENCES, _CALIB_VOICES, rng, noise_only_s=3.0)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, audio)
        stream_probs(model_paths()["default"], np.load(path),
                     on_step=lambda t, feed: steps.append({k: np.array(v) for k, v in feed.items()}))
    if streams:  # lane b of feed t = step t of the b-th contiguous stretch of the track
        per = len(steps) // batch
        picks = [[b * per + t for b in range(batch)] for t in range(per)]
    else:  # each batch mixes the whole track
        order = np.random.default_rng(seed).permutation(len(steps))
        picks = [order[i: i + batch] for i in range(0, len(order) - batch + 1, batch)]
    feeds = []
    for pick in picks:
        pick = [steps[j] for j in pick]
        feeds.append({"input": np.concatenate([f["input"] for f in pick]),
                      "state": np.concatenate([f["state"] for f in pick], axis=1), "sr": pick[0]["sr"]})
    return feeds


def calib_feeds(model: str | Path | bytes | None = None, data_dir: Path = DATA_DIR) -> list[dict[str, np.ndarray]]:
    """The calibration feeds, adapted to `model`'s inputs (default: silero_vad.onnx as stored).

    Variants without `sr` get it dropped; the `sequence` variant gets input (1, 576) and
    h = state[0], c = state[1] (silero stacks (h, c) into `state`)."""
    feeds = [dict(np.load(p)) for p in sorted((Path(data_dir) / "calib").glob("*.npz"))]
    if model is None:
        return feeds
    names = {i.name for i in _session(model).get_inputs()}
    if {"h", "c"} <= names:
        return [{"input": f["input"], "h": f["state"][0:1], "c": f["state"][1:2]} for f in feeds]
    return [{k: v for k, v in f.items() if k in names} for f in feeds]


# ---------------------------------------------------------------- metrics

def _segments(probs: np.ndarray, n_samples: int) -> list[tuple[float, float]]:
    """Speech segments in seconds, by silero's own get_speech_timestamps_from_probs (default params)."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs  # imports torch
    ts = get_speech_timestamps_from_probs([float(p) for p in probs], sampling_rate=SR,
                                          threshold=THRESHOLD, audio_length_samples=n_samples)
    return [(d["start"] / SR, d["end"] / SR) for d in ts]


def _iou(a: list[tuple[float, float]], b: list[tuple[float, float]], n_samples: int) -> float:
    """Overlap / union of speech time (1.0 when neither has any speech)."""
    def mask(segs: list[tuple[float, float]]) -> np.ndarray:
        m = np.zeros(n_samples, bool)
        for s, e in segs:
            m[int(round(s * SR)): int(round(e * SR))] = True
        return m
    ma, mb = mask(a), mask(b)
    union = int(np.count_nonzero(ma | mb))
    return 1.0 if union == 0 else int(np.count_nonzero(ma & mb)) / union


def heldout_audio(data_dir: Path = DATA_DIR) -> np.ndarray:
    """The held-out audio, synthesised first if missing."""
    path = Path(data_dir) / "heldout_audio.npy"
    if not path.exists():
        prepare(Path(data_dir))
    return np.load(path)


_ORIGINAL_CACHE: dict[tuple[str, str], np.ndarray] = {}


def evaluate(candidate: str | Path | bytes, original: str | Path | bytes | None = None,
             audio: np.ndarray | None = None) -> dict:
    """Compare candidate vs original per-frame probabilities and speech segments on held-out audio.

    Returns num_frames, max_abs_diff, mean_abs_diff, frame_agreement (fraction of frames on
    the same side of 0.5, silero's >= rule), segments_original/segments_candidate ((start_s,
    end_s) lists from silero's own segmentation) and segment_iou (speech-time overlap/union).
    The original's probabilities are cached per (path, audio) since it is run every time."""
    audio = heldout_audio() if audio is None else np.asarray(audio, np.float32).reshape(-1)
    original = model_paths()["default"] if original is None else original
    p_orig = None
    if not isinstance(original, bytes):
        key = (str(original), hashlib.sha1(audio.tobytes()).hexdigest())
        p_orig = _ORIGINAL_CACHE.get(key)
        if p_orig is None:
            p_orig = _ORIGINAL_CACHE[key] = stream_probs(original, audio)
    else:
        p_orig = stream_probs(original, audio)
    p_cand = stream_probs(candidate, audio)
    diff = np.abs(p_cand.astype(np.float64) - p_orig)
    seg_o, seg_c = _segments(p_orig, audio.size), _segments(p_cand, audio.size)
    return dict(num_frames=int(p_orig.size), max_abs_diff=float(diff.max(initial=0.0)),
                mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
                frame_agreement=float(np.mean((p_orig >= THRESHOLD) == (p_cand >= THRESHOLD))),
                segments_original=seg_o, segments_candidate=seg_c,
                segment_iou=_iou(seg_o, seg_c, audio.size))


# ---------------------------------------------------------------- weights: inventory, perturbation

def _weight_tensors(graph: onnx.GraphProto, where: str = "main") -> Iterator[tuple[str, str, onnx.TensorProto]]:
    """(location, kind, tensor) for every initializer and Constant `value` in graph and all
    subgraphs at any depth (silero_vad.onnx keeps its weights in Constants inside If branches)."""
    for t in graph.initializer:
        yield where, "initializer", t
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value":
                yield where, "Constant", a.t
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _weight_tensors(a.g, f"{where}/{node.name or node.op_type}.{a.name}")
            for k, g in enumerate(a.graphs):
                yield from _weight_tensors(g, f"{where}/{node.name or node.op_type}.{a.name}[{k}]")


def _load(model: str | Path | bytes) -> onnx.ModelProto:
    return onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))


def weight_inventory(model: str | Path | bytes) -> dict[tuple[str, str], tuple[int, int]]:
    """{(location, kind): (float32 tensors, float32 values)} over the whole model."""
    inv: dict[tuple[str, str], tuple[int, int]] = {}
    for where, kind, t in _weight_tensors(_load(model).graph):
        if t.data_type == onnx.TensorProto.FLOAT:
            n, v = inv.get((where, kind), (0, 0))
            inv[(where, kind)] = (n + 1, v + int(np.prod(t.dims, dtype=np.int64)))
    return inv


def perturb(model: str | Path | bytes, fn: Callable[[np.ndarray], np.ndarray]) -> bytes:
    """Model bytes with fn applied to every float32 initializer/Constant tensor, in every subgraph."""
    m = _load(model)
    for _, _, t in _weight_tensors(m.graph):
        if t.data_type == onnx.TensorProto.FLOAT:
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.asarray(fn(a), np.float32).reshape(a.shape), t.name))
    return m.SerializeToString()


def to_fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def uniform_quant(bits: int) -> Callable[[np.ndarray], np.ndarray]:
    """Per-tensor min/max uniform quantisation to 2**bits levels (crude on purpose)."""
    def q(a: np.ndarray) -> np.ndarray:
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if a.size == 0 or hi == lo:
            return a
        step = (hi - lo) / (2 ** bits - 1)
        return (lo + np.round((a - lo) / step) * step).astype(np.float32)
    return q


def rtn_per_row(bits: int, min_elements: int = 64, min_ndim: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """Symmetric round-to-nearest per row (first axis), 2**bits - 1 levels, on the tensors `mrc compress`
    codes by default (>= 64 elements, >= 2 dimensions); smaller ones unchanged."""
    top = 2 ** (bits - 1) - 1

    def q(a: np.ndarray) -> np.ndarray:
        if a.size < min_elements or a.ndim < min_ndim:
            return a
        w = a.reshape(a.shape[0], -1)
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True) / top, 1e-30)
        return (np.clip(np.round(w / scale), -top, top) * scale).reshape(a.shape).astype(np.float32)
    return q


# ---------------------------------------------------------------- main

def _main() -> None:
    paths = model_paths()
    if not (DATA_DIR / "heldout_audio.npy").exists() or not any((DATA_DIR / "calib").glob("*.npz")):
        t0 = time.perf_counter()
        prepare(DATA_DIR)
        print(f"prepared {DATA_DIR} in {time.perf_counter() - t0:.1f} s")
    meta = json.loads((DATA_DIR / "meta.json").read_text())
    print(f"data: {DATA_DIR}  calib {meta['calib_seconds']:.1f} s, heldout {meta['heldout_seconds']:.1f} s, "
          f"{len(meta['calib_steps'])} calib feeds")

    for key, p in paths.items():
        sess = _session(p)
        ins = ", ".join(f"{i.name} {i.shape} {i.type}" for i in sess.get_inputs())
        outs = ", ".join(f"{o.name} {o.shape}" for o in sess.get_outputs())
        inv = weight_inventory(p)
        where = {}
        for (loc, kind), (n, v) in inv.items():
            k = ("main" if loc == "main" else loc.split("/")[1]) + " " + kind
            where[k] = where.get(k, 0) + v
        print(f"\n[{key}] {p.name}\n  inputs : {ins}\n  outputs: {outs}\n  float32 values: "
              f"{sum(v for _, v in inv.values())} in {sum(n for n, _ in inv.values())} tensors: "
              + ", ".join(f"{k}={v}" for k, v in sorted(where.items())))

    audio = heldout_audio()
    base = paths["default"]
    rows: list[tuple[str, str | Path | bytes]] = [("default vs itself", base)]
    rows += [(f"{k} variant" + (" (other weights)" * (k == "half")), p)
             for k, p in paths.items() if k != "default"]
    rows += [("default, fp16 round-trip", perturb(base, to_fp16)),
             ("default, 8-bit per tensor", perturb(base, uniform_quant(8))),
             ("default, 4-bit per tensor", perturb(base, uniform_quant(4)))]
    rows += [(f"default, {b}-bit per row (RTN)", perturb(base, rtn_per_row(b))) for b in (8, 6, 5, 4)]
    print(f"\nheld-out: {audio.size / SR:.1f} s; original = {base.name}")
    print(f"{'candidate':28s} {'frames':>6s} {'max|dp|':>9s} {'mean|dp|':>9s} {'agree':>7s} "
          f"{'segs o/c':>8s} {'IoU':>6s} {'eval s':>6s}")
    for name, cand in rows:
        t0 = time.perf_counter()
        r = evaluate(cand, base, audio)
        dt = time.perf_counter() - t0
        print(f"{name:28s} {r['num_frames']:6d} {r['max_abs_diff']:9.2e} {r['mean_abs_diff']:9.2e} "
              f"{r['frame_agreement']:7.4f} {len(r['segments_original']):>3d}/{len(r['segments_candidate']):<4d} "
              f"{r['segment_iou']:6.4f} {dt:6.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    _main()
