"""Decoded weights refined until they compute what the embedding says.

A PEACE embedding ends in its function block: a fixed random projection of the model's predictions on
the probe inputs of its io-space (``peace.nets.probes.sketch``). That part of a point of the space is
a description of a function, not of weights, and it can be read back: starting from the decoder's
weights, two hundred Adam steps on the weights (in the decoder's layer-normalized units) raise the
cosine between the decoded model's sketch (class probabilities instead of one-hot predictions, so it
has a gradient) and the target's. Nothing but the embedding is read: the probes and projections are
the encoder's own, fixed ones. On the demo run this is what lets a decoded model of a task that the
encoder never saw compute that task (docs/generation.md). A second start is refined beside the decoded
one, the training model the embedding retrieves (the decoder keeps its training models), and each model
keeps the start whose sketch ends closer: a real network of a nearby function is often a better place to
start than the decoder's average of several (the sketch sees Gaussian probes, not the task's data).

A sketch can only be read back where it is not compressed too far: K probes x C classes of one-hot
answers projected to ``dim`` numbers. Where K * C exceeds ``max_compression`` * dim (10-class spaces
under the default encoder: 2,560 answers in 256 numbers), many functions fit the sketch equally well
and refining moved decoded models away from their originals on validation, so those are left as decoded.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from peace.core.errors import PeaceError
from peace.learn.decoder import unflatten
from peace.learn.encoder import Embedder
from peace.nets.architectures import ArchSpec, forward
from peace.nets.optim import PopulationOptimizer
from peace.nets.probes import io_space, probe_inputs, soft_sketch

__all__ = ["RefineConfig", "SketchFit", "sketch_fit"]


@dataclass(frozen=True)
class RefineConfig:
    """How far decoded weights are refined towards the embedding's function block (0 steps: not at all)."""

    steps: int = 200  # with temperature, chosen on validation: the run's split and a zoo of unseen tasks
    lr: float = 0.01  # Adam's step, in units of each tensor's training spread
    temperature: float = 0.25  # of the class probabilities that stand in for one-hot predictions
    max_compression: float = 4.0  # refine io-spaces whose probes x classes are at most this many times the sketch
    retrieve: bool = True  # also refine the training model the embedding retrieves; keep the closer sketch

    def __post_init__(self) -> None:
        if self.steps < 0 or not self.lr > 0 or not self.temperature > 0 or not self.max_compression > 0:
            raise PeaceError(f"refinement needs steps >= 0 and lr, temperature, max_compression > 0; got {self}")


class SketchFit:
    """What an encoder's function block asks of a model, and the refinement that gives it that."""

    def __init__(self, encoder: Embedder, config: RefineConfig = RefineConfig()):
        c = encoder.config
        if not c.function_block:
            raise PeaceError("this run's encoder has no function block (encoder.function_block=0), so its embedding "
                             "says nothing a decoded model could be refined towards; decode without refinement "
                             "(--refine-steps 0)")
        self.config, self.start, self.dim, self.n_probes = config, c.embedding_dim, c.function_block, c.probes
        self.projection = c.function_block_projection
        self.bank = encoder.probe_bank.inputs()

    def decoded_only(self) -> SketchFit:
        """This refinement without the retrieved start (sampling writes new models, not refined zoo models)."""
        out = copy.copy(self)
        out.config = dataclasses.replace(self.config, retrieve=False)
        return out

    def target(self, z: Tensor) -> Tensor:
        """The unit function-space sketches held in embeddings ``z`` (n, output_dim)."""
        return F.normalize(z[:, self.start:self.start + self.dim].float(), dim=-1)

    def inputs(self, spec: ArchSpec) -> Tensor:
        """The probe inputs of the spec's io-space, as the encoder reads them, shaped for ``spec``."""
        own = self.bank.get(io_space(spec))
        x = probe_inputs(spec.input_shape, self.n_probes) if own is None else own
        return x.float().reshape(self.n_probes, *spec.input_shape)

    def reads(self, spec: ArchSpec) -> bool:
        """Whether the sketch of the spec's io-space is fine enough to refine towards (``max_compression``)."""
        return self.n_probes * spec.n_classes <= self.config.max_compression * self.dim

    def similarity(self, spec: ArchSpec, flat: Tensor, target: Tensor, x: Tensor) -> Tensor:
        """(n,) cosine between the soft sketches of flat weights ``flat`` (n, n_params) on the probe inputs
        ``x`` (``inputs(spec)``) and ``target``."""
        probs = forward(spec, unflatten(spec, flat), x).div(self.config.temperature).softmax(-1)
        soft = soft_sketch(probs, io_space(spec), self.dim, projection=self.projection)
        return (F.normalize(soft, dim=-1) * target).sum(-1)

    def refine(self, spec: ArchSpec, flat: Tensor, z: Tensor, scale: Tensor | float = 1.0,
               retrieved: Tensor | None = None) -> Tensor:
        """Flat weights ``flat`` (n, n_params) of ``spec`` moved towards the sketches of embeddings ``z``;
        ``scale`` (n_params,) is the size of a unit step per weight (the decoder's per-tensor spread).
        With ``retrieved`` (n, n_params), a second start per row: both are refined (one batch) and each
        row keeps the one whose sketch ends closer to its target, a choice that reads only the embedding.
        Returned unchanged where the io-space's sketch is too compressed to read (``reads``)."""
        if self.config.steps == 0 or not len(flat) or not self.reads(spec):
            return flat
        starts = flat.detach().float()[None] if retrieved is None else torch.stack([flat.detach(), retrieved]).float()
        k, n = starts.shape[:2]
        start, target, x = starts.reshape(k * n, -1), self.target(z).repeat(k, 1), self.inputs(spec)
        u = torch.zeros_like(start, requires_grad=True)
        opt = PopulationOptimizer({"u": u}, "adam", torch.full((k * n,), self.config.lr), torch.zeros(k * n))
        with torch.enable_grad():
            for _ in range(self.config.steps):
                (-self.similarity(spec, start + scale * u, target, x).sum()).backward()
                opt.step()
        with torch.no_grad():
            out = start + scale * u
            sim = self.similarity(spec, out, target, x).reshape(k, n).nan_to_num(nan=-math.inf)
            best = sim.argmax(0)  # ties keep the decoded start
            out = out.reshape(k, n, -1)[best, torch.arange(n)]
        if not torch.isfinite(out).all():
            raise PeaceError(f"refining decoded {spec.describe()} models diverged (non-finite weights); lower the "
                             f"refinement's lr (now {self.config.lr}) or decode without it (--refine-steps 0)")
        return out


def sketch_fit(encoder: Embedder, config: RefineConfig = RefineConfig()) -> SketchFit | None:
    """The refinement ``config`` asks for; None where it asks for none (0 steps) or the encoder's
    embedding has no function block to refine towards."""
    return SketchFit(encoder, config) if config.steps and encoder.config.function_block else None
