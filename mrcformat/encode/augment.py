"""Training-batch transforms for `compress(..., batch_transform=...)`.

A transform is called as `transform(x, generator)` on every training batch (never on the
refinement or evaluation data) with the trainer's own noise generator, which checkpoints save:
an interrupted run resumes with the same augmented batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["RandomShift"]


class RandomShift:
    """Translate each image [N, C, H, W] by its own random (dy, dx) in [-max_shift, max_shift], zero fill."""

    def __init__(self, max_shift: int = 2) -> None:
        if max_shift < 0:
            raise ValueError("max_shift must be >= 0")
        self.max_shift = int(max_shift)

    def __repr__(self) -> str:
        return f"RandomShift({self.max_shift})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        s = self.max_shift
        if s == 0:
            return x
        n, _, h, w = x.shape
        padded = F.pad(x, (s, s, s, s))
        dev = generator.device if generator is not None else x.device
        oy = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=dev).to(x.device)
        ox = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=dev).to(x.device)
        rows = oy[:, None] + torch.arange(h, device=x.device)            # [N, H]
        cols = ox[:, None] + torch.arange(w, device=x.device)            # [N, W]
        idx = torch.arange(n, device=x.device)[:, None, None]
        return padded[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
