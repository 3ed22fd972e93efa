"""Element-wise ONNX operators: arithmetic, comparisons, logic and activations (numpy broadcasting)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import binary, fold, sqrt, unary

__all__ = ["OPS"]


def _div(x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _mod(a):
    # fmod=1: the sign of the dividend (C fmod); fmod=0 (integers only): the sign of the divisor
    return (lambda x, y: torch.fmod(x, y)) if a.get("fmod", 0) else (lambda x, y: torch.remainder(x, y))


def _pow(x, y):
    out = torch.pow(x, y.to(x.dtype) if x.is_floating_point() else y)
    return out.to(x.dtype)


def _prelu(a):
    return lambda x, slope: torch.where(x < 0, x * slope, x)


def _hard_sigmoid(a):
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    return lambda x: torch.clamp(x * alpha + beta, 0, 1)


def _hard_swish(a):
    # ONNX: x * max(0, min(1, alpha * x + beta)), alpha = 1/6, beta = 0.5
    return lambda x: x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0, 1)


def _selu(a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return lambda x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _celu(a):
    return lambda x: F.celu(x, a.get("alpha", 1.0))


def _thresholded_relu(a):
    alpha = a.get("alpha", 1.0)
    return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))


def _shrink(a):
    bias, lambd = a.get("bias", 0.0), a.get("lambd", 0.5)
    return lambda x: torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


def _gelu(a):
    approx = a.get("approximate", "none")
    return lambda x: F.gelu(x, approximate=approx)


def _clip(a):
    lo_a, hi_a = a.get("min"), a.get("max")

    def fn(x, lo=None, hi=None):
        lo = lo_a if lo is None else lo
        hi = hi_a if hi is None else hi
        if lo is not None:
            x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype, device=x.device))
        if hi is not None:
            x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype, device=x.device))
        return x
    return fn


def _bitshift(a):
    left = a["direction"] == "LEFT"
    return lambda x, y: (x << y) if left else (x >> y)


def _is_inf(a):
    neg, pos = a.get("detect_negative", 1), a.get("detect_positive", 1)
    return lambda x: (torch.isinf(x) & (((x > 0) & bool(pos)) | ((x < 0) & bool(neg))))


def _round(x):
    return torch.round(x)  # half to even, as ONNX Round


def _swish(a):
    alpha = a.get("alpha", 1.0)
    return lambda x: x * torch.sigmoid(alpha * x)


OPS = {
    "Identity": unary(lambda x: x), "Swish": _swish,
    "BitwiseAnd": binary(torch.bitwise_and), "BitwiseOr": binary(torch.bitwise_or),
    "BitwiseXor": binary(torch.bitwise_xor), "BitwiseNot": unary(torch.bitwise_not),
    "Relu": unary(torch.relu), "Sigmoid": unary(torch.sigmoid), "Tanh": unary(torch.tanh),
    "Exp": unary(torch.exp), "Log": unary(torch.log), "Sqrt": unary(sqrt), "Neg": unary(torch.neg),
    "Abs": unary(torch.abs), "Erf": unary(torch.erf), "Reciprocal": unary(torch.reciprocal),
    "Floor": unary(torch.floor), "Ceil": unary(torch.ceil), "Not": unary(torch.logical_not),
    "Sign": unary(torch.sign), "Round": unary(_round), "Sin": unary(torch.sin), "Cos": unary(torch.cos),
    "Tan": unary(torch.tan), "Asin": unary(torch.asin), "Acos": unary(torch.acos), "Atan": unary(torch.atan),
    "Sinh": unary(torch.sinh), "Cosh": unary(torch.cosh), "Asinh": unary(torch.asinh),
    "Acosh": unary(torch.acosh), "Atanh": unary(torch.atanh), "IsNaN": unary(torch.isnan),
    "IsInf": _is_inf,
    "Softplus": unary(lambda x: torch.log(torch.exp(x) + 1)), "Softsign": unary(lambda x: x / (1 + x.abs())),
    "Mish": unary(lambda x: x * torch.tanh(F.softplus(x))),
    "Add": binary(torch.add), "Sub": binary(torch.sub), "Mul": binary(torch.mul), "Div": binary(_div),
    "Pow": binary(_pow), "Mod": _mod, "BitShift": _bitshift,
    "Equal": binary(torch.eq), "Less": binary(torch.lt), "Greater": binary(torch.gt),
    "LessOrEqual": binary(torch.le), "GreaterOrEqual": binary(torch.ge),
    "And": binary(torch.logical_and), "Or": binary(torch.logical_or), "Xor": binary(torch.logical_xor),
    "Max": lambda a: (lambda *xs: fold(torch.maximum, xs)),
    "Min": lambda a: (lambda *xs: fold(torch.minimum, xs)),
    "Sum": lambda a: (lambda *xs: fold(torch.add, xs)),
    "Mean": lambda a: (lambda *xs: fold(torch.add, xs) / len(xs)),
    "Where": lambda a: (lambda c, x, y: torch.where(c, x, y)),
    "LeakyRelu": lambda a: (lambda x: F.leaky_relu(x, a.get("alpha", 0.01))),
    "Elu": lambda a: (lambda x: F.elu(x, a.get("alpha", 1.0))),
    "Selu": _selu, "Celu": _celu, "ThresholdedRelu": _thresholded_relu, "Shrink": _shrink,
    "PRelu": _prelu, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish, "Gelu": _gelu, "Clip": _clip,
}
