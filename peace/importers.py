"""Read models made elsewhere into PEACE's ``(ArchSpec, state dict)`` form.

Files come from strangers, so nothing in them is ever unpickled into code and nothing is parsed by
torch's own loader: safetensors files are read with safetensors, PyTorch files with PEACE's strict
reader (``peace.torchfile``: sizes and views checked before anything is allocated). A file over
the ``Limits`` (bytes, parameters, layers, width, graph edges), with a non-float or non-finite
tensor, or whose layers do not chain, is refused with an error naming the file and the problem.

- ``load_model(path)``: a safetensors or state-dict file, or a directory with one plus a
  ``config.json`` (the shape of hub model repositories).
- ``from_state_dict(tensors, config)``: architecture inferred from tensor shapes and names; what
  shapes cannot tell (activation; a CNN's input size and pooling) comes from the config. State dicts
  in torchvision's ResNet layout (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample``, ``fc``;
  basic blocks, as resnet18/34) are read as residual networks, and state dicts in timm's
  VisionTransformer layout (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``,
  ``norm1``, ``mlp.fc1``, ``norm``, ``head``; 2-D or 1-D patches) as Transformers.
- ``from_sklearn(estimator)``: a fitted MLPClassifier / MLPRegressor.
- ``from_module`` reads an ``nn.Module`` whose leaf modules form a supported chain (Linear, Conv1d,
Conv2d, one activation type, 2x2 avg/max pooling, Flatten, Dropout). It checks the result by running
both the module and PEACE's forward on random inputs, so a module whose ``forward`` does something
else (skip connections, custom ops) is refused rather than silently misread.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .architectures import ACTIVATIONS, BN_EPS, ArchSpec, check_params, fold_batchnorm, forward
from .errors import PeaceError, unknown
from .paths import contained
from .torchfile import read_torch_file

__all__ = [
    "CONFIG_KEYS", "FLOAT_DTYPES", "MAX_BYTES", "SUPPORTED_MODULES", "WEIGHT_FILES", "ImportedModel", "Limits",
    "from_module", "from_sklearn", "from_state_dict", "is_resnet_layout", "is_vit_layout", "load_model",
    "read_config", "read_tensors"
]

MAX_BYTES = 512 * 2**20  # default size limit of one model file; raise it with Limits(max_bytes=) / --max-size


@dataclass(frozen=True)
class Limits:
    """What one imported model may cost, checked before any graph or encoder input is built (the
    file's bytes before its tensors are read). Raise them for bigger models (CLI: --max-size)."""

    max_bytes: int = MAX_BYTES       # the file, and the tensors it declares
    max_params: int = 100_000_000    # weights and biases
    max_layers: int = 256            # weight layers in the chain
    max_width: int = 65_536          # neurons / channels of one layer (graph nodes per layer)
    max_edges: int = 5_000_000       # neural-graph edges (a Linear: in x out; a Conv: in x out channels)

    def check(self, layers: list[tuple[str, Tensor, Tensor | None]], source: str) -> None:
        """Refuse a chain of (name, weight, bias) over any budget, naming the budget and its fix."""
        over = []
        n_params = sum(w.numel() + (b.numel() if b is not None else 0) for _, w, b in layers)
        widths = [w.shape[0] for _, w, _ in layers] + [w.shape[1] for _, w, _ in layers[:1]]
        edges = sum(w.shape[0] * w.shape[1] for _, w, _ in layers)
        for what, value, limit in (("layers", len(layers), self.max_layers), ("parameters", n_params, self.max_params),
                                   ("neurons in one layer", max(widths), self.max_width),
                                   ("graph edges", edges, self.max_edges)):
            if value > limit:
                over.append(f"{value:,} {what} (limit {limit:,})")
        if over:
            raise PeaceError(f"{source}: refused: {'; '.join(over)}. Raise the limit with peace.importers.Limits "
                             f"if you expect a model this large.")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_WRAPPERS = ("state_dict", "model_state_dict", "model", "weights")  # common checkpoint layouts around a state dict

_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.Identity: "identity"}
_POOLS = {nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.MaxPool1d: "max", nn.MaxPool2d: "max"}
SUPPORTED_MODULES = ("Linear", "Conv1d", "Conv2d", "BatchNorm1d/2d (right after a Linear / Conv: folded into it)",
                     "ReLU", "LeakyReLU(0.01)", "Tanh", "Sigmoid", "GELU", "Identity", "AvgPool1d/2d(2)",
                     "MaxPool1d/2d(2)", "Flatten", "Dropout")


def _batchnorm_tensors(m: nn.Module) -> dict[str, Tensor]:
    if m.running_mean is None:
        raise PeaceError(f"{m} keeps no running statistics (track_running_stats=False): its eval-mode function "
                         f"depends on the batch, and PEACE cannot fold it")
    out = {"running_mean": m.running_mean, "running_var": m.running_var}
    if m.affine:
        out.update(weight=m.weight.detach(), bias=m.bias.detach())
    return out


def _one_bias_setting(layers: list[tuple]) -> list[tuple]:
    """Zero biases where some layers have biases and others do not: the same function, one bias
    setting. Each layer is a tuple ending in (weight, bias)."""
    if any(t[-1] is not None for t in layers):
        return [(*t[:-1], t[-1] if t[-1] is not None else torch.zeros(t[-2].shape[0])) for t in layers]
    return layers


def _weight_bias(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    return m.weight.detach().float(), None if m.bias is None else m.bias.detach().float()


def _all_two(v) -> bool:
    return set(v if isinstance(v, (tuple, list)) else (v,)) == {2}


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
    pairs = _one_bias_setting([folded.get(i) or _weight_bias(m) for i, (_, m) in enumerate(weights)])
    acts, pools, kernels = found["activation"], found["pooling"], found["kernel size"]
    convs = [m for _, m in weights if not isinstance(m, nn.Linear)]
    linears = [m for _, m in weights if isinstance(m, nn.Linear)]
    family = "mlp" if not convs else ("cnn1d" if isinstance(convs[0], nn.Conv1d) else "cnn2d")
    spec = ArchSpec(
        family=family, input_shape=tuple(input_shape), n_classes=linears[-1].out_features if linears else 0,
        hidden=tuple(m.out_channels for m in convs) if convs else tuple(m.out_features for m in linears[:-1]),
        fc_hidden=tuple(m.out_features for m in linears[:-1]) if convs else (),
        activation=acts.pop() if acts else "identity", bias=pairs[0][1] is not None,
        kernel_size=kernels.pop() if kernels else 3, pool=pools.pop() if pools else ("none" if convs else "avg"))
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
    """A plain chain's weight layers in order, the BatchNorms folded into them (by layer position), and
    the activations, poolings and kernel sizes seen (one of each allowed); refuses any other layer."""
    weights, acts, pools, kernels = [], set(), set(), set()
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
                if (set(m.kernel_size) != {k} or set(m.stride) != {1} or set(m.dilation) != {1} or m.groups != 1
                        or m.padding not in ((k // 2,) * len(m.kernel_size), "same")):
                    raise PeaceError(f"layer {name!r} ({m}) is not supported: convolutions must be square, stride 1, "
                                     f"dilation 1, groups 1, with 'same' padding (k // 2)")
                kernels.add(k)
            weights.append((name, m))
        elif type(m) in _ACTIVATION_MODULES:
            acts.add(_ACTIVATION_MODULES[type(m)])
        elif isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01:
            acts.add("leaky_relu")
        elif type(m) in _POOLS and _all_two(m.kernel_size) and (m.stride is None or _all_two(m.stride)):
            pools.add(_POOLS[type(m)])
        elif not isinstance(m, (nn.Flatten, nn.Dropout)):
            raise PeaceError(f"layer {name!r} ({type(m).__name__}) is not supported; supported layers: "
                             f"{', '.join(SUPPORTED_MODULES)}")
    if not weights:
        raise PeaceError("the module has no Linear or Conv layer")
    found = {"activation": acts, "pooling": pools, "kernel size": kernels}
    for what, seen in found.items():
        if len(seen) > 1:
            raise PeaceError(f"mixed {what}s {sorted(map(str, seen))} in one network are not supported")
    return weights, folded, found


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


# --- files -----------------------------------------------------------------------------------------


@dataclass
class ImportedModel:
    """A model read from outside the zoo, ready for the graph, encoder and query paths."""

    spec: ArchSpec
    params: dict[str, Tensor]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _is_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def read_tensors(path: str | Path, max_bytes: int = MAX_BYTES) -> dict[str, Tensor]:
    """Name -> float32 tensor from a safetensors file or a PyTorch state-dict file, whatever its
    extension says; never executes code stored in the file."""
    path = Path(path)
    if not path.is_file():
        raise PeaceError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise PeaceError(f"{path}: the file is empty")
    if size > max_bytes:
        raise PeaceError(f"{path}: {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit for one model "
                         f"file; raise it (--max-size MIB, or max_bytes=) if you expect a model that large")
    with path.open("rb") as f:
        head = f.read(9)
    if _is_safetensors(head, size):
        try:
            obj: Any = load_file(str(path))
        except Exception as e:  # SafetensorError, or a header that lies about its tensors
            raise PeaceError(f"{path}: corrupted or truncated safetensors file ({e})") from None
    elif head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive, or a legacy / plain pickle
        obj = read_torch_file(path, max_bytes)
    else:
        raise PeaceError(f"{path}: neither a safetensors file nor a PyTorch state dict (starts with {head[:8]!r})")
    return _state_dict(obj, str(path))


def _state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """Unwrap a checkpoint to its state dict; check every value is a finite floating-point tensor."""
    if isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = [k for k in _WRAPPERS if isinstance(obj.get(k), dict)]
        if inner:
            obj = obj[inner[0]]
    if not isinstance(obj, dict) or not obj:
        raise PeaceError(f"{source}: expected a state dict (parameter names -> tensors), found "
                         f"{type(obj).__name__}{' (empty)' if isinstance(obj, dict) else ''}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise PeaceError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor; PEACE reads state dicts "
                             f"of weights and biases only")
        kind = ("a tensor subclass" if type(v) not in (Tensor, nn.Parameter) else "a meta tensor (no values)"
                if v.is_meta else "a nested tensor" if getattr(v, "is_nested", False)
                else "a sparse or other non-dense tensor" if v.layout != torch.strided else None)
        if kind:
            raise PeaceError(f"{source}: tensor {k!r} is {kind} ({type(v).__name__}, {v.layout}); PEACE reads dense "
                             f"tensors of numbers only")
        leaf = str(k).rpartition(".")[2]
        if leaf == "num_batches_tracked":  # a BatchNorm's step counter: no part of its function
            continue
        if leaf not in ("weight", "bias", "running_mean", "running_var", "cls_token", "pos_embed"):
            _refuse_vit_extras([str(k)], source)
            raise PeaceError(f"{source}: tensor {k!r} is not the weight or bias of a supported layer; "
                             f"supported layers: {', '.join(SUPPORTED_MODULES)}")
        if v.dtype not in FLOAT_DTYPES:
            raise PeaceError(f"{source}: tensor {k!r} has dtype {v.dtype}; weights must be floating point "
                             f"(float16/bfloat16/float32/float64)")
        v = v.float()
        if not torch.isfinite(v).all():
            raise PeaceError(f"{source}: tensor {k!r} has NaN or Inf values; PEACE embeds finite weights only")
        out[str(k)] = v
    return out


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _prefix_key(prefix: str, prefixes: dict) -> list:
    """Natural name order (``layers.2`` before ``layers.10``), with PEACE's own ``norms.i`` right after
    ``layers.i`` (the layer it follows)."""
    m = re.fullmatch(r"norms\.(\d+)", prefix)
    if m and f"layers.{m[1]}" in prefixes:
        return [*_natural_key(f"layers.{m[1]}"), "~"]
    return _natural_key(prefix)


def _layers(tensors: dict[str, Tensor], source: str, bn_eps: float = BN_EPS, layer_norm: bool = False
            ) -> tuple[list[tuple[str, Tensor, Tensor | None]], dict[int, dict[str, Tensor]]]:
    """(prefix, weight, bias) per layer, in ``_prefix_key`` order; a BatchNorm (a prefix with running
    statistics) is folded into the layer just before it. With ``layer_norm``, a prefix holding a 1-D
    weight (and bias) after a layer is its LayerNorm: returned as {layer index: {weight, bias}}."""
    prefixes: dict[str, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        prefix, _, leaf = k.rpartition(".")
        prefixes.setdefault(prefix, {})[leaf] = v
    out: list[tuple[str, Tensor, Tensor | None]] = []
    norms: dict[int, dict[str, Tensor]] = {}
    for prefix in sorted(prefixes, key=lambda x: _prefix_key(x, prefixes)):
        p = prefixes[prefix]
        name = prefix or "(top level)"
        if "running_mean" in p or "running_var" in p:
            if not out or not {"running_mean", "running_var"} <= set(p) <= {"running_mean", "running_var", "weight", "bias"}:
                raise PeaceError(f"{source}: BatchNorm {name!r} must follow a Linear or Conv layer and hold running_mean "
                                 f"and running_var (found {sorted(p)})")
            prev, w0, b0 = out[-1]
            out[-1] = (prev, *fold_batchnorm(w0, b0, p, bn_eps, f"{source}: {name}"))
            continue
        if "weight" not in p:
            raise PeaceError(f"{source}: layer {name!r} has a bias but no weight")
        w, b = p["weight"], p.get("bias")
        if w.ndim == 1 and layer_norm and out and len(out) - 1 not in norms:
            if set(p) != {"weight", "bias"} or w.shape != (out[-1][1].shape[0],) or b.shape != w.shape:
                raise PeaceError(f"{source}: LayerNorm {name!r} must hold a weight and a bias for the "
                                 f"{out[-1][1].shape[0]} outputs of {out[-1][0]!r} (found {sorted(p)})")
            norms[len(out) - 1] = {"weight": w, "bias": b}
            continue
        if w.ndim not in (2, 3, 4):
            raise PeaceError(f"{source}: layer {name!r} has a {w.ndim}-D weight {tuple(w.shape)} (a normalization or "
                             f"embedding layer? a LayerNorm after every hidden layer is read with \"norm\": \"layer\" "
                             f"in the model config); supported layers: {', '.join(SUPPORTED_MODULES)}")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise PeaceError(f"{source}: layer {name!r} has bias shape {tuple(b.shape)} for {w.shape[0]} outputs")
        out.append((name, w, b))
    return out, norms


_SPEC_KEYS = [f.name for f in fields(ArchSpec) if f.init]
CONFIG_KEYS = _SPEC_KEYS + ["weights", "metadata", "batchnorm_eps", "num_heads"]


def from_state_dict(tensors: dict[str, Tensor], config: dict | None = None, source: str = "state dict",
                    limits: Limits = Limits()) -> ImportedModel:
    """A chain of Linear / Conv layers read from a state dict. Shapes give the widths, kernel size,
    bias and (for MLPs) the input size; ``config`` (keys of ``ArchSpec``, plus ``metadata``) gives
    the activation and what else shapes cannot tell, and overrides inference."""
    config = dict(config or {})
    for k in config:
        if k not in CONFIG_KEYS:
            raise unknown(f"key in the model config of {source}", k, CONFIG_KEYS)
    tensors = _state_dict(tensors, source)
    if is_resnet_layout(tensors):
        return _resnet(tensors, config, source, limits)
    if is_vit_layout(tensors):
        return _vit(tensors, config, source, limits)
    eps = config.pop("batchnorm_eps", BN_EPS)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise PeaceError(f"{source}: batchnorm_eps must be a number in (0, 1), got {eps!r}")
    layers, layer_norms = _layers(tensors, source, float(eps), config.get("norm") == "layer")
    if config.get("norm") == "layer" and sorted(layer_norms) != list(range(len(layers) - 1)):
        raise PeaceError(f"{source}: \"norm\": \"layer\" needs a LayerNorm after every hidden layer and none after "
                         f"the last; found them after layers {sorted(layer_norms)} of {len(layers)}")
    limits.check(layers, source)
    n_conv = _convolutions(layers, source)
    layers = _one_bias_setting(layers)
    inferred = _chain_shape(layers, n_conv, config, source)
    spec, metadata = _spec(inferred, config, source)
    return ImportedModel(spec, _chain_params(spec, layers, layer_norms, source), source, dict(metadata))


def _convolutions(layers: list, source: str) -> int:
    """How many of a chain's layers are convolutions (all first); refuses what does not chain."""
    kinds = [w.ndim for _, w, _ in layers]
    n_conv = sum(k > 2 for k in kinds)
    if any(k > 2 for k in kinds[n_conv:]) or len(set(kinds[:n_conv])) > 1:
        raise PeaceError(f"{source}: layers {[n for n, _, _ in layers]} are not convolutions followed by linear "
                         f"layers; PEACE reads chains Conv... -> Linear...")
    if n_conv == len(layers):
        raise PeaceError(f"{source}: the network ends in a convolution; PEACE reads chains that end in a Linear layer")
    for (n0, w0, _), (n1, w1, _) in zip(layers, layers[1:]):
        out_ch, in_next = w0.shape[0], w1.shape[1]
        conv_to_linear = w0.ndim > 2 and w1.ndim == 2
        if (in_next % out_ch if conv_to_linear else in_next != out_ch):
            raise PeaceError(f"{source}: the layers do not chain: {n0!r} has {out_ch} outputs but {n1!r} takes "
                             f"{in_next} inputs")
    return n_conv


def _chain_shape(layers: list, n_conv: int, config: dict, source: str) -> dict[str, Any]:
    """The architecture keys a chain's shapes tell (family, widths, kernel, classes, bias); asks the
    config for what they do not (a CNN's input shape and pooling, every activation)."""
    convs, linears = layers[:n_conv], layers[n_conv:]
    inferred: dict[str, Any] = {"n_classes": linears[-1][1].shape[0], "bias": layers[0][2] is not None}
    if convs:
        k = convs[0][1].shape[-1]
        if any(set(w.shape[2:]) != {k} for _, w, _ in convs):
            raise PeaceError(f"{source}: convolution kernels must be square and all of one size, got "
                             f"{[tuple(w.shape[2:]) for _, w, _ in convs]}")
        inferred.update(family="cnn1d" if convs[0][1].ndim == 3 else "cnn2d", kernel_size=k,
                        hidden=[w.shape[0] for _, w, _ in convs], fc_hidden=[w.shape[0] for _, w, _ in linears[:-1]])
        for need, example in (("input_shape", "[1, 28, 28]"), ("pool", '"avg", "max" or "none"')):
            if need not in config:
                raise PeaceError(f"{source}: a CNN's {need} is not in its weights; give it in the model config "
                                 f"(config.json or --{need.replace('_', '-')}), e.g. {example}")
    else:
        inferred.update(family="mlp", input_shape=[layers[0][1].shape[1]], hidden=[w.shape[0] for _, w, _ in linears[:-1]])
    if "activation" not in config:
        raise PeaceError(f"{source}: the weights do not say which activation the network uses; give it in the model "
                         f"config (config.json or --activation), one of {', '.join(ACTIVATIONS)}")
    return inferred


def _chain_params(spec: ArchSpec, layers: list, layer_norms: dict, source: str) -> dict[str, Tensor]:
    """The chain's tensors under the spec's names, each checked against the shape the spec needs."""
    if len(spec.layers) != len(layers):
        raise PeaceError(f"{source}: the config describes {len(spec.layers)} layers but the file has {len(layers)}")
    params = {}
    for layer, (name, w, b) in zip(spec.layers, layers):
        if tuple(w.shape) != tuple(layer.weight_shape):
            raise PeaceError(f"{source}: layer {name!r} has weight shape {tuple(w.shape)} but the architecture "
                             f"({spec.describe()}, input {spec.input_shape}) needs {tuple(layer.weight_shape)}; "
                             f"check input_shape and pool in the model config")
        params[layer.weight_name] = w
        if layer.bias:
            params[layer.bias_name] = b
        for leaf, name in layer.norm_names().items():
            params[name] = layer_norms[layer.index][leaf]
    check_params(spec, params)
    return params


def _spec(inferred: dict[str, Any], config: dict, source: str) -> tuple[ArchSpec, dict]:
    """The architecture from inferred keys overridden by the config, and the config's metadata."""
    metadata = config.pop("metadata", {}) or {}
    if not isinstance(metadata, dict):
        raise PeaceError(f"{source}: 'metadata' in the model config must be a JSON object, got {type(metadata).__name__}")
    config.pop("weights", None)
    try:
        return ArchSpec(**{**inferred, **config}), metadata
    except (TypeError, ValueError) as e:
        raise PeaceError(f"{source}: invalid architecture: {e}") from None


def _exactly(spec: ArchSpec, tensors: dict[str, Tensor], layout: str, source: str, limits: Limits,
             metadata: dict) -> ImportedModel:
    """The model when ``tensors`` hold exactly the spec's parameters, shaped as it needs them."""
    shapes = spec.param_shapes()
    unknown_names = sorted(set(tensors) - set(shapes))
    if unknown_names:
        raise PeaceError(f"{source}: {unknown_names[:3]} do not belong to {spec.describe()} ({layout}); "
                         f"{len(unknown_names)} unexpected tensors")
    for name, shape in shapes.items():
        if name not in tensors:
            raise PeaceError(f"{source}: {name!r} is missing; {spec.describe()} needs it shaped {shape}")
        if tuple(tensors[name].shape) != shape:
            raise PeaceError(f"{source}: {name!r} has shape {tuple(tensors[name].shape)} but {spec.describe()} "
                             f"(input {spec.input_shape}) needs {shape}")
    limits.check([(m.name, tensors[m.weight_name], tensors.get(m.bias_name)) for m in spec.layers], source)
    params = {name: tensors[name] for name in shapes}
    check_params(spec, params)
    return ImportedModel(spec, params, source, dict(metadata))


_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.")


def is_resnet_layout(tensors: dict[str, Tensor]) -> bool:
    """Whether names follow torchvision's ResNet (``conv1``, ``layer1.0.conv1``, ``fc``)."""
    return "conv1.weight" in tensors and "fc.weight" in tensors and any(k.startswith("layer1.0.") for k in tensors)


def _resnet(tensors: dict[str, Tensor], config: dict, source: str, limits: Limits) -> ImportedModel:
    """A torchvision-layout ResNet with basic blocks. Shapes give widths, blocks, kernels, BatchNorm
    and biases; the config gives ``input_shape`` (and may override the stem, which defaults to
    torchvision's: a 7x7 stem has stride 2 and a 3x3/2 max pool, a smaller one neither) and the
    activation (torchvision's blocks use relu)."""
    bottleneck = sorted(k for k in tensors if re.match(r"layer\d+\.\d+\.conv3\.", k))
    if bottleneck:
        raise PeaceError(f"{source}: {bottleneck[0]!r} belongs to a bottleneck block (ResNet-50 and deeper); PEACE "
                         f"reads ResNets of basic blocks (resnet18 / resnet34 layouts)")
    blocks: dict[int, set[int]] = {}
    for k in tensors:
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    stages = sorted(blocks)
    if stages != list(range(1, len(stages) + 1)) or any(blocks[s] != set(range(len(blocks[s]))) for s in stages):
        raise PeaceError(f"{source}: the ResNet's stages and blocks are not numbered layer1.0, layer1.1, ..., "
                         f"layer2.0, ...: found {({s: sorted(b) for s, b in blocks.items()})}")
    _need_dims(tensors, {"conv1.weight": 4, "fc.weight": 2, **{f"layer{s}.0.conv1.weight": 4 for s in stages}}, source)
    stem = tensors["conv1.weight"]
    if "input_shape" not in config:
        raise PeaceError(f"{source}: a ResNet's input size is not in its weights; give it in the model config "
                         f"(config.json or --input-shape), e.g. [{stem.shape[1]}, 224, 224] for an ImageNet model")
    shape = config["input_shape"]
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[0] != stem.shape[1]:
        raise PeaceError(f"{source}: input_shape {shape!r} does not fit conv1, which reads {stem.shape[1]} channels: "
                         f"give (channels, height, width), e.g. [{stem.shape[1]}, 224, 224]")
    block_kernel = tensors.get("layer1.0.conv1.weight", stem).shape[-1]
    inferred: dict[str, Any] = {
        "family": "resnet", "n_classes": tensors["fc.weight"].shape[0], "activation": "relu",
        "hidden": [tensors[f"layer{s}.0.conv1.weight"].shape[0] for s in stages if f"layer{s}.0.conv1.weight" in tensors],
        "blocks": [len(blocks[s]) for s in stages], "kernel_size": block_kernel, "stem_kernel": stem.shape[-1],
        "norm": "batch" if "bn1.running_mean" in tensors else "none", "bias": "conv1.bias" in tensors,
        "stem_stride": 2 if stem.shape[-1] == 7 else 1, "stem_pool": "max" if stem.shape[-1] == 7 else "none"}
    if config.pop("batchnorm_eps", BN_EPS) != BN_EPS:
        raise PeaceError(f"{source}: ResNets are read with torch's BatchNorm eps {BN_EPS}")
    spec, metadata = _spec(inferred, config, source)
    return _exactly(spec, tensors, "torchvision's basic-block ResNet layout", source, limits, metadata)


def is_vit_layout(tensors: dict[str, Tensor]) -> bool:
    """Whether names follow timm's VisionTransformer (``patch_embed.proj``, ``pos_embed``, ``blocks.0.attn.qkv``)."""
    return "patch_embed.proj.weight" in tensors and "pos_embed" in tensors and "blocks.0.attn.qkv.weight" in tensors


_VIT_UNSUPPORTED = {"fc_norm": "a LayerNorm after pooling (timm's fc_norm)", "norm_pre": "a LayerNorm before the blocks",
                    ".ls1.": "LayerScale", ".ls2.": "LayerScale", "q_norm": "query/key normalization",
                    "k_norm": "query/key normalization", "reg_token": "register tokens", "attn_pool": "attention pooling"}


def _refuse_vit_extras(names: list[str], source: str) -> None:
    """Name the timm ViT part (LayerScale, fc_norm, ...) a tensor belongs to, which PEACE does not read."""
    for name in names:
        what = next((w for key, w in _VIT_UNSUPPORTED.items() if key in name), None)
        if what:
            raise PeaceError(f"{source}: {name!r} belongs to {what}, which PEACE's Transformers do not have; "
                             f"PEACE reads timm's plain pre-LayerNorm VisionTransformer")


def _need_dims(tensors: dict[str, Tensor], dims: dict[str, int], source: str) -> None:
    """Refuse a tensor a layout reads its architecture from when it has the wrong number of dimensions
    (before its shape is indexed)."""
    for name, nd in dims.items():
        if name in tensors and tensors[name].ndim != nd:
            raise PeaceError(f"{source}: {name!r} has shape {tuple(tensors[name].shape)}; it must have {nd} dimensions")


def _vit(tensors: dict[str, Tensor], config: dict, source: str, limits: Limits) -> ImportedModel:
    """A timm-layout VisionTransformer (or its 1-D twin). Shapes give the width, patch size, depth,
    MLP width, class token and classes; the config gives ``heads`` (``num_heads``), which shapes
    cannot tell, and may give ``activation`` (default gelu, timm's) and ``input_shape`` (default: a
    square grid of patches, or a sequence, as many as ``pos_embed`` has positions)."""
    _refuse_vit_extras(sorted(tensors), source)
    _need_dims(tensors, {"pos_embed": 3, "cls_token": 3, "head.weight": 2, "blocks.0.mlp.fc1.weight": 2}, source)
    pe = tensors["patch_embed.proj.weight"]
    if pe.ndim not in (3, 4) or len(set(pe.shape[2:])) != 1:
        raise PeaceError(f"{source}: patch_embed.proj must be a conv with a square kernel, got {tuple(pe.shape)}")
    d, c, p, nd = pe.shape[0], pe.shape[1], pe.shape[-1], pe.ndim - 2
    cls = "cls_token" in tensors
    tokens = tensors["pos_embed"].shape[1] - cls
    if tokens < 1:
        raise PeaceError(f"{source}: pos_embed holds {tensors['pos_embed'].shape[1]} positions, no patch position")
    if "heads" not in config and "num_heads" not in config:
        raise PeaceError(f"{source}: the number of attention heads is not in the weights; give it in the model config "
                         f"(config.json: \"num_heads\": N; timm's ViT-Tiny, width 192, has 3)")
    heads = config.pop("num_heads", None)
    side = round(tokens ** 0.5)
    if "input_shape" not in config and nd == 2 and side * side != tokens:
        raise PeaceError(f"{source}: {tokens} patch positions are not a square grid; give input_shape in the model config")
    inferred: dict[str, Any] = {
        "family": "vit", "n_classes": tensors["head.weight"].shape[0], "hidden": [d], "kernel_size": p,
        "fc_hidden": [tensors["blocks.0.mlp.fc1.weight"].shape[0]], "activation": "gelu", "norm": "layer",
        "blocks": [len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})], "pool": "cls" if cls else "avg",
        "bias": any(k.endswith(".bias") and not k.startswith(("head", "norm", "blocks.0.norm")) for k in tensors),
        "heads": heads if heads is not None else config.get("heads"),
        "input_shape": [c, side * p, side * p] if nd == 2 else [c, tokens * p]}
    spec, metadata = _spec(inferred, config, source)
    tensors = dict(tensors)
    if spec.bias:  # timm's qkv_bias=False keeps proj / fc biases: the missing ones are zeros, the same function
        for m in spec.layers:
            tensors.setdefault(m.bias_name, torch.zeros(m.out_features))
    return _exactly(spec, tensors, "timm's VisionTransformer layout", source, limits, metadata)


def read_config(path: str | Path, max_bytes: int = 2**20) -> dict:
    """A model config JSON (a mapping), size-limited, errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PeaceError(f"{path}: no such model config file")
    if path.stat().st_size > max_bytes:
        raise PeaceError(f"{path}: a model config over {max_bytes // 1024} KiB is refused")
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PeaceError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise PeaceError(f"{path}: a model config must be a JSON object")
    return d


def load_model(path: str | Path, config: dict | None = None, limits: Limits = Limits()) -> ImportedModel:
    """A model from a weights file (safetensors or PyTorch state dict) or a directory holding one and a
    ``config.json``; ``config`` adds to / overrides the directory's config."""
    path = Path(path)
    if not path.exists():
        raise PeaceError(f"{path}: no such file or directory")
    cfg: dict = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            cfg = read_config(path / "config.json")
        if "weights" in {**cfg, **(config or {})}:
            weights = contained(path, str({**cfg, **(config or {})}["weights"]), f"weights file named in {path / 'config.json'}")
        else:
            found = sorted({p for pattern in WEIGHT_FILES for p in path.glob(pattern)})
            outside = [p.name for p in found if p.is_symlink() and not p.resolve().is_relative_to(path.resolve())]
            if outside:
                raise PeaceError(f"{path}: {outside[0]} is a symbolic link out of the directory; refused (copy the "
                                 f"file into the directory if you mean it)")
            if len(found) != 1:
                raise PeaceError(f"{path}: expected one weights file ({', '.join(WEIGHT_FILES)}), found "
                                 f"{[p.name for p in found] or 'none'}; name it with \"weights\" in config.json")
            weights = found[0]
    else:
        weights = path
    cfg.update(config or {})
    return from_state_dict(read_tensors(weights, limits.max_bytes), cfg, str(weights), limits)


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
