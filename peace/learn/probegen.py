"""ProbeGen trained contrastively: a retrieval peer of PEACE built from the ProbeGen parts of
``peace.evaluate.probegen`` (learned probes from a deep linear generator, an MLP reader).

One generator and reader per io-space into one embedding, InfoNCE over the partners PEACE's own
training draws (another seed of the same configuration, a neighbouring checkpoint, a model of another
run that predicts alike on the fixed probes), relatives masked as PEACE masks them. Not in the paper (it
trains supervised only); no hard negatives or soft agreement targets (PEACE has both); the reader reads
class probabilities rather than logits (demo zoo, validation split, 100 steps: task mAP 0.733 against
0.639 for log-probabilities and 0.596 for logits; 300 steps of logits 0.588).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from peace.core.errors import PeaceError
from peace.evaluate.baselines import Baseline, Models, space_blocks
from peace.evaluate.probegen import ProbeGenConfig, ProbeGenerator, probe_reader
from peace.learn.contrastive import AugmentConfig, Kinship, PairSampler, functional_neighbours
from peace.nets.architectures import ArchSpec, forward, stack_params
from peace.nets.probes import fingerprint, io_space, responses

__all__ = ["MAX_PASSES", "ProbeGenEmbedding", "learn_probes"]

MAX_PASSES = 10  # training steps stop at this many passes over the training models (a small zoo's budget)


class ProbeGenEmbedding(Baseline):
    """ProbeGen trained contrastively on the training models (module docstring): ``fit`` learns one
    generator and head per io-space in ``steps`` batches (at most ``MAX_PASSES`` passes over the models),
    ``transform`` embeds any models of those spaces. ``spaces`` adds io-spaces no training model has (a
    held-out task's, as ``FunctionSpace`` takes them): their probes and reader keep their random
    initialization, still a function of the models' responses only."""

    name = "probegen"

    def __init__(self, config: ProbeGenConfig = ProbeGenConfig(), dim: int = 64, steps: int = 100,
                 batch_size: int = 64, temperature: float = 0.1, seed: int = 0, spaces: Sequence[str] = (),
                 progress: bool = False):
        if steps < 0 or min(dim, batch_size) < 1 or temperature <= 0:
            raise PeaceError(f"ProbeGen needs steps >= 0, dim and batch_size >= 1 and temperature > 0; got steps "
                             f"{steps}, dim {dim}, batch_size {batch_size}, temperature {temperature}")
        self.config, self.dim, self.steps, self.batch_size = config, dim, steps, batch_size
        self.temperature, self.seed, self.spaces, self.progress = temperature, seed, list(spaces), progress

    def fit(self, models: Models) -> ProbeGenEmbedding:
        torch.manual_seed(self.seed)
        shapes: dict[str, tuple[int, ...]] = {}
        for s in models.specs:  # probes take the richest input shape of the space (images over flat vectors)
            sp = io_space(s)
            shapes[sp] = max(shapes.get(sp, s.input_shape), s.input_shape, key=len)
        # the training spaces first: telling it of other spaces does not change what it learns
        shapes = dict(sorted(shapes.items())) | {sp: (int(sp.split("->")[0]),) for sp in sorted(self.spaces)
                                                 if sp not in shapes}
        self.generators_, self.heads_ = nn.ModuleDict(), nn.ModuleDict()
        for k, shape in shapes.items():  # one space at a time: the random draws of one do not shift another's
            self.generators_[k] = ProbeGenerator(shape, self.config)
            self.heads_[k] = probe_reader(self.config.n_probes * int(k.split("->")[1]), self.dim, self.config)
        rows = models.rows.reset_index(drop=True)
        spaces = [io_space(s) for s in models.specs]
        neighbours = functional_neighbours(rows, responses(models.specs, models.params), spaces, k=8)
        sampler = PairSampler(rows, AugmentConfig(pruned=False, distilled=False, functional=True), {}, neighbours)
        kin, row_of = Kinship(rows), {m: i for i, m in enumerate(rows["model_id"])}
        opt = torch.optim.Adam([*self.generators_.parameters(), *self.heads_.parameters()], lr=self.config.lr)
        rng = np.random.default_rng(self.seed)
        n_steps = min(self.steps, MAX_PASSES * -(-len(rows) // self.batch_size))
        for _ in tqdm(range(n_steps), desc="learn probes", unit="step", disable=not self.progress, leave=False):
            anchors = list(rng.choice(rows["model_id"].to_numpy(), min(self.batch_size, len(rows)), replace=False))
            partners = [sampler.partner(a, rng)[1] for a in anchors]
            z = F.normalize(self._embed(models, [row_of[m] for m in anchors + partners]), dim=-1)  # one pass
            za, zp = z[:len(anchors)], z[len(anchors):]
            logits = za @ zp.T / self.temperature
            related = torch.from_numpy(kin.related(anchors, partners))
            logits = logits.masked_fill(related & ~torch.eye(len(anchors), dtype=torch.bool), float("-inf"))
            target = torch.arange(len(anchors))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
        return self

    def _responses(self, models: Models, idx: Sequence[int]) -> Iterator[tuple[str, list[int], Tensor]]:
        """(io-space, positions in ``idx``, class probabilities (P, n_probes, C)) per architecture: models of
        one architecture go through their space's probes together."""
        groups: dict[ArchSpec, list[int]] = {}
        for j, i in enumerate(idx):
            groups.setdefault(models.specs[i], []).append(j)
        generated: dict[str, Tensor] = {}  # each space's probes generated once, for all its architectures
        for spec, js in groups.items():
            space = io_space(spec)
            if space not in self.generators_:
                raise PeaceError(f"io-space {space} was not among the spaces ProbeGen was fit on "
                                 f"({', '.join(self.generators_)}); pass spaces=[...] listing every space to embed")
            if space not in generated:
                generated[space] = self.generators_[space]()
            probes = generated[space].reshape(-1, *spec.input_shape)
            stacked = {k: v.float() for k, v in stack_params([models.params[idx[j]] for j in js]).items()}
            yield space, js, forward(spec, stacked, probes).softmax(-1)

    def _embed(self, models: Models, idx: Sequence[int]) -> Tensor:
        """(len(idx), dim): the responses read by their space's head."""
        out = [None] * len(idx)
        for space, js, probs in self._responses(models, idx):
            for j, row in zip(js, self.heads_[space](probs.flatten(1))):
                out[j] = row
        return torch.stack(out)

    @torch.no_grad()
    def probes(self) -> dict[str, Tensor]:
        """io-space -> its learned probe inputs, (n_probes, n_features) float64."""
        return {space: g().detach().double().flatten(1) for space, g in self.generators_.items()}

    @torch.no_grad()
    def fingerprints(self, models: Models) -> np.ndarray:
        """The function space read on the learned probes instead of Gaussian ones, without the reader:
        ``probes.fingerprint`` (cosine = prediction agreement), each io-space in its own block as in
        ``FunctionSpace``. Probes generated to tell models apart are what a probe-based embedding
        (PEACE's function tokens and sketch) would read."""
        blocks, width = space_blocks(self.generators_, self.config.n_probes)
        out = np.zeros((len(models), width), np.float32)
        for s in range(0, len(models), 512):
            idx = range(s, min(s + 512, len(models)))
            for space, js, probs in self._responses(models, idx):
                a, b = blocks[space]
                out[[idx[j] for j in js], a:b] = fingerprint(probs).numpy()
        return out

    @torch.no_grad()
    def transform(self, models: Models) -> np.ndarray:
        return torch.cat([self._embed(models, range(s, min(s + 512, len(models))))
                          for s in range(0, len(models), 512)]).numpy()


def learn_probes(models: Models, n_probes: int, steps: int = 100, seed: int = 0,
                 progress: bool = False) -> dict[str, Tensor]:
    """``n_probes`` probe inputs per io-space of ``models``, generated the ProbeGen way and trained
    contrastively to tell those models apart (``ProbeGenEmbedding``; its reader is dropped). Only the
    spaces that have models get probes: a space nobody trained on keeps Gaussian ones."""
    if not len(models):
        raise PeaceError("learning probes needs at least one model")
    return ProbeGenEmbedding(ProbeGenConfig(n_probes=n_probes), steps=steps, seed=seed, progress=progress
                             ).fit(models).probes()
