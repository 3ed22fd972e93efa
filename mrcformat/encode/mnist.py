"""MNIST from its original gzipped IDX files, as float32 tensors in [0, 1].

No download: point `load_mnist` at a folder holding `train-images-idx3-ubyte.gz`,
`train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`
(the repository ships them under `examples/data/`).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["load_mnist", "mnist_loaders", "read_idx"]

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:  # 0x00000801 labels, 0x00000803 images: unsigned bytes
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic 0x{magic:08x})")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {arr.size} bytes of data for shape {shape}")
    return arr.reshape(shape)


def load_mnist(root: str | Path, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N]) of `split` ("train" or "test")."""
    img_file, lbl_file = FILES[split]
    images = read_idx(Path(root) / img_file)
    labels = read_idx(Path(root) / lbl_file)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def mnist_loaders(root: str | Path, batch_size: int = 128, seed: int = 0, limit: int | None = None,
                  test_batch_size: int = 1000) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (seeded generator) and ordered test loader."""
    train = TensorDataset(*load_mnist(root, "train", limit))
    test = TensorDataset(*load_mnist(root, "test"))
    g = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=g, drop_last=True),
            DataLoader(test, batch_size=test_batch_size, shuffle=False))
