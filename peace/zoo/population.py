"""Train many small models at once as batched tensors.

A population is P models of one ``ArchSpec`` on one task with one optimizer, batch size and epoch
count; seed, initialization, learning rate, weight decay and dropout vary per model. Every random
draw (init, data order, dropout) comes from :mod:`peace.core.rng` keyed by the model's own seed, so
model i trained in a population equals the same model trained alone (``train_single``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from peace.core import rng
from peace.core.errors import PeaceError, unknown
from peace.nets import transformer
from peace.nets.architectures import (
    ArchSpec,
    build_module,
    evaluate,
    forward,
    hidden_shapes,
    is_buffer,
    load_weights,
    nll,
)
from peace.nets.optim import ADAM_BETAS, ADAM_EPS, PopulationOptimizer
from peace.zoo.tasks import Task

__all__ = [
    "INITS", "OPTIMIZERS", "HParams", "PopulationResult", "Schedule", "init_params", "metric_rows",
    "task_tensors", "train_population", "train_single"
]

INITS = ("uniform", "normal", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class HParams:
    """Per-model hyperparameters (may differ inside one population)."""

    seed: int
    init: str = "kaiming_uniform"
    lr: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise unknown("initialization", self.init, INITS)
        if not (0.0 <= self.dropout < 1.0):
            raise PeaceError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise PeaceError(f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")


@dataclass(frozen=True)
class Schedule:
    """What a whole population shares: optimizer, epochs, batch size and the recorded epochs."""

    epochs: int
    batch_size: int = 32
    optimizer: str = "adam"
    checkpoints: tuple[int, ...] = field(default=())  # empty: only the last epoch

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.optimizer, OPTIMIZERS)
        if self.epochs < 0 or self.batch_size < 1:
            raise PeaceError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        cps = tuple(sorted(set(int(c) for c in self.checkpoints))) or (self.epochs,)
        if cps[0] < 0 or cps[-1] > self.epochs:
            raise PeaceError(f"checkpoint epochs must lie in [0, {self.epochs}], got {list(cps)}")
        object.__setattr__(self, "checkpoints", cps)


# --- initialization -----------------------------------------------------------------------------

def init_params(spec: ArchSpec, hparams: Sequence[HParams]) -> dict[str, Tensor]:
    """Fresh population parameters: each model drawn from its own init scheme and seed."""
    seeds = torch.tensor([h.seed for h in hparams], dtype=torch.int64)
    params: dict[str, Tensor] = {}
    for layer in spec.layers:
        fi, fo = layer.fan_in, layer.fan_out
        scale = {  # (distribution, bound or std, shift) per scheme, as torch.nn.init's defaults
            "uniform": ("u", 0.5, 0.5), "normal": ("n", 1.0, 0.0),  # U(0, 1) and N(0, 1)
            "kaiming_uniform": ("u", math.sqrt(6 / fi), 0.0), "kaiming_normal": ("n", math.sqrt(2 / fi), 0.0),
            "xavier_uniform": ("u", math.sqrt(6 / (fi + fo)), 0.0),
            "xavier_normal": ("n", math.sqrt(2 / (fi + fo)), 0.0),
        }
        u = rng.uniform(seeds, (1, layer.index), layer.weight_shape) * 2 - 1
        n = rng.normal(seeds, (1, layer.index), layer.weight_shape)
        kinds = [scale[h.init] for h in hparams]
        shape = (-1, *[1] * len(layer.weight_shape))
        is_u = torch.tensor([k[0] == "u" for k in kinds]).reshape(shape)
        s = torch.tensor([k[1] for k in kinds], dtype=torch.float32).reshape(shape)
        shift = torch.tensor([k[2] for k in kinds], dtype=torch.float32).reshape(shape)
        params[layer.weight_name] = torch.where(is_u, u, n) * s + shift
        if layer.bias:  # PyTorch's default bias init for every scheme
            params[layer.bias_name] = (rng.uniform(seeds, (2, layer.index), (layer.out_features,)) * 2 - 1) / math.sqrt(fi)
        for leaf, name in layer.norm_names().items():  # BatchNorm: torch's init (scale 1, shift 0, fresh statistics)
            params[name] = torch.full((len(hparams), layer.out_features), 1.0 if leaf in ("weight", "running_var") else 0.0)
    if spec.extra_shapes:  # a Transformer's class token, position embedding and LayerNorms
        params.update(transformer.init_extras(spec, seeds))
    return params


def metric_rows(spec: ArchSpec, task: Task, params: dict[str, Tensor], epoch: int,
                data: dict[str, tuple[Tensor, Tensor]]) -> list[dict]:
    """One manifest row per stacked model: loss and accuracy per split, gap, per-class F1, status."""
    finite = torch.stack([torch.isfinite(v.reshape(v.shape[0], -1)).all(1) for v in params.values()]).all(0)
    res = {split: evaluate(spec, params, X, y, task.n_classes) for split, (X, y) in data.items()}
    macro_f1, f1 = res["test"]["f1"].mean(1).tolist(), res["test"]["f1"].tolist()
    res = {split: {k: v.tolist() for k, v in r.items() if k != "f1"} for split, r in res.items()}  # floats, once
    rows = []
    for i, fin in enumerate(finite.tolist()):
        r = {"epoch": epoch, "model_index": i}
        for split in data:
            r[f"{split}_loss"] = res[split]["loss"][i]
            r[f"{split}_acc"] = res[split]["acc"][i]
        r["gen_gap"] = r["train_acc"] - r["test_acc"]
        r["test_f1_per_class"] = f1[i]
        r["test_macro_f1"] = macro_f1[i]
        ok = fin and math.isfinite(r["train_loss"])
        r["status"] = "ok" if ok else "diverged"
        rows.append(r)
    return rows


def _dropout_masks(spec: ArchSpec, seeds: Tensor, p: Tensor, step: int, batch: int) -> list[Tensor | None]:
    """Inverted-dropout masks after each hidden layer, keyed by (seed, step, layer)."""
    masks: list[Tensor | None] = []
    pp = p.reshape(-1, 1)
    for i, shape in enumerate(hidden_shapes(spec, batch)):
        keep = rng.uniform(seeds, (3, step, i), shape) >= pp.reshape(-1, *[1] * len(shape))
        masks.append(keep.float() / (1 - pp.reshape(-1, *[1] * len(shape))))
    return masks + [None]


def task_tensors(task: Task, input_shape: Sequence[int] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """The task's train / val / test arrays as tensors, the inputs shaped ``input_shape`` when given (a
    model's: an MLP reads images flattened)."""
    out = {s: (torch.from_numpy(task.split(s)[0]), torch.from_numpy(task.split(s)[1])) for s in ("train", "val", "test")}
    return out if input_shape is None else {s: (X.reshape(len(X), *input_shape), y) for s, (X, y) in out.items()}


# --- training -----------------------------------------------------------------------------------

@dataclass
class PopulationResult:
    """Weights at each checkpoint epoch (population tensors) and one metrics row per model and epoch."""

    checkpoints: dict[int, dict[str, Tensor]]
    metrics: list[dict]


def train_population(task: Task, spec: ArchSpec, hparams: Sequence[HParams], schedule: Schedule,
                     start: dict[str, Tensor] | None = None, progress: bool | str = False,
                     targets: Tensor | None = None, metrics: bool = True) -> PopulationResult:
    """Train ``len(hparams)`` models of ``spec`` on ``task`` together.

    ``start`` gives initial population weights (fine-tuning); otherwise each model is initialised
    from its own seed and scheme. ``targets`` (P, n_train) replaces the training labels per model
    (distillation: a student learns its teacher's predictions); metrics still use the true labels.
    ``metrics=False`` skips evaluating checkpoints (``result.metrics`` stays empty). Models that diverge keep training (their weights stay NaN) and
    are reported with status ``diverged``.
    """
    if spec.input_shape != task.input_shape and math.prod(spec.input_shape) != task.n_features:
        raise PeaceError(f"architecture input {spec.input_shape} does not fit task {task.name!r} "
                         f"with samples shaped {task.input_shape}")
    if spec.n_classes != task.n_classes:
        raise PeaceError(f"architecture has {spec.n_classes} outputs but task {task.name!r} has {task.n_classes} classes")
    seeds = torch.tensor([h.seed for h in hparams], dtype=torch.int64)
    params = {k: v.clone() for k, v in (start if start is not None else init_params(spec, hparams)).items()}
    trainable = {k: v.requires_grad_(True) for k, v in params.items() if not is_buffer(k)}
    opt = PopulationOptimizer(trainable, schedule.optimizer,
                               torch.tensor([h.lr for h in hparams], dtype=torch.float32),
                               torch.tensor([h.weight_decay for h in hparams], dtype=torch.float32))
    drop = torch.tensor([h.dropout for h in hparams], dtype=torch.float32)
    use_dropout = bool((drop > 0).any())
    data = task_tensors(task, spec.input_shape)
    X, y = data["train"]
    if targets is not None and tuple(targets.shape) != (len(hparams), len(X)):
        raise PeaceError(f"targets must be shaped (models, training samples) = ({len(hparams)}, {len(X)}), "
                         f"got {tuple(targets.shape)}")
    N, bs = len(X), schedule.batch_size
    result = PopulationResult({}, [])

    def record(epoch: int) -> None:
        snap = {k: v.detach().clone() for k, v in params.items()}
        result.checkpoints[epoch] = snap
        if metrics:
            result.metrics.extend(metric_rows(spec, task, snap, epoch, data))

    if 0 in schedule.checkpoints:
        record(0)
    step = 0
    bar = tqdm(total=schedule.epochs, desc=progress if isinstance(progress, str) else "population",
               disable=not progress, leave=False)
    for epoch in range(1, schedule.epochs + 1):
        perm = rng.permutation(seeds, (4, epoch), N)
        for s in range(0, N, bs):
            idx = perm[:, s:s + bs]
            masks = _dropout_masks(spec, seeds, drop, step, idx.shape[1]) if use_dropout else None
            logits = forward(spec, params, X[idx], masks, train=True)
            nll(logits, y[idx] if targets is None else targets.gather(1, idx)).mean(1).sum().backward()
            opt.step()
            step += 1
        if epoch in schedule.checkpoints:
            record(epoch)
        bar.update()
    bar.close()
    return result


def train_single(task: Task, spec: ArchSpec, hp: HParams, schedule: Schedule,
                 start: dict[str, Tensor] | None = None) -> dict[int, dict[str, Tensor]]:
    """Reference: one ``nn.Module`` (``build_module``) trained with an ordinary ``torch.optim`` loop.

    Uses the same seed-keyed init, data order and dropout masks as ``train_population``, so the two
    agree to float tolerance; the benchmark times it against the batched trainer.
    """
    seeds = torch.tensor([hp.seed])
    net = build_module(spec)
    init = start if start is not None else {k: v[0] for k, v in init_params(spec, [hp]).items()}
    load_weights(net, init)
    state = lambda: {k: v.detach().clone() for k, v in net.state_dict().items() if k in init}
    if schedule.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=hp.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=hp.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
    X = torch.from_numpy(task.X_train).reshape(-1, *spec.input_shape)
    y = torch.from_numpy(task.y_train)
    drop = torch.tensor([hp.dropout])
    out = {}
    if 0 in schedule.checkpoints:
        out[0] = state()
    step = 0
    for epoch in range(1, schedule.epochs + 1):
        perm = rng.permutation(seeds, (4, epoch), len(X))[0]
        for s in range(0, len(X), schedule.batch_size):
            idx = perm[s:s + schedule.batch_size]
            masks = None
            if hp.dropout > 0:
                masks = [m[0] if m is not None else None for m in _dropout_masks(spec, seeds, drop, step, len(idx))]
            opt.zero_grad()
            F.cross_entropy(net(X[idx], masks), y[idx]).backward()
            opt.step()
            step += 1
        if epoch in schedule.checkpoints:
            out[epoch] = state()
    return out
