"""MIRACLE's per-block KL control for Mean-Var training.

Every block b has its own penalty coefficient beta_b on KL(q_b || p). After each optimiser step
beta_b is multiplied by (1 + eps) if the block's KL is above its budget and divided by (1 + eps)
otherwise, so each block's KL settles at (just around) its budget of index_bits * ln 2 nats.
"""
from __future__ import annotations

import torch

__all__ = ["BlockBeta"]


class BlockBeta(torch.nn.Module):
    def __init__(self, num_blocks: int, beta0: float = 1e-3, eps: float = 5e-3) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("beta", torch.full((num_blocks,), float(beta0)))

    def penalty(self, block_kl: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """sum_b beta_b KL_b over active (uncoded) blocks."""
        return (self.beta * block_kl * active).sum()

    @torch.no_grad()
    def update(self, block_kl: torch.Tensor, target: float) -> None:
        up = block_kl > target
        self.beta.mul_(torch.where(up, torch.full_like(self.beta, 1 + self.eps),
                                   torch.full_like(self.beta, 1 / (1 + self.eps))))
