"""Contrastive learning on weights: positive views of a model, hard negatives, InfoNCE.

Two views of one model are a positive pair. The partner view comes from one of several sources
(each switchable for ablations): the model itself, a magnitude-pruned then fine-tuned copy, a
distilled student, a model of the same configuration trained from another seed, a neighbouring
checkpoint of the same run, or a *functional* partner: a model of another run that predicts the
same classes on shared probe inputs (``peace.nets.probes``; no task label is read). Both views then get the online augmentations: a random
function-preserving symmetry (permutation, scaling, sign flip), Gaussian weight noise and random
erasing. Pruned and distilled views need training, so they are made once per training zoo with the
population trainer (:func:`build_views`) and cached.

The loss is InfoNCE; with functional targets (:func:`functional_targets`) the one-hot positive is
mixed with a distribution over the batch graded by prediction agreement, so models that compute
nearly the same function are pulled together whatever their configuration; with the task term
(:func:`task_targets`) a share of it goes to the batch's models trained on the anchor's task: the
only place where training reads task labels, those of the training split's tasks.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from peace.core.atomic import atomic_path
from peace.core.errors import PeaceError
from peace.core.rng import model_seed
from peace.nets.architectures import ArchSpec, forward, is_buffer, stack_params, unstack_params
from peace.nets.probes import fingerprint
from peace.nets.symmetry import RandomSymmetry, allowed, random_symmetry
from peace.zoo.population import HParams, Schedule, train_population
from peace.zoo.tasks import is_task, load_task

__all__ = [
    "CONFIG_COLUMNS", "SOURCES", "AugmentConfig", "Kinship", "PairSampler", "augment", "build_views", "config_key",
    "functional_neighbours", "functional_targets", "info_nce", "magnitude_prune", "nce_logits", "task_targets"
]

SOURCES = ("self", "pruned", "distilled", "same_config", "checkpoint", "functional")
CONFIG_COLUMNS = ("group", "task", "arch_spec", "init", "lr", "weight_decay", "dropout", "optimizer",
                  "batch_size", "epochs")


@dataclass
class AugmentConfig:
    """Which positive views and augmentations training uses (each one switchable for ablations)."""

    permute: bool = True          # random hidden-unit permutation
    scale: bool = True            # random positive scaling (relu family only)
    flip: bool = True             # random sign flips (odd activations only)
    noise: float = 0.02           # Gaussian weight noise, std relative to each tensor's std; 0 = off
    erase: float = 0.05           # fraction of weights zeroed at random; 0 = off
    pruned: bool = True           # partner: magnitude-pruned, then fine-tuned copy
    prune_fraction: float = 0.3
    prune_epochs: int = 1
    distilled: bool = True        # partner: same-architecture student trained on the model's predictions
    distill_epochs: int = 10
    distill_batch_size: int = 128  # students see the teacher's labels in larger batches: fewer steps
    same_config: bool = True      # partner: same configuration and epoch, another seed
    checkpoint: bool = True       # partner: neighbouring checkpoint of the same run
    functional: bool = False      # partner: one of the functional_k models of other runs that agree most with it
    functional_k: int = 8
    hard_negatives: int = 8       # per batch: same architecture / other task, and same task / far accuracy
    relabelled: int = 0           # per batch: anchors whose classes are permuted (same weights, another function)
    renamed: float = 0.0          # share of anchors whose pair is a renamed task's (classes permuted, one order per
                                  # task and batch): a task of its own for the task term, more tasks than the zoo's

    def __post_init__(self) -> None:
        if not (0 <= self.noise and 0 <= self.erase < 1 and 0 < self.prune_fraction < 1):
            raise PeaceError(f"need noise >= 0, 0 <= erase < 1, 0 < prune_fraction < 1; got noise={self.noise}, "
                             f"erase={self.erase}, prune_fraction={self.prune_fraction}")
        if min(self.prune_epochs, self.distill_epochs, self.distill_batch_size, self.functional_k) < 1 \
                or min(self.hard_negatives, self.relabelled) < 0 or not 0 <= self.renamed <= 1:
            raise PeaceError("prune_epochs, distill_epochs, distill_batch_size and functional_k must be >= 1, "
                             "hard_negatives and relabelled >= 0, renamed in [0, 1]")

    @property
    def sources(self) -> list[str]:
        return ["self"] + [s for s in SOURCES[1:] if getattr(self, s)]


# --- online augmentations -----------------------------------------------------------------------

def augment(spec: ArchSpec, params: dict[str, Tensor], seed: int, cfg: AugmentConfig) -> dict[str, Tensor]:
    """A random view of one model: symmetry transform (function-preserving), then noise and erasing."""
    ok = allowed(spec)
    kind = RandomSymmetry(permute=cfg.permute, scale=cfg.scale and ok["scale"], flip=cfg.flip and ok["flip"])
    out = random_symmetry(spec, params, seed, kind) if (kind.permute or kind.scale or kind.flip) else dict(params)
    if not (cfg.noise or cfg.erase):
        return out
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    weight_names = {layer.weight_name for layer in spec.layers}
    for name in sorted(out):  # a fixed order: the draws must not depend on how the dict was built
        if is_buffer(name):
            continue
        v = out[name]
        if cfg.noise:
            std = v.std() if v.numel() > 1 else v.abs().mean()
            v = v + cfg.noise * std * torch.randn(v.shape, generator=g)
        if cfg.erase and name in weight_names:
            v = v * (torch.rand(v.shape, generator=g) >= cfg.erase)
        out[name] = v
    return out


# --- offline views: pruned + fine-tuned, distilled ----------------------------------------------

def magnitude_prune(spec: ArchSpec, params: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
    """Zero the ``fraction`` smallest-magnitude weights of each model (population tensors; biases kept)."""
    names = [layer.weight_name for layer in spec.layers]
    P = params[names[0]].shape[0]
    flat = torch.cat([params[n].reshape(P, -1).abs() for n in names], 1)
    k = max(1, int(round(fraction * flat.shape[1])))
    thresh = flat.kthvalue(k, dim=1).values
    out = dict(params)
    for n in names:
        w = params[n]
        out[n] = w * (w.abs() > thresh.reshape(-1, *[1] * (w.dim() - 1)))
    return out


def _view_groups(rows: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    return dict(tuple(rows.groupby(["arch_spec", "task", "optimizer", "batch_size"], sort=True)))


def _make_views(spec: ArchSpec, rows: pd.DataFrame, weights: dict[str, Tensor], cfg: AugmentConfig,
                seed: int) -> dict[str, Tensor]:
    """Pruned and distilled views of one group of same-architecture models on one task (flat dict)."""
    task = load_task(rows["task"].iloc[0])
    ids = list(rows["model_id"])
    batch_size, optimizer = int(rows["batch_size"].iloc[0]), rows["optimizer"].iloc[0]
    hp = lambda salt: [HParams(seed=model_seed(seed, m, salt), init=r.init, lr=float(r.lr),
                               weight_decay=float(r.weight_decay)) for m, r in zip(ids, rows.itertuples())]
    results: dict[str, dict[str, Tensor]] = {}
    if cfg.pruned:
        start = magnitude_prune(spec, weights, cfg.prune_fraction)
        res = train_population(task, spec, hp("prune"), Schedule(cfg.prune_epochs, batch_size, optimizer),
                               start=start, metrics=False)
        results["pruned"] = res.checkpoints[cfg.prune_epochs]
    if cfg.distilled:
        X = torch.from_numpy(task.X_train).reshape(-1, *spec.input_shape)
        with torch.no_grad():
            targets = forward(spec, weights, X).argmax(-1)
        res = train_population(task, spec, hp("distill"),
                               Schedule(cfg.distill_epochs, cfg.distill_batch_size, optimizer), targets=targets,
                               metrics=False)
        results["distilled"] = res.checkpoints[cfg.distill_epochs]
    flat = {}
    for kind, pop in results.items():
        for i, m in enumerate(ids):
            p = unstack_params(pop, i)
            if all(torch.isfinite(v).all() for v in p.values()):  # a diverged view is dropped, not used
                flat.update({f"{m}/{kind}/{k}": v.contiguous() for k, v in p.items()})
    return flat


def build_views(rows: pd.DataFrame, weights: dict[str, dict[str, Tensor]], cfg: AugmentConfig, seed: int,
                cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, dict[str, dict[str, Tensor]]]:
    """``views[model_id][kind]`` = weights, for kinds ``pruned`` / ``distilled`` enabled in ``cfg``.

    Models are trained in populations (same architecture, task, optimizer and batch size). With
    ``cache_dir`` each group is written atomically once and read back on later calls (resume).
    """
    views: dict[str, dict[str, dict[str, Tensor]]] = defaultdict(dict)
    if not (cfg.pruned or cfg.distilled):
        return views
    groups = _view_groups(rows)
    unheld = {key[1] for key in groups if not is_task(key[1])}
    if unheld:  # models of a zoo made elsewhere: their task's data is not here to fine-tune or distil on
        warnings.warn(f"pruned and distilled views need a task's training data, which PEACE does not hold for "
                      f"{', '.join(sorted(map(str, unheld)))}; those models train with the other views", stacklevel=2)
        groups = {key: g for key, g in groups.items() if key[1] not in unheld}
    for key, g in tqdm(groups.items(), desc="positive views", disable=not progress, leave=False):
        tag = json.dumps([key, list(g["model_id"]), cfg.pruned, cfg.prune_fraction, cfg.prune_epochs, cfg.distilled,
                          cfg.distill_epochs, seed], default=str)
        path = Path(cache_dir) / f"{hashlib.sha1(tag.encode()).hexdigest()[:16]}.safetensors" if cache_dir else None
        flat = None
        if path is not None and path.exists():
            try:
                flat = load_file(str(path))
            except (SafetensorError, OSError):  # a damaged cache file is rebuilt
                flat = None
        if flat is None:
            spec = ArchSpec.from_dict(json.loads(key[0]))
            flat = _make_views(spec, g, stack_params([weights[m] for m in g["model_id"]]), cfg, seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    save_file(flat, str(tmp))
        for name, v in flat.items():
            m, kind, param = name.split("/", 2)
            views[m].setdefault(kind, {})[param] = v
    return views


# --- positive partners and hard negatives -------------------------------------------------------

def config_key(manifest: pd.DataFrame) -> pd.Series:
    """One string per row naming its training configuration (everything but the seed and epoch). A model whose
    recipe the zoo does not know (one added by `peace zoo add`: no init, lr or optimizer) is a configuration of
    its own, never another model's same-configuration partner."""
    cols = [c for c in CONFIG_COLUMNS if c in manifest.columns]
    key = manifest[cols[0]].astype(str).fillna("")  # pandas 3 keeps a missing value missing through astype(str)
    for c in cols[1:]:  # column-wise string concatenation: row-wise joins take a minute on 76,000 rows
        key = key + "|" + manifest[c].astype(str).fillna("")
    recipe = [c for c in ("init", "lr", "optimizer") if c in manifest.columns]
    if recipe and "run_id" in manifest.columns:
        unknown = manifest[recipe].isna().any(axis=1)
        key = key.where(~unknown, "run " + manifest["run_id"].astype(str))
    return key


class Kinship:
    """Which models are relatives (possible positives of each other), so that InfoNCE does not push
    them apart as negatives: the same run (its checkpoints), or the same configuration at the same
    epoch (other seeds)."""

    def __init__(self, rows: pd.DataFrame):
        ids = rows["model_id"].to_numpy()
        self.run = dict(zip(ids, rows["run_id"]))
        self.cfg_epoch = dict(zip(ids, config_key(rows.set_index("model_id")).to_numpy() + "@"
                                  + rows["epoch"].astype(str).to_numpy()))

    def related(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """(len(a), len(b)) bool matrix."""
        run_a, run_b = np.array([self.run[m] for m in a]), np.array([self.run[m] for m in b])
        ce_a, ce_b = np.array([self.cfg_epoch[m] for m in a]), np.array([self.cfg_epoch[m] for m in b])
        return (run_a[:, None] == run_b[None, :]) | (ce_a[:, None] == ce_b[None, :])


def functional_neighbours(rows: pd.DataFrame, responses: Sequence[Tensor], spaces: Sequence[str],
                          k: int, block: int = 1024) -> dict[str, list[str]]:
    """For each model of ``rows``, the ``k`` models of other runs in its io-space whose predictions on
    the shared probes agree most with its own (ties broken by row order). Computed ``block`` rows at a
    time: memory grows with block x models, not models^2 (a 76,000-checkpoint zoo needs ~0.3 GB)."""
    ids = rows["model_id"].to_numpy()
    run_codes = np.unique(rows["run_id"].to_numpy(), return_inverse=True)[1]
    sp = np.asarray(spaces)
    out: dict[str, list[str]] = {}
    for space in np.unique(sp):
        idx = np.flatnonzero(sp == space)
        n, n_probes = len(idx), responses[idx[0]].shape[0]
        f = fingerprint(torch.stack([responses[i] for i in idx]))
        run = torch.from_numpy(run_codes[idx])
        earlier_first = torch.arange(n - 1, -1, -1, dtype=torch.int64)  # among equal agreements
        for s in range(0, n, block):
            agree = torch.round(f[s:s + block] @ f.T * n_probes).to(torch.int64)  # probes predicted alike
            agree[run[s:s + block, None] == run[None, :]] = -1  # itself and its own checkpoints
            top = (agree * n + earlier_first).topk(min(k, n), dim=1).indices
            ok = agree.gather(1, top) >= 0
            for row in range(len(top)):
                out[ids[idx[s + row]]] = [ids[idx[j]] for j in top[row][ok[row]].tolist()]
    return out


class PairSampler:
    """Chooses each anchor's partner source and a batch's hard negatives from the training rows.
    ``neighbours`` (from :func:`functional_neighbours`) enables the functional source."""

    def __init__(self, rows: pd.DataFrame, cfg: AugmentConfig, views: dict[str, dict],
                 neighbours: dict[str, list[str]] | None = None):
        self.rows = rows.set_index("model_id", drop=False)
        self.cfg, self.views, self.neighbours = cfg, views, neighbours or {}
        key = config_key(self.rows)
        self._same: dict[str, list[str]] = defaultdict(list)
        self._group_of: dict[str, str] = {}  # a model's (configuration, epoch): what `_same` files it under
        for m, k, ep in zip(self.rows.model_id, key, self.rows.epoch):
            self._group_of[m] = f"{k}@{ep}"
            self._same[self._group_of[m]].append(m)
        self._runs = {r: list(g.sort_values("epoch").model_id) for r, g in self.rows.groupby("run_id")}
        self._run_of = dict(zip(self.rows.model_id, self.rows.run_id))
        self._by_arch = {a: list(g.model_id) for a, g in self.rows.groupby("arch")}
        self._task_of = dict(zip(self.rows.model_id, self.rows.task))
        self._arch_of = dict(zip(self.rows.model_id, self.rows.arch))
        self._acc_of = dict(zip(self.rows.model_id, self.rows.test_acc))
        self._pools: dict[tuple[str, str], list[str]] = {}
        self._task_acc = {}
        for t, g in self.rows.groupby("task"):
            g = g.sort_values("test_acc", kind="stable")
            self._task_acc[t] = (g.model_id.to_numpy(), g.test_acc.to_numpy())

    def task(self, m: str) -> str:
        """The task model ``m`` was trained on."""
        return self._task_of[m]

    def candidates(self, m: str) -> dict[str, list[str]]:
        """Available partners per source: model ids (self/same_config/checkpoint) or the anchor (views)."""
        run_id = self._run_of[m]  # dictionaries, not a row lookup: this runs for every anchor of every batch
        out: dict[str, list[str]] = {"self": [m]}
        for kind in ("pruned", "distilled"):
            if getattr(self.cfg, kind) and kind in self.views.get(m, {}):
                out[kind] = [m]
        if self.cfg.same_config:
            others = [o for o in self._same[self._group_of[m]] if self._run_of[o] != run_id]
            if others:
                out["same_config"] = others
        if self.cfg.checkpoint:
            run = self._runs[run_id]
            i = run.index(m)
            near = run[max(0, i - 1):i] + run[i + 1:i + 2]
            if near:
                out["checkpoint"] = near
        if self.cfg.functional and self.neighbours.get(m):
            out["functional"] = self.neighbours[m]
        return out

    def partner(self, m: str, rng: np.random.Generator) -> tuple[str, str]:
        """(source, model id) of a positive partner for anchor ``m``, the source drawn uniformly."""
        cands = self.candidates(m)
        source = list(cands)[rng.integers(len(cands))]
        options = cands[source]
        return source, options[rng.integers(len(options))]

    def hard_negatives(self, anchors: Sequence[str], rng: np.random.Generator) -> list[str]:
        """Alternately: a model of the same architecture trained on another task; a model of the same
        task whose test accuracy differs by at least 0.25."""
        out: list[str] = []
        n = self.cfg.hard_negatives
        for t in range(4 * n):
            if len(out) >= n or not len(anchors):
                break
            a = anchors[rng.integers(len(anchors))]
            task, acc_a = self._task_of[a], self._acc_of[a]
            if t % 2 == 0:
                pool = self._other_tasks(self._arch_of[a], task)
                if len(pool):
                    out.append(pool[rng.integers(len(pool))])
                continue
            ids, acc = self._task_acc[task]
            lo, hi = np.searchsorted(acc, acc_a - 0.25, "right"), np.searchsorted(acc, acc_a + 0.25, "left")
            n_far = lo + len(acc) - hi  # models at or below acc - 0.25, and at or above acc + 0.25
            if n_far:
                j = rng.integers(n_far)
                out.append(ids[j if j < lo else hi + j - lo])
        return out

    def _other_tasks(self, arch: str, task: str) -> list[str]:
        key = (arch, task)
        if key not in self._pools:
            self._pools[key] = [o for o in self._by_arch[arch] if self._task_of[o] != task]
        return self._pools[key]


# --- loss ---------------------------------------------------------------------------------------

def nce_logits(u: Tensor, v: Tensor, tau: float, same: Tensor | None = None, extra: Tensor | None = None,
               extra_same: Tensor | None = None) -> Tensor:
    """(2B, 2B + H) similarity logits of every view (rows: u then v) against every view and ``extra``
    row, -inf where a candidate is excluded: the view itself, and relatives marked by ``same`` (B, B)
    / ``extra_same`` (B, H). The positive of row i is column (i + B) mod 2B, never excluded."""
    B = u.shape[0]
    z = torch.cat([u, v])
    cand = z if extra is None else torch.cat([z, extra])
    logits = (z @ cand.T).float() / tau
    idx = torch.arange(2 * B, device=u.device)
    block = torch.zeros(B, B, dtype=torch.bool, device=u.device) if same is None else same.to(u.device)
    block = block & ~torch.eye(B, dtype=torch.bool, device=u.device)  # the positive stays
    excl = block.repeat(2, 2)
    excl[idx, idx] = True  # a view is not its own negative
    if extra is not None:
        es = torch.zeros(B, extra.shape[0], dtype=torch.bool, device=u.device) if extra_same is None else extra_same
        excl = torch.cat([excl, es.to(u.device).repeat(2, 1)], 1)
    return logits.masked_fill(excl, float("-inf"))


def info_nce(u: Tensor, v: Tensor, tau: float, same: Tensor | None = None, extra: Tensor | None = None,
             extra_same: Tensor | None = None, targets: Tensor | None = None) -> Tensor:
    """NT-Xent over 2B views: u_i and v_i are positives; every other view (and each ``extra`` row)
    is a negative unless ``same[i, j]`` (``extra_same[i, k]``) marks it as a relative of i.

    ``u``, ``v``: (B, d) unit rows; ``extra``: (H, d) unit rows; ``same``: (B, B) bool; ``extra_same``: (B, H) bool.
    ``targets`` (2B, 2B + H), rows summing to 1, replaces the one-hot positive by a distribution
    over candidates (soft InfoNCE; one-hot targets give exactly the plain loss).
    """
    B = u.shape[0]
    logits = nce_logits(u, v, tau, same, extra, extra_same)
    if targets is None:
        return F.cross_entropy(logits, (torch.arange(2 * B, device=u.device) + B) % (2 * B))
    logp = logits.log_softmax(1)
    return -torch.where(targets > 0, targets * logp, torch.zeros_like(logp)).sum(1).mean()


def functional_targets(agree: Tensor, same_space: Tensor, weight: float, temperature: float) -> Tensor:
    """Soft InfoNCE targets graded by function: row i mixes the one-hot positive (column
    (i + B) mod 2B) with weight 1 - ``weight`` and softmax(agreement / ``temperature``) over the
    candidates of its io-space (itself excluded) with weight ``weight``.

    ``agree``: (2B, 2B + H) prediction agreement of each view with each candidate on shared probes;
    ``same_space``: (2B, 2B + H) bool, candidates that share the view's io-space.
    """
    n = agree.shape[0]
    idx = torch.arange(n, device=agree.device)
    soft = (agree.float() / temperature).masked_fill(~_candidates(same_space), float("-inf")).softmax(1)
    onehot = torch.zeros_like(soft)
    onehot[idx, (idx + n // 2) % n] = 1.0
    return (1 - weight) * onehot + weight * soft


def _candidates(mask: Tensor) -> Tensor:
    """``mask`` (2B, 2B + H) without each view itself and with its positive (column (i + B) mod 2B) always in."""
    n = mask.shape[0]
    idx = torch.arange(n, device=mask.device)
    out = mask.clone()
    out[idx, idx] = False
    out[idx, (idx + n // 2) % n] = True
    return out


def task_targets(targets: Tensor, same_task: Tensor, weight: float) -> Tensor:
    """Soft targets with a share ``weight`` moved to the candidates trained on the view's task, evenly
    (supervised contrast on the training tasks' labels; the view itself excluded, its positive kept).

    ``targets``: (2B, 2B + H) rows summing to 1; ``same_task``: (2B, 2B + H) bool.
    """
    mask = _candidates(same_task).float()
    return (1 - weight) * targets + weight * mask / mask.sum(1, keepdim=True)
