"""Variational Linear and Conv2d layers with the local reparameterisation trick.

A layer does not own its coded weight: before each forward pass the trainer hands it the
weight's (and, if coded, the bias's) mean and variance from the group posterior
(`set_moments`). In training mode the layer samples its pre-activations,
out = conv(x, W_mean) + sqrt(conv(x^2, W_var)) * eps, which is the exact distribution of the
output under independent Gaussian weights and has far lower gradient variance than sampling
the weights. In eval mode it uses the means. `variationalize` swaps these layers into a copy
of a model.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VariationalConv2d", "VariationalLayer", "VariationalLinear", "variationalize"]

_VAR_FLOOR = 1e-16


class VariationalLayer(nn.Module):
    """Common part: moments slots, the noise generator and the sampled forward."""

    def __init__(self, weight_name: str, bias_name: str | None, coded_bias: bool, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_name, self.bias_name, self.coded_bias = weight_name, bias_name, coded_bias
        # a raw bias stays an ordinary (deterministic) parameter of the layer
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None and not coded_bias else None
        self._moments: tuple | None = None
        self.generator: torch.Generator | None = None

    def set_moments(self, w_mean, w_var, b_mean=None, b_var=None) -> None:
        self._moments = (w_mean, w_var, b_mean, b_var)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._moments is None:
            raise RuntimeError(f"{self.weight_name}: set_moments() was not called before forward")
        w_mean, w_var, b_mean, b_var = self._moments
        bias_mean = b_mean if self.coded_bias else self.bias
        out = self._op(x, w_mean, bias_mean)
        if not self.training:
            return out
        var = self._op(x * x, w_var, b_var if self.coded_bias else None)
        noise = torch.randn(out.shape, generator=self.generator, device=out.device, dtype=out.dtype)
        return out + torch.sqrt(var.clamp_min(0) + _VAR_FLOOR) * noise


class VariationalLinear(VariationalLayer):
    def __init__(self, layer: nn.Linear, weight_name: str, bias_name: str | None, coded_bias: bool) -> None:
        super().__init__(weight_name, bias_name, coded_bias, layer.bias)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def _op(self, x, w, b):
        return F.linear(x, w, b)


class VariationalConv2d(VariationalLayer):
    def __init__(self, layer: nn.Conv2d, weight_name: str, bias_name: str | None, coded_bias: bool) -> None:
        super().__init__(weight_name, bias_name, coded_bias, layer.bias)
        if layer.padding_mode != "zeros":
            raise ValueError("only zero padding is supported")
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def _op(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


def variationalize(model: nn.Module, coded_bias: bool = True) -> tuple[nn.Module, dict[str, VariationalLayer]]:
    """A deep copy of `model` whose nn.Linear / nn.Conv2d layers are variational.

    Returns the copy and {module path: layer}. The layers' weights (and coded biases) are
    named as in the original `state_dict` (e.g. "fc1.weight").
    """
    model = copy.deepcopy(model)
    layers: dict[str, VariationalLayer] = {}
    for path, module in list(model.named_modules()):
        if type(module) not in (nn.Linear, nn.Conv2d):
            continue
        prefix = f"{path}." if path else ""
        bias_name = f"{prefix}bias" if module.bias is not None else None
        cls = VariationalLinear if isinstance(module, nn.Linear) else VariationalConv2d
        new = cls(module, f"{prefix}weight", bias_name, coded_bias and module.bias is not None)
        layers[path] = new
        if path == "":
            raise ValueError("the model itself is a single layer: wrap it in a container module")
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, new)
    return model, layers
