"""NNCodec (MPEG NNC reference codec, PyPI ``nncodec`` 2.1.3) baseline on ONNX models.

Compresses every float32 tensor (>= 64 elements) of an ONNX model with NNCodec at
several QPs, decodes it again, writes the reconstructed ONNX model per QP and a
``results.json`` with sizes, bits per weight, timings and reconstruction errors.
It is the comparison point for ``mrc compress MODEL.onnx``.

Usage
-----
From the repository root::

    PYTHONPATH=bench/real_models/nncodec_stub /work/nncenv/bin/python \\
        bench/real_models/nncodec_baseline.py MODEL.onnx \\
        --qps -20,-24,-28,-32,-36 --out DIR [--feeds FEEDS.npz] [--short-names] \
        [--qp-mode absolute|std] [--nonweight-qp -75] [--no-dq]

QP range: in the default ``absolute`` mode the step is ~2**(qp/4) in weight
units, so the useful range depends on the weights' scale.  Measured: silero_vad
(weights up to |55|) -16..-40 gives 3.0..8.7 bits/weight; LeNet-5 (fc1 std
~0.03) -16..-36 gives 1.6..6.2 bits/weight.  Add -8/-12 for lower rates.  With
``--qp-mode std`` (step ~2**(qp/4)*std per tensor), -8..-24 gave 2.6..6.4
bits/weight on silero_vad.

Outputs: ``DIR/<stem>_qp<qp>.onnx`` (reconstructed model, graph otherwise
unchanged), ``DIR/<stem>_qp<qp>.nnc`` (the NNCodec bitstream) and
``DIR/results.json``.  ``--feeds`` takes an ``.npz`` whose keys are the model's
input names; then each reconstructed model is run in onnxruntime next to the
original and the max abs difference of every output is recorded.

From Python (same interpreter and PYTHONPATH)::

    from nncodec_baseline import run
    rows = run("model.onnx", [-24, -32], "out_dir")

Environment (a separate venv; it must not be the project's .venv)
-----------------------------------------------------------------
NNCodec has no wheel for this platform and pulls in torch/torchvision, so::

    python3.11 -m venv /work/nncenv
    echo torch==2.13.0 > /tmp/c.txt     # pin: a looser torch spec pulls GBs of CUDA wheels
    /work/nncenv/bin/pip install -c /tmp/c.txt torch==2.13.0
    /work/nncenv/bin/pip install -c /tmp/c.txt pybind11 h5py pandas scikit-learn \\
        opencv-python-headless tqdm click ptflops torchmetrics wheel numpy onnx onnxruntime
    cd /tmp && /work/nncenv/bin/pip download --no-deps --no-binary :all: nncodec==2.1.3
    /work/nncenv/bin/pip install --no-deps --no-build-isolation /tmp/nncodec-2.1.3.tar.gz
    # (builds the deepCABAC C++ extension with pybind11; ~3 min on 2 cores)

torchvision is not installed (no build that imports against this torch);
``nncodec`` imports it only for dataset/transform helpers, so the stub package in
``bench/real_models/nncodec_stub/torchvision`` is put on PYTHONPATH instead.

What NNCodec does with the tensors (read from the nncodec 2.1.3 source)
-------------------------------------------------------------------------
* ``nncodec.nn.encode(model, args=None, use_case_name=None, incremental=False,
  approx_param_base=None, epoch=0) -> bytearray``: with a dict of float32/int32
  numpy arrays it calls ``nnc.compress(...)``; ``args`` is merged over
  ``nncodec.nn.nncargs`` (qp=-32, qp_density=2, nonweight_qp=-75, use_dq=True,
  param_opt=True, row_skipping=True, opt_qp=False, bitdepth=None, ...).
  It also writes the bitstream to ``args["results"]/d<model>_epoch0_qp_<qp>_bitstream.nnc``.
  ``nncodec.nn.decode(bytearray, args=None, ...) -> dict`` of float32 arrays.
* QP: one scalar QP per tensor (no per-channel scaling), *absolute* uniform
  step size ``delta = (4 + (qp & 3)) * 2**((qp >> 2) - 2)``, i.e. ~``2**(qp/4)``
  for qp_density=2 (qp=-32 -> 2**-8).  Reconstruction is ``delta * level``.
  With ``use_dq`` (dependent / trellis-coded quantization, default on) the RDO
  trellis may pick levels so that the max abs error exceeds delta/2 (observed up
  to ~1.3*delta).
* Tensors with ndim > 1 are type "weight" and are coded at ``qp``; tensors with
  ndim <= 1 (biases, norms, any 1-d tensor) are type "unspecified" and coded at
  ``nonweight_qp`` (default -75, step ~2.4e-6: near-lossless, but still
  quantized and CABAC-coded inside the same bitstream).  ``nonweight_qp=None``
  would mean ``qp - 8`` (a 4x finer step).  int32 tensors are passed through.
* Block/channel structure is not used here (no block_id_and_param_type, no
  BN folding / LSA, which need a PyTorch model); ``row_skipping`` (all-zero rows
  signalled by a flag) is on.  Encode is single-threaded C++ (deepCABAC).
* Size: the bitstream contains NNR headers and every tensor *name* verbatim
  (1 byte per character), so ``bitstream_bytes`` includes the names; see
  ``name_bytes`` in the results, or use ``--short-names`` to code the tensors
  under short numeric keys instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MIN_ELEMENTS = 64  # tensors smaller than this stay as they are (as in mrc)
DEFAULT_QPS = (-20, -24, -28, -32, -36)


# ----------------------------------------------------------------------------
# Collecting float32 tensors from an ONNX model (all graphs, any depth)
# ----------------------------------------------------------------------------
def _walk_graph(graph, path, out, used):
    def add(name, tensor, where):
        key = name or where
        if key in used:
            base = f"{key}@{path}"
            key, i = base, 1
            while key in used:
                key, i = f"{base}#{i}", i + 1
        used.add(key)
        out.append({"key": key, "tensor": tensor, "where": where})

    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            add(init.name, init, f"{path}:initializer")
    for n_idx, node in enumerate(graph.node):
        node_id = node.name or f"node{n_idx}"
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if (attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR
                        and attr.t.data_type == onnx.TensorProto.FLOAT):
                    name = node.output[0] if node.output else ""
                    add(name, attr.t, f"{path}/{node_id}:Constant")
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _walk_graph(attr.g, f"{path}/{node_id}.{attr.name}", out, used)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g_idx, g in enumerate(attr.graphs):
                    _walk_graph(g, f"{path}/{node_id}.{attr.name}[{g_idx}]", out, used)


def collect_float_tensors(model: onnx.ModelProto) -> list[dict]:
    """All float32 tensors of ``model``: initializers of the main graph and of
    every subgraph (attributes ``g``/``graphs``, any depth) and the ``value``
    tensors of Constant nodes (keyed by their output name).  Each entry is
    ``{"key": unique name, "tensor": TensorProto (in place), "where": ...}``."""
    out: list[dict] = []
    _walk_graph(model.graph, "main", out, set())
    return out


# ----------------------------------------------------------------------------
# NNCodec
# ----------------------------------------------------------------------------
def _import_nncodec():
    try:
        from nncodec import nn as nnc_nn  # noqa: WPS433
    except ModuleNotFoundError as exc:  # pragma: no cover - environment help
        raise SystemExit(
            f"cannot import nncodec ({exc}); run with /work/nncenv/bin/python and "
            "PYTHONPATH=bench/real_models/nncodec_stub (see this file's docstring)"
        ) from exc
    return nnc_nn


def _nncodec_version() -> str:
    try:
        from importlib.metadata import version
        return version("nncodec")
    except Exception:  # pragma: no cover
        return "unknown"


def _run_onnx(path: str, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: feeds[k] for k in names})


def _save_model(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > 1_900_000_000:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


def run(model_path, qps=DEFAULT_QPS, out_dir="nncodec_out", *, feeds=None,
        nonweight_qp=-75, use_dq=True, short_names=False, qp_mode="absolute",
        verbose=True) -> list[dict]:
    """Encode/decode ``model_path`` with NNCodec at each qp in ``qps``.

    Writes ``out_dir/<stem>_qp<qp>.onnx`` (+ ``.nnc`` bitstream) and
    ``out_dir/results.json``; returns the per-qp result rows.  ``feeds`` (dict
    input name -> array) enables an onnxruntime comparison of the outputs.
    ``qp_mode="absolute"`` is NNCodec's own behaviour (one absolute step
    ~2**(qp/4) for every weight tensor); ``"std"`` passes ``qp_per_tensor`` so
    that each ndim>1 tensor gets ``qp + round(4*log2(std))``, i.e. a step of
    ~``2**(qp/4) * std(tensor)`` (1-d tensors stay at ``nonweight_qp``).
    """
    if qp_mode not in ("absolute", "std"):
        raise ValueError(f"qp_mode must be 'absolute' or 'std', not {qp_mode!r}")
    nnc_nn = _import_nncodec()
    model_path = Path(model_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = model_path.stem
    qps = [int(q) for q in qps]

    model = onnx.load(str(model_path))
    entries = collect_float_tensors(model)
    originals = {e["key"]: numpy_helper.to_array(e["tensor"]).astype(np.float32, copy=True)
                 for e in entries}
    coded = [e for e in entries if originals[e["key"]].size >= MIN_ELEMENTS]
    kept = [e for e in entries if originals[e["key"]].size < MIN_ELEMENTS]
    codec_key = {e["key"]: (str(i) if short_names else e["key"]) for i, e in enumerate(coded)}
    params = {codec_key[e["key"]]: np.ascontiguousarray(originals[e["key"]]) for e in coded}

    n_weight = sum(originals[e["key"]].size for e in coded if originals[e["key"]].ndim > 1)
    n_nonweight = sum(originals[e["key"]].size for e in coded if originals[e["key"]].ndim <= 1)
    num_coded = n_weight + n_nonweight
    name_bytes = sum(len(k.encode()) for k in params)
    qp_offset = {}
    if qp_mode == "std":
        for k, v in params.items():
            sd = float(np.std(v))
            if v.ndim > 1 and sd > 0:
                qp_offset[k] = int(np.round(4 * np.log2(sd)))

    ref_outputs = _run_onnx(str(model_path), feeds) if feeds is not None else None

    rows = []
    for qp in qps:
        args = {"qp": qp, "nonweight_qp": nonweight_qp, "use_dq": use_dq,
                "verbose": False, "model": stem}
        if qp_offset:
            args["qp_per_tensor"] = {k: np.int32(qp + o) for k, o in qp_offset.items()}
        with tempfile.TemporaryDirectory() as tmp:
            args["results"] = tmp
            t0 = time.perf_counter()
            bitstream = nnc_nn.encode({k: v.copy() for k, v in params.items()}, args)
            t_enc = time.perf_counter() - t0
        bitstream = bytearray(bitstream)
        (out_dir / f"{stem}_qp{qp}.nnc").write_bytes(bytes(bitstream))
        t0 = time.perf_counter()
        rec = nnc_nn.decode(bytearray(bitstream), {"verbose": False})
        t_dec = time.perf_counter() - t0

        per_tensor = {}
        for e in coded:
            orig = originals[e["key"]]
            r = np.asarray(rec[codec_key[e["key"]]], dtype=np.float32).reshape(orig.shape)
            err = np.abs(r - orig)
            per_tensor[e["key"]] = {
                "shape": list(orig.shape),
                "qp": int(qp + qp_offset.get(codec_key[e["key"]], 0)) if orig.ndim > 1
                else int(nonweight_qp),
                "max_abs_err": float(err.max()),
                "rmse": float(np.sqrt(np.mean(err.astype(np.float64) ** 2))),
                "orig_max_abs": float(np.abs(orig).max()),
            }
            new = numpy_helper.from_array(r, name=e["tensor"].name)
            new.doc_string = e["tensor"].doc_string
            e["tensor"].CopyFrom(new)
        rec_path = out_dir / f"{stem}_qp{qp}.onnx"
        _save_model(model, rec_path)

        w_errs = [v["max_abs_err"] for v in per_tensor.values() if len(v["shape"]) > 1]
        nw_errs = [v["max_abs_err"] for v in per_tensor.values() if len(v["shape"]) <= 1]
        row = {
            "qp": qp,
            "qp_mode": qp_mode,
            "step_size": float((4 + (qp & 3)) * 2.0 ** ((qp >> 2) - 2)),
            "bitstream_bytes": len(bitstream),
            "num_coded_weights": int(num_coded),
            "num_coded_weight_type": int(n_weight),
            "num_coded_nonweight_type": int(n_nonweight),
            "bits_per_weight": 8.0 * len(bitstream) / max(num_coded, 1),
            "name_bytes_in_bitstream": name_bytes,
            "encode_seconds": t_enc,
            "decode_seconds": t_dec,
            "max_abs_err": {
                "max_over_weight_tensors": max(w_errs) if w_errs else None,
                "median_over_weight_tensors": float(np.median(w_errs)) if w_errs else None,
                "max_over_nonweight_tensors": max(nw_errs) if nw_errs else None,
                "per_tensor": per_tensor,
            },
            "reconstructed_model": str(rec_path),
        }
        if feeds is not None:
            outs = _run_onnx(str(rec_path), feeds)
            diffs = [np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                     for a, b in zip(ref_outputs, outs)]
            row["output_max_abs_diff"] = [float(d.max()) if d.size else 0.0 for d in diffs]
            row["output_mean_abs_diff"] = [float(d.mean()) if d.size else 0.0 for d in diffs]
        rows.append(row)
        if verbose:
            msg = (f"qp {qp:4d}  step {row['step_size']:.3g}  {len(bitstream):9d} B  "
                   f"{row['bits_per_weight']:.3f} bit/w  enc {t_enc:.2f}s dec {t_dec:.2f}s  "
                   f"max|err| w {row['max_abs_err']['max_over_weight_tensors']}")
            if "output_max_abs_diff" in row:
                msg += f"  out diff {['%.3g' % d for d in row['output_max_abs_diff']]}"
            print(msg, flush=True)

        # restore the original tensors for the next qp
        for e in coded:
            new = numpy_helper.from_array(originals[e["key"]], name=e["tensor"].name)
            new.doc_string = e["tensor"].doc_string
            e["tensor"].CopyFrom(new)

    summary = {
        "model": str(model_path),
        "codec": f"nncodec {_nncodec_version()}",
        "settings": {"qp_density": 2, "nonweight_qp": nonweight_qp, "use_dq": use_dq,
                     "row_skipping": True, "param_opt": True, "opt_qp": False,
                     "min_elements": MIN_ELEMENTS, "short_names": short_names,
                     "qp_mode": qp_mode},
        "num_float_tensors": len(entries),
        "num_coded_tensors": len(coded),
        "num_kept_tensors": len(kept),
        "kept_elements": int(sum(originals[e["key"]].size for e in kept)),
        "coded_tensors": {e["key"]: e["where"] for e in coded},
        "original_coded_bytes": int(4 * num_coded),
        "results": rows,
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="path to an .onnx model")
    p.add_argument("--qps", default=",".join(str(q) for q in DEFAULT_QPS),
                   help="comma-separated NNCodec QPs (step ~ 2**(qp/4)); default %(default)s")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--feeds", help=".npz of model inputs: compare outputs in onnxruntime")
    p.add_argument("--nonweight-qp", type=int, default=-75,
                   help="QP for 1-d tensors (NNCodec default -75)")
    p.add_argument("--no-dq", action="store_true", help="disable dependent quantization")
    p.add_argument("--short-names", action="store_true",
                   help="code tensors under short numeric keys (names cost bytes in the bitstream)")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv) - 1):  # allow "--qps -20,-24" (argparse sees "-20" as an option)
        if argv[i] in ("--qps", "--nonweight-qp"):
            argv[i:i + 2] = [f"{argv[i]}={argv[i + 1]}", ""]
    p.add_argument("--qp-mode", choices=("absolute", "std"), default="absolute",
                   help="absolute: NNCodec's step ~2**(qp/4) for all weights (default); "
                        "std: step ~2**(qp/4)*std(tensor) per tensor via qp_per_tensor")
    a = p.parse_args([x for x in argv if x != ""])
    feeds = None
    if a.feeds:
        with np.load(a.feeds) as z:
            feeds = {k: z[k] for k in z.files}
    qps = [int(q) for q in a.qps.split(",") if q.strip()]
    run(a.model, qps, a.out, feeds=feeds, nonweight_qp=a.nonweight_qp,
        use_dq=not a.no_dq, short_names=a.short_names, qp_mode=a.qp_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
