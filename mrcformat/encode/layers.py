"""Variational Linear and Conv2d layers with the local reparameterisation trick.

A layer does not own its coded weight: before each forward pass the trainer hands it the
weight's (and, if coded, the bias's) mean and variance from the group posterior
(`set_moments`). In training mode the layer samples its pre-activations,
out = conv(x, W_mean) + sqrt(conv(x^2, W_var)) * eps, which is the exact distribution of the
output under independent Gaussian weights and has far lower gradient variance than sampling
the weights. In eval mode it uses the means. A layer handed a weight sample instead of a variance
(`set_moments(w, None)`: the trainer's `noise="weights"`) computes its plain product with it: one
product per layer instead of two, at the price of noise shared by the whole batch.
`variationalize` swaps these layers into a copy of a model.

Any other coded parameter (a Conv1d's, an LSTM's, an Embedding's, a custom module's, or a Linear
whose class overrides `forward`) is *generic*: `make_variational` turns it into a non-persistent
buffer of its module, and the trainer supplies a weight sample for it at every forward pass
through `torch.func.functional_call` (one sample per step, shared by the batch: no layer class
has to be known).
"""
from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["VariationalConv2d", "VariationalLayer", "VariationalLinear", "fast_layer_class", "make_variational",
           "variationalize"]

_VAR_FLOOR = 1e-16


class _Square(torch.autograd.Function):
    """x * x whose backward returns the two identical product-rule terms already summed, 2 (g x):
    the value the autograd engine forms for `x * x` (g x + g x, exactly 2 (g x)) with one
    temporary instead of two or three."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        t = grad * x
        return t.add_(t)


class _Sample(torch.autograd.Function):
    """out + sqrt(max(var, 0) + floor) * noise with its gradients, computed in reusable buffers.

    Bit for bit what autograd computes for the expression written out (clamp_min, add, sqrt, mul,
    add; backward (g * noise) / (2 std), zero where var < 0 or is NaN), but with no fresh
    output-sized tensor: the result overwrites `out` (the layer's own product, which no backward
    needs; unless it is a view) and noise, std and gradient live in buffers reused from step to step, where autograd
    makes six in the forward pass (the noise included) and four in the backward. On a CPU every
    fresh large tensor costs page faults, a large part of the step's overhead.
    var is a sum of non-negative terms, so the zeroing is skipped when min(var) >= 0 (checked on a
    CPU, where that costs no device sync), and so is the clamp.
    """

    @staticmethod
    def forward(ctx, out, var, noise, bufs, ws):
        std, keep = bufs.get("std", var), None
        if var.device.type == "cpu" and var.numel() and bool(var.min() >= 0):
            torch.add(var, _VAR_FLOOR, out=std)          # clamp_min(0) changes nothing (-0 + floor = floor)
        else:
            keep = torch.ge(var, 0, out=bufs.get("keep", var, torch.bool))
            torch.clamp_min(var, 0, out=std).add_(_VAR_FLOOR)
        std.sqrt_()
        if out._base is None:
            # the result in place of `out` (the layer's own fresh product; no backward needs it)
            y = out.add_(torch.mul(std, noise, out=bufs.get("grad", out)))
            ctx.mark_dirty(out)
        else:                                           # a view (Linear on 3-d input): a new tensor
            y = torch.mul(std, noise).add_(out)
        std.mul_(2.0)                                   # what the backward divides by (exact)
        ctx.save_for_backward(noise, std, keep)
        ctx.bufs, ctx.ws = bufs, ws
        ws.claim(bufs, ctx)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        noise, two_std, keep = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[1]:
            g = torch.mul(grad, noise, out=ctx.bufs.get("grad", grad)).div_(two_std)
            if keep is not None:
                g = torch.where(keep, g, 0.0)
        ctx.ws.release(ctx)
        return grad, g, None, None, None


class _Buffers:
    """Output-sized tensors by name, re-made when the shape, dtype or device changes."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.channels_last = False      # set per call by the layer (TrainConfig.channels_last)

    def get(self, key: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or like.dtype
        # with the option on, 4-d buffers are channels_last like the products, so the elementwise work
        # runs over matching layouts. Off, they stay contiguous even for a channels_last product (an
        # input with channels_last strides makes one): the noise is drawn in the buffer's memory order,
        # so its layout decides which normal each pre-activation gets, as it always has.
        fmt = torch.channels_last if self.channels_last and like.dim() == 4 else torch.contiguous_format
        b = self.tensors.get(key)
        if (b is None or b.shape != like.shape or b.dtype != dtype or b.device != like.device
                or not b.is_contiguous(memory_format=fmt)):
            b = self.tensors[key] = torch.empty(like.shape, dtype=dtype, device=like.device, memory_format=fmt)
        return b


class _Workspace:
    """A layer's buffers for the sampled forward, reused from one training step to the next.

    While a graph that has not been backpropagated still needs them (the layer called twice in one
    forward, or a loss built and not yet used), a call gets a fresh set instead; a graph that is
    dropped unused frees them (weak reference). Backpropagating an old graph (retain_graph) after
    a later step overwrote its buffers fails on the version counters rather than giving wrong
    gradients.
    """

    def __init__(self) -> None:
        self.main = _Buffers()
        self._owner = None

    def take(self) -> _Buffers:
        if self._owner is not None and self._owner() is not None:
            return _Buffers()
        return self.main

    def claim(self, bufs: _Buffers, ctx) -> None:
        if bufs is self.main:
            self._owner = weakref.ref(ctx)

    def release(self, ctx) -> None:
        if self._owner is not None and self._owner() is ctx:
            self._owner = None

    def clear(self) -> None:
        self.main, self._owner = _Buffers(), None

    # a copied or pickled layer starts with empty buffers of its own
    def __deepcopy__(self, memo) -> _Workspace:
        return _Workspace()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class VariationalLayer(nn.Module):
    """Common part: moments slots, the noise generator and the sampled forward."""

    channels_last = False   # VariationalConv2d: compute in channels_last (set by the trainer)

    def __init__(self, weight_name: str, bias_name: str | None, coded_bias: bool, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_name, self.bias_name, self.coded_bias = weight_name, bias_name, coded_bias
        # a raw bias stays an ordinary (deterministic) parameter of the layer
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None and not coded_bias else None
        self._moments: tuple | None = None
        self.generator: torch.Generator | None = None
        self._ws = _Workspace()     # not state: buffers of the sampled forward (see `_Sample`)

    def set_moments(self, w_mean, w_var, b_mean=None, b_var=None) -> None:
        self._moments = (w_mean, w_var, b_mean, b_var)

    def release_buffers(self) -> None:
        """Free the sampled forward's reusable buffers (made again when needed; eval() frees them too)."""
        self._ws.clear()

    def train(self, mode: bool = True):
        if not mode:
            self._ws.clear()
        return super().train(mode)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._moments is None:
            raise RuntimeError(f"{self.weight_name}: set_moments() was not called before forward")
        w_mean, w_var, b_mean, b_var = self._moments
        bias_mean = b_mean if self.coded_bias else self.bias
        out = self._op(x, w_mean, bias_mean)
        if not self.training or w_var is None:     # eval, or handed a weight sample (noise="weights")
            return out
        x2 = _Square.apply(x) if x.requires_grad and torch.is_grad_enabled() else x * x
        var = self._op(x2, w_var, b_var if self.coded_bias else None)
        # the noise stream: one standard normal per pre-activation, drawn like torch.randn(out.shape)
        bufs = self._ws.take()
        bufs.channels_last = self.channels_last
        noise = bufs.get("noise", out)
        # drawn in memory order through a contiguous view: normal_ on a channels_last tensor itself
        # takes torch's slow strided path (~8x slower)
        (noise if noise.is_contiguous() else noise.permute(0, 2, 3, 1)).normal_(generator=self.generator)
        if torch.is_grad_enabled() and (out.requires_grad or var.requires_grad):
            return _Sample.apply(out, var, noise, bufs, self._ws)
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
        if self.channels_last:
            # a channels_last weight makes the convolution (and so the rest of the network) run in
            # that layout. `.to`, not `.contiguous`: the latter keeps a 1-input-channel weight as it is.
            w = w.to(memory_format=torch.channels_last)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


def fast_layer_class(module: nn.Module) -> type[VariationalLayer] | None:
    """The variational layer that computes `module` exactly (local reparameterisation), or None.

    A Linear or Conv2d qualifies, subclasses included, when its class keeps the stock forward (a
    subclass that changes the computation is coded generically), it has no hooks, and no other module
    reads its weight directly (MultiheadAttention's out_projection does).
    """
    if module._forward_hooks or module._forward_pre_hooks or getattr(module, "parametrizations", None) is not None:
        return None
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return None
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return VariationalLinear
    if (isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward
            and type(module)._conv_forward is nn.Conv2d._conv_forward and module.padding_mode == "zeros"):
        return VariationalConv2d
    return None


def make_variational(model: nn.Module, coded: set[str]) -> tuple[nn.Module, dict[str, VariationalLayer], list[str]]:
    """A deep copy of `model` in which the parameters named in `coded` (state_dict names) are coded.

    A Linear/Conv2d (not the model itself) whose weight is coded becomes a variational layer (its bias
    coded if named in `coded`, else an ordinary parameter); every other coded parameter becomes a
    non-persistent buffer (generic). Returns the copy, {module path: layer} and the generic names in
    `coded`'s state_dict order.
    """
    model = copy.deepcopy(model)
    order = [name for name in model.state_dict() if name in coded]
    missing = set(coded) - set(order)
    if missing:
        raise ValueError(f"no parameters called {sorted(missing)} in the model")
    layers: dict[str, VariationalLayer] = {}
    fast: set[str] = set()
    for path, module in list(model.named_modules()):
        prefix = f"{path}." if path else ""
        cls = fast_layer_class(module) if path else None
        if cls is None or f"{prefix}weight" not in coded:
            continue
        bias_name = f"{prefix}bias" if module.bias is not None else None
        new = cls(module, f"{prefix}weight", bias_name, bias_name is not None and bias_name in coded)
        layers[path] = new
        fast.add(f"{prefix}weight")
        if new.coded_bias:
            fast.add(bias_name)
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, new)
    generic = [name for name in order if name not in fast]
    for name in generic:
        path, _, attr = name.rpartition(".")
        owner = model.get_submodule(path) if path else model
        param = owner._parameters.pop(attr)
        owner.register_buffer(attr, param.detach().clone(), persistent=False)
    return model, layers, generic


def variationalize(model: nn.Module, coded_bias: bool = True) -> tuple[nn.Module, dict[str, VariationalLayer]]:
    """A deep copy of `model` whose nn.Linear / nn.Conv2d layers (`fast_layer_class`) are variational.

    Returns the copy and {module path: layer}. The layers' weights (and coded biases) are
    named as in the original `state_dict` (e.g. "fc1.weight").
    """
    coded = set()
    for path, module in model.named_modules():
        if fast_layer_class(module) is None:
            continue
        if path == "":
            raise ValueError("the model itself is a single layer: wrap it in a container module")
        coded.add(f"{path}.weight")
        if coded_bias and module.bias is not None:
            coded.add(f"{path}.bias")
    vmodel, layers, _ = make_variational(model, coded)
    return vmodel, layers
