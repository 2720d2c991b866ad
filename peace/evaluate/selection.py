"""Model selection on a task nobody labelled: which of a task's models is best, read without its labels?

The user's question of a zoo: "which of these models should I use for my new task". On the held-out
tasks of a run (tasks no training model comes from), each method ranks the task's test models by
predicted test accuracy (a ridge probe fit on the training tasks' models: no label of the held-out task
is used) and is scored by the Kendall tau of that ranking inside each task, averaged over tasks.

Beside them, signals that read no trained probe at all:

- **confidence**: each model's mean top softmax probability on the task's unlabelled inputs (uses data);
- **consensus**: models that solve a task agree with each other, models that do not err each their own
  way, so a model's agreement with the others ranks it, on the task's unlabelled inputs (uses data) or on
  PEACE's Gaussian probe inputs (weights only: no data of the task). The default weighs each other model
  by its own centrality (the Perron eigenvector of the pairwise agreement matrix). Chosen on the demo
  zoo's validation split and checked on a zoo made elsewhere (TETRIS-SEED): the spectral meta-learner
  (Parisi, Strino, Nadler, Kluger, PNAS 2014) ties it on validation but ranks TETRIS-SEED's models at
  random, the plain majority vote fails where fine-tunes agree by their parents (``docs/benchmarks.md``).
- **written score** (weights only, :func:`written_score`): Gaussian noise is unlike a task's data, so the
  task's better models (by consensus on the probes) write inputs (Gaussian starts moved by gradient descent
  until they answer each with an assigned class: :func:`inverted_inputs`, model inversion as in
  DeepInversion, without data), and each model scores its mean probability of the assigned classes: a
  pseudo-labelled test set made from the weights.

The score is ``peace.evaluate.metrics.within_group_tau`` (``linear_probe(..., rank_within=...)`` for probes).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import svds

from peace.core.errors import PeaceError
from peace.core.grouping import positions
from peace.nets.architectures import ArchSpec, forward, predict, stack_params
from peace.nets.probes import N_PROBES, io_space, probe_inputs, responses
from peace.zoo.tasks import load_task

__all__ = ["CONFIDENCE", "DATA_CONSENSUS", "MAX_INPUTS", "MAX_WRITERS", "PROBE_CONSENSUS", "WRITTEN_ROUNDS",
           "WRITTEN_SCORE", "agreement_scores", "confidence", "consensus", "inverted_inputs", "written_classes",
           "written_score"]

CONFIDENCE = "confidence (task's unlabelled inputs)"
DATA_CONSENSUS = "consensus (task's unlabelled inputs)"
PROBE_CONSENSUS = "consensus (Gaussian probes, weights only)"
WRITTEN_SCORE = "probability of the written classes on inputs the models write (weights only)"
MAX_INPUTS = 512  # inputs a consensus reads per task: agreement estimates settle long before, memory stays n x 512 x C
MAX_WRITERS = 256  # models that write inverted inputs: a 20,000-model selection costs what 512 models do (the demo
# zoo's per-task figures are the same with 256 as with every model of the top half; 128 and 64 lose 0.003-0.006)
WRITTEN_ROUNDS = 2  # inversions per written score: the second written by the first score's better half (validation 0.638 vs 0.633)


def confidence(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]], tasks: Sequence[str],
               split: str = "test") -> np.ndarray:
    """Each model's mean top softmax probability on its task's ``split`` inputs (the labels are not read)."""
    out = np.zeros(len(specs))
    for task, idx in positions(tasks).items():
        out[idx] = _probability([specs[i] for i in idx], [params[i] for i in idx],
                                torch.as_tensor(load_task(task).split(split)[0]))
    return out


@torch.no_grad()
def _probability(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]], x: torch.Tensor,
                 classes: torch.Tensor | None = None) -> np.ndarray:
    """Each model's mean softmax probability on ``x`` (rows that reshape to each spec's inputs) of ``classes`` (one
    per row), or of its own top class where none are given."""
    out, big = np.zeros(len(specs)), torch.finfo(torch.float32).max
    for spec, idx in positions(specs).items():
        logits = predict(spec, [params[i] for i in idx], x).float()  # (models, rows, classes)
        p = torch.nan_to_num(logits, nan=0.0, posinf=big, neginf=-big).softmax(-1)  # overflowed logits: their limit
        out[idx] = (p.amax(-1) if classes is None else p[:, torch.arange(len(x)), classes]).mean(-1).numpy()
    return out


def agreement_scores(predictions: np.ndarray, how: str = "centrality") -> np.ndarray:
    """Label-free quality scores of ``n`` models from their predicted classes (n, K) on K shared inputs,
    higher for models that agree with the others. ``centrality`` (the default): agreement with the others
    weighted by how central each of them is, the Perron eigenvector v of the pairwise agreement matrix A
    (A_ij: share of inputs on which i and j predict alike), reported as (A v)_i / sum(v), a share in
    [0, 1]; ``majority``: the share of inputs on which a model predicts the majority vote; ``spectral``:
    its entry in the leading singular vector of the centred one-hot predictions (Parisi et al. 2014),
    signed to agree with the majority score."""
    P = np.asarray(predictions)
    if P.ndim != 2 or len(P) == 0:
        raise PeaceError(f"agreement scores need (models, inputs) predicted classes, got shape {P.shape}")
    if how not in ("centrality", "majority", "spectral"):
        raise PeaceError(f"unknown agreement score {how!r}; choose 'centrality', 'majority' or 'spectral'")
    onehot = np.eye(int(P.max()) + 1, dtype=np.float32)[P]  # (n, K, C)
    majority = (P == onehot.sum(0).argmax(-1)).mean(1)
    if how == "majority" or len(P) < 3:
        return majority
    Q = onehot.reshape(len(P), -1)
    if how == "centrality":  # power iteration on A = Q Q^T / K without forming the n x n matrix
        v = np.ones(len(P), np.float64) / np.sqrt(len(P))
        for _ in range(200):
            av = Q @ (Q.T @ v) / P.shape[1]
            v, last = av / np.linalg.norm(av), v
            if np.abs(v - last).max() < 1e-10:
                break
        return av / last.sum()  # (A v)_i / sum(v) for the v that av was computed from
    Q -= Q.mean(0)
    if not np.abs(Q).max() > 0:  # every model predicts alike: nothing to rank
        return majority
    v0 = np.random.default_rng(0).standard_normal(min(Q.shape)).astype(np.float32)  # fixed: the same scores each call
    u = svds(Q, k=1, v0=v0)[0][:, 0]  # float32: 20,000 models x 512 inputs x 10 classes stay 400 MB
    return u if np.dot(u - u.mean(), majority - majority.mean()) >= 0 else -u


def inverted_inputs(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]], scores: np.ndarray,
                    n: int = N_PROBES, steps: int = 100, lr: float = 0.05, decay: float = 0.1,
                    writers: int = MAX_WRITERS) -> torch.Tensor:
    """(n, features) inputs of one io-space from the models' weights alone, inverted from the better half of the
    models (by ``scores``; at least two, at most ``writers``, which bounds the cost of a large selection):
    Gaussian starts (the probes after the space's first ``n``, so never the ones read beside them) moved by
    ``steps`` of Adam on those models' mean cross-entropy towards an assigned class each (``written_classes``),
    with ``decay`` times the inputs' mean square keeping them at the probes' scale. Models that learned the
    task answer such inputs alike; models that did not, each their own way."""
    top = set(np.argsort(-np.asarray(scores), kind="stable")[:max(2, min(writers, len(specs) // 2))].tolist())
    populations = [(s, {k: v.float() for k, v in stack_params([params[i] for i in idx if i in top]).items()})
                   for s, idx in positions(specs).items() if top.intersection(idx)]
    x = probe_inputs(specs[0].input_shape, 2 * n)[n:].float().flatten(1).requires_grad_(True)
    target = written_classes(n, specs[0].n_classes)
    opt = torch.optim.Adam([x], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = torch.cat([forward(s, p, x.reshape(-1, *s.input_shape)) for s, p in populations])
            loss = F.cross_entropy(logits.permute(0, 2, 1), target.expand(len(logits), -1)) + decay * x.pow(2).mean()
            if not torch.isfinite(loss):  # a writer overflows (huge weights): keep the last finite inputs
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    return x.detach()


def consensus(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]], tasks: Sequence[str],
              inputs: str | torch.Tensor = "data", split: str = "test", how: str = "centrality") -> np.ndarray:
    """Each model's consensus score among the models of its task (see the module docstring), read on
    ``inputs``: ``"data"``, the task's unlabelled ``split`` inputs; ``"probes"``, PEACE's Gaussian probes of
    the models' io-space (weights only, so ``tasks`` may be any grouping of models); or a tensor of
    unlabelled inputs that every model reads. ``how``: ``agreement_scores``' method (centrality by default)."""
    if isinstance(inputs, str) and inputs not in ("data", "probes"):
        raise PeaceError(f"consensus reads 'data' (the task's unlabelled inputs), 'probes' or an input tensor, not "
                         f"{inputs!r} (inputs written by the models: written_score)")
    if isinstance(inputs, str) and inputs == "probes":  # the function-space baseline's probe responses
        predictions = [r.argmax(-1).numpy() for r in responses(specs, params)]
    else:
        predictions = [np.zeros(0, np.int64)] * len(specs)
        for (task, _), idx in _groups(specs, tasks).items():
            x = inputs if not isinstance(inputs, str) else torch.as_tensor(load_task(task).split(split)[0])
            for i, p in zip(idx, _predicted([specs[i] for i in idx], [params[i] for i in idx], x[:MAX_INPUTS])):
                predictions[i] = p
    out = np.zeros(len(specs))
    for idx in _groups(specs, tasks).values():
        out[idx] = agreement_scores(np.stack([predictions[i] for i in idx]), how)
    return out


def written_score(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]], tasks: Sequence[str],
                  rounds: int = WRITTEN_ROUNDS, probed: np.ndarray | None = None) -> np.ndarray:
    """Each model's quality score among its group's (``tasks``: any grouping; weights only, no data read): its
    mean softmax probability of the class each written input was written for, the group's better half (by
    consensus on the probes, ``probed`` when the caller has it) writing them (:func:`inverted_inputs`). A model
    that learned what the writers learned gives those classes high probability; one that did not, or that is
    sharp everywhere (huge random weights), does not. Each further round (``rounds`` in all) writes the inputs
    again, from the better half by the last score."""
    if rounds < 1:
        raise PeaceError(f"a written score takes at least one round of writing, got rounds={rounds}")
    score = consensus(specs, params, tasks, "probes") if probed is None else np.asarray(probed, np.float64)
    out = np.zeros(len(specs))
    for idx in _groups(specs, tasks).values():
        group, weights, s = [specs[i] for i in idx], [params[i] for i in idx], score[idx]
        for _ in range(rounds):
            written = inverted_inputs(group, weights, s)
            s = _probability(group, weights, written, written_classes(len(written), group[0].n_classes))
        out[idx] = s
    return out


def written_classes(n: int, n_classes: int) -> torch.Tensor:
    """The class each of ``n`` written inputs is written for (:func:`inverted_inputs`): every class in turn."""
    return torch.arange(n) % n_classes


def _groups(specs: Sequence[ArchSpec], tasks: Sequence[str]) -> dict:
    """Positions of each (task, io-space) group: models are compared only with models that read their inputs."""
    return positions((t, io_space(s)) for s, t in zip(specs, tasks))


@torch.no_grad()
def _predicted(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]],
               x: torch.Tensor) -> list[np.ndarray]:
    """Each model's predicted classes on ``x`` (rows of features that reshape to each spec's inputs)."""
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(specs)
    for spec, idx in positions(specs).items():
        for i, p in zip(idx, predict(spec, [params[i] for i in idx], x).argmax(-1).numpy()):
            out[i] = p
    return out
