"""Model zoos in the layout of the published ones (Schurholt et al.'s model zoos, Hyper-representations, SANE).

Those zoos were trained with Ray Tune; each trained network is a *trial* directory::

    params.json                    the trial's config: model::type, model::nlin, optim::lr, seed, ...
    result.json                    one JSON line per training iteration: train_acc, test_acc, train_loss, ...
    checkpoint_000000/checkpoints  the state dict at epoch 0 (torch.save of the model's state_dict)
    checkpoint_000001/checkpoints  ... and so on, one per recorded epoch

and a zoo is a directory of trials (MLPs, and CNNs of ``model::type`` CNN, CNN2 and CNN3). ``tune_checkpoints``
lists every checkpoint of such a zoo with what the trial's files say about it: what the importer needs (the
activation; a CNN's padding, poolings and input shape), the model card (seed, learning rate, ...) and that epoch's
recorded results. The state dicts themselves are read like any model file (strictly, in a child).
Which result line belongs to which checkpoint follows the zoos' own reader (SANE's ``dataset_epochs``): with a
``checkpoint_000000`` the first line describes it, otherwise the first line describes ``checkpoint_000001``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peace.core.errors import PeaceError
from peace.intake.importers import read_config

__all__ = ["TuneCheckpoint", "is_tune_zoo", "tune_checkpoints"]

NLIN = {"relu": "relu", "leakyrelu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid", "gelu": "gelu"}
CARD = {"seed": "seed", "optim::lr": "lr", "optim::wd": "weight_decay", "optim::optimizer": "optimizer",
        "training::batchsize": "batch_size", "model::dropout": "dropout", "model::init_type": "init",
        "training::epochs_train": "epochs"}  # params.json key -> manifest column
CNN_POOLS = {"CNN": ("max", "max", "none"), "CNN2": ("max", "max", "none"), "CNN3": ("max", "max", "max")}
CNN_SIDE = {1: 28, 3: 32}  # the zoos' images: MNIST and Fashion-MNIST 1x28x28, SVHN and CIFAR-10 3x32x32
RESULTS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
MAX_RESULTS_BYTES = 64 * 2**20
_CHECKPOINT = re.compile(r"checkpoint_(\d{1,9})")


@dataclass(frozen=True)
class TuneCheckpoint:
    """One checkpoint of a trial: its state-dict file, the trial (its lineage), its epoch, the importer's config
    (the activation) and the manifest columns the trial's files fill (model card and this epoch's results)."""

    path: Path
    trial: str
    epoch: int
    config: dict = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _is_trial(path: Path) -> bool:
    return (path / "params.json").is_file() and any(_CHECKPOINT.fullmatch(p.name) for p in path.glob("checkpoint_*"))


def is_tune_zoo(path: str | Path) -> bool:
    """Whether ``path`` is a trial directory, or a directory of them."""
    path = Path(path)
    return path.is_dir() and (_is_trial(path) or any(p.is_dir() and _is_trial(p) for p in path.iterdir()))


def tune_checkpoints(path: str | Path) -> list[TuneCheckpoint]:
    """Every checkpoint of a zoo of trials (or of one trial), trial by trial in name order, epochs in order."""
    path = Path(path)
    trials = [path] if _is_trial(path) else sorted(p for p in path.iterdir() if p.is_dir() and _is_trial(p))
    if not trials:
        raise PeaceError(f"{path}: no trial directories (params.json beside checkpoint_NNNNNN/checkpoints) found")
    return [c for t in trials for c in _trial(t, path)]


def _inside(root: Path, p: Path) -> Path:
    """``p``, refused where a symbolic link leads it out of the zoo (a stranger's zoo names only its own files)."""
    if not p.resolve().is_relative_to(root.resolve()):
        raise PeaceError(f"{p} leads out of {root} (a symbolic link); refused (copy the file into the zoo if you mean it)")
    return p


def _trial(path: Path, root: Path) -> list[TuneCheckpoint]:
    params = read_config(_inside(root, path / "params.json"))
    config, card = {}, {}
    nlin = params.get("model::nlin")
    if nlin is not None:
        if str(nlin).lower() not in NLIN:
            raise PeaceError(f"{path / 'params.json'}: model::nlin {nlin!r} is not an activation PEACE models "
                             f"({', '.join(NLIN)}); these models cannot be read")
        config["activation"] = NLIN[str(nlin).lower()]
    config.update(_cnn_config(params, path))
    for key, column in CARD.items():
        v = params.get(key)
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            card[column] = v
    epochs = sorted((int(m[1]), _inside(root, p / "checkpoints")) for p in path.glob("checkpoint_*")
                    if (m := _CHECKPOINT.fullmatch(p.name)) and (p / "checkpoints").is_file())
    if not epochs:
        raise PeaceError(f"{path}: its checkpoint directories hold no 'checkpoints' file (the state dict)")
    twice = sorted({e for e, _ in epochs if [x for x, _ in epochs].count(e) > 1})
    if twice:
        raise PeaceError(f"{path}: epoch {twice[0]} has two checkpoint directories (checkpoint_N and checkpoint_00000N); "
                         f"remove one")
    results = _results(_inside(root, path / "result.json"))
    first = 0 if epochs[0][0] == 0 else 1  # the epoch the first result line describes
    return [TuneCheckpoint(file, path.name, epoch, dict(config), {**card, **results.get(epoch - first + 1, {})})
            for epoch, file in epochs]


def _cnn_config(params: dict, path: Path) -> dict:
    """What the zoos' CNNs (``model::type`` CNN, CNN2, CNN3: unpadded convolutions, each max-pooled before its
    activation but the last's in CNN and CNN2) need said; the input shape from their datasets' by channel count
    (``--input-shape`` overrides it)."""
    kind = params.get("model::type")
    if kind not in CNN_POOLS:
        return {}
    if str(params.get("model::nlin", "")).lower() == "gelu":  # max then gelu is not gelu then max
        raise PeaceError(f"{path / 'params.json'}: a {kind} pools before its activation, and max pooling before gelu "
                         f"is not the same function as after it; PEACE cannot read these models")
    channels = params.get("model::channels_in", 1)
    side = CNN_SIDE.get(channels) if type(channels) is int else None
    return {"padding": "valid", "pools": list(CNN_POOLS[kind]), **({"input_shape": [channels, side, side]} if side else {})}


def _results(path: Path) -> dict[int, dict[str, float]]:
    """training_iteration -> the recorded metrics of that line (absent file: none)."""
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise PeaceError(f"{path}: over {MAX_RESULTS_BYTES // 2**20} MiB; a zoo's result.json is a few KiB a trial")
    out = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise PeaceError(f"{path}, line {n}: not a JSON line of metrics ({str(e)[:80]}); fix or remove the "
                                 f"line") from None
            it = row.get("training_iteration") if isinstance(row, dict) else None
            if type(it) is int:
                out[it] = {k: v for k in RESULTS if (v := _number(row.get(k))) is not None}
    return out


def _number(v: Any) -> float | None:
    """A recorded metric as a float; None for anything else (text, a diverged run's NaN, a number past float)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None
