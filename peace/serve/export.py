"""``peace embed``: embed every model of a zoo with a trained encoder, add UMAP maps, build the index."""
from __future__ import annotations

import functools
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from peace.core.cluster import Engine, Serial, chunks
from peace.core.errors import PeaceError
from peace.learn.encoder import Embedder
from peace.learn.run import RunDir, load_encoder
from peace.nets.probes import io_space
from peace.serve import baseline_vectors
from peace.serve.index import EmbeddingSet, write_embedding_set
from peace.zoo.store import Zoo, usable

__all__ = [
    "MAP_SAMPLE", "SHARD", "cosine_neighbours", "embed_models", "embed_zoo", "export_embeddings", "map_sample",
    "query_model", "query_notes", "umap_coordinates"
]


@functools.cache
def _umap():
    """umap-learn, with numba's on-disk cache turned on for its kernels. umap-learn does not ask for it,
    so every process compiled them again: 15-35 s on 2 cores, most of a small set's export. Now once per
    machine (numba keys the cache to the source files and its own version). A kernel whose Python
    function another kernel shares (the parallel twin of the layout epoch) stays uncached: numba would
    give both one cache entry."""
    import umap  # imported lazily: it imports numba
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    kernels = list({id(obj): obj for name, mod in list(sys.modules.items()) if name.split(".")[0] == "umap"
                    for obj in vars(mod).values() if isinstance(obj, CPUDispatcher)}.values())  # once, if imported twice
    shared = Counter(id(k.py_func) for k in kernels)
    for k in kernels:
        if isinstance(k._cache, NullCache) and (shared[id(k.py_func)] == 1 or not k.targetoptions.get("parallel")):
            try:
                k.enable_caching()
            except RuntimeError:  # no writable cache directory: compiled in each process, as before
                break
    return umap


def cosine_neighbours(emb: np.ndarray, k: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine distances) of each row's min(k, n - 1) nearest rows, itself among them: the exact
    graph UMAP builds on (scikit-learn, brute force). From 4,096 points UMAP would run NNDescent, whose
    numba kernels no cache keeps: about a minute of compiling per process on 2 cores, longer than the
    exact search of a map's at most ``MAP_SAMPLE`` points. Computed once, it serves both maps."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(emb) - 1)
    if k < 1:
        return np.zeros((len(emb), 0), np.int32), np.zeros((len(emb), 0), np.float32)
    dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(emb).kneighbors(emb)
    return idx.astype(np.int32), dist.astype(np.float32)


def umap_coordinates(emb: np.ndarray, n_components: int, seed: int = 0,
                     neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """UMAP (cosine metric, fixed seed) of the embeddings on their exact neighbours (``cosine_neighbours``,
    computed here unless given); tiny sets fall back to fewer neighbours."""
    umap = _umap()
    n = len(emb)
    if n <= n_components + 1:
        return np.zeros((n, n_components), dtype=np.float32)
    idx, dist = cosine_neighbours(emb) if neighbours is None else neighbours
    reducer = umap.UMAP(n_components=n_components, n_neighbors=idx.shape[1], metric="cosine", random_state=seed,
                        n_jobs=1, init="random" if n < 4 * n_components + 4 else "spectral", precomputed_knn=(idx, dist))
    # numba's OpenMP layer runs on torch's libgomp and leaves the calling thread's OpenMP thread count at
    # NUMBA_NUM_THREADS (every core): a process that gave torch fewer threads (a test worker, a Ray task, a
    # user's choice) then ran every later torch op on all cores, spinning against its neighbours (10x slower)
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="precomputed_knn")  # no search index: we never transform
            return reducer.fit_transform(emb).astype(np.float32)
    finally:
        if threads is not None:
            torch.set_num_threads(threads)


MAP_SAMPLE = 50_000  # models placed on the UMAP maps; bigger sets get a sample (UMAP's cost, the browser's points)


def map_sample(task: pd.Series, n: int = MAP_SAMPLE, seed: int = 0, floor: int = 200) -> np.ndarray:
    """Which rows go on the maps: all up to ``n``; beyond, a random sample of about ``n`` in which
    each task keeps its share but at least ``floor`` models (small tasks stay visible; at most n / tasks)."""
    if len(task) <= n:
        return np.ones(len(task), bool)
    rng = np.random.default_rng([seed, 7])
    keep = np.zeros(len(task), bool)
    groups = task.groupby(task, sort=True).indices
    floor = min(floor, n // len(groups))
    for rows in groups.values():
        want = min(len(rows), max(floor, round(n * len(rows) / len(task))))
        keep[rng.choice(rows, want, replace=False)] = True
    return keep


def embed_zoo(encoder: Embedder, zoo: Zoo, model_ids: list[str] | None = None, batch_size: int = 128,
              progress: bool = False) -> np.ndarray:
    """(n, output_dim) embeddings of zoo models (all ``ok`` models by default), in ``model_ids`` order,
    reading the weights batch by batch."""
    if model_ids is None:
        model_ids = list(zoo.manifest.index[usable(zoo.manifest)])
    out = []
    for s in tqdm(range(0, len(model_ids), batch_size), desc="embed", disable=not progress, leave=False):
        chunk = model_ids[s:s + batch_size]
        out.append(encoder.embed([zoo.spec(m) for m in chunk], zoo.load_many(chunk), batch_size).numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.config.output_dim), np.float32)


SHARD = 1024  # models per piece of embedding work (a multiple of embed_zoo's batches: same batches as unsharded)


def _embedder(run_dir: str, zoo_path: str) -> tuple[Embedder, Zoo]:
    """A worker's state: the encoder and the zoo, opened once."""
    return load_encoder(run_dir), Zoo(zoo_path)


def _embed_shard(state: tuple[Embedder, Zoo], ids: list[str]) -> np.ndarray:
    encoder, zoo = state
    return embed_zoo(encoder, zoo, ids)


def embed_models(run_dir: str | Path, zoo: Zoo, ids: list[str], engine: Engine | None = None,
                 progress: bool = False) -> np.ndarray:
    """Embeddings of ``ids`` in shards of ``SHARD`` models: each worker of ``engine`` loads the encoder
    once and reads only its shards' weights, so no process holds the whole zoo."""
    pieces = (engine or Serial()).map_with(_embedder, (str(Path(run_dir).resolve()), str(zoo.path.resolve())),
                                           _embed_shard, chunks(ids, SHARD), progress="embed" if progress else None)
    return np.concatenate(pieces) if pieces else np.zeros((0, 0), np.float32)


def export_embeddings(run_dir: str | Path, out: str | Path, zoo: Zoo | str | Path | None = None, trees: int = 50,
                      umap: bool = True, seed: int = 0, progress: bool = True,
                      engine: Engine | None = None, baselines: bool = True) -> EmbeddingSet:
    """Embed the zoo's ``ok`` models with the run's best encoder and write an embedding set to ``out``
    (the embedding spread over ``engine``'s workers; the table, maps and index made here), with the
    baseline vectors the explorer compares against (``peace.serve.baseline_vectors``; ``baselines=False``
    leaves them to the explorer's first visit)."""
    from peace.serve.index import check_output_dir

    run_dir, out = Path(run_dir), Path(out)
    check_output_dir(out)  # before the slow part
    encoder = load_encoder(run_dir)
    if zoo is None:
        zoo = encoder.meta["zoo"]
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    ids = list(zoo.manifest.index[usable(zoo.manifest)])
    if not ids:
        raise PeaceError(f"zoo {zoo.path} has no usable models (status 'ok' or 'sampled') to embed")
    emb = embed_models(run_dir, zoo, ids, engine, progress)
    table = zoo.manifest.loc[ids].reset_index(drop=True)
    run = RunDir(run_dir)
    same_zoo = encoder.meta.get("zoo_manifest_sha256") == zoo.info["manifest_sha256"]
    if run.has_splits() and same_zoo:
        table = table.merge(run.splits(), on="model_id", how="left")
    else:  # another zoo: none of its models were seen in training
        table = table.assign(split="unseen", heldout_task=False)
    if umap:
        on_map = map_sample(table["task"], MAP_SAMPLE, seed)
        neighbours = cosine_neighbours(emb[on_map])  # one search for both maps
        for d in (2, 3):
            t0 = time.perf_counter()
            xy = np.full((len(table), d), np.nan, np.float32)
            xy[on_map] = umap_coordinates(emb[on_map], d, seed, neighbours)
            if progress:
                print(f"UMAP {d}-D map of {on_map.sum()} models: {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                      flush=True)
            for j, axis in enumerate("xyz"[:d]):
                table[f"umap_{d}d_{axis}"] = xy[:, j]
    provenance = {"run": str(run_dir), "encoder_sha256": run.encoder_sha256(), "zoo": str(zoo.path),
                  "zoo_manifest_sha256": zoo.info["manifest_sha256"],
                  "encoder_config": json.loads(json.dumps(encoder.meta["config"]))}
    baselines = baseline_vectors.compute(zoo, ids, progress) if baselines else None
    return write_embedding_set(out, table, emb, trees, provenance, baselines)


def query_model(es: EmbeddingSet, spec, params: dict, k: int = 10, run_dir: str | Path | None = None) -> pd.DataFrame:
    """The ``k`` nearest models of the set to a model from outside it (an imported file), embedded by
    the encoder that embedded the set (refused if that encoder has changed since)."""
    run_dir = Path(run_dir) if run_dir else es.source("run")
    if not RunDir(run_dir).has_encoder():
        raise PeaceError(f"the embedding set {es.path} was made by the run {run_dir}, which has no encoder.safetensors "
                         f"any more; pass the run with --run, or re-embed with `peace embed --run RUN --out {es.path}`")
    es.check_current(encoder_sha256=RunDir(run_dir).encoder_sha256())
    vector = load_encoder(run_dir).embed([spec], [params]).numpy()[0]
    return es.query(vector, k)


def query_notes(es: EmbeddingSet, spec, hits: pd.DataFrame) -> list[str]:
    """What a reader of an outside model's neighbours should know: whether any model of the set shares its
    input -> class space (only then do they compute comparable functions), and whether the nearest is close
    by the set's own standard (its models' median nearest-neighbour cosine)."""
    notes, space = [], io_space(spec)
    if es.io_spaces and space not in es.io_spaces:
        notes.append(f"no model of the set maps {space.replace('->', ' inputs to ')} classes (its spaces: "
                     f"{', '.join(es.io_spaces[:8])}{', ...' if len(es.io_spaces) > 8 else ''}): these neighbours share "
                     f"the network's structure, not a task; PEACE compares what models compute within one space")
    nearest = float(hits["cosine"].iloc[0])
    if es.weak_match(nearest):
        notes.append(f"a weak match: the nearest model is at cosine {nearest:.3f}, where the set's models' nearest "
                     f"neighbours are typically at {es.typical_nearest_cosine:.3f} (median); nothing in the set is "
                     f"close to this model")
    return notes
