"""Minimal stand-in for ``torchvision`` so that ``import nncodec.nn`` works.

NNCodec 2.1.3 imports torchvision at import time only for its dataset /
training helpers (ImageNet, CIFAR, VOC loaders and image transforms), which the
ONNX baseline (bench/real_models/nncodec_baseline.py) never uses.  The real
torchvision wheels do not import against the CPU torch==2.13.0 used in
/work/nncenv, so this stub provides just the names that are touched at import
time.  Anything actually *used* raises a clear error.
"""
__version__ = "0.0.0+nncodec-stub"

from . import datasets, models, transforms  # noqa: E402,F401
