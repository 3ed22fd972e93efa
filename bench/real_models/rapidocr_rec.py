"""Benchmark for compressing RapidOCR's text recogniser (PP-OCRv6_rec_small.onnx).

Why: `mrc compress MODEL.onnx` must keep a real model's behaviour, and for an OCR
recogniser "behaviour" is the decoded string.  So a candidate (e.g. a compressed and
decompressed copy of the recogniser) is run through RapidOCR's own recognition
pipeline -- its resize/normalise/pad, its batching, its CTC decode with the
dictionary stored in the ONNX metadata -- and its strings are compared with the
original model's on held-out text lines rendered here.

Needs the `rapidocr` wheel (3.10.0 ships the rec model inside it; no download) in
the benchmark venv:  pip install -c <pins of numpy/onnxruntime> rapidocr==3.10.0

Data lives outside the repo in DATA_DIR = $MRC_BENCH_DATA/rapidocr (default
/work/benchdata/rapidocr).  It is deterministic: delete the folder, or call
`prepare(DATA_DIR)`, or run `python -m bench.real_models.rapidocr_rec`, to
regenerate it.  Layout:
  images/{calib,heldout}_NNN.png  rendered lines
  labels.json                     {"calib": [[png, text], ...], "heldout": [...]}
  calib/NNN.npz                   one feed {input_name: float32 (1,3,48,W)} each,
                                  captured from RapidOCR's recogniser itself
  original_<sha>.json             cached original-model strings on heldout
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

DATA_DIR = Path(os.environ.get("MRC_BENCH_DATA", "/work/benchdata")) / "rapidocr"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSansCondensed.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerifCondensed.ttf",
]
N_CALIB, N_HELDOUT = 64, 200
WORDS = """the of and to in is was for on are with as his they be at one have this from
or had by word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these
her long make thing see him two has look more day could go come did number sound no most
people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left late
run while press close night real life few north open seem together next white children begin
got walk example ease paper group always music those both mark often letter until mile river
car feet care second book carry took science eat room friend began idea fish mountain stop
once base hear horse cut sure watch color face wood main enough plain girl usual young ready
above ever red list though feel talk bird soon body dog family direct pose leave song measure
door product black short numeral class wind question happen complete ship area half rock
order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb
sing listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern pull cold notice
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star
box noun field rest correct able pound done beauty drive stood contain front teach week final
gave green quick develop ocean warm free minute strong special mind behind clear tail produce
fact street inch multiply nothing course stay wheel full force blue object decide surface deep
moon island foot system busy test record boat common gold possible plane stead dry wonder laugh
thousand ago ran check game shape equate miss brought heat snow tire bring yes distant fill
east paint language among""".split()  # noqa: SIM905


def rec_model_path() -> Path:
    """The recognition .onnx inside the installed rapidocr wheel (its default Rec model)."""
    import rapidocr

    found = sorted((Path(rapidocr.__file__).parent / "models").glob("*_rec_*.onnx"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one rec model in the rapidocr wheel, got {found}")
    return found[0]


# --------------------------------------------------------------------------- data
def _line(rng: random.Random) -> str:
    """A random English / digits / punctuation text line, like printed-document text."""
    w = lambda: rng.choice(WORDS)
    cap = lambda s: s.capitalize() if rng.random() < 0.4 else (s.upper() if rng.random() < 0.1 else s)
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))
    kind = rng.randrange(8)
    if kind == 0:
        return f"{d(4)}-{d(2)}-{d(2)} {d(2)}:{d(2)}"
    if kind == 1:
        return f"${rng.randrange(1, 99)},{d(3)}.{d(2)}" if rng.random() < 0.5 else f"{rng.randrange(0, 100)}.{d(1)}%"
    if kind == 2:
        return f"({d(3)}) {d(3)}-{d(4)}"
    if kind == 3:
        return f"{cap(w())} #{d(rng.randrange(2, 6))}: {w()} {w()}"
    if kind == 4:
        return f"{w()}.{w()}@{w()}.com"
    if kind == 5:
        return f'"{cap(w())} {w()}," {w()} {w()} ({d(2)}).'
    words = [cap(w()) if i == 0 else w() for i in range(rng.randrange(1, 6))]
    return " ".join(words) + rng.choice(["", "", ".", ",", "!", "?", ";", ":", "..."])


def _render(text: str, rng: random.Random) -> Image.Image:
    """Dark text on a light background, tight crop with a margin, mild blur/noise."""
    font = ImageFont.truetype(str(FONT_DIR / rng.choice(FONTS)), rng.randrange(9, 41))
    x0, y0, x1, y1 = font.getbbox(text)
    mx, my = rng.randrange(2, 12), rng.randrange(2, 10)
    bg = tuple(rng.randrange(150, 256) for _ in range(3))
    fg = tuple(rng.randrange(0, 120) for _ in range(3))
    img = Image.new("RGB", (x1 - x0 + 2 * mx, y1 - y0 + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - x0, my - y0), text, font=font, fill=fg)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.8)))
    a = np.asarray(img, np.float32)
    a += np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(0, 20), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


class _Recorder:
    """Stands in for the recogniser's inference session to capture each feed exactly."""

    def __init__(self, session: Any, sink: list[np.ndarray]) -> None:
        self._session, self._sink = session, sink

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self._sink.append(batch.copy())
        return self._session(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def prepare(out_dir: Path = DATA_DIR, seed: int = 0) -> None:
    """Render disjoint calibration / held-out lines and dump the calibration feeds."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < N_CALIB + N_HELDOUT:
        t = _line(rng)
        if t not in texts:
            texts.append(t)
    labels: dict[str, list[list[str]]] = {"calib": [], "heldout": []}
    for i, t in enumerate(texts):
        split = "calib" if i < N_CALIB else "heldout"
        name = f"images/{split}_{len(labels[split]):03d}.png"
        _render(t, rng).save(out_dir / name)
        labels[split].append([name, t])
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=1, ensure_ascii=False))

    engine = _engine(rec_model_path())
    rec = engine._load_rec_model()
    feeds: list[np.ndarray] = []
    rec.session = _Recorder(rec.session, feeds)
    _run(engine, [out_dir / p for p, _ in labels["calib"]])
    name = rec.session.get_input_names()[0]
    (out_dir / "calib").mkdir(exist_ok=True)
    for i, f in enumerate(feeds):
        np.savez(out_dir / "calib" / f"{i:03d}.npz", **{name: f})


# ------------------------------------------------------------------ recognition
def _engine(rec_model: str | Path) -> Any:
    """RapidOCR in recognition-only mode with its Rec model replaced by `rec_model`."""
    from rapidocr import RapidOCR

    return RapidOCR(params={
        "Rec.model_path": str(rec_model),
        "Global.use_det": False, "Global.use_cls": False,
        "Global.log_level": "warning",
    })


def _run(engine: Any, images: Sequence[str | Path | np.ndarray]) -> list[str]:
    out = []
    for img in images:
        res = engine(str(img) if isinstance(img, Path) else img, use_det=False, use_cls=False, use_rec=True)
        out.append(res.txts[0] if getattr(res, "txts", None) else "")
    return out


def recognise(rec_model: str | Path, images: Sequence[str | Path | np.ndarray]) -> list[str]:
    """Strings RapidOCR's real recognition step produces for each line image.

    Each image is one RapidOCR call with use_det/use_cls off, i.e. the documented
    recognition-only path: RapidOCR's image preprocessing, its recogniser's
    resize-to-48/normalise/pad, and its CTC decode, with only the ONNX swapped.
    Paths are read by RapidOCR; arrays must be as it takes them (HxWx3 BGR uint8)."""
    return _run(_engine(rec_model), images)


# ------------------------------------------------------------------- evaluation
def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _cer(hyp: Sequence[str], ref: Sequence[str]) -> float:
    return sum(levenshtein(h, r) for h, r in zip(hyp, ref)) / max(1, sum(len(r) for r in ref))


def _exact(hyp: Sequence[str], ref: Sequence[str]) -> float:
    return float(np.mean([h == r for h, r in zip(hyp, ref)]))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def evaluate(candidate_path: str | Path, original_path: str | Path | None = None,
             data_dir: Path = DATA_DIR) -> dict[str, float]:
    """Candidate vs original recogniser (and both vs ground truth) on held-out lines.

    `exact_match`/`cer` compare the candidate's strings with the original model's:
    that is what a faithful compression must preserve.  The original's strings are
    cached in data_dir keyed by the original file's hash."""
    data_dir = Path(data_dir)
    if not (data_dir / "labels.json").exists():
        prepare(data_dir)
    original = Path(original_path) if original_path else rec_model_path()
    held = json.loads((data_dir / "labels.json").read_text())["heldout"]
    images = [data_dir / p for p, _ in held]
    gt = [t for _, t in held]
    cache = data_dir / f"original_{_sha(original)}.json"
    if cache.exists():
        orig = json.loads(cache.read_text())
    else:
        orig = recognise(original, images)
        cache.write_text(json.dumps(orig, ensure_ascii=False))
    cand = recognise(candidate_path, images)
    return {
        "exact_match": _exact(cand, orig), "cer": _cer(cand, orig),
        "exact_match_gt_original": _exact(orig, gt), "exact_match_gt_candidate": _exact(cand, gt),
        "cer_gt_original": _cer(orig, gt), "cer_gt_candidate": _cer(cand, gt),
    }


# ------------------------------------------------------ crude perturbations (demo)
def _perturb(src: Path, dst: Path, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Apply fn to every float tensor: initializers and tensor attributes (Constant
    values etc.) at any subgraph depth."""
    import onnx
    from onnx import numpy_helper

    def fix(t: onnx.TensorProto) -> None:
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f":
            t.CopyFrom(numpy_helper.from_array(fn(a).astype(a.dtype), t.name))

    def walk(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            fix(t)
        for n in g.node:
            for at in n.attribute:
                if at.type == onnx.AttributeProto.TENSOR:
                    fix(at.t)
                elif at.type == onnx.AttributeProto.GRAPH:
                    walk(at.g)
                elif at.type == onnx.AttributeProto.GRAPHS:
                    for sg in at.graphs:
                        walk(sg)

    m = onnx.load(str(src))
    walk(m.graph)
    onnx.save(m, str(dst))


def _uniform(bits: int, per_channel: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Min/max uniform quantisation of weight tensors (ndim >= 2), per tensor or per
    output channel (axis 0)."""
    def q(a: np.ndarray) -> np.ndarray:
        if a.ndim < 2:
            return a
        axes = tuple(range(1, a.ndim)) if per_channel else None
        lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
        step = np.where(hi > lo, (hi - lo) / (2**bits - 1), 1)
        return np.round((a - lo) / step) * step + lo
    return q


def main() -> None:
    if not (DATA_DIR / "labels.json").exists():
        t = time.perf_counter()
        prepare(DATA_DIR)
        print(f"prepared {DATA_DIR} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    orig = rec_model_path()
    variants: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
        "original": None,
        "float16 round-trip": lambda a: a.astype(np.float16).astype(np.float32),
        "8-bit per-channel": _uniform(8, per_channel=True),
        "8-bit per-tensor": _uniform(8),
        "4-bit per-tensor": _uniform(4),
    }
    keys = ["exact_match", "cer", "exact_match_gt_candidate", "cer_gt_candidate"]
    print(f"{'variant':20s}" + "".join(f"{k:>26s}" for k in keys) + f"{'eval s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in variants.items():
            path = orig
            if fn is not None:
                path = Path(tmp) / "candidate.onnx"
                _perturb(orig, path, fn)
            t = time.perf_counter()
            r = evaluate(path, orig)
            dt = time.perf_counter() - t
            print(f"{name:20s}" + "".join(f"{r[k]:26.4f}" for k in keys) + f"{dt:8.1f}")
    print(f"original vs ground truth: exact {r['exact_match_gt_original']:.4f}, "
          f"cer {r['cer_gt_original']:.4f}")


if __name__ == "__main__":
    main()
