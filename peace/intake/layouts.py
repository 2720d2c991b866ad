"""State dicts in two published layouts, read by their names: torchvision's basic-block ResNet
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample``, ``fc``) and timm's VisionTransformer
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``, ``norm1``, ``mlp.fc1``,
``norm``, ``head``). Parts of those libraries PEACE does not model (bottleneck blocks, LayerScale,
fc_norm, ...) are refused by name."""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from peace.core.errors import PeaceError
from peace.intake.model import ImportedModel, Limits, exact_model, need_dims, spec_from
from peace.nets.architectures import BN_EPS

__all__ = ["is_resnet_layout", "is_vit_layout", "refuse_vit_extras", "resnet_model", "vit_model"]

_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.")


def is_resnet_layout(tensors: dict[str, Tensor]) -> bool:
    """Whether names follow torchvision's ResNet (``conv1``, ``layer1.0.conv1``, ``fc``)."""
    return "conv1.weight" in tensors and "fc.weight" in tensors and any(k.startswith("layer1.0.") for k in tensors)


def resnet_model(tensors: dict[str, Tensor], config: dict, source: str, limits: Limits) -> ImportedModel:
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
    need_dims(tensors, {"conv1.weight": 4, "fc.weight": 2, **{f"layer{s}.0.conv1.weight": 4 for s in stages}}, source)
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
    spec, metadata = spec_from(inferred, config, source)
    return exact_model(spec, tensors, "torchvision's basic-block ResNet layout", source, limits, metadata)


def is_vit_layout(tensors: dict[str, Tensor]) -> bool:
    """Whether names follow timm's VisionTransformer (``patch_embed.proj``, ``pos_embed``, ``blocks.0.attn.qkv``)."""
    return "patch_embed.proj.weight" in tensors and "pos_embed" in tensors and "blocks.0.attn.qkv.weight" in tensors


_VIT_UNSUPPORTED = {"fc_norm": "a LayerNorm after pooling (timm's fc_norm)", "norm_pre": "a LayerNorm before the blocks",
                    ".ls1.": "LayerScale", ".ls2.": "LayerScale", "q_norm": "query/key normalization",
                    "k_norm": "query/key normalization", "reg_token": "register tokens", "attn_pool": "attention pooling"}


def refuse_vit_extras(names: list[str], source: str) -> None:
    """Name the timm ViT part (LayerScale, fc_norm, ...) a tensor belongs to, which PEACE does not read."""
    for name in names:
        what = next((w for key, w in _VIT_UNSUPPORTED.items() if key in name), None)
        if what:
            raise PeaceError(f"{source}: {name!r} belongs to {what}, which PEACE's Transformers do not have; "
                             f"PEACE reads timm's plain pre-LayerNorm VisionTransformer")


def vit_model(tensors: dict[str, Tensor], config: dict, source: str, limits: Limits) -> ImportedModel:
    """A timm-layout VisionTransformer (or its 1-D twin). Shapes give the width, patch size, depth,
    MLP width, class token and classes; the config gives ``heads`` (``num_heads``), which shapes
    cannot tell, and may give ``activation`` (default gelu, timm's) and ``input_shape`` (default: a
    square grid of patches, or a sequence, as many as ``pos_embed`` has positions)."""
    refuse_vit_extras(sorted(tensors), source)
    need_dims(tensors, {"pos_embed": 3, "cls_token": 3, "head.weight": 2, "blocks.0.mlp.fc1.weight": 2}, source)
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
    spec, metadata = spec_from(inferred, config, source)
    tensors = dict(tensors)
    if spec.bias:  # timm's qkv_bias=False keeps proj / fc biases: the missing ones are zeros, the same function
        for m in spec.layers:
            tensors.setdefault(m.bias_name, torch.zeros(m.out_features))
    return exact_model(spec, tensors, "timm's VisionTransformer layout", source, limits, metadata)
