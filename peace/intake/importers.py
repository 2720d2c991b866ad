"""Read models made elsewhere into PEACE's ``(ArchSpec, state dict)`` form.

Files come from strangers, so nothing in them is ever unpickled into code and nothing is parsed by
torch's own loader: safetensors files are read with safetensors, PyTorch files with PEACE's strict
reader (``peace.intake.torchfile``: sizes and views checked before anything is allocated). A file over
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

Layouts of other libraries are read in ``peace.intake.layouts``; Python objects (an ``nn.Module``, a
scikit-learn MLP) in ``peace.intake.modules``; what every importer returns and its limits in
``peace.intake.model``.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from peace.core.errors import PeaceError, unknown
from peace.core.paths import contained
from peace.intake.layouts import is_resnet_layout, is_vit_layout, refuse_vit_extras, resnet_model, vit_model
from peace.intake.model import (
    CONFIG_KEYS,
    FLOAT_DTYPES,
    MAX_BYTES,
    SUPPORTED_MODULES,
    ImportedModel,
    Limits,
    one_bias_setting,
    spec_from,
)
from peace.intake.torchfile import read_torch_file
from peace.nets.architectures import ACTIVATIONS, BN_EPS, ArchSpec, check_params
from peace.nets.batchnorm import fold_batchnorm

__all__ = ["NO_ACTIVATION", "WEIGHT_FILES", "MissingActivation", "from_state_dict", "load_model", "read_config",
           "read_tensors"]

NO_ACTIVATION = "the weights do not say which activation the network uses"  # a plain chain must be told


class MissingActivation(PeaceError):
    """A plain chain read without its activation: the error a user sees, and ``model``, the file read with
    the identity in its place, from which a caller can tell the activation by data (the weights are the
    same whatever the activation; only the spec's ``activation`` is a placeholder)."""

    def __init__(self, message: str, model: ImportedModel):
        super().__init__(message)
        self.model = model


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


CNN_FORM = ("PEACE reads CNNs as conv -> activation -> pool blocks, then one flatten: padding 'same' (k // 2) unless "
            "the model config says \"padding\": \"valid\", one pooling for all blocks (\"pool\") or one per block "
            "(\"pools\": [\"max\", \"max\", \"none\"]), stride 1 unless \"strides\": [2, 2, 2], and a global "
            "average before the flatten with \"global_pool\": \"avg\"; a max pool before a monotone activation is "
            "the same")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "weights")  # common checkpoint layouts around a state dict


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
        raise PeaceError(f"{path}: not a regular file (a pipe, device or socket is never read)" if path.exists()
                         else f"{path}: no such file")
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
            refuse_vit_extras([str(k)], source)
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


def _chained_layers(tensors: dict[str, Tensor], source: str, bn_eps: float, layer_norm: bool
                    ) -> tuple[list[tuple[str, Tensor, Tensor | None]], dict[int, dict[str, Tensor]], int]:
    """``_layers`` in name order or, where that does not chain, in the order the file saved them (a
    module's definition order: ``input_fc``, ``hidden_fc``, ``output_fc``), or, without norm layers, the one
    order the shapes chain in (``_shape_chain``); and the number of convolutions."""
    named = None
    try:
        named = _layers(tensors, source, bn_eps, layer_norm, by_name=True)
        return (*named, _convolutions(named[0], source))
    except PeaceError as e:
        first = e
    try:
        layers, norms = _layers(tensors, source, bn_eps, layer_norm, by_name=False)
        return layers, norms, _convolutions(layers, source)
    except PeaceError:
        pass
    if named and all(v.ndim > 1 for k, v in tensors.items() if not k.endswith("bias")):
        chain = _shape_chain(named[0])  # no norm layers to place: the shapes alone may say the order
        if chain:
            return chain, {}, _convolutions(chain, source)
    raise PeaceError(f"{first} (layers read in name order, in the order the file saved them, and by their "
                     f"shapes; name them in order, layers.0, layers.1, ...)") from None


def _shape_chain(layers: list, max_steps: int = 10_000) -> list | None:
    """The one order in which the layers' shapes chain (convolutions, then linear layers), or None where
    no order or more than one does (safetensors files keep no order; layers of equal widths are ambiguous)."""
    def links(a: Tensor, b: Tensor) -> bool:
        return b.shape[1] == a.shape[0] if a.ndim == b.ndim else a.ndim > 2 and b.ndim == 2 and b.shape[1] % a.shape[0] == 0

    n = len(layers)
    after = [[j for j in range(n) if j != i and links(layers[i][1], layers[j][1])] for i in range(n)]
    found: list[list[int]] = []
    steps = 0

    def walk(path: list[int], used: set[int]) -> None:
        nonlocal steps
        steps += 1
        if len(found) > 1 or steps > max_steps:
            return
        if len(path) == n:
            if layers[path[-1]][1].ndim == 2:
                found.append(path)
            return
        for j in (after[path[-1]] if path else range(n)):
            if j not in used:
                walk([*path, j], used | {j})

    if n <= 64:
        walk([], set())
    return [layers[i] for i in found[0]] if len(found) == 1 and steps <= max_steps else None


def _layers(tensors: dict[str, Tensor], source: str, bn_eps: float = BN_EPS, layer_norm: bool = False,
            by_name: bool = True) -> tuple[list[tuple[str, Tensor, Tensor | None]], dict[int, dict[str, Tensor]]]:
    """(prefix, weight, bias) per layer, in ``_prefix_key`` order (or the tensors' own order); a BatchNorm
    (a prefix with running statistics) is folded into the layer just before it. With ``layer_norm``, a
    prefix holding a 1-D weight (and bias) after a layer is its LayerNorm: {layer index: {weight, bias}}."""
    prefixes: dict[str, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        prefix, _, leaf = k.rpartition(".")
        prefixes.setdefault(prefix, {})[leaf] = v
    out: list[tuple[str, Tensor, Tensor | None]] = []
    norms: dict[int, dict[str, Tensor]] = {}
    for prefix in sorted(prefixes, key=lambda x: _prefix_key(x, prefixes)) if by_name else prefixes:
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
        return resnet_model(tensors, config, source, limits)
    if is_vit_layout(tensors):
        return vit_model(tensors, config, source, limits)
    eps = config.pop("batchnorm_eps", BN_EPS)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise PeaceError(f"{source}: batchnorm_eps must be a number in (0, 1), got {eps!r}")
    layers, layer_norms, n_conv = _chained_layers(tensors, source, float(eps), config.get("norm") == "layer")
    if config.get("norm") == "layer" and sorted(layer_norms) != list(range(len(layers) - 1)):
        raise PeaceError(f"{source}: \"norm\": \"layer\" needs a LayerNorm after every hidden layer and none after "
                         f"the last; found them after layers {sorted(layer_norms)} of {len(layers)}")
    limits.check(layers, source)
    layers = one_bias_setting(layers)
    inferred = _chain_shape(layers, n_conv, config, source)
    spec, metadata = spec_from(inferred, config, source)
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
        if any(len(set(w.shape[2:])) != 1 for _, w, _ in convs):
            raise PeaceError(f"{source}: convolution kernels must be square, got "
                             f"{[tuple(w.shape[2:]) for _, w, _ in convs]} ({CNN_FORM})")
        ks = [w.shape[-1] for _, w, _ in convs]
        inferred.update(family="cnn1d" if convs[0][1].ndim == 3 else "cnn2d", kernel_size=ks[0],
                        hidden=[w.shape[0] for _, w, _ in convs], fc_hidden=[w.shape[0] for _, w, _ in linears[:-1]])
        if len(set(ks)) > 1:
            inferred["kernels"] = ks
        for need, example in (("input_shape", "[1, 28, 28]"), ("pool", '"avg", "max" or "none"')):
            if need not in config and not (need == "pool" and "pools" in config):
                raise PeaceError(f"{source}: a CNN's {need} is not in its weights; give it in the model config "
                                 f"(config.json or --{need.replace('_', '-')}), e.g. {example}")
    else:
        inferred.update(family="mlp", input_shape=[layers[0][1].shape[1]], hidden=[w.shape[0] for _, w, _ in linears[:-1]])
    if "activation" not in config:
        raise PeaceError(f"{source}: {NO_ACTIVATION}; give it in the model "
                         f"config (config.json or --activation), one of {', '.join(ACTIVATIONS)}")
    return inferred


def _chain_params(spec: ArchSpec, layers: list, layer_norms: dict, source: str) -> dict[str, Tensor]:
    """The chain's tensors under the spec's names, each checked against the shape the spec needs."""
    if len(spec.layers) != len(layers):
        raise PeaceError(f"{source}: the config describes {len(spec.layers)} layers but the file has {len(layers)}")
    params = {}
    for layer, (name, w, b) in zip(spec.layers, layers):
        if tuple(w.shape) != tuple(layer.weight_shape):
            cnn = f" ({CNN_FORM})" if spec.family.startswith("cnn") else ""
            raise PeaceError(f"{source}: layer {name!r} has weight shape {tuple(w.shape)} but the architecture "
                             f"({spec.describe()}, input {spec.input_shape}) needs {tuple(layer.weight_shape)}; "
                             f"check input_shape and pool in the model config{cnn}")
        params[layer.weight_name] = w
        if layer.bias:
            params[layer.bias_name] = b
        for leaf, name in layer.norm_names().items():
            params[name] = layer_norms[layer.index][leaf]
    check_params(spec, params)
    return params


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
    except RecursionError:
        raise PeaceError(f"{path}: nested too deeply to be a model config") from None
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
            if not found:
                raise PeaceError(f"{path}: a model directory holds one weights file ({', '.join(WEIGHT_FILES)}); "
                                 f"found none")
            if len(found) > 1:
                names = ", ".join(p.name for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
                raise PeaceError(f"{path}: a model directory holds one weights file, found {len(found)} ({names}); "
                                 f"name it with \"weights\" in config.json, or, if each file is a model, pass the "
                                 f"files themselves (e.g. {path}/*{found[0].suffix})")
            weights = found[0]
    else:
        weights = path
    cfg.update(config or {})
    return from_state_dict(read_tensors(weights, limits.max_bytes), cfg, str(weights), limits)
