"""Read models made elsewhere into PEACE's ``(ArchSpec, state dict)`` form.

``from_module`` reads an ``nn.Module`` whose leaf modules form a supported chain (Linear, Conv1d,
Conv2d, one activation type, 2x2 avg/max pooling, Flatten, Dropout). It checks the result by running
both the module and PEACE's forward on random inputs, so a module whose ``forward`` does something
else (skip connections, custom ops) is refused rather than silently misread.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .architectures import ArchSpec, PeaceNet, forward
from .errors import PeaceError

_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.Identity: "identity"}
_POOLS = {nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.MaxPool1d: "max", nn.MaxPool2d: "max"}
SUPPORTED_MODULES = ("Linear", "Conv1d", "Conv2d", "ReLU", "LeakyReLU(0.01)", "Tanh", "Sigmoid", "GELU", "Identity",
                     "AvgPool1d/2d(2)", "MaxPool1d/2d(2)", "Flatten", "Dropout")


def _all_two(v) -> bool:
    return set(v if isinstance(v, (tuple, list)) else (v,)) == {2}


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if not list(m.children())]


def from_module(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[ArchSpec, dict[str, Tensor]]:
    """Architecture and weights of ``module`` (one sample shaped ``input_shape``, channels first)."""
    if isinstance(module, PeaceNet):
        return module.spec, {k: v.detach().clone() for k, v in module.state_dict().items()}
    weights, acts, pools, kernels, bias = [], set(), set(), set(), set()
    for name, m in _leaves(module):
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                k = m.kernel_size[0]
                if (set(m.kernel_size) != {k} or set(m.stride) != {1} or set(m.dilation) != {1} or m.groups != 1
                        or m.padding not in ((k // 2,) * len(m.kernel_size), "same")):
                    raise PeaceError(f"layer {name!r} ({m}) is not supported: convolutions must be square, stride 1, "
                                     f"dilation 1, groups 1, with 'same' padding (k // 2)")
                kernels.add(k)
            weights.append((name, m))
            bias.add(m.bias is not None)
        elif type(m) in _ACTIVATION_MODULES:
            acts.add(_ACTIVATION_MODULES[type(m)])
        elif isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01:
            acts.add("leaky_relu")
        elif type(m) in _POOLS and _all_two(m.kernel_size) and (m.stride is None or _all_two(m.stride)):
            pools.add(_POOLS[type(m)])
        elif isinstance(m, (nn.Flatten, nn.Dropout)):
            continue
        else:
            raise PeaceError(f"layer {name!r} ({type(m).__name__}) is not supported; supported layers: "
                             f"{', '.join(SUPPORTED_MODULES)}")
    if not weights:
        raise PeaceError("the module has no Linear or Conv layer")
    for what, found in (("activation", acts), ("pooling", pools), ("kernel size", kernels), ("bias setting", bias)):
        if len(found) > 1:
            raise PeaceError(f"mixed {what}s {sorted(map(str, found))} in one network are not supported")
    convs = [m for _, m in weights if not isinstance(m, nn.Linear)]
    linears = [m for _, m in weights if isinstance(m, nn.Linear)]
    family = "mlp" if not convs else ("cnn1d" if isinstance(convs[0], nn.Conv1d) else "cnn2d")
    spec = ArchSpec(
        family=family, input_shape=tuple(input_shape), n_classes=linears[-1].out_features if linears else 0,
        hidden=tuple(m.out_channels for m in convs) if convs else tuple(m.out_features for m in linears[:-1]),
        fc_hidden=tuple(m.out_features for m in linears[:-1]) if convs else (),
        activation=acts.pop() if acts else "identity", bias=bias.pop(),
        kernel_size=kernels.pop() if kernels else 3, pool=pools.pop() if pools else ("none" if convs else "avg"))
    params = {}
    for layer, (_, m) in zip(spec.layers, weights):
        if tuple(m.weight.shape) != layer.weight_shape:
            raise PeaceError(f"layer {layer.index} has weight shape {tuple(m.weight.shape)} but the chain needs "
                             f"{layer.weight_shape}: the layers do not chain for inputs shaped {tuple(input_shape)}")
        params[layer.weight_name] = m.weight.detach().clone().float()
        if layer.bias:
            params[layer.bias_name] = m.bias.detach().clone().float()
    x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        was_training = module.training
        module.eval()
        try:
            ref = module(x)
        except Exception as e:  # a module that cannot take the declared input shape
            raise PeaceError(f"the module fails on inputs shaped {tuple(input_shape)}: {e}") from None
        finally:
            module.train(was_training)
        ours = forward(spec, {k: v[None] for k, v in params.items()}, x)[0]
    if ref.shape != ours.shape or not torch.allclose(ref, ours, atol=1e-4, rtol=1e-4):
        raise PeaceError("the module's forward is not a plain chain of its layers (skip connections or custom "
                         "operations?); PEACE reads only chains of " + ", ".join(SUPPORTED_MODULES))
    return spec, params
