"""What the Streamlit explorer shows, computed here so tests can see it (the app only lays it out).

An ``Explorer`` opens one embedding set with its zoo and encoder run: filters for the map, PEACE
neighbours next to the ones s(W), raw weights and function space would return, prediction agreement, interpolation
in embedding and weight space, symmetry-lab comparisons, and queries for uploaded model files.

The map needs only the set (its table, coordinates and Annoy index): torch and scikit-learn are
imported by the methods that need them, so the explorer's first page opens without them (~2 s);
``peace.serve.warm`` imports them in the background while a user looks at that page.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from peace.core.errors import PeaceError
from peace.serve.index import BASELINES, EmbeddingSet
from peace.serve.samples import Sample, folder_config

if TYPE_CHECKING:
    from peace.learn.generation import SampleConfig
    from peace.nets.architectures import ArchSpec
    from peace.serve.baseline_vectors import BaselineVectors
    from peace.zoo.store import Zoo

__all__ = ["Explorer", "activation_advice", "filter_table",
           "find_ablation_summaries", "find_embedding_sets", "find_evaluations", "find_models", "model_label",
           "parse_search", "search_reading", "typical_model"]


def find_embedding_sets(root: str | Path) -> list[Path]:
    """Embedding-set directories under ``root/embeddings`` (complete or not: opening one says what is wrong)."""
    base = Path(root) / "embeddings"
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "embeddings.parquet").exists()) if base.is_dir() else []


def find_ablation_summaries(root: str | Path) -> list[Path]:
    base = Path(root) / "ablations"
    return sorted(base.glob("*/summary.parquet")) if base.is_dir() else []


def find_evaluations(root: str | Path) -> list[Path]:
    """``metrics.json`` of every ``peace evaluate`` output under ``root/evaluation``."""
    base = Path(root) / "evaluation"
    return sorted(base.glob("*/metrics.json")) if base.is_dir() else []


def filter_table(table: pd.DataFrame, tasks=None, archs=None, activations=None, acc=None, epochs=None) -> pd.DataFrame:
    """Rows matching every given filter (None or empty: no filter)."""
    keep = np.ones(len(table), dtype=bool)
    for col, values in (("task", tasks), ("arch", archs), ("activation", activations)):
        if values:
            keep &= table[col].isin(list(values)).to_numpy()
    for col, rng in (("test_acc", acc), ("epoch", epochs)):
        if rng is not None:
            keep &= table[col].between(*rng).to_numpy()
    return table[keep]


def typical_model(table: pd.DataFrame) -> str:
    """A representative default query: a final checkpoint of the most common task, of median test
    accuracy (the most accurate model is often a trivial one)."""
    final = table[table["epoch"] == table["epochs"]] if "epochs" in table else table
    final = final if len(final) else table
    of_task = final[final["task"] == final["task"].value_counts().index[0]].sort_values(["test_acc", "model_id"])
    return str(of_task["model_id"].iat[len(of_task) // 2])


SEARCH_FIELD = re.compile(r"\b(epoch|acc|accuracy)\s*(>=|<=|==|=|>|<)?\s*(\d+(?:\.\d*)?|\.\d+)")
_LABEL_FIELD = {"epoch": re.compile(r"· epoch (\d+) ·"), "acc": re.compile(r"· acc ([-\d.naN]+)$")}
_OPS = {"=": np.equal, "==": np.equal, ">": np.greater, "<": np.less, ">=": np.greater_equal, "<=": np.less_equal}


def parse_search(text: str) -> tuple[list[str], list[tuple[str, str, float]]]:
    """The words of a map search and its field conditions: "tetris mlp epoch 6 acc > 0.9" is the words
    tetris, mlp and the conditions epoch = 6, acc > 0.9."""
    conditions = [("acc" if f.startswith("acc") else f, op or "=", float(v))
                  for f, op, v in SEARCH_FIELD.findall(text.lower())]
    return SEARCH_FIELD.sub(" ", text.lower()).split(), conditions


def find_models(labels: pd.Series, text: str) -> list[str]:
    """Ids (``labels``' index) whose label has a word starting with each word of ``text`` (any case; "tet mlp
    16" finds tetris MLPs of width 16) and meets its field conditions ("epoch 6", "acc > 0.9",
    ``parse_search``), an exact id first."""
    words, conditions = parse_search(text)
    if not words and not conditions:
        return []
    padded = " " + labels.str.lower().str.replace("·", " ", regex=False)
    hit = np.ones(len(labels), bool)
    for w in words:
        hit &= padded.str.contains(" " + w, regex=False).to_numpy()
    for field, op, value in conditions:
        found = pd.to_numeric(labels.str.extract(_LABEL_FIELD[field], expand=False), errors="coerce").to_numpy()
        hit &= _OPS[op](np.nan_to_num(found, nan=-np.inf), value)
    found = list(labels.index[hit])
    exact = text.strip()
    return [exact, *(m for m in found if m != exact)] if exact in labels.index else found


def search_reading(text: str) -> str:
    """How the map's search read ``text``, to show beside its result."""
    words, conditions = parse_search(text)
    parts = ([f"words {', '.join(repr(w) for w in words)}"] if words else []) + \
        [f"{f} {'=' if op == '==' else op} {v:g}" for f, op, v in conditions]
    return "; ".join(parts)


def activation_advice(check: pd.DataFrame, margin: float = 0.1) -> str | None:
    """A warning when the chosen activation looks wrong (``Explorer.activation_check``): on the zoo
    task the network fits best (the most above chance; tasks that merely share its sizes score near
    chance), the chosen activation scores ``margin`` below the best one. None when the choice looks
    right or no task's data can tell."""
    if check.empty or not check["chosen"].any():
        return None
    gain = check.groupby("task")["accuracy"].max() - check.groupby("task")["chance"].first()
    if gain.max() < margin:
        return None
    task = gain.idxmax()
    g = check[check["task"] == task].sort_values("accuracy", ascending=False)
    best, chosen = g["accuracy"].iat[0], g.loc[g["chosen"], "accuracy"].iat[0]
    if best - chosen < margin:
        return None
    top, name = g["activation"].iat[0], g.loc[g["chosen"], "activation"].iat[0]
    also = list(g["activation"].iloc[1:][g["accuracy"].iloc[1:] >= best - margin / 2])
    return (f"On {task}'s test inputs this network scores {chosen:.2f} with {name} but {best:.2f} with {top} (chance "
            f"{g['chance'].iat[0]:.2f}): it was most likely trained with {top}"
            + (f" (or {', '.join(also)}, as good on this task)" if also else "")
            + ". The activation decides the function, and so the embedding: choose it in the Activation field.")


def model_label(row: pd.Series) -> str:
    """How pickers show a model: id, task, architecture, epoch and test accuracy."""
    return f"{row['model_id']} · {row['task']} · {row['arch']} · epoch {row['epoch']} · acc {row['test_acc']:.3f}"


@dataclass
class Explorer:
    """One embedding set; its zoo and encoder run are opened, and the set checked against them, when a
    method first needs them."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.es = EmbeddingSet(self.path)
        self.run = self.es.source("run")
        self.table = self.es.table
        self.embeddings = self.es.embeddings

    @cached_property
    def zoo(self) -> Zoo:
        """The zoo the set was built from, opened on first use together with the check that neither it
        nor the encoder run changed since (a stale set is refused)."""
        from peace.learn.run import RunDir
        from peace.zoo.store import Zoo

        zoo, run = Zoo(self.es.source("zoo")), RunDir(self.run)
        self.es.check_current(encoder_sha256=run.encoder_sha256() if run.has_encoder() else None,
                              zoo_manifest_sha256=zoo.info["manifest_sha256"])
        return zoo

    def check(self) -> None:
        """Raise a PeaceError if the set is stale or its zoo or run is missing or broken."""
        self.zoo  # noqa: B018  (opening it is the check)

    @cached_property
    def encoder(self):
        from peace.learn.run import load_encoder

        self.check()
        return load_encoder(self.run)

    @cached_property
    def baselines(self) -> BaselineVectors:
        """s(W), raw-weight and probe-prediction vectors of every model: written by ``peace embed``
        (read in milliseconds); an older set without them has them computed here, once."""
        from peace.serve.baseline_vectors import BaselineVectors
        from peace.serve.baseline_vectors import compute as compute_baselines

        self.check()
        ids = list(self.table["model_id"])
        if (self.path / BASELINES).is_file():  # EmbeddingSet checked it against index.json
            return BaselineVectors.read(self.path / BASELINES, ids)
        return BaselineVectors(compute_baselines(self.zoo, ids))

    def neighbours(self, model_id: str, k: int = 10) -> pd.DataFrame:
        """PEACE's k nearest models (Annoy; all others in a smaller set) with distance, cosine and metadata."""
        return self.es.neighbours(model_id, min(k, len(self.table) - 1))

    def baseline_neighbours(self, model_id: str, method: str, k: int = 10) -> pd.DataFrame:
        """The k nearest models by cosine of s(W) (``stats``), raw weights (``raw``) or predictions on
        shared probe inputs (``function``: the share of equal predictions), exact search (all others, at most)."""
        return self.baselines.neighbours(method, self.es.row_of[model_id], min(k, len(self.table) - 1), self.table)

    def prefetch(self) -> None:
        """What the pages' first visits compute (baseline vectors, the encoder, the default interpolation,
        the first embedding of each io-space), done ahead: ``peace.serve.warm`` calls it while a user looks
        at a page."""
        from peace.nets.probes import io_space
        from peace.serve.teaching import partner

        self.baselines, self.encoder  # noqa: B018  (cached)
        a = typical_model(self.table)
        with contextlib.suppress(PeaceError):  # no partner, or a family weight matching does not read
            self.weight_path(a, partner(self.zoo, a))
        # an encoder builds each io-space's function-block map on first use (an orthogonal 10-class one ~0.3 s):
        # one model of every space embedded here, so that an upload or query does not wait for it
        specs = {m: self.zoo.spec(m) for m in self.table.groupby("arch")["model_id"].first()}
        ids = list({io_space(s): m for m, s in specs.items()}.values())
        self.encoder.embed([specs[m] for m in ids], self.zoo.load_many(ids))

    def agreement(self, model_id: str, others: list[str]) -> list[float]:
        """Share of shared probe inputs on which each other model predicts what the query does
        (NaN where they do not share the query's io-space)."""
        return self.baselines.agreement(self.es.row_of[model_id], [self.es.row_of[o] for o in others])

    def embedding_path(self, a: str, b: str, steps: int = 9) -> pd.DataFrame:
        """Along the straight line between two embeddings (renormalized), the nearest zoo model at each step."""
        ea, eb = self.embeddings[self.es.row_of[a]], self.embeddings[self.es.row_of[b]]
        rows = []
        for t in np.linspace(0, 1, steps):
            v = (1 - t) * ea + t * eb
            hit = self.es.query(v / max(np.linalg.norm(v), 1e-12), 1).iloc[0]
            rows.append({"t": t, **hit.to_dict()})
        return pd.DataFrame(rows)

    @cached_property
    def decoder(self):
        """The run's decoder (``peace decoder``), or None when it has none (or one for another encoder)."""
        from peace.learn.generation import run_decoder

        try:
            return run_decoder(self.run)[0]
        except PeaceError:
            return None

    def decoded_path(self, a: str, b: str, steps: int = 9) -> pd.DataFrame | None:
        """Models decoded into A's architecture at points of the straight line from A's embedding to B's:
        their test accuracy on A's task and on B's, as decoded and, where the encoder's sketch of A's
        io-space can be read back, refined towards each point's function block (``peace.learn.refine``;
        columns ending in ", refined"). None without a decoder for A's architecture."""
        import math

        import torch

        from peace.learn.decoder import head_spec
        from peace.learn.generation import accuracy
        from peace.learn.refine import sketch_fit

        spec = self.zoo.spec(a)
        if self.decoder is None or head_spec(spec) not in self.decoder.specs:
            return None
        ea, eb = self.embeddings[self.es.row_of[a]], self.embeddings[self.es.row_of[b]]
        ts = np.linspace(0, 1, steps)
        z = torch.from_numpy(np.stack([(1 - t) * ea + t * eb for t in ts])).float()
        made = {"": self.decoder.decode(z, spec)}
        fit = sketch_fit(self.encoder)
        if self.decoder.will_refine(spec, fit):
            made[", refined"] = self.decoder.decode(z, spec, fit)
        out = pd.DataFrame({"t": ts})
        for model_id in dict.fromkeys((a, b)):
            task = self.zoo.task(model_id)
            if task.n_features == math.prod(spec.input_shape) and task.n_classes == spec.n_classes:
                for suffix, models in made.items():
                    out[f"accuracy on {task.name}{suffix}"] = accuracy(spec, models, task)
        return out

    def decodable_archs(self) -> list[str]:
        """Architectures of the set that the run's decoder writes, most models first."""
        if self.decoder is None:
            return []
        from peace.learn.generation import written_by

        written = self.table[written_by(self.decoder, self.table["arch_spec"])]
        counts = written.groupby(["arch", "arch_spec"]).size().sort_values(ascending=False)
        return list(dict.fromkeys(a for a, _ in counts.index))

    def sample(self, prompt: list[str], config: SampleConfig) -> Sample:
        """New models decoded from a kernel density estimate around the prompt models' embeddings (one
        architecture and task; ``config`` as ``peace sample``'s), measured on the task beside random
        initialization and the prompt, and placed on the map (mean position of their 5 nearest zoo models)."""
        import torch

        from peace.learn.generation import accuracy, decoder_training_models, default_inits, sample_models

        spec, task = self.zoo.spec(prompt[0]), self.zoo.task(prompt[0])
        z = torch.from_numpy(self.embeddings[[self.es.row_of[m] for m in prompt]]).float()
        n, seed = config.n, config.seed
        models, _ = sample_models(self.decoder, z, spec, task, config)
        acc = accuracy(spec, models, task)
        rows = self.table.iloc[[self.es.row_of[m] for m in prompt]]
        groups = {"sampled": acc, "random init (torch default)": accuracy(spec, default_inits(spec, n, seed), task),
                  "prompt models": rows["test_acc"].to_numpy()}
        comparison = pd.DataFrame([{"models": k, "n": len(v), "mean": v.mean(), "min": v.min(), "max": v.max()}
                                   for k, v in groups.items()])
        xy = np.stack([self.map_position(e) for e in self.encoder.embed([spec] * len(models), models).numpy()])
        return Sample(spec, task.name, list(prompt), models, acc, comparison, xy,
                      decoder_training_models(self.run, spec, task.name, self.zoo))

    def weight_path(self, a: str, b: str, n_points: int = 11) -> dict:
        """Linear interpolation in weight space between two models of one architecture, without and
        with permutation alignment: loss and accuracy on the task's test split, and where each
        interpolated model lands on the 2-D map (mean position of its 5 nearest zoo models).
        Cached per pair: aligning, evaluating and embedding the path is the app's slowest step."""
        cache = self.__dict__.setdefault("_path_cache", {})
        if (a, b, n_points) not in cache:
            cache[(a, b, n_points)] = self._weight_path(a, b, n_points)
        return cache[(a, b, n_points)]

    def _weight_path(self, a: str, b: str, n_points: int) -> dict:
        from peace.nets.alignment import interpolate
        from peace.serve.teaching import interpolation_demo

        paths = interpolation_demo(self.zoo, a, b, n_points)
        spec, pa = self.zoo.spec(a), self.zoo.weights(a)
        for path in paths.values():
            mids = [interpolate(pa, path["end"], t) for t in path["alpha"]]
            emb = self.encoder.embed([spec] * len(mids), mids).numpy()
            path["map_xy"] = np.stack([self.map_position(e) for e in emb])
        return paths

    def map_missing(self) -> str | None:
        """Why the set has no map, and how to make it again with one (None when it has one)."""
        if "umap_2d_x" not in self.table:  # embedded with --no-umap
            return (f"The set {self.path.name} has no map: it was embedded with `--no-umap`. `peace embed --run "
                    f"{self.run} --zoo {self.es.source('zoo')} --out {self.path}` makes it again with one.")
        return None

    def map_position(self, vector: np.ndarray, k: int = 5) -> np.ndarray:
        """2-D map coordinates of an embedding that UMAP never saw: the mean of its k nearest models' (NaN: no map)."""
        if self.map_missing():  # a set embedded with --no-umap
            return np.full(2, np.nan)
        hits = self.es.query(vector, min(k, len(self.es)))
        xy = hits[["umap_2d_x", "umap_2d_y"]].dropna()  # big sets: neighbours off the map's sample do not count
        return xy.to_numpy().mean(0) if len(xy) else self.es.query(vector, min(len(self.es), 50 * k))[
            ["umap_2d_x", "umap_2d_y"]].dropna().to_numpy()[:k].mean(0)

    def symmetry_lab(self, model_id: str, permute: bool, scale: bool, flip: bool, seed: int,
                     groups: tuple[int, ...] | None = None) -> dict:
        """A random symmetry transform of a model (of the unit groups ``groups``, default all): output
        change on its test inputs (``teaching.symmetry_demo``), and how far raw weights, s(W) and PEACE
        say it moved (cosine distances)."""
        from peace.evaluate.baselines import Models, RawWeights
        from peace.evaluate.metrics import normalize_rows
        from peace.nets.symmetry import RandomSymmetry
        from peace.serve.teaching import symmetry_demo

        demo = symmetry_demo(self.zoo, model_id, seed, RandomSymmetry(permute=permute, scale=scale, flip=flip,
                                                                      groups=groups))
        spec, p, q = self.zoo.spec(model_id), demo.before, demo.after
        m = Models(pd.DataFrame({"model_id": [model_id, model_id + "*"]}), [spec, spec], [p, q])
        # 1 - cos as |a - b|^2 / 2 of the unit rows: exactly 0 for identical vectors (1 - a.b leaves rounding)
        cos = lambda v: float(np.square(np.subtract(*normalize_rows(v)[:2])).sum() / 2)  # noqa: E731
        return {"original": p, "transformed": q, "max_output_change": demo.max_output_change,
                "raw": cos(RawWeights().fit(m).transform(m)), "stats": cos(self.baselines.weight_stats().transform(m)),
                # one model per call: on several threads a batch's float sums depend on a model's place in it
                "peace": cos(np.concatenate([self.encoder.embed([spec], [w]).numpy() for w in (p, q)]))}

    def example_file(self, folder: str | Path) -> tuple[Path, str]:
        """A model folder to try the query page with (``model.safetensors`` + ``config.json``): a zoo
        model, an MLP where there is one, with its hidden units shuffled; PEACE should find the
        original first. Returns the folder and the original's id."""
        from safetensors.torch import save_file

        from peace.nets.symmetry import RandomSymmetry, random_symmetry

        mlps = self.table[self.table["family"] == "mlp"]
        mid = typical_model(mlps if len(mlps) else self.table)
        spec, folder = self.zoo.spec(mid), Path(folder)
        shuffled = random_symmetry(spec, self.zoo.weights(mid), 0, RandomSymmetry(permute=True, scale=False, flip=False))
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in shuffled.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(folder_config(spec)))
        return folder, mid

    def infer_activation(self, m) -> str | None:
        """The activation under which the network scores best on a zoo task's test inputs, or None when no
        zoo task has its inputs and classes or no activation beats chance clearly."""
        check = self.activation_check(m.spec, m.params)
        if check.empty:
            return None
        best = check.loc[check["accuracy"].idxmax()]
        return str(best["activation"]) if best["accuracy"] > best["chance"] + 0.1 else None

    def activation_check(self, spec: ArchSpec, params: dict, max_rows: int = 2_000) -> pd.DataFrame:
        """An imported model's accuracy on the test split of every zoo task with its input and output
        sizes, under each activation: a trained network scores well only with the activation it was
        trained with, and the activation decides the function (and so the embedding). Columns task,
        activation, accuracy, chance, chosen; empty when no zoo task matches."""
        import dataclasses

        import torch

        from peace.nets.architectures import ACTIVATIONS, forward, stack_params
        from peace.nets.probes import io_space

        rows, stacked = [], stack_params([params])
        for task_name, mid in self.table.groupby("task")["model_id"].first().items():
            if io_space(self.zoo.spec(mid)) != io_space(spec):
                continue
            task = self.zoo.task(mid)
            X = torch.from_numpy(task.X_test[:max_rows]).float().reshape(-1, *spec.input_shape)
            y = torch.from_numpy(task.y_test[:max_rows])
            for act in ACTIVATIONS:
                with torch.no_grad():
                    pred = forward(dataclasses.replace(spec, activation=act), stacked, X)[0].argmax(-1)
                rows.append({"task": task_name, "activation": act, "accuracy": float((pred == y).float().mean()),
                             "chance": float(np.bincount(y.numpy()).max() / len(y)),
                             "chosen": act == spec.activation})
        return pd.DataFrame(rows, columns=["task", "activation", "accuracy", "chance", "chosen"])

    def prepare_query(self) -> None:
        """Make the next ``query_file`` quick: start the process that forks the isolated readers (its
        interpreter and imports take seconds, once per server) and load the encoder, e.g. while a user
        picks a file."""
        from peace.intake.sandbox import prepare_reader

        prepare_reader()
        self.encoder  # noqa: B018  (loaded and cached)

    def query_file(self, path: str | Path, config: dict, k: int = 10) -> tuple[object, pd.DataFrame, np.ndarray]:
        """An uploaded model file: (the imported model, its k nearest zoo models, its map position).
        The file is parsed in a resource-limited child process, never in the server's own. A plain
        chain whose activation is not given is read with the activation that fits it best on the zoo
        tasks' data (``infer_activation``; ``m.inferred`` says so)."""
        import dataclasses

        from peace.intake.importers import MissingActivation
        from peace.intake.sandbox import load_model_isolated

        try:
            m = load_model_isolated(path, config)
        except MissingActivation as e:  # e.model: the chain read with the identity, from the same child
            best = self.infer_activation(e.model)
            if best is None:
                raise PeaceError(f"{e} (PEACE could not tell it from data: no activation makes the network clearly "
                                 f"better than chance on a zoo task with its inputs and classes)") from None
            m = dataclasses.replace(e.model, spec=dataclasses.replace(e.model.spec, activation=best),
                                    inferred={**e.model.inferred, "activation": best})
        vector = self.encoder.embed([m.spec], [m.params]).numpy()[0]  # __post_init__ checked it made this set
        hits = self.es.query(vector, min(k, len(self.es)))
        return m, hits, self.map_position(vector)
