"""Digest of a module's state: which weights a run started from (part of its checkpoint fingerprint)."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["state_digest"]


def state_digest(module: nn.Module) -> str:
    """First 16 hex digits of SHA-256 over the module's state, name by name in sorted order (raw bytes)."""
    h = hashlib.sha256()
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        if v.numel():   # an empty tensor can have stride 0 (from numpy), which view(uint8) refuses
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr((tuple(v.shape), str(v.dtype))).encode())
    return h.hexdigest()[:16]
