"""Writing models: a run's decoder trained from its zoo, reconstructions judged by what the decoded
networks compute, and new models sampled around prompt models (SANE's kernel density sampling).

A decoder lives in its run's directory (``decoder.safetensors`` + ``decoder.json``, beside the
encoder it reads) and is refused once that encoder changes.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import KernelDensity
from torch import Tensor
from tqdm import tqdm

from peace.core.errors import PeaceError
from peace.core.rng import model_seed
from peace.learn.decoder import (
    DECODABLE,
    DecoderConfig,
    Pairs,
    WeightDecoder,
    aligned_form,
    check_decodable,
    families_flag,
    fit_decoder,
    flatten,
    head_form,
    head_spec,
    load_decoder,
    models,
    reference_form,
    save_decoder,
    unflatten,
)
from peace.learn.encoder import Embedder
from peace.learn.refine import RefineConfig, SketchFit, sketch_fit
from peace.learn.run import RunDir
from peace.nets.architectures import ArchSpec, build_module, evaluate, forward, predict, stack_params, unstack_params
from peace.nets.batchnorm import calibrate_norms
from peace.nets.probes import probe_inputs
from peace.zoo.store import Zoo, usable
from peace.zoo.tasks import Task, is_task, load_task

__all__ = [
    "Group", "SampleConfig", "accuracy", "choose_refinement", "decoder_groups", "default_inits", "kde_draws",
    "judge_zoo", "mark_heldout", "reconstruction", "reconstruction_summary", "run_decoder", "zoo_groups", "sample_models",
    "train_decoder", "written_by"
]

Params = dict[str, Tensor]


@dataclass
class Group:
    """One architecture's models of a split: ids, embeddings and, to train on (``pairs``), aligned weights
    (flat) and the originals' class probabilities on the architecture's inputs ``x`` (what the functional
    term matches); a group that is only judged (``reconstruction``) needs the first three."""

    spec: ArchSpec
    ids: list[str]
    z: Tensor
    y: Tensor | None = None
    x: Tensor | None = None
    probs: Tensor | None = None
    weights: Tensor | None = None

    def pairs(self) -> Pairs:
        return Pairs(self.z, self.y, self.x, self.probs, self.weights)


INPUTS_PER_TASK, MAX_INPUTS = 128, 512  # inputs the functional term reads, per task of the architecture


def _inputs(zoo: Zoo, ids: Sequence[str], spec: ArchSpec) -> tuple[Tensor, np.ndarray]:
    """The first training inputs of every task the architecture's training models solve, shaped for ``spec``,
    and the task each input comes from; for a task PEACE holds no data for (a zoo made elsewhere), the io-space's
    Gaussian probes stand in."""
    tasks = sorted(zoo.manifest.loc[list(ids), "task"].unique())
    per = max(1, min(INPUTS_PER_TASK, MAX_INPUTS // len(tasks)))
    xs = [torch.from_numpy(load_task(t).split("train")[0][:per]).reshape(-1, *spec.input_shape) if is_task(t)
          else probe_inputs(spec.input_shape, per) for t in tasks]
    return torch.cat(xs).float(), np.repeat(tasks, [len(x) for x in xs])


def _input_weights(model_tasks: np.ndarray, input_tasks: np.ndarray, other: float) -> Tensor | None:
    """(models, inputs) weights of the functional term, rows summing to 1: a model's own task's inputs count
    1, the others ``other`` (None where every input counts alike)."""
    if other == 1:
        return None
    w = np.where(model_tasks[:, None] == input_tasks[None, :], 1.0, other)
    w[w.sum(1) == 0] = 1.0  # a task none of the inputs come from (held out): every input alike
    return torch.from_numpy(w / w.sum(1, keepdims=True)).float()


def _spec_key(spec: ArchSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def _head_keys(arch_specs: pd.Series) -> pd.Series:
    """Each manifest row's decoder head (``head_spec``, as ``_spec_key``), parsed once per architecture."""
    key = {a: _spec_key(head_spec(ArchSpec.from_dict(json.loads(a)))) for a in arch_specs.unique()}
    return arch_specs.map(key)


def written_by(dec: WeightDecoder, arch_specs: pd.Series) -> pd.Series:
    """Which rows of a manifest's ``arch_spec`` column the decoder writes (a head for their ``head_spec``)."""
    return _head_keys(arch_specs).isin({_spec_key(s) for s in dec.specs})


def _head_forms(zoo: Zoo, ids: Sequence[str], params: Sequence[Params] | None = None) -> list[Params]:
    """Zoo models (``params``, or read) as decoder heads read them (``head_form``: BatchNorm folded)."""
    params = zoo.load_many(list(ids)) if params is None else params
    return [head_form(zoo.spec(i), p) for i, p in zip(ids, params)]


def _draw(ids: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``ids``, or ``n`` of them drawn without replacement (sorted) where there are more."""
    return sorted(rng.choice(ids, n, replace=False)) if len(ids) > n else ids


def _split_ids(zoo: Zoo, run: RunDir, config: DecoderConfig) -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
    """{head spec json: {split: ids}} of the decodable architectures with enough training models,
    and {architecture: why it is left out} for the others."""
    rows = zoo.manifest[usable(zoo.manifest)].reset_index(drop=True).merge(run.splits(), on="model_id", how="inner")
    out, skipped = {}, {}
    rng = np.random.default_rng(config.seed)
    for head, g in rows.groupby(_head_keys(rows["arch_spec"]), sort=True):
        arch, family = g["arch"].iloc[0], g["family"].iloc[0]
        if family not in config.families:
            skipped[arch] = (f"{family} models are not decoded by default ({families_flag(config.families, family)} "
                             f"adds them)" if family in DECODABLE else f"{family} models are not decoded")
            continue
        ids = {s: sorted(g.loc[g["split"] == s, "model_id"]) for s in ("train", "val", "test")}
        if len(ids["train"]) < config.min_models:
            skipped[arch] = f"{len(ids['train'])} training models, fewer than min_models={config.min_models}"
            continue
        cap = {"train": config.max_models, "val": max(1, config.max_models // 4), "test": max(1, config.max_models // 4)}
        out[head] = {s: _draw(v, cap[s], rng) for s, v in ids.items()}
    return out, skipped


def decoder_training_models(run_dir: str | Path, spec: ArchSpec, task: str, opened: Zoo | None = None) -> int:
    """How many of the run's training models of ``spec``'s decoder head solve ``task``: the (architecture, task)
    pairs a decoder writes well are those it learned from (docs/generation.md: a pair it never saw decodes to
    about chance). ``opened``: a zoo already open, used if it is the one the decoder learned from."""
    run = RunDir(run_dir)
    path = Path(json.loads((run.path / RunDir.DECODER[1]).read_text())["zoo"])  # the zoo the decoder learned from
    zoo = opened if opened is not None and opened.path.resolve() == path.resolve() else Zoo(path)
    rows = zoo.manifest[usable(zoo.manifest) & (zoo.manifest["task"] == task)]
    rows = rows.reset_index(drop=True).merge(run.splits(), on="model_id", how="inner")
    rows = rows[rows["split"] == "train"]
    return int((_head_keys(rows["arch_spec"]) == _spec_key(head_spec(spec))).sum()) if len(rows) else 0


def decoder_groups(run_dir: str | Path, config: DecoderConfig = DecoderConfig(),
                   progress: bool = False) -> tuple[Zoo, dict[str, list[Group]], dict[str, str]]:
    """What a decoder learns from: the run's zoo; per split, one ``Group`` per decodable architecture (the
    run's encoder's embeddings and the weights aligned to the architecture's reference); and the
    architectures left out, with why."""
    run = RunDir(run_dir)
    encoder = run.load_encoder()
    zoo = Zoo(encoder.meta["zoo"])
    chosen, skipped = _split_ids(zoo, run, config)
    if not chosen:
        raise PeaceError(f"no architecture of {zoo.path} can be decoded: "
                         + "; ".join(f"{a}: {why}" for a, why in skipped.items()))
    groups: dict[str, list[Group]] = {"train": [], "val": [], "test": []}
    for head, ids in tqdm(chosen.items(), desc="decoder data", unit="arch", disable=not progress, leave=False):
        spec = ArchSpec.from_dict(json.loads(head))
        train_raw = zoo.load_many(ids["train"])
        train_params = _head_forms(zoo, ids["train"], train_raw)
        ref = reference_form(spec, train_params)
        x, input_tasks = _inputs(zoo, ids["train"], spec)
        for split, split_ids in ids.items():
            raw = train_raw if split == "train" else zoo.load_many(split_ids)
            params = train_params if split == "train" else _head_forms(zoo, split_ids, raw)
            if not params:
                groups[split].append(Group(spec, [], torch.zeros(0, encoder.config.output_dim),
                                           torch.zeros(0, spec.n_params), x, torch.zeros(0, len(x), spec.n_classes)))
                continue
            z = encoder.embed([zoo.spec(i) for i in split_ids], raw)
            y = torch.stack([flatten(spec, aligned_form(spec, p, ref)) for p in params])
            with torch.no_grad():
                probs = forward(spec, stack_params(params), x).softmax(-1)
            weights = _input_weights(zoo.manifest.loc[split_ids, "task"].to_numpy(), input_tasks, config.other_tasks)
            groups[split].append(Group(spec, list(split_ids), z, y, x, probs, weights))
    return zoo, groups, skipped


def train_decoder(run_dir: str | Path, config: DecoderConfig = DecoderConfig(), progress: bool = False,
                  refine: RefineConfig = RefineConfig()) -> tuple[WeightDecoder, pd.DataFrame]:
    """Train the run's decoder on its training split (validation picks the epoch), save it in the
    run directory, and return it with its reconstruction table on the test split (with ``refine``'s
    refined reconstructions beside the decoder's own where the run's embedding has a function block)."""
    run = RunDir(run_dir)
    zoo, groups, skipped = decoder_groups(run_dir, config, progress)
    specs = [g.spec for g in groups["train"]]
    dec, history = fit_decoder(specs, [g.pairs() for g in groups["train"]], [g.pairs() for g in groups["val"]],
                               config, progress)
    fit = sketch_fit(run.load_encoder(), refine)
    choose_refinement(dec, zoo, groups["val"], fit)
    table = mark_heldout(reconstruction(dec, zoo, groups["test"], fit), run)
    save_decoder(dec, run.path, {
        "encoder_sha256": run.encoder_sha256(), "zoo": str(zoo.path.resolve()),
        "zoo_manifest_sha256": zoo.info["manifest_sha256"], "skipped": skipped, "history": history,
        "best_epoch": int(min(history, key=lambda h: h["val_loss"] if np.isfinite(h["val_loss"]) else np.inf)["epoch"]),
        "models": {s: sum(len(g.ids) for g in gs) for s, gs in groups.items()},
        "reconstruction": reconstruction_summary(table).to_dict("records") if len(table) else []})
    return dec, table


def mark_heldout(table: pd.DataFrame, run: RunDir) -> pd.DataFrame:
    """``table`` (one row per ``model_id`` of the run's zoo) with ``heldout_task``: the run's encoder never
    saw the model's task (reconstruction summaries split by it)."""
    if len(table):
        held = run.splits().set_index("model_id")["heldout_task"].astype(bool)
        table["heldout_task"] = table["model_id"].map(held).fillna(False).astype(bool)
    return table


def choose_refinement(dec: WeightDecoder, zoo: Zoo, val: Sequence[Group], fit: SketchFit | None) -> None:
    """Set ``dec.refines``: a head refines unless its validation models, refined, keep 90 % of their
    originals' accuracy for fewer models than decoded (or as many, less accurate on average). Refinement
    helps MLPs, of seen tasks and of tasks the encoder never saw, and can cost deeper networks much of what
    they compute (the sketch sees a few probes, not the task). Heads without validation models refine."""
    dec.refines = [True] * len(dec.specs)
    if fit is None:
        return
    for g in val:
        if not g.ids or not fit.reads(g.spec):
            continue
        t = reconstruction_summary(reconstruction(dec, zoo, [g], fit)).iloc[-1]
        if pd.notna(t["decoded_kept"]):
            refined, decoded = (t["refined_kept"], t["refined_acc"]), (t["decoded_kept"], t["decoded_acc"])
        else:  # models of tasks PEACE holds no data for: agreement with their originals (on the probes)
            refined, decoded = t["refined_agreement"], t["decoded_agreement"]
        dec.refines[dec.index(g.spec)] = bool(refined >= decoded)


def run_decoder(run_dir: str | Path) -> tuple[WeightDecoder, dict]:
    """The run's decoder, refused when the encoder it reads has changed since it was trained."""
    run = RunDir(run_dir)
    dec, meta = load_decoder(run.path)
    if run.has_encoder() and meta.get("encoder_sha256") != run.encoder_sha256():
        raise PeaceError(f"the decoder in {run.path} was trained on another encoder than the run's current one; "
                         f"retrain it with `peace decoder --run {run.path}`")
    return dec, meta


# --- judging reconstructions by function ------------------------------------------------------------

def accuracy(spec: ArchSpec, params: Sequence[Params], task: Task, split: str = "test") -> np.ndarray:
    """Each model's accuracy on the task's ``split``."""
    X, y = task.split(split)
    X = torch.from_numpy(X).reshape(len(X), *spec.input_shape)
    return evaluate(spec, stack_params(list(params)), X, torch.from_numpy(y), task.n_classes)["acc"]


def reconstruction(dec: WeightDecoder, zoo: Zoo, groups: Sequence[Group], fit: SketchFit | None = None) -> pd.DataFrame:
    """One row per model of ``groups`` (models of ``zoo``): the original's test accuracy, and for the decoded
    model, the decoded model refined by ``fit`` (``refined_*``, when given) and two references (the
    architecture's mean model; the decoder's training model nearest in the embedding, i.e. retrieval instead
    of decoding, where the decoder kept them): test accuracy and agreement with the original's predictions
    on the task's test inputs and on the probe inputs."""
    rows = []
    for g in groups:
        if not g.ids:
            continue
        i = dec.index(g.spec)
        originals = _head_forms(zoo, g.ids)
        mean = unflatten(g.spec, getattr(dec, f"mean_{i}"))
        candidates = {"decoded": dec.decode(g.z, g.spec), "mean": [mean] * len(g.ids)}
        retrieved = dec.retrieve(g.z, i)
        if retrieved is not None:
            candidates["nearest"] = models(g.spec, retrieved)
        if fit is not None:
            candidates["refined"] = dec.decode(g.z, g.spec, fit)
        tasks = pd.Series(zoo.manifest.loc[g.ids, "task"].to_numpy())
        probes = probe_inputs(g.spec.input_shape).float()
        for task_name, idx in tasks.groupby(tasks).indices.items():
            task = load_task(task_name) if is_task(task_name) else None  # a zoo made elsewhere: no data, no accuracy
            X = torch.from_numpy(task.split("test")[0]) if task else probes
            orig = [originals[j] for j in idx]
            ref_pred = predict(g.spec, orig, X).argmax(-1)
            ref_probe = ref_pred if task is None else predict(g.spec, orig, probes).argmax(-1)  # no data: X is the probes
            rec = {"model_id": [g.ids[j] for j in idx], "arch": g.spec.describe(), "family": g.spec.family,
                   "task": task_name, "original_acc": accuracy(g.spec, orig, task) if task else np.nan}
            for name, made in candidates.items():
                picked = [made[j] for j in idx]
                rec[f"{name}_acc"] = accuracy(g.spec, picked, task) if task else np.nan
                rec[f"{name}_agreement"] = (predict(g.spec, picked, X).argmax(-1) == ref_pred).float().mean(1).numpy()
                rec[f"{name}_probe_agreement"] = rec[f"{name}_agreement"] if task is None else (
                    predict(g.spec, picked, probes).argmax(-1) == ref_probe).float().mean(1).numpy()
            rows.append(pd.DataFrame(rec))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def reconstruction_summary(table: pd.DataFrame, by: str = "family") -> pd.DataFrame:
    """Means of a ``reconstruction`` table per ``by`` (and seen / held-out task where the table says),
    over all models too, with the model count and ``*_kept``: the share of models whose decoded (or
    mean, or nearest) model keeps at least 90 % of the original's test accuracy."""
    table = table.copy()
    made = [m for m in ("decoded", "refined", "mean", "nearest") if f"{m}_acc" in table]
    for m in made:
        table[f"{m}_kept"] = (table[f"{m}_acc"] >= 0.9 * table["original_acc"]).astype(float).where(
            table["original_acc"].notna())  # no task data, no accuracy: n/a
    cols = ["original_acc"] + [f"{m}_{c}" for m in made for c in ("acc", "kept", "agreement", "probe_agreement")]
    keys = [k for k in (by, "heldout_task") if k in table]
    out = table.groupby(keys)[cols].mean().reset_index()
    out.insert(len(keys), "models", table.groupby(keys).size().to_numpy())
    total = {**{k: "all" for k in keys}, "models": len(table), **table[cols].mean().to_dict()}
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)


def zoo_groups(zoo: Zoo, encoder: Embedder, specs: Sequence[ArchSpec], max_models: int = 500,
               seed: int = 0) -> tuple[list[Group], dict[str, str]]:
    """Groups to judge of a zoo's usable models whose architecture is one of ``specs`` (a decoder's heads),
    at most ``max_models`` per architecture (drawn with ``seed``), embedded by ``encoder``; and the zoo's
    other architectures, with why they are left out."""
    if max_models < 1:
        raise PeaceError(f"models judged per architecture must be >= 1; got {max_models}")
    m = zoo.manifest[usable(zoo.manifest)]
    heads = {_spec_key(s): s for s in specs}
    rng, groups, skipped = np.random.default_rng(seed), [], {}
    for head, g in m.groupby(_head_keys(m["arch_spec"]), sort=True):
        if head not in heads:
            skipped[g["arch"].iloc[0]] = "the decoder does not write this architecture"
            continue
        ids = _draw(sorted(g.index), max_models, rng)
        z = encoder.embed([zoo.spec(i) for i in ids], zoo.load_many(ids))
        groups.append(Group(heads[head], list(ids), z))
    return groups, skipped


def judge_zoo(run_dir: str | Path, zoo_path: str | Path, refine: RefineConfig = RefineConfig(),
              max_models: int = 500, seed: int = 0) -> tuple[pd.DataFrame, dict[str, str]]:
    """The run's saved decoder judged on another zoo's models (``reconstruction``, ``heldout_task``: the
    task is none the encoder trained on), and the zoo's architectures it cannot judge, with why."""
    run = RunDir(run_dir)
    dec, _ = run_decoder(run.path)
    encoder = run.load_encoder()
    zoo = Zoo(zoo_path)
    groups, skipped = zoo_groups(zoo, encoder, dec.specs, max_models, seed)
    if not groups:
        raise PeaceError(f"no usable model of {zoo.path} has an architecture the decoder of {run.path} writes "
                         f"({'; '.join(s.describe() for s in dec.specs)}); train a run on a zoo that has them")
    table = reconstruction(dec, zoo, groups, sketch_fit(encoder, refine))
    splits = run.splits()
    trained = Zoo(encoder.meta["zoo"]).manifest.loc[splits.loc[splits["split"] == "train", "model_id"], "task"]
    table["heldout_task"] = ~table["task"].isin(set(trained))
    return table, skipped


# --- sampling ---------------------------------------------------------------------------------------

MAX_SAMPLES = 100_000  # models one sampling call draws (decoded in memory at once)


@dataclass(frozen=True)
class SampleConfig:
    """How ``peace sample`` draws: ``n`` models from a Gaussian KDE over the prompt embeddings.

    ``candidates > 1`` keeps the ``n`` most accurate of ``n * candidates`` draws on the task's training
    split (SANE's subsampling); ``rounds > 1`` then refits the KDE on the embeddings of the ``n`` best
    draws so far and draws again (SANE's bootstrapping), climbing towards better models of the region."""

    n: int = 10
    candidates: int = 1  # draw n * candidates per round and keep the n most accurate on the task's training split
    bandwidth: float = 1.0  # multiplies Scott's rule
    seed: int = 0
    rounds: int = 1  # bootstrapping: each further round samples around the best n draws so far

    def __post_init__(self) -> None:
        budget = self.n * self.candidates * self.rounds
        if (not 1 <= self.n <= MAX_SAMPLES or self.candidates < 1 or self.rounds < 1 or budget > MAX_SAMPLES
                or not 0 < self.bandwidth < math.inf):
            raise PeaceError(f"sampling needs 1 <= n <= {MAX_SAMPLES:,}, candidates >= 1, rounds >= 1 with "
                             f"n * candidates * rounds <= {MAX_SAMPLES:,}, and bandwidth > 0; got n={self.n}, "
                             f"candidates={self.candidates}, rounds={self.rounds}, bandwidth={self.bandwidth}")
        if self.rounds > 1 and self.candidates == 1:
            raise PeaceError(f"bootstrapping (rounds={self.rounds}) picks the best of more draws than it keeps: "
                             f"pass candidates >= 2 (e.g. --candidates 20)")


def kde_draws(z: Tensor, n: int, bandwidth: float, seed: int, floor: Tensor) -> Tensor:
    """``n`` draws from a Gaussian kernel density estimate over the rows of ``z`` (scikit-learn's
    KernelDensity, Scott's bandwidth times ``bandwidth``), in coordinates standardized by the
    prompt's own spread per dimension (at least ``floor``, so one prompt model still has a spread)."""
    mean, std = z.mean(0), torch.maximum(z.std(0) if len(z) > 1 else torch.zeros_like(z[0]), floor)
    unit = ((z - mean) / std).double().numpy()
    scott = len(unit) ** (-1.0 / (unit.shape[1] + 4))
    kde = KernelDensity(kernel="gaussian", bandwidth=scott * bandwidth).fit(unit)
    draws = torch.from_numpy(kde.sample(n, random_state=seed)).float()
    return mean + draws * std


def default_inits(spec: ArchSpec, n: int, seed: int) -> list[Params]:
    """``n`` models of ``spec`` as torch initializes them (``build_module``'s defaults), seeded."""
    out = []
    for j in range(n):
        torch.manual_seed(model_seed(seed, f"torch-init-{j}"))
        state = build_module(spec).state_dict()
        out.append({k: state[k].detach().clone() for k in spec.param_shapes()})
    return out


def _calibrated(spec: ArchSpec, params: list[Params], task: Task | None, inputs: int = 512,
                chunk: int = 256) -> list[Params]:
    """Decoded models with BatchNorm statistics of the task's first ``inputs`` training inputs
    (``calibrate_norms``: the same eval-mode function, and fine-tuning starts from it); others, and models of a
    task PEACE holds no data for (None), as they are."""
    if spec.norm != "batch" or task is None:
        return params
    x = torch.from_numpy(task.split("train")[0][:inputs]).reshape(-1, *spec.input_shape).float()
    out = []
    for a in range(0, len(params), chunk):
        part = params[a:a + chunk]
        stacked = calibrate_norms(spec, stack_params(part), x)
        out += [unstack_params(stacked, j) for j in range(len(part))]
    return out


def sample_models(dec: WeightDecoder, z_prompt: Tensor, spec: ArchSpec, task: Task | None,
                  config: SampleConfig = SampleConfig(),
                  fit: SketchFit | None = None) -> tuple[list[Params], np.ndarray]:
    """New models of ``spec`` decoded from KDE draws around the prompt embeddings (refined by ``fit``
    when given, from the decoded draws only: no retrieved zoo model), the best by accuracy on the task's
    training split when ``config`` asks for subsampling or bootstrapping (see ``SampleConfig``); BatchNorm
    models get statistics of the task's training inputs (``_calibrated``). Returns the models and those
    training accuracies. ``task`` None: the prompt's task is one PEACE holds no data for (a zoo made
    elsewhere): plain draws only, accuracies NaN."""
    check_decodable(spec)
    if len(z_prompt) == 0:
        raise PeaceError("no prompt models to sample around")
    if task is None and config.candidates > 1:
        raise PeaceError("subsampling and bootstrapping keep the draws most accurate on the prompt task's training "
                         "data, which PEACE does not hold for this zoo's task; sample without --candidates / --rounds")
    floor, around = 0.05 * dec.z_std, z_prompt.float()
    fit = fit.decoded_only() if fit is not None else None
    drawn: list[Tensor] = []
    models: list[Params] = []
    train_acc = np.zeros(0)
    for r in range(config.rounds):
        z = kde_draws(around, config.n * config.candidates, config.bandwidth,
                      config.seed if r == 0 else model_seed(config.seed, f"bootstrap-{r}"), floor)
        drawn.append(z)
        models += dec.decode(z, spec, fit)
        new = models[len(train_acc):]
        train_acc = np.concatenate([train_acc, accuracy(spec, new, task, "train") if task else np.full(len(new), np.nan)])
        keep = np.argsort(-train_acc, kind="stable")[:config.n] if config.candidates > 1 else np.arange(config.n)
        around = torch.cat(drawn)[torch.as_tensor(keep)]
    if config.candidates > 1:  # copies: views would keep every candidate's batch alive
        models, train_acc = [{k: v.clone() for k, v in models[i].items()} for i in keep], train_acc[keep]
    return _calibrated(spec, models, task), train_acc  # the kept ones only: evaluation, so train_acc, is unchanged
