"""Models and `.mrc` containers shared by the benchmarks (needs torch; not part of the package).

* `LeNet5` (Caffe variant, 431,080 parameters, 430,500 of them in weight tensors) and `VGG16` for
  CIFAR-10 (13 conv layers with optional BatchNorm, fc 512-10: 14,715,584 weights in 14 weight
  tensors; 14,732,503 state_dict elements with BN, running statistics included).
* `container_for(model, ...)`: a `.mrc` Container with the model's state_dict names: one coded group
  per weight tensor (rank >= 2; 16-bit indices, affine layout from `choose_affine`, sigma ~
  1/sqrt(fan_in)), biases and BatchNorm parameters/statistics raw, optionally the architecture graph.
  Indices are random: the weights are random candidates, which is all a timing needs.
* `SCALES`: name -> (model factory, example input, block size) giving MIRACLE-like index payloads:
  LeNet-5 ~1.5 KB (block 576: 749 indices) and VGG-16 ~300 KB (block 96: 153,288 indices).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrcformat.container import Container, Group, Tensor
from mrcformat.layout import choose_affine, num_blocks
from mrcformat.sampler import float_to_bf16_bits, float_to_f32_bits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from lenet5_model import LeNet5  # noqa: E402  (the bundled example's model: one definition)

__all__ = ["SCALES", "VGG16", "VGG16_CFG", "LeNet5", "build", "container_for", "decoded_bytes", "pyplot"]


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 for CIFAR-10 (32x32 input): 13 conv 3x3 layers (+ BatchNorm), 5 max-pools, fc 512-10."""

    def __init__(self, batch_norm: bool = True, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(cin, v, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def container_for(model: nn.Module, *, block_size: int, index_bits: int = 16, seed: int = 7,
                  example_input: torch.Tensor | None = None, mu: float = 0.0) -> Container:
    """Random-index container named like `model.state_dict()`; with the architecture graph when
    `example_input` is given (`mrcformat_runtime.graph.with_graph`)."""
    rng = np.random.default_rng(seed)
    groups, tensors = [], []
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if t.dim() >= 2:
            n = t.numel()
            sigma = float_to_bf16_bits(1.0 / np.sqrt(n // shape[0]))
            gid = len(groups)
            groups.append(Group(float_to_f32_bits(mu), sigma, block_size, index_bits, n, choose_affine(n, seed, gid),
                                False, rng.integers(0, 2**index_bits, size=num_blocks(n, block_size), dtype=np.int64)))
            tensors.append(Tensor(name, shape, "coded", group=gid))
        elif t.is_floating_point():
            data = (rng.uniform(0.5, 1.5, size=shape) if name.endswith(("running_var", ".weight"))
                    else rng.normal(0.0, 0.05, size=shape)).astype(np.float32)
            tensors.append(Tensor(name, shape, "raw", dtype="float32", data=data))
        else:  # BatchNorm num_batches_tracked
            tensors.append(Tensor(name, shape, "raw", dtype="int64", data=np.full(shape, 1, dtype=np.int64)))
    c = Container(seed=seed, groups=groups, tensors=tensors, metadata={"model": type(model).__name__})
    if example_input is not None:
        from mrcformat_runtime.graph import with_graph

        c = with_graph(c, model, example_input)
    return c


# name -> (model factory, example input factory, block size)
SCALES = {
    "lenet5": (LeNet5, lambda: torch.randn(1, 1, 28, 28), 576),
    "vgg16": (VGG16, lambda: torch.randn(1, 3, 32, 32), 96),
}


def build(scale: str, *, graph: bool = True, seed: int = 7) -> tuple[nn.Module, Container]:
    """(eval-mode model, its container) for a name of SCALES."""
    make_model, make_input, block = SCALES[scale]
    torch.manual_seed(seed)
    model = make_model().eval()
    return model, container_for(model, block_size=block, seed=seed, example_input=make_input() if graph else None)


def decoded_bytes(c: Container) -> int:
    """Bytes of all tensors once decoded (coded float32, raw in their stored dtype)."""
    return sum(t.numel * 4 if t.encoding == "coded" else t.data.nbytes for t in c.tensors)


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
