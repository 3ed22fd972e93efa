"""MIRACLE encoder: variational training of PyTorch models, post-training compression of ONNX models,
block coding and `.mrc` output.

    from mrcformat.encode import compress                 # train a torch model under a KL budget
    result = compress(model, train_loader, budget_bytes=1556, method="mean-kl")
    result.save("model.mrc")

    from mrcformat.encode import compress_onnx            # an .onnx file + calibration inputs, no training
    report = compress_onnx("model.onnx", "model.mrc", budget="64KiB", calibration="calib/")

Training (torch): `selection` (which parameters are coded, their groups), `signature` (inputs,
batches and nested outputs of any model), `graph_check` (the architecture graph, exported and run in
onnxruntime before training), `onnx_finetune` (MIRACLE from a post-training file of an ONNX model),
`layers` (variational Linear/Conv2d, generic coded parameters), `lambertw` (Mean-KL variance recovery),
`posterior` (q, p and coded state of a group), `kl_control` (Mean-Var per-block beta),
`blocks` (groups, block sizes, layouts), `allocate` (learned rate allocation), `coding`
(candidate scoring and choice), `train` (the MIRACLE loop, checkpoints), `refine` (index
refinement after coding), `distill` (knowledge distillation from a teacher), `augment`
(training-batch transforms), `api` (`compress`), `mnist` (MNIST IDX loader), `distributed`.
Post-training (numpy + onnx + onnxruntime, no torch): `onnx_ingest` (an ONNX model's weights and
where they live), `calibration` (calibration inputs, the probe model, output distortion),
`importance` (diagonal importance of every weight), `rd_allocation` (rate-distortion water-filling),
`block_coder` (numpy coding of groups with the compiled scorer), `onnx_compress` (`compress_onnx`,
budget sweeps).
The decoder (`mrcformat`) never imports this package; importing it does not import torch until a
training name is used.
"""
from __future__ import annotations

_TORCH_NAMES = {"CompressResult": ".api", "compress": ".api", "Interrupted": ".train", "TrainConfig": ".train"}
_ONNX_NAMES = {"compress_onnx": ".onnx_compress", "sweep_onnx": ".onnx_compress", "OnnxCompressReport": ".onnx_compress"}

__all__ = sorted(_TORCH_NAMES) + sorted(_ONNX_NAMES)


def __getattr__(name: str):
    import importlib

    module = _TORCH_NAMES.get(name) or _ONNX_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__():
    return __all__
