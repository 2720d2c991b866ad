"""What every importer produces and checks: ``ImportedModel`` (an architecture and its weights),
the ``Limits`` one imported model may cost, and the shared rules for turning inferred shapes plus a
model config into an ``ArchSpec`` whose parameters are exactly the tensors given."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets.architectures import ArchSpec, check_params

__all__ = ["CONFIG_KEYS", "FLOAT_DTYPES", "ImportedModel", "Limits", "MAX_BYTES", "SUPPORTED_MODULES", "exact_model", "need_dims", "one_bias_setting", "spec_from"]

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
            raise PeaceError(f"{source}: refused: {'; '.join(over)}. Raise the limit with peace.intake.model.Limits "
                             f"if you expect a model this large.")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


SUPPORTED_MODULES = ("Linear", "Conv1d", "Conv2d", "BatchNorm1d/2d (right after a Linear / Conv: folded into it)",
                     "ReLU", "LeakyReLU(0.01)", "Tanh", "Sigmoid", "GELU", "Identity", "AvgPool1d/2d(2)",
                     "MaxPool1d/2d(2)", "AdaptiveAvgPool/AdaptiveMaxPool1d/2d(1) (after the last conv)", "Flatten",
                     "Dropout")


@dataclass
class ImportedModel:
    """A model read from outside the zoo, ready for the graph, encoder and query paths."""

    spec: ArchSpec
    params: dict[str, Tensor]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    inferred: dict[str, str] = field(default_factory=dict)  # what was inferred, not read: {"activation": "relu"}


_SPEC_KEYS = [f.name for f in fields(ArchSpec) if f.init]


CONFIG_KEYS = _SPEC_KEYS + ["weights", "metadata", "batchnorm_eps", "num_heads"]


def one_bias_setting(layers: list[tuple]) -> list[tuple]:
    """Zero biases where some layers have biases and others do not: the same function, one bias
    setting. Each layer is a tuple ending in (weight, bias)."""
    if any(t[-1] is not None for t in layers):
        return [(*t[:-1], t[-1] if t[-1] is not None else torch.zeros(t[-2].shape[0])) for t in layers]
    return layers


def spec_from(inferred: dict[str, Any], config: dict, source: str) -> tuple[ArchSpec, dict]:
    """The architecture from inferred keys overridden by the config, and the config's metadata."""
    metadata = config.pop("metadata", {}) or {}
    if not isinstance(metadata, dict):
        raise PeaceError(f"{source}: 'metadata' in the model config must be a JSON object, got {type(metadata).__name__}")
    config.pop("weights", None)
    try:
        return ArchSpec(**{**inferred, **config}), metadata
    except (TypeError, ValueError) as e:
        raise PeaceError(f"{source}: invalid architecture: {e}") from None


def exact_model(spec: ArchSpec, tensors: dict[str, Tensor], layout: str, source: str, limits: Limits,
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


def need_dims(tensors: dict[str, Tensor], dims: dict[str, int], source: str) -> None:
    """Refuse a tensor a layout reads its architecture from when it has the wrong number of dimensions
    (before its shape is indexed)."""
    for name, nd in dims.items():
        if name in tensors and tensors[name].ndim != nd:
            raise PeaceError(f"{source}: {name!r} has shape {tuple(tensors[name].shape)}; it must have {nd} dimensions")
