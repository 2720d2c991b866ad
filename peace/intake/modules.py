"""Models that are Python objects rather than files: a ``torch.nn.Module`` whose leaf modules form a
supported chain (``from_module``: checked by running the module and PEACE's reading of it on the
same random inputs, so custom ``forward`` code is refused rather than misread) and a fitted
scikit-learn MLP (``from_sklearn``)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peace.core.errors import PeaceError, unknown
from peace.intake.importers import from_state_dict
from peace.intake.layouts import is_resnet_layout, is_vit_layout
from peace.intake.model import SUPPORTED_MODULES, ImportedModel, one_bias_setting
from peace.nets.architectures import ArchSpec, forward
from peace.nets.batchnorm import fold_batchnorm

__all__ = ["from_module", "from_sklearn"]

_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.Identity: "identity"}


_POOLS = {nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.MaxPool1d: "max", nn.MaxPool2d: "max"}
_GLOBAL_POOLS = {nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveMaxPool1d: "max",
                 nn.AdaptiveMaxPool2d: "max"}  # with output size 1: a global pool before the flatten


def _batchnorm_tensors(m: nn.Module) -> dict[str, Tensor]:
    if m.running_mean is None:
        raise PeaceError(f"{m} keeps no running statistics (track_running_stats=False): its eval-mode function "
                         f"depends on the batch, and PEACE cannot fold it")
    out = {"running_mean": m.running_mean, "running_var": m.running_var}
    if m.affine:
        out.update(weight=m.weight.detach(), bias=m.bias.detach())
    return out


def _weight_bias(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    return m.weight.detach().float(), None if m.bias is None else m.bias.detach().float()


def _all_are(v, n: int) -> bool:
    """A module's size argument (an int or one per dimension) is ``n`` in every dimension."""
    return set(v if isinstance(v, (tuple, list)) else (v,)) == {n}


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if not list(m.children())]


def from_module(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[ArchSpec, dict[str, Tensor]]:
    """Architecture and weights of ``module`` (one sample shaped ``input_shape``, channels first)."""
    if isinstance(getattr(module, "spec", None), ArchSpec):  # PEACE's own modules (build_module)
        return module.spec, {k: v.detach().clone() for k, v in module.state_dict().items()
                             if not k.endswith("num_batches_tracked")}
    state = module.state_dict()
    if is_resnet_layout(state):
        m = from_state_dict(state, {"input_shape": list(input_shape)}, type(module).__name__)
        _check_function(module, m.spec, m.params, input_shape, "a torchvision-style ResNet with basic blocks")
        return m.spec, m.params
    if is_vit_layout(state):  # the head count is an attribute of timm's Attention modules, not a tensor
        heads = next((v for sub in module.modules() for v in (getattr(sub, "num_heads", None), getattr(sub, "heads", None))
                      if isinstance(v, int) and not isinstance(v, bool)), None)
        m = from_state_dict(state, {"input_shape": list(input_shape), **({"num_heads": heads} if heads else {})},
                            type(module).__name__)
        _check_function(module, m.spec, m.params, input_shape, "a timm-style pre-LayerNorm VisionTransformer")
        return m.spec, m.params
    weights, folded, found = _walk_chain(module)
    pairs = one_bias_setting([folded.get(i) or _weight_bias(m) for i, (_, m) in enumerate(weights)])
    acts, paddings = found["activation"], found["padding"]
    convs = [m for _, m in weights if not isinstance(m, nn.Linear)]
    pools = [found["pools"].get(i, "none") for i in range(len(convs))]  # the pooling after each conv, if any
    kernels, strides = [m.kernel_size[0] for m in convs], [m.stride[0] for m in convs]
    linears = [m for _, m in weights if isinstance(m, nn.Linear)]
    family = "mlp" if not convs else ("cnn1d" if isinstance(convs[0], nn.Conv1d) else "cnn2d")
    spec = ArchSpec(
        family=family, input_shape=tuple(input_shape), n_classes=linears[-1].out_features if linears else 0,
        hidden=tuple(m.out_channels for m in convs) if convs else tuple(m.out_features for m in linears[:-1]),
        fc_hidden=tuple(m.out_features for m in linears[:-1]) if convs else (),
        activation=acts.pop() if acts else "identity", bias=pairs[0][1] is not None,
        kernel_size=kernels[0] if kernels else 3, kernels=tuple(kernels) if len(set(kernels)) > 1 else (),
        pool=pools[0] if len(set(pools)) == 1 else "avg" if not convs else "none",
        pools=tuple(pools) if len(set(pools)) > 1 else (), padding=paddings.pop() if paddings else "same",
        strides=tuple(strides) if set(strides) - {1} else (), global_pool=found["global_pool"])
    params = {}
    for layer, (w, b) in zip(spec.layers, pairs):
        if tuple(w.shape) != layer.weight_shape:
            raise PeaceError(f"layer {layer.index} has weight shape {tuple(w.shape)} but the chain needs "
                             f"{layer.weight_shape}: the layers do not chain for inputs shaped {tuple(input_shape)}")
        params[layer.weight_name] = w.clone()
        if layer.bias:
            params[layer.bias_name] = b.clone()
    _check_function(module, spec, params, input_shape, "a plain chain of " + ", ".join(SUPPORTED_MODULES))
    return spec, params


def _walk_chain(module: nn.Module) -> tuple[list, dict[int, tuple[Tensor, Tensor]], dict[str, set]]:
    """A plain chain's weight layers in order, the BatchNorms folded into them (by layer position), the
    activations and conv paddings seen (one of each allowed) and the pooling after each conv; refuses any other
    layer."""
    weights, acts, paddings, pools, global_pool = [], set(), set(), {}, "none"
    folded: dict[int, tuple[Tensor, Tensor]] = {}  # weight layer -> its weight and bias with a BatchNorm folded in
    previous = None
    for name, m in _leaves(module):
        after, previous = previous, m
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not weights or after is not weights[-1][1]:
                raise PeaceError(f"layer {name!r} ({type(m).__name__}) does not follow a Linear or Conv layer directly; "
                                 f"PEACE folds a BatchNorm into the layer before it and reads only that order")
            folded[len(weights) - 1] = fold_batchnorm(*_weight_bias(after), _batchnorm_tensors(m), m.eps, name)
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                k = m.kernel_size[0]
                same = m.padding in ((k // 2,) * len(m.kernel_size), "same") and k % 2
                if (set(m.kernel_size) != {k} or len(set(m.stride)) != 1 or set(m.dilation) != {1} or m.groups != 1
                        or not (same or m.padding in ((0,) * len(m.kernel_size), "valid"))):
                    raise PeaceError(f"layer {name!r} ({m}) is not supported: convolutions must be square, one stride "
                                     f"in every direction, dilation 1, groups 1, with 'same' (k // 2) or no padding")
                paddings.add("same" if same else "valid")
            weights.append((name, m))
        elif type(m) in _ACTIVATION_MODULES:
            acts.add(_ACTIVATION_MODULES[type(m)])
        elif isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01:
            acts.add("leaky_relu")
        elif (type(m) in _POOLS and _all_are(m.kernel_size, 2) and (m.stride is None or _all_are(m.stride, 2))
              and weights and not isinstance(weights[-1][1], nn.Linear) and len(weights) - 1 not in pools):
            pools[len(weights) - 1] = _POOLS[type(m)]
        elif (type(m) in _GLOBAL_POOLS and _all_are(m.output_size, 1) and weights
              and not isinstance(weights[-1][1], nn.Linear) and global_pool == "none"):
            global_pool = _GLOBAL_POOLS[type(m)]
        elif not isinstance(m, (nn.Flatten, nn.Dropout)):
            raise PeaceError(f"layer {name!r} ({type(m).__name__}) is not supported; supported layers: "
                             f"{', '.join(SUPPORTED_MODULES)}")
    if not weights:
        raise PeaceError("the module has no Linear or Conv layer")
    for what, seen in (("activation", acts), ("padding", paddings)):
        if len(seen) > 1:
            raise PeaceError(f"mixed {what}s {sorted(map(str, seen))} in one network are not supported")
    return weights, folded, {"activation": acts, "padding": paddings, "pools": pools, "global_pool": global_pool}


def _check_function(module: nn.Module, spec: ArchSpec, params: dict[str, Tensor], input_shape: tuple[int, ...],
                    supported: str) -> None:
    """Refuse a module whose eval-mode outputs differ from PEACE's reading of it on random inputs."""
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
        raise PeaceError(f"the module's forward is not {supported}: its outputs differ from PEACE's reading of its "
                         f"layers (skip connections or custom operations?)")




_SKLEARN_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "identity"}


def from_sklearn(estimator: Any) -> ImportedModel:
    """A fitted scikit-learn ``MLPClassifier`` or ``MLPRegressor`` (its ``coefs_``, ``intercepts_``
    and activation). Outputs are the pre-activation scores: their argmax is the classifier's prediction."""
    name = type(estimator).__name__
    if name not in ("MLPClassifier", "MLPRegressor"):
        raise PeaceError(f"{name} is not supported; PEACE reads scikit-learn MLPClassifier and MLPRegressor")
    if not hasattr(estimator, "coefs_"):
        raise PeaceError(f"the {name} is not fitted; call .fit(X, y) first")
    if estimator.activation not in _SKLEARN_ACTIVATIONS:
        raise unknown(f"{name} activation", estimator.activation, _SKLEARN_ACTIVATIONS)
    tensors = {}
    for i, (w, b) in enumerate(zip(estimator.coefs_, estimator.intercepts_)):
        tensors[f"layers.{i}.weight"] = torch.as_tensor(w.T.copy())
        tensors[f"layers.{i}.bias"] = torch.as_tensor(b.copy())
    return from_state_dict(tensors, {"activation": _SKLEARN_ACTIVATIONS[estimator.activation]}, f"scikit-learn {name}")
