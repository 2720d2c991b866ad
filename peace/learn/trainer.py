"""Contrastive training of the PEACE encoder on a zoo: the loop, in named steps.

``fit`` splits the zoo, builds (or resumes) the encoder, then per epoch draws batches of anchors,
positive partners, hard negatives and relabelled copies, computes InfoNCE plus the auxiliary
metric loss, validates and saves. The run directory's files belong to ``peace.learn.run``; the config
to ``peace.learn.runconfig``; several processes to ``peace.learn.distributed``.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from peace.core.device import resolve_device
from peace.core.errors import PeaceError, unknown
from peace.core.rng import model_seed
from peace.evaluate.baselines import Models
from peace.evaluate.metrics import retrieval_map
from peace.learn.autoencoder import Reconstruction
from peace.learn.contrastive import (
    Kinship,
    PairSampler,
    augment,
    build_views,
    functional_neighbours,
    functional_targets,
    info_nce,
    task_targets,
)
from peace.learn.distributed import current, first_rank_first, gather_rows, with_own_rows
from peace.learn.encoder import Embedder
from peace.learn.inversion import inverted_probes
from peace.learn.probegen import learn_probes
from peace.learn.run import RunDir, TrainResult, build_encoder
from peace.learn.runconfig import RunConfig
from peace.nets.architectures import ArchSpec
from peace.nets.probes import agreement_matrix, io_space
from peace.nets.renaming import relabel_classes, renaming
from peace.zoo.splits import split_zoo
from peace.zoo.store import Zoo, usable

__all__ = ["DERIVED_TARGETS", "check_fits", "fit"]

DERIVED_TARGETS = {"progress": lambda r: r["epoch"] / r["epochs"].clip(lower=1)}  # share of its training run done


def _targets(rows: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The auxiliary head's targets: manifest columns, or ``progress`` (epoch / epochs of its run)."""
    rows = rows.assign(**{n: f(rows) for n, f in DERIVED_TARGETS.items() if n in names and n not in rows.columns})
    missing = [n for n in names if n not in rows.columns]
    if missing:
        valid = [c for c in rows.columns if rows[c].dtype.kind == "f"] + list(DERIVED_TARGETS)
        raise unknown("auxiliary target column", missing[0], valid)
    return rows[names].to_numpy(np.float32)


@dataclass
class _Data:
    """What a run trains and validates on."""

    rows: pd.DataFrame       # every ok model, with its split
    splits: pd.DataFrame     # as written to splits.parquet
    train: pd.DataFrame
    val: pd.DataFrame
    label: str               # the validation relevance column: task or lineage_id
    relevance: str
    held: list[str]          # held-out tasks
    specs: dict | None = None
    weights: dict | None = None


def _split(zoo: Zoo, cfg: RunConfig) -> _Data:
    m = zoo.manifest.reset_index(drop=True)
    rows = m[usable(m)].reset_index(drop=True)
    if rows.empty:
        raise PeaceError(f"zoo {zoo.path} has no usable models (status 'ok' or 'sampled')")
    return _split_rows(rows, cfg)


def check_fits(rows: pd.DataFrame, cfg: RunConfig) -> None:
    """Refuse ``cfg`` where its splits of ``rows`` (a zoo's manifest, or ``peace.zoo.recipe.planned_models``
    before the zoo is built) are too small to train or validate on: the trainer's own check, run early."""
    _split_rows(rows[usable(rows)].reset_index(drop=True), copy.deepcopy(cfg))


def _split_rows(rows: pd.DataFrame, cfg: RunConfig) -> _Data:
    """Train / val / test by lineage with held-out tasks; the saved config then names them. Refuses
    splits too small to train or validate on."""
    tc = cfg.train
    relevance = tc.val_relevance if tc.val_relevance != "auto" else ("task" if rows["task"].nunique() > 1 else "lineage")
    label = "task" if relevance == "task" else "lineage_id"
    splits = split_zoo(rows, tc.val_fraction, tc.test_fraction, tc.holdout_tasks, cfg.seed,
                       min_train_tasks=2 if relevance == "task" else 1, val_holdout=tc.val_holdout_tasks)
    held = sorted(rows.loc[splits.heldout_task.to_numpy(), "task"].unique())
    cfg.train.holdout_tasks = held  # resolved, so the saved config says which
    if tc.val_holdout_tasks:
        cfg.train.val_holdout_tasks = sorted(rows.loc[splits.val_heldout_task.to_numpy(), "task"].unique())
    rows = rows.assign(split=splits["split"].to_numpy())
    train, val = rows[rows.split == "train"].reset_index(drop=True), rows[rows.split == "val"].reset_index(drop=True)
    if train["task"].nunique() < 2:  # one training task: every view would share it, nothing to tell apart
        cfg.train.task_weight = 0.0  # resolved, so the saved config says so
    if tc.max_val_models is not None and len(val) > tc.max_val_models:  # whole lineages, so relevance stays intact
        lineages = np.random.default_rng([cfg.seed, 1]).permutation(val["lineage_id"].unique())
        sizes = val["lineage_id"].value_counts()[lineages].to_numpy()
        keep = lineages[:max(2, int(np.searchsorted(np.cumsum(sizes), tc.max_val_models, side="right")))]
        val = val[val["lineage_id"].isin(keep)].reset_index(drop=True)
    if len(train) < tc.batch_size:
        raise PeaceError(f"the training split has {len(train)} models but train.batch_size is {tc.batch_size}; "
                         f"lower it (e.g. --set train.batch_size={max(2, len(train) // 2)}) or build a larger zoo")
    if val[label].nunique() < 2 or val[label].value_counts().max() < 2:
        alone = relevance == "lineage" and rows[label].is_unique  # models added one by one (`peace zoo add`)
        fix = ("Every model of this zoo is a lineage of its own (models added by `peace zoo add` are): validation "
               "by lineage needs checkpoints of one run. Train on a zoo whose models have tasks PEACE knows "
               "(`peace zoo add --task NAME`, several tasks) or on a built zoo, and embed this one with that run "
               "(`peace embed --zoo Z --run R`)" if alone else
               "Raise train.val_fraction or build a zoo with more runs per task")
        raise PeaceError(f"the validation split has {len(val)} models in {val[label].nunique()} {relevance} group(s); "
                         f"same-{relevance} mAP needs 2 or more groups and one with 2 or more models. {fix}")
    return _Data(rows, splits, train, val, label, relevance, held)


def _new_encoder(cfg: RunConfig, data: _Data, dev: torch.device, progress: bool,
                 learn: bool = True) -> tuple[Embedder, Tensor]:
    """The encoder, seeded, standardized on up to 1,000 training models, its auxiliary targets
    normalized, its probes learned or inverted (``encoder.probe_source``; not when ``learn`` is false: a
    checkpoint will load them); returns it (on ``dev``) and the training models' targets."""
    torch.manual_seed(cfg.seed)
    if dev.type != "cpu" and cfg.encoder.backend == "auto":
        cfg.encoder.backend = "torch"
    encoder = build_encoder(cfg.encoder)
    train, specs, weights = data.train, data.specs, data.weights
    sample = np.random.default_rng(cfg.seed).choice(len(train), size=min(len(train), 1000), replace=False)
    encoder.fit_standardization([specs[m] for m in train.model_id[sample]], [weights[m] for m in train.model_id[sample]])
    if cfg.encoder.probe_source != "gaussian" and learn:  # the bank is fixed before training
        ids = list(train.model_id)
        models = Models(train.reset_index(drop=True), [specs[m] for m in ids], [weights[m] for m in ids])
        encoder.probe_bank.set(
            learn_probes(models, cfg.encoder.probes, cfg.train.probe_steps, cfg.seed, progress)
            if cfg.encoder.probe_source == "learned" else
            inverted_probes(models.specs, models.params, list(models.rows["task"]), cfg.encoder.probes))
    tgt = _targets(train, cfg.encoder.aux_targets)
    with warnings.catch_warnings():  # a target no model records (models added without a task): 0 and 1, untrained
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(tgt, 0), np.nanstd(tgt, 0)
    encoder.aux_mean.copy_(torch.from_numpy(np.nan_to_num(mean, nan=0.0)))
    encoder.aux_std.copy_(torch.from_numpy(np.nan_to_num(std, nan=1.0)).clamp_min(1e-6))
    return encoder.to(dev), torch.tensor(tgt)


def _reconstruction(cfg: RunConfig, data: _Data, processes: int) -> Reconstruction | None:
    """E.D's reconstruction term (``train.reconstruction > 0``), or None."""
    if not cfg.train.reconstruction:
        return None
    if processes > 1:
        raise PeaceError("train.reconstruction trains its decoder in one process only; run without --nproc "
                         "(or with --set train.reconstruction=0)")
    return Reconstruction(list(data.train.model_id), data.specs, data.weights, cfg.encoder.embedding_dim, cfg.seed)


def _optimizer(encoder: Embedder, rec: Reconstruction | None, cfg: RunConfig,
               dev: torch.device) -> tuple[list[Tensor], torch.optim.Optimizer, torch.nn.Module]:
    """What trains (the encoder's parameters, and E.D's decoder's), its optimizer, and the module that
    encodes batches (the encoder, wrapped for data parallelism across processes)."""
    params = list(encoder.parameters()) + (list(rec.decoder.to(dev).parameters()) if rec else [])
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model = encoder if current().size == 1 else torch.nn.parallel.DistributedDataParallel(
        encoder, device_ids=[dev.index] if dev.type == "cuda" else None)
    return params, opt, model


def _resume(run: RunDir, encoder: Embedder, opt: torch.optim.Optimizer,
            rec: Reconstruction | None) -> tuple[list[dict], float, int, int]:
    """History, best validation mAP, epochs without improvement and the next epoch (fresh: [], -inf, 0, 1)."""
    ckpt = run.read_checkpoint()
    if ckpt is None:
        return [], -math.inf, 0, 1
    saved = ckpt["model"].get("node_in.weight")
    if saved is not None and saved.shape != encoder.state_dict()["node_in.weight"].shape:
        raise PeaceError(f"{run / run.CHECKPOINT} was written by an older PEACE (encoder format 1, before LayerNorm "
                         f"node features); finish that run with the PEACE that started it, or train it again "
                         f"without --resume")
    encoder.load_state_dict(ckpt["model"])
    if rec is not None:
        rec.restore(ckpt)
    opt.load_state_dict(ckpt["optimizer"])
    return ckpt["history"], ckpt["best"], ckpt["bad_epochs"], ckpt["epoch"] + 1


@dataclass
class _Batch:
    """One step's models: anchors, their partners, hard negatives and relabelled copies, in that order."""

    anchors: list[str]
    negatives: list[str]
    relabelled: list[str]
    specs: list[ArchSpec]
    params: list[dict[str, Tensor]]
    tasks: list[str | None]  # per view: the task its weights were trained on (None: relabelled, another function)


def _draw_batch(anchors: list[str], data: _Data, sampler: PairSampler, views: dict, cfg: RunConfig,
                erng: np.random.Generator, tag: str) -> _Batch:
    """Each model augmented by its own seed (anchor u, partner v, negative n, relabelled r)."""
    specs, weights, aug = data.specs, data.weights, cfg.augment
    partners = [sampler.partner(m, erng) for m in anchors]
    negs = sampler.hard_negatives(anchors, erng)
    b = _Batch(anchors, negs, [], [], [], [])
    # renamed pairs: anchor and partner with the classes of the anchor's task in one order, drawn per task and batch
    renamed = set(erng.choice(anchors, int(round(aug.renamed * len(anchors))), replace=False)) if aug.renamed else set()
    orders: dict[str, np.ndarray] = {}
    for m in sorted(renamed):  # one order per task: the last drawn for it
        orders[sampler.task(m)] = renaming(specs[m].n_classes, erng)

    def add(spec_of: str, params: dict[str, Tensor], m: str, kind: str) -> None:
        task = None if kind == "r" else sampler.task(spec_of)
        if m in renamed and kind in ("u", "v"):
            order = orders[sampler.task(m)]
            params, task = relabel_classes(specs[spec_of], params, erng, order), f"{task} renamed {order.tolist()}"
        b.tasks.append(task)
        b.specs.append(specs[spec_of])
        b.params.append(augment(specs[spec_of], params, model_seed(cfg.seed, m, tag + kind), aug))

    for m in anchors:
        add(m, weights[m], m, "u")
    for m, (source, p) in zip(anchors, partners):
        add(p, views[m][source] if source in ("pruned", "distilled") else weights[p], m, "v")
    for m in negs:
        add(m, weights[m], m, "n")
    if aug.relabelled:
        b.relabelled = list(erng.choice(anchors, min(aug.relabelled, len(anchors)), replace=False))
    for m in b.relabelled:
        add(m, relabel_classes(specs[m], weights[m], erng), m, "r")
    return b


def _losses(model: torch.nn.Module, encoder: Embedder, b: _Batch, cfg: RunConfig, kin: Kinship, aux_t: dict,
            dev: torch.device, rec: Reconstruction | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, InfoNCE, auxiliary MSE, reconstruction error) of one batch; this process encodes its share of it."""
    tc, B = cfg.train, len(b.anchors)
    soft = tc.functional_weight > 0 or tc.task_weight > 0  # graded by function (and task) instead of masking relatives
    need_responses = cfg.encoder.function_tokens or cfg.encoder.function_block or soft
    resp = encoder.responses(b.specs, b.params) if need_responses else None
    own = current().share(len(b.specs))
    batch = encoder.batch(b.specs[own], b.params[own], dev, responses=None if resp is None else resp[own])
    amp = dev.type == "cuda" and tc.amp
    with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
        res = model(batch)
    proj, aux_pred = with_own_rows(res["projection"].float()), with_own_rows(res["aux"].float())
    extra = proj[2 * B:] if len(b.specs) > 2 * B else None
    if soft:
        spaces = np.array([io_space(s) for s in b.specs])
        agree = torch.from_numpy(agreement_matrix(resp[:2 * B], spaces[:2 * B], resp, spaces))
        targets = functional_targets(agree, torch.from_numpy(spaces[:2 * B, None] == spaces[None, :]),
                                     tc.functional_weight, tc.functional_temperature)
        if tc.task_weight:
            tasks, known = np.array(b.tasks, dtype=object), np.array([t is not None for t in b.tasks])
            same_task = (tasks[:2 * B, None] == tasks[None, :]) & known[None, :]
            targets = task_targets(targets, torch.from_numpy(same_task), tc.task_weight)
        nce = info_nce(proj[:B], proj[B:2 * B], tc.temperature, extra=extra, targets=targets.to(dev))
    else:
        same = torch.from_numpy(kin.related(b.anchors, b.anchors))
        extra_same = torch.from_numpy(np.concatenate(  # relabelled copies are other functions: negatives
            [kin.related(b.anchors, b.negatives), np.zeros((B, len(b.relabelled)), bool)], 1)) if extra is not None else None
        nce = info_nce(proj[:B], proj[B:2 * B], tc.temperature, same, extra, extra_same)
    y = (torch.stack([aux_t[m] for m in b.anchors]).to(dev) - encoder.aux_mean) / encoder.aux_std
    known = torch.isfinite(y)  # a model with no recorded accuracy (added without a task) teaches the head nothing
    if bool(known.all()):
        aux = torch.nn.functional.mse_loss(aux_pred[:B], y)
    elif bool(known.any()):
        aux = torch.nn.functional.mse_loss(aux_pred[:B][known], y[known])
    else:
        aux = aux_pred.sum() * 0
    recon = rec.loss(with_own_rows(res["learned"].float())[:B], b.anchors) if rec is not None else torch.zeros((), device=dev)
    return nce + tc.aux_weight * aux + tc.reconstruction * recon, nce, aux, recon


@torch.no_grad()
def _validate(encoder: Embedder, data: _Data, dev: torch.device) -> dict:
    """Same-task (or same-lineage) mAP of the validation models; each process embeds its share."""
    ids = list(data.val.model_id[current().share(len(data.val))])
    emb = gather_rows(encoder.embed([data.specs[m] for m in ids], [data.weights[m] for m in ids]).to(dev)).cpu()
    return {"val_map": retrieval_map(emb.numpy(), data.val[data.label].to_numpy())}


def _sampler(data: _Data, cfg: RunConfig, run: RunDir, encoder: Embedder, progress: bool) -> tuple[PairSampler, dict]:
    """Positive views (cached in the run; rank 0 writes them) and the partner sampler."""
    train = data.train
    with first_rank_first():
        views = build_views(train, data.weights, cfg.augment, cfg.seed, cache_dir=run / run.VIEWS, progress=progress)
    neighbours = None
    if cfg.augment.functional:
        specs = [data.specs[m] for m in train.model_id]
        answers = encoder.responses(specs, [data.weights[m] for m in train.model_id])
        neighbours = functional_neighbours(train, answers, [io_space(s) for s in specs], cfg.augment.functional_k)
    return PairSampler(train, cfg.augment, views, neighbours), views


def _device(device: str, cfg: RunConfig) -> torch.device:
    dev = resolve_device(device)
    rank = current()
    if dev.type == "cuda" and rank.size > 1:  # one GPU per process
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank.rank)))
    if dev.type != "cpu" and cfg.encoder.backend == "dgl":
        raise PeaceError("the DGL backend runs on CPU only; use encoder.backend=torch (or auto) with a GPU")
    return dev


def fit(zoo: Zoo | str | Path, config: RunConfig, out: str | Path, device: str = "cpu", resume: bool = False,
        progress: bool = True) -> TrainResult:
    """Train an encoder on ``zoo`` into run directory ``out`` (``peace.learn.run``). Inside a process
    group (``peace.learn.distributed``) each process encodes its share of every batch and only rank 0 writes."""
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    run, cfg, tc, rank = RunDir(out), config, config.train, current()
    progress = progress and rank.main
    dev = _device(device, cfg)
    data = _split(zoo, cfg)
    if rank.main:
        run.prepare(cfg, zoo.info["manifest_sha256"], resume)
        if not resume:
            run.start(cfg, data.splits, {"zoo": str(zoo.path.resolve()), "zoo_manifest_sha256": zoo.info["manifest_sha256"],
                                         "device": str(dev), "torch": torch.__version__})
    ids = list(data.train.model_id) + list(data.val.model_id)
    data.specs, data.weights = {m: zoo.spec(m) for m in ids}, dict(zip(ids, zoo.load_many(ids)))
    encoder, tgt = _new_encoder(cfg, data, dev, progress, learn=not (resume and (run / run.CHECKPOINT).exists()))
    rec = _reconstruction(cfg, data, rank.size)
    params, opt, model = _optimizer(encoder, rec, cfg, dev)
    history, best, bad, start_epoch = _resume(run, encoder, opt, rec) if resume else ([], -math.inf, 0, 1)
    sampler, views = _sampler(data, cfg, run, encoder, progress)
    kin, aux_t = Kinship(data.rows), dict(zip(data.train.model_id, tgt))
    n_steps = min(len(data.train), tc.max_models_per_epoch or len(data.train)) // tc.batch_size
    meta = {"zoo": str(zoo.path.resolve()), "zoo_manifest_sha256": zoo.info["manifest_sha256"], "holdout_tasks": data.held,
            "val_relevance": data.relevance, "n_train": len(data.train), "n_val": len(data.val)}
    bar = tqdm(range(start_epoch, tc.epochs + 1), desc="train encoder", disable=not progress, initial=start_epoch - 1,
               total=tc.epochs)
    for epoch in ([] if (stopped := bad >= tc.patience) else bar):
        t0 = time.perf_counter()
        erng = np.random.default_rng([cfg.seed, epoch])
        order = erng.permutation(data.train.model_id.to_numpy())[:n_steps * tc.batch_size]
        encoder.train()
        sums = np.zeros(4)
        for step in tqdm(range(n_steps), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress):
            b = _draw_batch(list(order[step * tc.batch_size:(step + 1) * tc.batch_size]), data, sampler, views, cfg,
                            erng, f"{epoch}/{step}")
            losses = _losses(model, encoder, b, cfg, kin, aux_t, dev, rec)
            opt.zero_grad(set_to_none=True)
            (losses[0] * rank.size).backward()  # DDP averages: the ranks' shares then sum to the batch's gradient
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            sums += [v.item() / n_steps for v in losses]
        row = {"epoch": epoch, "train_loss": float(sums[0]), "train_nce": float(sums[1]), "train_aux": float(sums[2]),
               **({"train_reconstruction": float(sums[3])} if rec else {}),
               **_validate(encoder, data, dev), "seconds": time.perf_counter() - t0}
        improved = row["val_map"] > best
        best, bad = (row["val_map"], 0) if improved else (best, bad + 1)
        history.append(row | {"best": improved})
        if rank.main:
            run.save_epoch(encoder, opt, cfg, meta, history, improved, best, bad, rec.checkpoint() if rec else None)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_map=f"{row['val_map']:.3f}")
        if bad >= tc.patience:
            stopped = True
            break
    bar.close()
    hist = pd.DataFrame(history)
    if rank.main:
        run.finish(hist, stopped, rank.size)
    best_row = hist.loc[hist["val_map"].idxmax()]
    return TrainResult(run.path, hist, int(best_row.epoch), float(best_row.val_map), stopped, data.relevance)
