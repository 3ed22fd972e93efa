"""MIRACLE encoder (PyTorch): variational training, block coding and `.mrc` output.

    from mrcformat.encode import compress
    result = compress(model, train_loader, budget_bytes=1556, method="mean-kl")
    result.save("model.mrc")

Modules: `layers` (variational Linear/Conv2d), `lambertw` (Mean-KL variance recovery),
`posterior` (q, p and coded state of a group), `kl_control` (Mean-Var per-block beta),
`blocks` (groups, block sizes, layouts), `allocate` (learned rate allocation), `coding`
(candidate scoring and choice), `train` (the MIRACLE loop, checkpoints), `refine` (index
refinement after coding), `distill` (knowledge distillation from a teacher), `augment`
(training-batch transforms), `api` (`compress`), `mnist` (MNIST IDX loader).
The decoder (`mrcformat`) never imports this package.
"""
from .api import CompressResult, compress
from .train import Interrupted, TrainConfig

__all__ = ["CompressResult", "Interrupted", "TrainConfig", "compress"]
