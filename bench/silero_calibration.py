"""Which calibration helps `mrc compress` on silero-vad (results: bench/results/onnx_silero_calibration.md).

    python bench/silero_calibration.py VARIANT BUDGETS [INDEX_BITS [SEED]]
    e.g. python bench/silero_calibration.py seq_32 3,4 14 1

VARIANT: `single` (32 of the harness's 128 evenly spaced steps, importances over 8), `spread_all` (all
128, importances over all), `single_all` (256 of the 591 streaming steps, evenly spaced, importances over 128), or
`seq_L` (256 // L sequences of L consecutive steps with the LSTM state carried: `state={"state": "stateN"}`).
Prints one JSON line per budget: file bytes, calibration D, and the held-out metrics of
`bench.real_models.silero_vad.evaluate`. Needs the benchmark venv of bench/real_models/silero_vad.py.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.real_models import silero_vad as h  # noqa: E402
from mrcformat.encode.onnx_compress import analyse, compress_onnx  # noqa: E402
from mrcformat_runtime.onnx_export import to_onnx_model  # noqa: E402


def main(argv: list[str]) -> None:
    variant, budgets = argv[0], argv[1].split(",")
    ib = int(argv[2]) if len(argv) > 2 else 14
    seed = int(argv[3]) if len(argv) > 3 else 0
    out_dir = Path("/tmp/silero_calibration")
    out_dir.mkdir(exist_ok=True)
    path = str(h.model_paths()["default"])
    steps: list[dict] = []
    h.stream_probs(path, np.load(h.DATA_DIR / "calib_audio.npy"),
                   on_step=lambda t, feed: steps.append({k: np.array(v) for k, v in feed.items()}))
    t0 = time.time()
    if variant == "single":
        an = analyse(path, str(h.DATA_DIR / "calib"), max_feeds=32, importance_feeds=8, progress=False, seed=seed)
    elif variant == "spread_all":
        an = analyse(path, str(h.DATA_DIR / "calib"), max_feeds=None, importance_feeds=None, progress=False, seed=seed)
    elif variant == "single_all":
        an = analyse(path, steps, max_feeds=256, importance_feeds=128, progress=False, seed=seed)
    elif variant.startswith("seq_"):
        an = analyse(path, steps, max_feeds=256, importance_feeds=128, state={"state": "stateN"},
                     sequence_length=int(variant[4:]), progress=False, seed=seed)
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    print(f"{variant}: analyse {time.time() - t0:.1f} s", file=sys.stderr)
    for b in budgets:
        out = out_dir / f"{variant}-{b}-s{seed}.mrc"
        r = compress_onnx(an, out, f"{b}bpw", index_bits=ib, progress=False, seed=seed)
        m = h.evaluate(to_onnx_model(str(out)).SerializeToString())
        print(json.dumps(dict(variant=variant, seed=seed, budget=b, bytes=r.file_bytes, measured=r.measured_distortion,
                              **{k: round(float(v), 4) for k, v in m.items() if isinstance(v, (int, float))})),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
