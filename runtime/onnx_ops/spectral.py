"""Spectral operators of audio front ends: DFT (opsets 17 and 20) and STFT, on real ([..., 1]) or complex
([..., 2]) inputs, computed with torch.fft (differentiable)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import onnx_dtype_to_torch

__all__ = ["OPS"]


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 1:
        return x[..., 0]
    return torch.view_as_complex(x.to(torch.float32 if x.dtype != torch.float64 else x.dtype).contiguous())


def _fit(x: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """Zero-pad or truncate axis to n entries."""
    size = x.shape[axis]
    if n < size:
        return x.narrow(axis, 0, n)
    if n > size:
        pads = [0, 0] * (x.dim() - 1 - axis) + [0, n - size]
        return F.pad(x, pads)
    return x


def _dft(a):
    inverse, onesided = bool(a.get("inverse", 0)), bool(a.get("onesided", 0))
    axis_attr = a.get("axis", 1)

    def fn(x, dft_length=None, axis=None):
        real = x.shape[-1] == 1
        ax = int(axis.reshape(-1)[0].item()) if axis is not None else axis_attr
        ax = ax + x.dim() if ax < 0 else ax  # counted on the full rank, the trailing [1|2] axis included
        if not 0 <= ax < x.dim() - 1:
            raise a.error(f"axis {ax} is outside the signal axes of a rank-{x.dim()} input")
        v = _as_complex(x)
        n = int(dft_length.reshape(-1)[0].item()) if dft_length is not None and dft_length.numel() else v.shape[ax]
        v = _fit(v, ax, n)
        if not v.is_complex():
            v = v.to(torch.complex64 if v.dtype != torch.float64 else torch.complex128)
        y = torch.fft.ifft(v, dim=ax) if inverse else torch.fft.fft(v, dim=ax)
        if onesided:
            y = y.narrow(ax, 0, n // 2 + 1)
        out = torch.view_as_real(y)
        return out.to(x.dtype) if real or x.dtype != out.dtype else out
    return fn


def _stft(a):
    onesided = bool(a.get("onesided", 1))

    def fn(signal, frame_step, window=None, frame_length=None):
        step = int(frame_step.reshape(-1)[0].item())
        if window is not None:
            length = window.shape[0]
        elif frame_length is not None:
            length = int(frame_length.reshape(-1)[0].item())
        else:
            raise a.error("neither window nor frame_length is given")
        v = _as_complex(signal)                                  # [batch, samples]
        frames = v.unfold(-1, length, step)                      # [batch, frames, length]
        if window is not None:
            frames = frames * window.to(frames.real.dtype if frames.is_complex() else frames.dtype)
        if not frames.is_complex():
            y = torch.fft.rfft(frames, dim=-1) if onesided else torch.fft.fft(frames, dim=-1)
        else:
            y = torch.fft.fft(frames, dim=-1)
        return torch.view_as_real(y).to(signal.dtype)
    return fn


def _window(kind: str):
    def build(a):
        periodic = bool(a.get("periodic", 1))
        dt = onnx_dtype_to_torch(a.get("output_datatype", 1))

        def fn(size):
            n = int(size.reshape(-1)[0].item())
            period = n if periodic else n - 1
            k = torch.arange(n, dtype=torch.float64)
            c = 2 * math.pi * k / period if period > 0 else torch.zeros(n, dtype=torch.float64)
            if kind == "hann":
                w = 0.5 - 0.5 * torch.cos(c)
            elif kind == "hamming":
                w = 25 / 46 - (21 / 46) * torch.cos(c)
            else:
                w = 0.42 - 0.5 * torch.cos(c) + 0.08 * torch.cos(2 * c)
            return w.to(dt)
        return fn
    return build


OPS = {"DFT": _dft, "STFT": _stft, "HannWindow": _window("hann"), "HammingWindow": _window("hamming"),
       "BlackmanWindow": _window("blackman")}
