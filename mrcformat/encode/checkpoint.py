"""Training checkpoints, written atomically (`mrcformat.atomic`): a crash leaves the old or the new file.

Read with `torch.load(weights_only=True)`: tensors, numbers, strings and containers only, so opening a
checkpoint (one from somewhere else too) never runs code."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mrcformat.atomic import atomic_open

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    """The saved state, or None if there is no checkpoint yet."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
