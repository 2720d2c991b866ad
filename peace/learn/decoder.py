"""The decoder: from a point of PEACE's embedding space back to the weights of an architecture.

Hyper-representations' E.D and SANE pair their encoders with a decoder; PEACE trains one on a run's
frozen encoder (``peace decoder``; docs/generation.md says why frozen). What it writes is the
*aligned form* of a model's eval-mode function (BatchNorm folded into the layer before it, as the
encoder's graphs fold it): scales and signs canonical (``peace.nets.symmetry.canonicalize``), hidden
units permuted to match the architecture's reference (``peace.nets.alignment.align``). Every
permuted or rescaled copy of a model has the same embedding and the same aligned form, so the
decoder is never asked for two different outputs from one input. The loss is normalized layer by
layer (each tensor standardized by its training spread, every tensor weighing the same), which the
Hyper-representations thesis finds critical: otherwise the biggest layer drowns the small ones.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from peace.core.atomic import atomic_path, sha256_file, write_json
from peace.core.errors import PeaceError
from peace.learn.run import RunDir
from peace.nets.alignment import align
from peace.nets.architectures import ArchSpec, forward, unstack_params
from peace.nets.batchnorm import fold_norms, folded_spec, unfold_norms
from peace.nets.symmetry import canonicalize

if TYPE_CHECKING:
    from peace.learn.refine import SketchFit

__all__ = [
    "DECODABLE", "DecoderConfig", "Pairs", "WeightDecoder", "aligned_form", "check_decodable", "families_flag",
    "fit_decoder", "flatten",
    "head_form", "head_spec", "load_decoder", "models", "nearest", "reference_form", "save_decoder", "unflatten"
]

DECODABLE = ("mlp", "cnn1d", "cnn2d", "resnet", "vit")
Params = dict[str, Tensor]


def check_decodable(spec: ArchSpec) -> None:
    """Refuse, by name and reason, an architecture family the decoder does not write."""
    if spec.family not in DECODABLE:
        raise PeaceError(f"{spec.describe()}: PEACE does not decode {spec.family} models (no aligned form for them); "
                         f"decodable families: {', '.join(DECODABLE)}")


def families_flag(families: Sequence[str], family: str) -> str:
    """The ``peace decoder`` option that decodes ``family`` beside ``families`` (a decoder's own)."""
    return f"--families {' '.join(dict.fromkeys((*families, family)))}"


def head_spec(spec: ArchSpec) -> ArchSpec:
    """The spec a decoder head is keyed by and writes: BatchNorm folded (``folded_spec``: the eval-mode
    function, which is what the embedding describes), and an MLP's input flattened, so MLPs on 4x4 images
    and on 16 features have the same weights and share a head."""
    spec = folded_spec(spec)
    return dataclasses.replace(spec, input_shape=(math.prod(spec.input_shape),)) if spec.family == "mlp" else spec


def head_form(spec: ArchSpec, params: Params) -> Params:
    """A model of ``spec`` as its decoder head reads and writes it: BatchNorm folded (``fold_norms``)."""
    return fold_norms(spec, params)[1]


def aligned_form(spec: ArchSpec, params: Params, reference: Params) -> Params:
    """The model's representative for the decoder: canonical scales / signs, units matched to ``reference``
    (``spec`` a head spec and ``params`` in head form: ``head_spec``, ``head_form``)."""
    check_decodable(spec)
    return align(spec, reference, canonicalize(spec, params))[0]


def reference_form(spec: ArchSpec, params: Sequence[Params]) -> Params:
    """An architecture's alignment target: the mean of its (training) models aligned to the first one
    (a barycenter is smoother to decode towards than any single model)."""
    first = canonicalize(spec, params[0])
    aligned = [aligned_form(spec, p, first) for p in params]
    return {k: torch.stack([a[k] for a in aligned]).mean(0) for k in first}


def flatten(spec: ArchSpec, params: Params) -> Tensor:
    """One model's tensors as one vector, in ``spec.param_shapes()`` order."""
    return torch.cat([params[k].reshape(-1).float() for k in spec.param_shapes()])


def nearest(z: Tensor, library: Tensor) -> Tensor:
    """Index of the row of ``library`` nearest to each row of ``z`` by cosine."""
    return (F.normalize(z, dim=1) @ F.normalize(library, dim=1).T).argmax(1)


def _spans(spec: ArchSpec) -> list[tuple[str, tuple[int, ...], slice]]:
    """Each tensor's name, shape and place in the flat vector (``flatten``'s order)."""
    out, s = [], 0
    for k, shape in spec.param_shapes().items():
        out.append((k, shape, slice(s, s + math.prod(shape))))
        s += math.prod(shape)
    return out


def unflatten(spec: ArchSpec, flat: Tensor) -> Params:
    """``flatten`` undone; a (..., n_params) tensor gives tensors with the same leading dimensions."""
    return {k: flat[..., sl].reshape(*flat.shape[:-1], *shape).clone() for k, shape, sl in _spans(spec)}


def models(spec: ArchSpec, flat: Tensor) -> list[Params]:
    """One parameter dict of ``spec`` per row of a head's flat weights ``flat`` (n, n_params) (views of one
    batch); a BatchNorm spec gets neutral BatchNorms that compute the same (``unfold_norms``)."""
    stacked = unfold_norms(spec, unflatten(folded_spec(spec), flat))
    return [unstack_params(stacked, j) for j in range(len(flat))]


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder's size and training; validation loss picks the epoch kept."""

    hidden: int = 256
    layers: int = 2
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    patience: int = 40  # epochs without a better validation loss before stopping
    function_weight: float = 10.0  # weight of the functional term (0: weights only, as E.D and SANE)
    noise: float = 0.3  # training inputs jittered by this many standard deviations (a smooth decoder for sampling)
    function_inputs: int = 64  # inputs the functional term reads per step, drawn afresh (0: all; 64 chosen on
    # validation: as good on the demo zoo, better per minute on 16x16 images, docs/generation.md)
    other_tasks: float = 0.25  # weight of other tasks' inputs against the model's own task's in the functional
    # term (1: every input alike; 0: only the task the model solves; 0.25 chosen on validation, docs/generation.md)
    families: tuple[str, ...] = ("mlp", "cnn1d", "cnn2d", "resnet")  # ViTs opt-in: their heads cost the other
    # families on test (2 decoder seeds, a tie on validation) and keep 25-33 % of test ViTs (docs/generation.md)
    min_models: int = 8  # training models an architecture needs to be decoded
    max_models: int = 2000  # training models per architecture (alignment costs a few ms each)
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.hidden, self.layers, self.epochs, self.batch_size, self.patience, self.min_models) < 1 \
                or self.max_models < self.min_models or not self.lr > 0 or self.weight_decay < 0 \
                or min(self.function_weight, self.noise, self.function_inputs) < 0 or not 0 <= self.other_tasks <= 1:
            raise PeaceError(f"decoder config: sizes, epochs and patience must be >= 1, max_models >= min_models, "
                             f"lr > 0, weight_decay >= 0, function_weight, noise, function_inputs >= 0 and "
                             f"other_tasks in [0, 1]; got {self}")
        object.__setattr__(self, "families", tuple(self.families))  # a list, as decoder.json gives it back
        if not self.families or not set(self.families) <= set(DECODABLE):
            raise PeaceError(f"decoder config: families must be some of {', '.join(DECODABLE)}; got {self.families}")


class WeightDecoder(nn.Module):
    """A shared MLP trunk from the (standardized) embedding, one linear head per architecture. A head
    writes the aligned weights in layer-normalized units: ``weights = mean + scale * head(trunk(z))``,
    with each tensor's training mean and one spread per tensor (the layer-wise normalization)."""

    def __init__(self, in_dim: int, specs: Sequence[ArchSpec], config: DecoderConfig = DecoderConfig(),
                 memory: Sequence[int] = ()):
        super().__init__()
        self.config, self.specs = config, [head_spec(s) for s in specs]
        dims = [in_dim] + [config.hidden] * config.layers
        self.trunk = nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.GELU())])
        self.heads = nn.ModuleList(nn.Linear(config.hidden, s.n_params) for s in self.specs)
        self.refines = [True] * len(self.specs)  # per head: does ``decode`` refine (chosen on validation)
        self.register_buffer("z_mean", torch.zeros(in_dim))
        self.register_buffer("z_std", torch.ones(in_dim))
        for i, s in enumerate(self.specs):
            self.register_buffer(f"mean_{i}", torch.zeros(s.n_params))
            self.register_buffer(f"scale_{i}", torch.ones(s.n_params))
        for i, (s, n) in enumerate(zip(self.specs, memory)):  # the training models: embeddings, aligned weights
            self.register_buffer(f"memory_z_{i}", torch.zeros(n, in_dim))
            self.register_buffer(f"memory_y_{i}", torch.zeros(n, s.n_params))

    def index(self, spec: ArchSpec) -> int:
        if head_spec(spec) not in self.specs:
            check_decodable(spec)
            flag = families_flag(self.config.families, spec.family)
            raise PeaceError(f"this decoder was not trained on {spec.describe()} (it writes: "
                             f"{'; '.join(s.describe() for s in self.specs)}); train it on a zoo that has the "
                             f"architecture with `peace decoder --run RUN {flag}`")
        return self.specs.index(head_spec(spec))

    def normalized(self, z: Tensor, i: int) -> Tensor:
        return self.heads[i](self.trunk((z - self.z_mean) / self.z_std))

    def set_statistics(self, z: Tensor, targets: Sequence[Tensor]) -> None:
        """Input standardization and each head's per-tensor mean and spread, from training data."""
        self.z_mean.copy_(z.mean(0))
        self.z_std.copy_(z.std(0).clamp_min(1e-6) if len(z) > 1 else torch.ones_like(z[0]))
        for i, (spec, y) in enumerate(zip(self.specs, targets)):
            mean, scale = y.mean(0), torch.empty(spec.n_params)
            for _, _, sl in _spans(spec):
                scale[sl] = (y[:, sl] - mean[sl]).pow(2).mean().sqrt().clamp_min(1e-6)
            getattr(self, f"mean_{i}").copy_(mean)
            getattr(self, f"scale_{i}").copy_(scale)

    def remember(self, zs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        """Keep each head's training models (embeddings, flat aligned weights): ``retrieve``'s library."""
        for i, (z, y) in enumerate(zip(zs, ys)):
            getattr(self, f"memory_z_{i}").copy_(z)
            getattr(self, f"memory_y_{i}").copy_(y)

    def retrieve(self, z: Tensor, i: int) -> Tensor | None:
        """(n, n_params) aligned weights of the training model nearest to each row of ``z`` (cosine);
        None for a decoder saved without its training models."""
        library = getattr(self, f"memory_z_{i}", None)
        if library is None or not len(library):
            return None
        return getattr(self, f"memory_y_{i}")[nearest(z.float(), library)]

    def flat(self, z: Tensor, i: int) -> Tensor:
        """(n, n_params) weights of head ``i``, differentiable."""
        return getattr(self, f"mean_{i}") + getattr(self, f"scale_{i}") * self.normalized(z, i)

    def function_loss(self, z: Tensor, x: Tensor, probs: Tensor, i: int, weights: Tensor | None = None) -> Tensor:
        """KL divergence from the originals' class probabilities ``probs`` (n, samples, classes) on the
        inputs ``x`` to the decoded models': what the decoded network computes, not how its weights look.
        ``weights`` (n, samples), rows summing to 1: how much each input counts for each model (None: alike)."""
        spec = self.specs[i]
        logp = forward(spec, unflatten(spec, self.flat(z, i)), x.reshape(len(x), *spec.input_shape)).log_softmax(-1)
        kl = (probs * (probs.clamp_min(1e-12).log() - logp)).sum(-1)
        return kl.mean() if weights is None else (kl * weights).sum(1).mean()

    def to_units(self, y: Tensor, i: int) -> Tensor:
        return (y - getattr(self, f"mean_{i}")) / getattr(self, f"scale_{i}")

    def loss(self, z: Tensor, y: Tensor, i: int) -> Tensor:
        """Layer-wise normalized MSE: the mean over tensors of each tensor's mean squared error in its units."""
        err = (self.normalized(z, i) - self.to_units(y, i)).pow(2)
        return torch.stack([err[:, sl].mean() for _, _, sl in _spans(self.specs[i])]).mean()

    def will_refine(self, spec: ArchSpec, fit: SketchFit | None) -> bool:
        """Whether ``decode`` with ``fit`` refines models of ``spec``: the sketch of its io-space can be read
        back, and validation chose refinement for its head (``refines``)."""
        return fit is not None and fit.reads(spec) and self.refines[self.index(spec)]

    def decode(self, z: Tensor, spec: ArchSpec, fit: SketchFit | None = None) -> list[Params]:
        """Weights of ``spec`` for each row of ``z`` (n, in_dim); with ``fit``, refined until they compute
        what the embeddings' function block says (``peace.learn.refine``), from the decoded weights and,
        where ``fit`` asks, from the training model each row retrieves too (the closer sketch kept); heads whose
        validation models lost accuracy to refinement (``refines``) are left as decoded."""
        i = self.index(spec)
        was = self.training
        self.eval()
        with torch.no_grad():
            flat = self.flat(z.float(), i)
        self.train(was)
        if self.will_refine(spec, fit):
            retrieved = self.retrieve(z, i) if fit.config.retrieve else None
            flat = fit.refine(self.specs[i], flat, z, getattr(self, f"scale_{i}"), retrieved)
        return models(spec, flat)


@dataclass
class Pairs:
    """One architecture's training (or validation) data: embeddings ``z`` (n, d), flat aligned weights
    ``y`` (n, n_params) and, for the functional term, the originals' class probabilities ``probs``
    (n, samples, classes) on the architecture's inputs ``x`` (samples, *input), with how much each input
    counts for each model (``weights``, (n, samples), rows summing to 1; None: every input alike)."""

    z: Tensor
    y: Tensor
    x: Tensor | None = None
    probs: Tensor | None = None
    weights: Tensor | None = None

    def loss(self, dec: WeightDecoder, i: int, rows: Tensor | slice = slice(None), noise: float = 0.0) -> Tensor:
        """Layer-wise normalized weight loss, plus ``function_weight`` times the functional term; with
        ``noise``, the embeddings jittered by that many of their standard deviations."""
        z = self.z[rows]
        if noise > 0:
            z = z + noise * dec.z_std * torch.randn_like(z)
        loss = dec.loss(z, self.y[rows], i)
        if dec.config.function_weight > 0 and self.x is not None:
            x, probs, k = self.x, self.probs[rows], dec.config.function_inputs
            w = None if self.weights is None else self.weights[rows]
            if 0 < k < len(x):  # an unbiased estimate of the term at k/len(x) of its cost (images, ResNets)
                pick = torch.randperm(len(x))[:k]
                x, probs = x[pick], probs[:, pick]
                w = None if w is None else w[:, pick] / w[:, pick].sum(1, keepdim=True).clamp_min(1e-12)
            loss = loss + dec.config.function_weight * dec.function_loss(z, x, probs, i, w)
        return loss


def _batches(n: int, size: int, g: torch.Generator) -> list[Tensor]:
    perm = torch.randperm(n, generator=g)
    return [perm[s:s + size] for s in range(0, n, size)]


def _val_loss(dec: WeightDecoder, val: Sequence[Pairs]) -> float:
    """What picks the epoch: the functional term where it is trained (the decoded model's function is
    what counts), otherwise the weight loss."""
    functional = dec.config.function_weight > 0 and all(p.x is not None for p in val)
    with torch.no_grad():
        losses = [(dec.function_loss(p.z, p.x, p.probs, i, p.weights) if functional else dec.loss(p.z, p.y, i)).item()
                  for i, p in enumerate(val) if len(p.z)]
    return float(np.mean(losses)) if losses else math.nan


def fit_decoder(specs: Sequence[ArchSpec], train: Sequence[Pairs], val: Sequence[Pairs],
                config: DecoderConfig = DecoderConfig(), progress: bool = False) -> tuple[WeightDecoder, list[dict]]:
    """Train a decoder on ``train[i]``, the data of architecture ``specs[i]``.

    Every step takes one minibatch of each architecture; the epoch with the lowest validation loss
    (``_val_loss``; the training loss where there is no validation data) is kept. Returns it and the history."""
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    dec = WeightDecoder(train[0].z.shape[1], specs, config, memory=[len(p.z) for p in train])
    dec.set_statistics(torch.cat([p.z for p in train]), [p.y for p in train])
    dec.remember([p.z for p in train], [p.y for p in train])
    opt = torch.optim.AdamW(dec.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_state, history, waited = math.inf, None, [], 0
    for epoch in tqdm(range(1, config.epochs + 1), desc="decoder", disable=not progress, leave=False):
        batches = [_batches(len(p.z), config.batch_size, g) for p in train]
        total = []
        for step in range(max(len(b) for b in batches)):
            opt.zero_grad()
            loss = torch.stack([p.loss(dec, i, b[step % len(b)], config.noise)
                                for i, (p, b) in enumerate(zip(train, batches))]).mean()
            loss.backward()
            opt.step()
            total.append(loss.item())
        v = _val_loss(dec, val)
        history.append({"epoch": epoch, "train_loss": float(np.mean(total)), "val_loss": v})
        score = v if math.isfinite(v) else history[-1]["train_loss"]
        if score < best - 1e-6:
            best, best_state, waited = score, copy.deepcopy(dec.state_dict()), 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    dec.load_state_dict(best_state)
    return dec, history


WEIGHTS, META = RunDir.DECODER  # the run directory's names for them


def save_decoder(dec: WeightDecoder, directory: str | Path, meta: dict) -> None:
    """Write the decoder's weights and description (``meta``: provenance, history) atomically."""
    directory = Path(directory)
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in dec.state_dict().items()}, str(tmp))
    write_json(directory / META, {
        **meta, "config": asdict(dec.config), "in_dim": int(dec.z_mean.shape[0]),
        "specs": [s.to_dict() for s in dec.specs],
        "memory": [len(getattr(dec, f"memory_z_{i}", ())) for i in range(len(dec.specs))], "refines": dec.refines,
        "weights_sha256": sha256_file(directory / WEIGHTS)})


def load_decoder(directory: str | Path) -> tuple[WeightDecoder, dict]:
    """The decoder saved in ``directory`` and its description; a clear error when missing or changed."""
    directory = Path(directory)
    weights, meta_path = directory / WEIGHTS, directory / META
    if not weights.is_file() or not meta_path.is_file():
        raise PeaceError(f"{directory} has no decoder ({WEIGHTS} / {META}); train one with "
                         f"`peace decoder --run {directory}`")
    try:
        meta = json.loads(meta_path.read_text())
        config, memory = DecoderConfig(**meta["config"]), [int(n) for n in meta.get("memory", ())]
        if not all(0 <= n <= config.max_models for n in memory):  # checked before allocating
            raise ValueError(f"training models kept {memory}, outside 0..max_models={config.max_models}")
        dec = WeightDecoder(int(meta["in_dim"]), [ArchSpec.from_dict(s) for s in meta["specs"]], config, memory)
        dec.refines = [bool(r) for r in meta.get("refines", dec.refines)]  # decoders saved before the choice: all
        if len(dec.refines) != len(dec.specs):
            raise ValueError(f"{len(dec.refines)} refinement choices for {len(dec.specs)} heads")
    except (ValueError, KeyError, TypeError) as e:
        raise PeaceError(f"{meta_path} is corrupted ({e}); retrain with `peace decoder --run {directory}`") from None
    if sha256_file(weights) != meta.get("weights_sha256"):
        raise PeaceError(f"{weights} does not match the checksum in {meta_path}; retrain with "
                         f"`peace decoder --run {directory}`")
    try:
        dec.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise PeaceError(f"{weights} does not fit the description in {meta_path} ({str(e).splitlines()[0]}); "
                         f"retrain with `peace decoder --run {directory}`") from None
    dec.eval()
    return dec, meta
