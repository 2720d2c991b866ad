"""New models from a run's decoder: ``peace sample`` (a zoo of sampled models) and the generative
study (SANE's protocol: sampled models' accuracy before and after a little fine-tuning, on the
prompt's task and on a new one, beside random initialization, the prompt models and retrieval)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from peace.core.errors import PeaceError
from peace.core.rng import model_seed
from peace.evaluate.baselines import Models
from peace.evaluate.transfer import TransferConfig, finetune_curves, io_key
from peace.learn.decoder import WeightDecoder, head_spec
from peace.learn.encoder import Embedder
from peace.learn.generation import SampleConfig, default_inits, run_decoder, sample_models, written_by
from peace.learn.refine import RefineConfig, sketch_fit
from peace.learn.run import RunDir
from peace.nets.architectures import ArchSpec
from peace.zoo.generated import write_generated_zoo
from peace.zoo.population import HParams, init_params
from peace.zoo.query import select_ids
from peace.zoo.store import Zoo, usable
from peace.zoo.tasks import is_task, load_task

__all__ = ["GenerativeConfig", "Prompt", "default_prompt", "generative_markdown", "generative_study", "resolve_prompt", "sample_zoo"]

Params = dict[str, torch.Tensor]


@dataclass
class Prompt:
    """Prompt models: one architecture, one task."""

    text: str
    ids: list[str]
    spec: ArchSpec
    task: str


def resolve_prompt(zoo: Zoo, prompt: str, arch: str | None = None) -> Prompt:
    """The zoo's usable models that ``prompt`` selects (model ids, or a query over the manifest),
    refused unless they share one architecture and one task (the error lists them)."""
    m = zoo.manifest[usable(zoo.manifest)]
    rows = m.loc[[i for i in select_ids(m, prompt, "prompt") if i in m.index]]
    if arch is not None:
        rows = rows[rows["arch"] == arch]
    if rows.empty:
        raise PeaceError(f"the prompt {prompt!r}{f' with --arch {arch!r}' if arch else ''} selects no usable model of "
                         f"{zoo.path}; check it with `peace zoo info {zoo.path}`")
    for column, fix in (("arch", "--arch ARCH"), ("task", "task == 'NAME' in the prompt")):
        counts = rows[column].value_counts()
        if len(counts) > 1:
            shown = ", ".join(f"{k!r} ({v})" for k, v in counts.head(8).items())
            raise PeaceError(f"the prompt selects models of {len(counts)} {column}s ({shown}); sampling needs one: "
                             f"add {fix}")
    return Prompt(prompt, list(rows.index), zoo.spec(rows.index[0]), str(rows["task"].iloc[0]))


def _embed(encoder: Embedder, zoo: Zoo, ids: list[str]) -> torch.Tensor:
    """The encoder's embeddings of zoo models, each read with its own architecture."""
    return encoder.embed([zoo.spec(i) for i in ids], zoo.load_many(ids))


def sample_zoo(run_dir: str | Path, prompt: str, out: str | Path, config: SampleConfig = SampleConfig(),
               zoo: Zoo | str | Path | None = None, arch: str | None = None, name: str = "sampled",
               refine: RefineConfig = RefineConfig(steps=0)) -> Zoo:
    """``peace sample``: decode ``config.n`` models sampled around the prompt models' embeddings (refined
    towards their function block as ``refine`` says) and write them as a new zoo at ``out`` (status
    ``sampled``, the prompt in each row's provenance)."""
    run = RunDir(run_dir)
    dec, meta = run_decoder(run.path)
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo or meta["zoo"])
    p = resolve_prompt(zoo, prompt, arch)
    task = load_task(p.task) if is_task(p.task) else None  # a zoo made elsewhere: its task's data is not here
    encoder = run.load_encoder()
    fit = sketch_fit(encoder, refine)
    models, _ = sample_models(dec, _embed(encoder, zoo, p.ids), p.spec, task, config, fit)
    provenance = {"run": str(run.path.resolve()), "encoder_sha256": meta["encoder_sha256"],
                  "decoder_sha256": meta["weights_sha256"], "zoo": str(zoo.path.resolve()), "prompt": prompt,
                  "prompt_models": p.ids[:100], "n_prompt_models": len(p.ids), "sampling": asdict(config),
                  "refinement": asdict(fit.decoded_only().config) if dec.will_refine(p.spec, fit) else None}
    return write_generated_zoo(out, name, p.spec, task or p.task, models, provenance, like=zoo)


# --- the generative study ---------------------------------------------------------------------------

METHODS = ("sampled", "sampled + subsampling", "sampled + bootstrapping", "random init (torch default)",
           "random init (zoo's)", "prompt models", "retrieved by PEACE")


@dataclass(frozen=True)
class GenerativeConfig:
    """SANE's protocol at PEACE's scale: ``n`` models per method and seed, fine-tuned ``epochs`` epochs
    (read at 0, 1 and ``epochs``) on the prompt's task and on ``new_task``. ``rounds=1`` leaves out the
    bootstrapping row."""

    n: int = 10
    candidates: int = 20  # SANE's subsampling: the best n of n * candidates draws by training accuracy
    rounds: int = 5  # SANE's bootstrapping row: rounds of subsampling, each around the best n so far ...
    bandwidth: float = 0.5  # ... with this KDE bandwidth (chosen on validation, docs/generation.md)
    epochs: int = 5
    seeds: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    prompt: str | None = None  # default: the final models of the largest decodable (architecture, task) in training
    new_task: str | None = None  # default: another task of the same inputs and classes, held-out ones first
    new_head: bool = False  # on the new task, transferred models start with torch's fresh output layer (other classes)
    split: str = "test"  # where accuracy is read: choose settings on "val", report on "test"

    def __post_init__(self) -> None:
        if min(self.n, self.candidates, self.rounds, self.epochs, self.seeds, self.batch_size) < 1 or not self.lr > 0:
            raise PeaceError(f"generative study: n, candidates, rounds, epochs, seeds and batch_size must be >= 1, "
                             f"lr > 0; got {self}")
        if self.split not in ("val", "test"):
            raise PeaceError(f"generative study: split must be 'val' or 'test', not {self.split!r}")
        if self.rounds > 1:
            SampleConfig(self.n, self.candidates, self.bandwidth, rounds=self.rounds)  # its refusals, by name

    @property
    def methods(self) -> tuple[str, ...]:
        """The starting points compared, in table order."""
        return tuple(m for m in METHODS if self.rounds > 1 or m != "sampled + bootstrapping")


def default_prompt(zoo: Zoo, run: RunDir, dec: WeightDecoder) -> str:
    """The final training models of the largest decoded (architecture, task) group: a prompt that always exists."""
    m = zoo.manifest[usable(zoo.manifest)].reset_index(drop=True).merge(run.splits(), on="model_id")
    final = m[(m["epoch"] == m["epochs"]) & (m["split"] == "train") & written_by(dec, m["arch_spec"])
              & m["parent_id"].isna()]
    if final.empty:
        raise PeaceError(f"no final-epoch training models of a decoded architecture in {zoo.path} to prompt with; "
                         f"pass a prompt (model ids or a manifest query)")
    arch, task = final.groupby(["arch", "task"]).size().idxmax()
    return " ".join(final.loc[(final["arch"] == arch) & (final["task"] == task), "model_id"])


def _new_task(zoo: Zoo, run: RunDir, spec: ArchSpec, task: str) -> str | None:
    """Another task of the zoo with the prompt's inputs and classes; a task held out of training first."""
    splits = run.splits()
    held = set(zoo.manifest["task"].reindex(splits.loc[splits["heldout_task"].astype(bool), "model_id"]).dropna())
    pairs = zoo.manifest[["task", "arch_spec"]].drop_duplicates()
    key = lambda s: io_key(head_spec(s))  # noqa: E731  (an MLP reads 4x4 images and 16 features alike)
    same = sorted({t for t, a in zip(pairs["task"], pairs["arch_spec"])
                   if t != task and key(ArchSpec.from_dict(json.loads(a))) == key(spec)})
    return next((t for t in same if t in held), same[0] if same else None)


def _starts(method: str, dec: WeightDecoder, z: torch.Tensor, p: Prompt, zoo: Zoo, cfg: GenerativeConfig, seed: int,
            retrieved: list[str]) -> list[Params]:
    """The ``n`` starting models of one method for one seed."""
    task, n, rng = load_task(p.task), cfg.n, np.random.default_rng([seed, 11])
    if method.startswith("sampled"):
        recipe = {"sampled": {}, "sampled + subsampling": dict(candidates=cfg.candidates),
                  "sampled + bootstrapping": dict(candidates=cfg.candidates, rounds=cfg.rounds, bandwidth=cfg.bandwidth)}
        return sample_models(dec, z, p.spec, task, SampleConfig(n, seed=seed, **recipe[method]))[0]
    if method == "random init (torch default)":
        return default_inits(p.spec, n, seed)
    if method == "random init (zoo's)":
        init = str(zoo.manifest.at[p.ids[0], "init"]) if "init" in zoo.manifest else "kaiming_uniform"
        stacked = init_params(p.spec, [HParams(seed=model_seed(seed, f"zoo-init-{j}"), init=init) for j in range(n)])
        return [{k: v[j] for k, v in stacked.items()} for j in range(n)]
    ids = p.ids if method == "prompt models" else retrieved
    return zoo.load_many(list(rng.choice(ids, min(n, len(ids)), replace=False)))


def _with_new_head(spec: ArchSpec, params: list[Params], fresh: list[Params]) -> list[Params]:
    """``params`` with the output layer of ``fresh`` (the torch-init row's models) instead of their own,
    for a new task whose classes mean other things."""
    out = spec.layers[-1]
    head = [out.weight_name, *([out.bias_name] if out.bias else [])]
    return [{**q, **{k: f[k] for k in head}} for q, f in zip(params, fresh)]


def _retrieved(encoder: Embedder, zoo: Zoo, p: Prompt, z: torch.Tensor, n: int) -> list[str]:
    """PEACE's nearest zoo models of the prompt's architecture to the prompt's mean embedding (prompt excluded)."""
    m = zoo.manifest[usable(zoo.manifest) & (zoo.manifest["arch"] == p.spec.describe())]
    pool = [i for i in m.index if i not in set(p.ids)]
    if not pool:
        return p.ids
    zp = _embed(encoder, zoo, pool)
    sim = torch.nn.functional.normalize(zp, dim=1) @ torch.nn.functional.normalize(z.mean(0), dim=0)
    return [pool[i] for i in sim.argsort(descending=True)[:n].tolist()]


def generative_study(run_dir: str | Path, config: GenerativeConfig = GenerativeConfig(), zoo: Zoo | str | Path | None = None,
                     progress: bool = True) -> dict:
    """Test accuracy of each method's starting models after 0, 1 and ``epochs`` epochs of fine-tuning, on the
    prompt's task and on a new task: per setting, method and epoch, the mean over models per seed, and
    the mean and std over seeds."""
    run = RunDir(run_dir)
    dec, meta = run_decoder(run.path)
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo or meta["zoo"])
    p = resolve_prompt(zoo, config.prompt or default_prompt(zoo, run, dec))
    new_task = config.new_task or _new_task(zoo, run, p.spec, p.task)
    encoder = run.load_encoder()
    z = _embed(encoder, zoo, p.ids)
    retrieved = _retrieved(encoder, zoo, p, z, config.n)
    tc = TransferConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, also_at=())
    settings = {"same task": p.task, **({"new task": new_task} if new_task else {})}
    rows = []
    for seed in tqdm(range(config.seeds), desc="generative study", disable=not progress, leave=False):
        starts = {m: _starts(m, dec, z, p, zoo, config, seed, retrieved) for m in config.methods}
        for setting, task_name in settings.items():
            task = load_task(task_name)
            for method, params in starts.items():
                if setting == "new task" and config.new_head and not method.startswith("random init"):
                    params = _with_new_head(p.spec, params, starts["random init (torch default)"])
                ids = pd.DataFrame({"model_id": [f"{method}-{seed}-{j}" for j in range(len(params))]})
                models = Models(ids, [p.spec] * len(params), params)
                curves = finetune_curves(task, models, tc, seed, split=config.split)
                for epoch in sorted({0, 1, config.epochs}):
                    rows.append({"setting": setting, "task": task_name, "method": method, "seed": seed, "epoch": epoch,
                                 f"{config.split}_acc": float(np.nanmean(curves[:, epoch]))})
    table = pd.DataFrame(rows)
    summary = table.groupby(["setting", "method", "epoch"], sort=False)[f"{config.split}_acc"].agg(["mean", "std"])
    summary = summary.reset_index()
    return {"prompt": {"text": p.text[:500], "models": len(p.ids), "arch": p.spec.describe(), "task": p.task},
            "new_task": new_task, "config": asdict(config), "per_seed": table.to_dict("records"),
            "summary": summary.to_dict("records")}


def generative_markdown(study: dict | None) -> str:
    """The study as a report section: one table per setting, methods by fine-tuning epochs (mean ± std over seeds)."""
    if not study:
        return ""
    s = pd.DataFrame(study["summary"])
    p = study["prompt"]
    split = "validation" if study["config"].get("split") == "val" else "test"
    lines = ["## Generation: sampled models (SANE's protocol)", "",
             f"Prompt: {p['models']} {p['arch']} models of {p['task']!r}; {study['config']['n']} models per method and "
             f"seed, {study['config']['seeds']} seeds; {split} accuracy, mean ± std over seeds.", ""]
    for setting, g in s.groupby("setting", sort=False):
        task = p["task"] if setting == "same task" else study["new_task"]
        if setting == "new task" and study["config"].get("new_head"):
            task += "; transferred models with a fresh output layer"
        epochs = sorted(g["epoch"].unique())
        lines += [f"**{setting}** ({task}):", "", "| method | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
                  "|---|" + "---|" * len(epochs)]
        for method, mg in g.groupby("method", sort=False):
            cells = [f"{r['mean']:.3f} ± {0 if pd.isna(r['std']) else r['std']:.3f}" for _, r in mg.sort_values("epoch").iterrows()]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
