"""Offline classification tasks with fixed train/val/test splits.

Nothing is downloaded: data are generated (Tetris, synthetic, teacher, MNIST-1D via ``mnist1d``, 16 x 16
images in ``peace.zoo.images``) or ship with scikit-learn (digits, wine, breast cancer). Several tasks share an input/output shape
but compute different functions (``digits`` vs ``digits-rot90`` vs ``digits-labelperm``;
``tetris`` vs ``synth-K`` vs ``teacher-K``): the same architecture trained on them gives the hard
retrieval cases.

Task names are ``family`` or ``family-K`` where ``K`` is an integer seed (``synth-3``).
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peace.core.atomic import atomic_path
from peace.core.errors import PeaceError, unknown
from peace.zoo.images import IMAGE_TASKS, make_images

SPLIT_SEED = 20240601  # fixed: every task always has the same splits


@dataclass(frozen=True, eq=False)
class Task:
    """A classification task: arrays for each split plus the sample shape.

    ``input_shape`` is channels-first for signals and images ((1, 40), (1, 8, 8)) and (D,) for
    tabular data; MLPs flatten it.
    """

    name: str
    family: str
    description: str
    input_shape: tuple[int, ...]
    n_classes: int
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (X, y) of split ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise unknown("split", name, ["train", "val", "test"])
        return getattr(self, f"X_{name}"), getattr(self, f"y_{name}")

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))


def _split(X: np.ndarray, y: np.ndarray, fractions=(0.6, 0.2, 0.2)) -> tuple[np.ndarray, ...]:
    """Stratified, seeded train/val/test split."""
    from sklearn.model_selection import train_test_split

    test_frac = fractions[2]
    val_frac = fractions[1] / (fractions[0] + fractions[1])
    X_tv, X_te, y_tv, y_te = train_test_split(X, y, test_size=test_frac, stratify=y, random_state=SPLIT_SEED)
    X_tr, X_va, y_tr, y_va = train_test_split(X_tv, y_tv, test_size=val_frac, stratify=y_tv, random_state=SPLIT_SEED)
    return X_tr, y_tr, X_va, y_va, X_te, y_te


def _standardize(parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Scale features with the training split's mean and std (tabular tasks)."""
    X_tr, y_tr, X_va, y_va, X_te, y_te = parts
    mu, sd = X_tr.mean(0), X_tr.std(0) + 1e-8
    return (X_tr - mu) / sd, y_tr, (X_va - mu) / sd, y_va, (X_te - mu) / sd, y_te


def _make(name, family, description, input_shape, n_classes, parts) -> Task:
    X_tr, y_tr, X_va, y_va, X_te, y_te = parts
    f = lambda X: np.ascontiguousarray(X, dtype=np.float32).reshape((-1, *input_shape))
    i = lambda y: np.ascontiguousarray(y, dtype=np.int64)
    return Task(name, family, description, tuple(input_shape), int(n_classes),
                f(X_tr), i(y_tr), f(X_va), i(y_va), f(X_te), i(y_te))


# --- Tetris 4x4 ---------------------------------------------------------------------------------

_TETROMINOES = {  # one orientation each; all rotations and mirror images are generated
    "I": [[1, 1, 1, 1]],
    "O": [[1, 1], [1, 1]],
    "T": [[1, 1, 1], [0, 1, 0]],
    "L": [[1, 0], [1, 0], [1, 1]],
}


def _placements(shape: list[list[int]]) -> list[np.ndarray]:
    """Every distinct 4x4 image of a tetromino: all rotations, mirrors and positions."""
    base = np.array(shape)
    variants = {}
    for m in (base, base[:, ::-1]):
        for r in range(4):
            v = np.rot90(m, r)
            variants[v.tobytes() + bytes(v.shape)] = v
    images = {}
    for v in variants.values():
        h, w = v.shape
        for i in range(5 - h):
            for j in range(5 - w):
                img = np.zeros((4, 4), np.float32)
                img[i:i + h, j:j + w] = v
                images[img.tobytes()] = img
    return list(images.values())


def _top_left(shape: list[list[int]]) -> np.ndarray:
    """The tetromino as drawn, in the top-left corner of a 4x4 image."""
    img = np.zeros((4, 4), np.float32)
    img[:len(shape), :len(shape[0])] = shape
    return img


def tetris_task(per_class: int = 400, noise: float = 0.2, placements: str = "all") -> Task:
    """``placements="all"``: every position, rotation and mirror image of each tetromino (hard for a
    5-unit network); ``"canonical"``: each tetromino once, as drawn in the top-left corner."""
    everywhere = placements == "all"
    rng = np.random.default_rng(SPLIT_SEED)
    X, y = [], []
    for c, shape in enumerate(_TETROMINOES.values()):
        imgs = np.stack(_placements(shape) if everywhere else [_top_left(shape)])
        pick = rng.integers(0, len(imgs), per_class)
        X.append(imgs[pick] + noise * rng.standard_normal((per_class, 4, 4)).astype(np.float32))
        y.append(np.full(per_class, c))
    X, y = np.concatenate(X), np.concatenate(y)
    name, desc = (("tetris", "4x4 tetromino shapes I/O/T/L at every position and rotation, Gaussian pixel noise")
                  if everywhere else
                  ("tetris-canonical", f"4x4 tetrominoes I/O/T/L, one canonical placement each, Gaussian pixel "
                                       f"noise {noise:g} (the TETRIS zoos' data)"))
    return _make(name, "tetris", desc, (1, 4, 4), 4, _split(X, y))


# --- scikit-learn digits and their transformed variants -----------------------------------------

def _digits(variant: str) -> Task:
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.images.astype(np.float32) / 16.0, d.target.copy()
    if variant == "rot90":
        X = np.rot90(X, 1, axes=(1, 2)).copy()
    elif variant == "flip":
        X = X[:, :, ::-1].copy()
    parts = _split(X, y)
    if variant == "labelperm":  # same images and split as digits, labels relabelled
        perm = np.random.default_rng(7).permutation(10)
        parts = tuple(perm[p] if i % 2 else p for i, p in enumerate(parts))
    name = "digits" if variant == "" else f"digits-{variant}"
    desc = {"": "scikit-learn 8x8 handwritten digits", "rot90": "digits rotated by 90 degrees",
            "flip": "digits mirrored left-right", "labelperm": "digits with a fixed permutation of labels"}
    return _make(name, "digits", desc[variant], (1, 8, 8), 10, parts)


# --- MNIST-1D -----------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where generated data that take seconds to make are kept between processes: ``$PEACE_CACHE``, else
    ``$XDG_CACHE_HOME/peace``, else ``~/.cache/peace``."""
    if os.environ.get("PEACE_CACHE"):
        return Path(os.environ["PEACE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peace"


def _cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]],
                   valid: Callable[[dict[str, np.ndarray]], bool]) -> dict[str, np.ndarray]:
    """``build()``'s arrays, kept in ``cache_dir()/key.npz`` (``key`` names the generator and its arguments):
    generated once per machine instead of once per process. A missing, unreadable or not ``valid`` file is
    built and written again; one that cannot be written (read-only home) only costs the time."""
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if valid(arrays):
            return arrays
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        pass
    arrays = build()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError:
        pass
    return arrays


def _mnist1d() -> Task:
    """MNIST-1D's default dataset (seed 42). Its generator (and importing it: matplotlib, requests) takes
    ~6 s on 2 cores, paid by every process that built a zoo, trained, evaluated or expanded a recipe with
    it, so the arrays are cached on disk, keyed by the installed mnist1d's version (its defaults)."""

    def build() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = 42
        data = make_dataset(args)  # generated locally; never downloaded
        return {"X": np.concatenate([data["x"], data["x_test"]]).astype(np.float32),
                "y": np.concatenate([data["y"], data["y_test"]]).astype(np.int64)}

    arrays = _cached_arrays(f"mnist1d-{importlib.metadata.version('mnist1d')}-seed42", build,
                            lambda a: a.keys() == {"X", "y"} and a["X"].ndim == 2 and a["X"].dtype == np.float32
                            and a["y"].shape == (len(a["X"]),) and a["y"].dtype == np.int64)
    X, y = arrays["X"], arrays["y"]
    return _make("mnist1d", "mnist1d", "MNIST-1D (Greydanus 2020) generated locally, 40-sample signals",
                 (1, X.shape[1]), 10, _split(X, y))


# --- synthetic families: each seed is a distinct task of the same shape --------------------------

def _synth(k: int) -> Task:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=1600, n_features=16, n_informative=8, n_redundant=4,
                               n_classes=4, n_clusters_per_class=2, class_sep=1.2, random_state=1000 + k)
    return _make(f"synth-{k}", "synth", f"make_classification, 16 features, 4 classes, seed {k}",
                 (16,), 4, _standardize(_split(X, y)))


def _teacher(k: int) -> Task:
    """Labels are the argmax of a random tanh MLP teacher (16-32-4) on Gaussian inputs."""
    rng = np.random.default_rng(2000 + k)
    W1, W2 = rng.standard_normal((16, 32)) / 4.0, rng.standard_normal((32, 4)) / np.sqrt(32)
    X = rng.standard_normal((4000, 16))
    logits = np.tanh(X @ W1) @ W2
    y = logits.argmax(1)
    # keep classes balanced enough to stratify: drop samples of over-full classes
    keep = np.concatenate([np.flatnonzero(y == c)[:400] for c in range(4)])
    return _make(f"teacher-{k}", "teacher", f"argmax of a random tanh teacher MLP 16-32-4, seed {k}",
                 (16,), 4, _split(X[keep], y[keep]))


def _moons(k: int) -> Task:
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=1000, noise=0.1 + 0.05 * (k % 5), random_state=3000 + k)
    return _make(f"moons-{k}", "moons", f"two interleaving half circles, seed {k}", (2,), 2,
                 _standardize(_split(X, y)))


def _sklearn_tabular(loader: str) -> Task:
    from sklearn import datasets

    d = getattr(datasets, f"load_{loader}")()
    name = loader.replace("_", "-")
    return _make(name, name, f"scikit-learn {name} dataset, standardized", (d.data.shape[1],),
                 len(np.unique(d.target)), _standardize(_split(d.data, d.target)))


def _images(name: str) -> Task:
    return _make(name, "images", IMAGE_TASKS[name], (1, 16, 16), 4, _split(*make_images(name)))


_FIXED: dict[str, Callable[[], Task]] = {
    "tetris": tetris_task,
    "tetris-canonical": lambda: tetris_task(per_class=600, noise=0.3, placements="canonical"),
    "digits": lambda: _digits(""),
    "digits-rot90": lambda: _digits("rot90"),
    "digits-flip": lambda: _digits("flip"),
    "digits-labelperm": lambda: _digits("labelperm"),
    "mnist1d": _mnist1d,
    "wine": lambda: _sklearn_tabular("wine"),
    "breast-cancer": lambda: _sklearn_tabular("breast_cancer"),
    **{name: functools.partial(_images, name) for name in IMAGE_TASKS},
}
_SEEDED: dict[str, Callable[[int], Task]] = {"synth": _synth, "teacher": _teacher, "moons": _moons}


def task_names() -> list[str]:
    """Names accepted by :func:`load_task` (``family-K`` stands for any integer seed K)."""
    return sorted(_FIXED) + [f"{f}-K" for f in sorted(_SEEDED)]


def check_task_name(name: str) -> str:
    """Validate a task name without building its data."""
    m = re.fullmatch(r"([a-z]+)-(\d+)", str(name))
    if name in _FIXED or (m and m.group(1) in _SEEDED):
        return name
    raise unknown("task", name, task_names(), "Seeded families take any integer K, e.g. synth-3.")


def is_task(name: object) -> bool:
    """Whether ``name`` is a task PEACE holds data for (models of a zoo made elsewhere may name others)."""
    try:
        check_task_name(str(name))
    except PeaceError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def load_task(name: str) -> Task:
    """Build (once per process) and return the task called ``name``."""
    check_task_name(name)
    if name in _FIXED:
        return _FIXED[name]()
    family, k = name.rsplit("-", 1)
    return _SEEDED[family](int(k))


__all__ = ["PeaceError", "Task", "cache_dir", "check_task_name", "is_task", "load_task", "task_names"]
