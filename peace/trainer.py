"""Contrastive training of the PEACE encoder on a zoo: config, loop, checkpoints, resume, loading.

A run directory holds everything one training run wrote::

    config.yaml          the full, resolved config (held-out tasks included)
    splits.parquet       model_id -> train / val / test, heldout_task
    views/               cached pruned and distilled positive views (safetensors)
    checkpoint.pt        last epoch: weights, optimizer, history (read back with peace.torchfile, not torch.load)
    encoder.safetensors  best encoder weights (by validation same-task mAP)
    encoder.json         its config, standardization and provenance
    history.parquet      one row per epoch
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import __version__
from .atomic import atomic_path, sha256_file, write_json
from .config import apply_overrides, checked, read_yaml
from .contrastive import (
    AugmentConfig,
    Kinship,
    PairSampler,
    augment,
    build_views,
    functional_neighbours,
    functional_targets,
    info_nce,
    relabel_classes,
)
from .distributed import current, first_rank_first, gather_rows, with_own_rows
from .encoder import ENCODER_FORMAT, Embedder, EncoderConfig, build_encoder, upgrade_state
from .errors import PeaceError, unknown
from .metrics import retrieval_map
from .probes import agreement_matrix, io_space
from .probes import responses as probe_responses
from .rng import model_seed
from .splits import split_zoo
from .zoo import Zoo

CONFIG_DIR = Path(__file__).with_name("presets") / "encoder"
VAL_RELEVANCE = ("auto", "task", "lineage")


@dataclass
class TrainConfig:
    """The optimisation and data side of a run."""

    epochs: int = 20
    batch_size: int = 64          # anchors per step (2 views each, plus hard negatives)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1      # InfoNCE tau
    aux_weight: float = 1.0       # lambda for the auxiliary metric MSE; 0 switches it off
    patience: int = 4             # epochs without a better validation mAP before stopping
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    holdout_tasks: int | list[str] = 1   # how many tasks (or which) go entirely to test
    val_holdout_tasks: int | list[str] = 0  # ... and entirely to validation (early stopping rewards generalization)
    val_relevance: str = "auto"   # validation mAP relevance: task, lineage, or auto (task if >= 2 tasks)
    max_models_per_epoch: int | None = None  # subsample big zoos: each epoch sees this many anchors
    max_val_models: int | None = None  # big zoos: validate on whole lineages drawn up to about this many models
    grad_clip: float = 1.0
    amp: bool = True              # bfloat16 autocast on CUDA
    functional_weight: float = 0.0  # soft InfoNCE: share of the target graded by prediction agreement; 0 = plain
    functional_temperature: float = 0.05  # of the agreement softmax (agreements lie in [0, 1])

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise PeaceError(f"need epochs >= 1, batch_size >= 2, patience >= 1; got {self.epochs}, "
                             f"{self.batch_size}, {self.patience}")
        if not (self.temperature > 0 and self.lr > 0 and self.aux_weight >= 0 and self.functional_temperature > 0):
            raise PeaceError("temperature, functional_temperature and lr must be > 0 and aux_weight >= 0")
        if not 0 <= self.functional_weight <= 1:
            raise PeaceError(f"functional_weight must be in [0, 1], got {self.functional_weight}")
        if self.val_relevance not in VAL_RELEVANCE:
            raise unknown("val_relevance", self.val_relevance, VAL_RELEVANCE)
        if self.max_val_models is not None and self.max_val_models < 4:
            raise PeaceError(f"max_val_models must be at least 4 (or null for all), got {self.max_val_models}")
        if self.max_models_per_epoch is not None and self.max_models_per_epoch < self.batch_size:
            raise PeaceError(f"max_models_per_epoch ({self.max_models_per_epoch}) must be at least batch_size "
                             f"({self.batch_size})")


@dataclass
class RunConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run directory."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(d: dict) -> RunConfig:
    d = dict(d)
    for name, cls in (("encoder", EncoderConfig), ("augment", AugmentConfig), ("train", TrainConfig)):
        d[name] = checked(cls, d.get(name) or {}, name)
    return checked(RunConfig, d, "encoder training config")


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(config: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """A built-in config by name (``default``, ``tiny``), a YAML file, or the defaults; then overrides."""
    if config is None:
        d: dict = {}
    elif str(config) in config_names():
        d = read_yaml(CONFIG_DIR / f"{config}.yaml", "encoder config")
    elif Path(config).suffix in (".yaml", ".yml") or Path(config).exists():
        d = read_yaml(config, "encoder config")
    else:
        raise unknown("encoder config", str(config), config_names(), "Or pass the path of a YAML file.")
    return config_from_dict(apply_overrides(d, overrides or [], RunConfig))


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a device this machine lacks is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise unknown("device", device, ["auto", "cpu", "cuda", "cuda:N"]) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PeaceError(f"device {device!r} asked for but torch {torch.__version__} sees no CUDA GPU here; "
                         f"use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PeaceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise unknown("device", device, ["auto", "cpu", "cuda", "cuda:N"])
    return dev


# --- the run ------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    path: Path
    history: pd.DataFrame
    best_epoch: int
    best_val_map: float
    stopped_early: bool


def _check_zoo(zoo: Zoo, cfg: RunConfig) -> pd.DataFrame:
    m = zoo.manifest.reset_index(drop=True)
    ok = m[m["status"] == "ok"]
    if ok.empty:
        raise PeaceError(f"zoo {zoo.path} has no trained models with status 'ok'")
    return ok.reset_index(drop=True)


def _prepare_run_dir(out: Path, cfg: RunConfig, zoo: Zoo, resume: bool) -> None:
    saved = out / "config.yaml"
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise PeaceError(f"{out} is not empty; pass --resume to continue the run there, or choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        return
    if not saved.exists():
        raise PeaceError(f"nothing to resume in {out} (no config.yaml); start a new run without --resume")
    if yaml.safe_load(saved.read_text()) != json.loads(json.dumps(cfg.to_dict())):
        raise PeaceError(f"{out} was trained with a different config; resume needs the same one "
                         f"(see {saved}), or start a new --out")
    info = json.loads((out / "run.json").read_text())
    if info["zoo_manifest_sha256"] != zoo.info["manifest_sha256"]:
        raise PeaceError(f"{out} was trained on another zoo (manifest checksum differs); resume needs the same zoo")


def _load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    from .torchfile import read_torch_file

    try:
        return read_torch_file(path, max_bytes=path.stat().st_size)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: start that epoch again
        raise PeaceError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to restart "
                         f"the run from scratch") from None


def _save_encoder(out: Path, encoder: Embedder, cfg: RunConfig, meta: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(out / "encoder.safetensors") as tmp:
        save_file(state, str(tmp))
    # the checksum pairs the two files: a crash between the writes is detected, not misread
    write_json(out / "encoder.json", {"format_version": ENCODER_FORMAT, "peace_version": __version__, "config": cfg.to_dict(),
                                      "weights_sha256": sha256_file(out / "encoder.safetensors"), **meta})


def load_encoder(run_dir: str | Path, device: str = "cpu", backend: str | None = None) -> Embedder:
    """The best encoder of a finished (or running) training run, in eval mode."""
    run_dir = Path(run_dir)
    meta_path, weights = run_dir / "encoder.json", run_dir / "encoder.safetensors"
    if not (meta_path.exists() and weights.exists()):
        raise PeaceError(f"{run_dir} holds no trained encoder (encoder.json + encoder.safetensors); train one with "
                         f"`peace train --zoo ZOO --out {run_dir}`")
    meta = json.loads(meta_path.read_text())
    if meta.get("weights_sha256", sha256_file(weights)) != sha256_file(weights):
        raise PeaceError(f"{weights} and {meta_path} are from different epochs (training was interrupted while saving "
                         f"the best encoder); finish the run with `peace train ... --out {run_dir} --resume`")
    cfg = config_from_dict(meta["config"])
    if backend is not None:
        cfg.encoder.backend = backend
    elif torch.device(device).type != "cpu" and cfg.encoder.backend != "torch":
        cfg.encoder.backend = "torch"
    encoder = build_encoder(cfg.encoder)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise PeaceError(f"{weights} is damaged ({e}); retrain or restore it") from None
    encoder.load_state_dict(upgrade_state(state, int(meta.get("format_version", 1))))
    encoder.meta = meta
    return encoder.to(resolve_device(device)).eval()


DERIVED_TARGETS = {"progress": lambda r: r["epoch"] / r["epochs"].clip(lower=1)}  # share of its training run done


def _targets(rows: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The auxiliary head's targets: manifest columns, or ``progress`` (epoch / epochs of its run)."""
    rows = rows.assign(**{n: f(rows) for n, f in DERIVED_TARGETS.items() if n in names and n not in rows.columns})
    missing = [n for n in names if n not in rows.columns]
    if missing:
        valid = [c for c in rows.columns if rows[c].dtype.kind == "f"] + list(DERIVED_TARGETS)
        raise unknown("auxiliary target column", missing[0], valid)
    return rows[names].to_numpy(np.float32)


@torch.no_grad()
def _validate(encoder: Embedder, val: pd.DataFrame, specs: dict, weights: dict, label: str, dev: torch.device) -> dict:
    ids = list(val.model_id[current().share(len(val))])  # each process embeds its share
    emb = gather_rows(encoder.embed([specs[m] for m in ids], [weights[m] for m in ids]).to(dev)).cpu()
    return {"val_map": retrieval_map(emb.numpy(), val[label].to_numpy())}


def fit(zoo: Zoo | str | Path, config: RunConfig, out: str | Path, device: str = "cpu", resume: bool = False,
        progress: bool = True) -> TrainResult:
    """Train an encoder on ``zoo`` into run directory ``out`` (see the module docstring). Inside a
    process group (``peace.distributed``) each process encodes its share of every batch and only
    rank 0 writes."""
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    out, cfg, tc = Path(out), config, config.train
    rank = current()
    progress = progress and rank.main
    dev = resolve_device(device)
    if dev.type == "cuda" and rank.size > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank.rank)))
    if dev.type != "cpu" and cfg.encoder.backend == "dgl":
        raise PeaceError("the DGL backend runs on CPU only; use encoder.backend=torch (or auto) with a GPU")
    rows = _check_zoo(zoo, cfg)
    relevance = tc.val_relevance if tc.val_relevance != "auto" else ("task" if rows["task"].nunique() > 1 else "lineage")
    label = "task" if relevance == "task" else "lineage_id"
    splits = split_zoo(rows, tc.val_fraction, tc.test_fraction, tc.holdout_tasks, cfg.seed,
                       min_train_tasks=2 if relevance == "task" else 1, val_holdout=tc.val_holdout_tasks)
    held = sorted(rows.loc[splits.heldout_task.to_numpy(), "task"].unique())
    cfg.train.holdout_tasks = held  # resolved, so the saved config says which
    if tc.val_holdout_tasks:
        cfg.train.val_holdout_tasks = sorted(rows.loc[splits.val_heldout_task.to_numpy(), "task"].unique())
    if rank.main:
        _prepare_run_dir(out, cfg, zoo, resume)
    rows = rows.assign(split=splits["split"].to_numpy())
    train, val = rows[rows.split == "train"].reset_index(drop=True), rows[rows.split == "val"].reset_index(drop=True)
    if tc.max_val_models is not None and len(val) > tc.max_val_models:  # whole lineages, so relevance stays intact
        lineages = np.random.default_rng([cfg.seed, 1]).permutation(val["lineage_id"].unique())
        sizes = val["lineage_id"].value_counts()[lineages].to_numpy()
        keep = lineages[:max(2, int(np.searchsorted(np.cumsum(sizes), tc.max_val_models, side="right")))]
        val = val[val["lineage_id"].isin(keep)].reset_index(drop=True)
    if len(train) < tc.batch_size:
        raise PeaceError(f"the training split has {len(train)} models but train.batch_size is {tc.batch_size}; "
                         f"lower it (e.g. --set train.batch_size={max(2, len(train) // 2)}) or build a larger zoo")
    if val[label].nunique() < 2 or val[label].value_counts().max() < 2:
        raise PeaceError(f"the validation split has {len(val)} models in {val[label].nunique()} {relevance} group(s); "
                         f"same-{relevance} mAP needs 2 or more groups and one with 2 or more models. Raise "
                         f"train.val_fraction or build a zoo with more runs per task")
    if not resume and rank.main:
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        with atomic_path(out / "splits.parquet") as tmp:
            splits.to_parquet(tmp)
        write_json(out / "run.json", {"zoo": str(zoo.path.resolve()), "zoo_manifest_sha256": zoo.info["manifest_sha256"],
                                      "device": str(dev), "torch": torch.__version__, "status": "running"})

    ids = list(train.model_id) + list(val.model_id)
    specs = {m: zoo.spec(m) for m in ids}
    weights = dict(zip(ids, zoo.load_many(ids)))
    torch.manual_seed(cfg.seed)
    if dev.type != "cpu" and cfg.encoder.backend == "auto":
        cfg.encoder.backend = "torch"
    encoder = build_encoder(cfg.encoder)
    rng = np.random.default_rng(cfg.seed)
    sample = rng.choice(len(train), size=min(len(train), 1000), replace=False)
    encoder.fit_standardization([specs[m] for m in train.model_id[sample]], [weights[m] for m in train.model_id[sample]])
    tgt = _targets(train, cfg.encoder.aux_targets)
    encoder.aux_mean.copy_(torch.from_numpy(np.nanmean(tgt, 0)))
    encoder.aux_std.copy_(torch.from_numpy(np.nanstd(tgt, 0)).clamp_min(1e-6))
    encoder.to(dev)
    opt = torch.optim.AdamW(encoder.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    model = encoder
    if rank.size > 1:  # unused parameters: e.g. function tokens switched off
        model = torch.nn.parallel.DistributedDataParallel(encoder, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                          find_unused_parameters=False)

    history: list[dict] = []
    best, bad, start_epoch = -math.inf, 0, 1
    ckpt = _load_checkpoint(out / "checkpoint.pt") if resume else None
    if ckpt is not None:
        saved = ckpt["model"].get("node_in.weight")
        if saved is not None and saved.shape != encoder.state_dict()["node_in.weight"].shape:
            raise PeaceError(f"{out / 'checkpoint.pt'} was written by an older PEACE (encoder format 1, before LayerNorm "
                             f"node features); finish that run with the PEACE that started it, or train it again "
                             f"without --resume")
        encoder.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        history, best, bad, start_epoch = ckpt["history"], ckpt["best"], ckpt["bad_epochs"], ckpt["epoch"] + 1

    with first_rank_first():  # rank 0 writes the cache, the others read it
        views = build_views(train, weights, cfg.augment, cfg.seed, cache_dir=out / "views", progress=progress)
    n_probes = cfg.encoder.probes
    neighbours = None
    if cfg.augment.functional:
        train_specs = [specs[m] for m in train.model_id]
        neighbours = functional_neighbours(train, probe_responses(train_specs, [weights[m] for m in train.model_id],
                                                                  n_probes),
                                           [io_space(s) for s in train_specs], cfg.augment.functional_k)
    sampler = PairSampler(train, cfg.augment, views, neighbours)
    need_responses = cfg.encoder.function_tokens or cfg.encoder.function_block or tc.functional_weight > 0
    kin = Kinship(rows)
    aux_t = dict(zip(train.model_id, torch.tensor(tgt)))
    amp = dev.type == "cuda" and tc.amp
    n_steps = min(len(train), tc.max_models_per_epoch or len(train)) // tc.batch_size
    meta = {"zoo": str(zoo.path.resolve()), "zoo_manifest_sha256": zoo.info["manifest_sha256"], "holdout_tasks": held,
            "val_relevance": relevance,
            "n_train": len(train), "n_val": len(val)}

    stopped = bad >= tc.patience
    bar = tqdm(range(start_epoch, tc.epochs + 1), desc="train encoder", disable=not progress, initial=start_epoch - 1,
               total=tc.epochs)
    for epoch in ([] if stopped else bar):
        t0 = time.perf_counter()
        erng = np.random.default_rng([cfg.seed, epoch])
        order = erng.permutation(train.model_id.to_numpy())[:n_steps * tc.batch_size]
        encoder.train()
        sums = {"loss": 0.0, "nce": 0.0, "aux": 0.0}
        for step in range(n_steps):
            anchors = list(order[step * tc.batch_size:(step + 1) * tc.batch_size])
            partners = [sampler.partner(m, erng) for m in anchors]
            negs = sampler.hard_negatives(anchors, erng)
            tag, B = f"{epoch}/{step}", len(anchors)
            batch_specs, batch_params = [], []
            for m in anchors:
                batch_specs.append(specs[m])
                batch_params.append(augment(specs[m], weights[m], model_seed(cfg.seed, m, tag + "u"), cfg.augment))
            for m, (source, p) in zip(anchors, partners):
                w = views[m][source] if source in ("pruned", "distilled") else weights[p]
                batch_specs.append(specs[p])
                batch_params.append(augment(specs[p], w, model_seed(cfg.seed, m, tag + "v"), cfg.augment))
            for m in negs:
                batch_specs.append(specs[m])
                batch_params.append(augment(specs[m], weights[m], model_seed(cfg.seed, m, tag + "n"), cfg.augment))
            relabelled = list(erng.choice(anchors, min(cfg.augment.relabelled, B), replace=False)) \
                if cfg.augment.relabelled else []
            for m in relabelled:
                batch_specs.append(specs[m])
                batch_params.append(augment(specs[m], relabel_classes(specs[m], weights[m], erng),
                                            model_seed(cfg.seed, m, tag + "r"), cfg.augment))
            resp = probe_responses(batch_specs, batch_params, n_probes) if need_responses else None
            own = rank.share(len(batch_specs))  # this process encodes its share of the batch
            batch = encoder.batch(batch_specs[own], batch_params[own], dev, responses=None if resp is None else resp[own])
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                res = model(batch)
            proj, aux_pred = with_own_rows(res["projection"].float()), with_own_rows(res["aux"].float())
            extra = proj[2 * B:] if len(batch_specs) > 2 * B else None
            if tc.functional_weight > 0:  # graded by function instead of masking relatives
                spaces = np.array([io_space(s) for s in batch_specs])
                agree = torch.from_numpy(agreement_matrix(resp[:2 * B], spaces[:2 * B], resp, spaces))
                targets = functional_targets(agree, torch.from_numpy(spaces[:2 * B, None] == spaces[None, :]),
                                             tc.functional_weight, tc.functional_temperature)
                nce = info_nce(proj[:B], proj[B:2 * B], tc.temperature, extra=extra, targets=targets.to(dev))
            else:
                same = torch.from_numpy(kin.related(anchors, anchors))
                extra_same = torch.from_numpy(np.concatenate(  # relabelled copies are other functions: negatives
                    [kin.related(anchors, negs), np.zeros((B, len(relabelled)), bool)], 1)) if extra is not None else None
                nce = info_nce(proj[:B], proj[B:2 * B], tc.temperature, same, extra, extra_same)
            y = (torch.stack([aux_t[m] for m in anchors]).to(dev) - encoder.aux_mean) / encoder.aux_std
            aux = torch.nn.functional.mse_loss(aux_pred[:B], y)
            loss = nce + tc.aux_weight * aux
            opt.zero_grad(set_to_none=True)
            (loss * rank.size).backward()  # DDP averages: the ranks' shares then sum to the whole batch's gradient
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), tc.grad_clip)
            opt.step()
            for k, v in (("loss", loss), ("nce", nce), ("aux", aux)):
                sums[k] += v.item() / n_steps
        row = {"epoch": epoch, "train_loss": sums["loss"], "train_nce": sums["nce"], "train_aux": sums["aux"],
               **_validate(encoder, val, specs, weights, label, dev), "seconds": time.perf_counter() - t0}
        improved = row["val_map"] > best
        best, bad = (row["val_map"], 0) if improved else (best, bad + 1)
        row["best"] = improved
        history.append(row)
        if rank.main:
            _save_epoch(out, encoder, opt, cfg, meta, history, improved, best, bad)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_map=f"{row['val_map']:.3f}")
        if bad >= tc.patience:
            stopped = True
            break
    bar.close()
    hist = pd.DataFrame(history)
    best_row = hist.loc[hist["val_map"].idxmax()]
    if rank.main:
        info = json.loads((out / "run.json").read_text())
        write_json(out / "run.json", info | {"status": "early-stopped" if stopped else "finished",
                                             "best_epoch": int(best_row.epoch), "best_val_map": float(best_row.val_map),
                                             "epochs_run": len(hist), "processes": rank.size})
    return TrainResult(out, hist, int(best_row.epoch), float(best_row.val_map), stopped)


def run_result(out: str | Path) -> TrainResult:
    """The result of a finished run, read back from its directory (e.g. after training in several processes)."""
    out = Path(out)
    hist = pd.read_parquet(out / "history.parquet")
    info = json.loads((out / "run.json").read_text())
    return TrainResult(out, hist, int(info["best_epoch"]), float(info["best_val_map"]), info["status"] == "early-stopped")


def _save_epoch(out: Path, encoder: Embedder, opt: torch.optim.Optimizer, cfg: RunConfig, meta: dict,
                history: list[dict], improved: bool, best: float, bad: int) -> None:
    """After each epoch: the best encoder (when it improved), the history and the checkpoint."""
    row = history[-1]
    if improved:
        _save_encoder(out, encoder, cfg, meta | {"epoch": row["epoch"], "val_map": row["val_map"]})
    with atomic_path(out / "history.parquet") as tmp:
        pd.DataFrame(history).to_parquet(tmp)
    with atomic_path(out / "checkpoint.pt") as tmp:
        torch.save({"model": encoder.state_dict(), "optimizer": opt.state_dict(), "epoch": row["epoch"],
                    "history": history, "best": best, "bad_epochs": bad}, tmp)


def embed_zoo(encoder: Embedder, zoo: Zoo, model_ids: list[str] | None = None, batch_size: int = 128,
              progress: bool = False) -> np.ndarray:
    """(n, output_dim) embeddings of zoo models (all ``ok`` models by default), in ``model_ids`` order."""
    if model_ids is None:
        model_ids = list(zoo.manifest.index[zoo.manifest["status"] == "ok"])
    out = []
    for s in tqdm(range(0, len(model_ids), batch_size), desc="embed", disable=not progress, leave=False):
        chunk = model_ids[s:s + batch_size]
        out.append(encoder.embed([zoo.spec(m) for m in chunk], zoo.load_many(chunk), batch_size).numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.config.output_dim), np.float32)
