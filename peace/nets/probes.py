"""Function space: a network's responses to shared probe inputs.

Models that read the same number of input features and write the same number of classes share an
*io-space* (``64->10``: an MLP on flattened 8x8 digits and a CNN on 1x8x8 images alike). Every
model of a space answers the same fixed Gaussian probe inputs (drawn once per number of features,
reshaped to each model's input shape); its class probabilities on them are its *response*.

Responses are exactly invariant to every weight-space symmetry (they depend on the function only),
so they compare models across seeds, widths, depths and families. Two models are compared by
their *agreement*, the fraction of probes on which they predict the same class: the cosine of
their fingerprints (one-hot predictions over sqrt(K)), so one matrix product compares thousands of
models. (Chosen on the demo zoo's validation split over cosines of probabilities, of their square
roots and of centred log-probabilities: same-task mAP 0.760 against 0.729 / 0.698 / 0.738.)
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from peace.core.errors import PeaceError, unknown
from peace.core.grouping import positions
from peace.nets.architectures import ArchSpec, forward, stack_params

__all__ = [
    "N_PROBES", "PROBE_SEED", "PROJECTIONS", "ProbeBank", "agreement", "agreement_matrix", "fingerprint", "io_space",
    "probe_inputs", "responses", "sketch", "soft_sketch"
]

N_PROBES = 256
PROBE_SEED = 0
POPULATION_BYTES = 256 * 2**20  # float64 activations of one population on the probes: a 30,000-model zoo of small
# CNNs (16 channels at 15x15) ran 512 at a time in 3.8 GB a layer (14 GB in all); now 36 at a time


def io_space(spec: ArchSpec) -> str:
    """The space a model maps between, ``"{n_features}->{n_classes}"`` (e.g. ``64->10``)."""
    return f"{math.prod(spec.input_shape)}->{spec.n_classes}"


def probe_inputs(input_shape: Sequence[int], n: int = N_PROBES, seed: int = PROBE_SEED) -> Tensor:
    """``n`` standard-normal probe inputs of ``input_shape`` (float64). The same numbers for every
    shape with this many features, so an MLP on flattened images and a CNN on the images see one set."""
    if n < 1:
        raise PeaceError(f"the number of probe inputs must be >= 1, got {n}")
    d = math.prod(input_shape)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + d)
    return torch.randn(n, d, generator=g, dtype=torch.float64).reshape(n, *input_shape)


def _widest_activation(spec: ArchSpec) -> int:
    """The numbers one input's widest activation holds (conv layers: channels x positions before pooling)."""
    if spec.family == "mlp":
        return max(spec.tensor_sizes[1:])
    if spec.family not in ("cnn1d", "cnn2d"):  # residual and attention stacks: an upper bound
        return max(spec.tensor_sizes) * math.prod(spec.input_shape[1:])
    unpooled = replace(spec, global_pool="none")
    return max(c * math.prod(s) * (2 ** len(s) if pool != "none" else 1)
               for c, s, pool in zip(spec.hidden, unpooled.conv_output_sizes(), spec.conv_pools))


@torch.no_grad()
def responses(specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]], n: int = N_PROBES,
              seed: int = PROBE_SEED, chunk: int = 512, inputs: Mapping[str, Tensor] | None = None) -> list[Tensor]:
    """Class probabilities of each model on its space's probes: a list of (n, n_classes) float32.

    ``inputs`` replaces the Gaussian probes of the io-spaces it names by its own (n, n_features) ones
    (learned probes, ``ProbeBank``). Models of one architecture run together as populations of up to ``chunk``
    (batched forward passes, float64 so that symmetric copies of a model agree to rounding), fewer where their
    activations on the probes would pass ``POPULATION_BYTES``."""
    if len(specs) != len(params):
        raise PeaceError(f"got {len(specs)} architectures but {len(params)} parameter sets")
    out: list[Tensor | None] = [None] * len(specs)
    for spec, idx in positions(specs).items():
        own = (inputs or {}).get(io_space(spec))
        if own is not None and len(own) != n:
            raise PeaceError(f"the probe set of io-space {io_space(spec)} holds {len(own)} probes, not {n}")
        x = probe_inputs(spec.input_shape, n, seed) if own is None else own.double().cpu().reshape(n, *spec.input_shape)
        size = max(1, min(chunk, POPULATION_BYTES // (8 * n * _widest_activation(spec))))
        for s in range(0, len(idx), size):
            part = idx[s:s + size]
            stacked = {k: v.double() for k, v in stack_params([params[i] for i in part]).items()}
            device = next(iter(stacked.values())).device
            probs = forward(spec, stacked, x.to(device)).softmax(-1).float().cpu()
            for j, i in enumerate(part):
                out[i] = probs[j]
    return out  # type: ignore[return-value]


class ProbeBank(nn.Module):
    """Probe inputs of their own for some io-spaces (learned ones), held as buffers so that they are
    saved and loaded with the encoder that reads them; every other space keeps the Gaussian probes."""

    def set(self, inputs: Mapping[str, Tensor]) -> None:
        """Hold ``inputs`` (io-space -> (n, n_features)) in place of whatever was held."""
        for name in list(self._buffers):
            del self._buffers[name]
        for space, x in sorted(inputs.items()):
            self.register_buffer(_buffer_name(space), x.detach().double().reshape(len(x), -1).contiguous())

    def inputs(self) -> dict[str, Tensor]:
        """io-space -> (n, n_features) probe inputs held."""
        return {_space_of(name): x for name, x in self._buffers.items()}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the spaces are known only from the saved state: make room for them before loading
        self.set({_space_of(k[len(prefix):]): v for k, v in state_dict.items() if k.startswith(prefix)})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _buffer_name(space: str) -> str:  # "64->10" -> "s64_to_10": a buffer name holds no "." and reads as one
    return "s" + space.replace("->", "_to_")


def _space_of(buffer_name: str) -> str:
    return buffer_name[1:].replace("_to_", "->")


def fingerprint(response: Tensor) -> Tensor:
    """One-hot predictions over sqrt(K), flattened: unit vectors whose cosine is the agreement.
    A (K, C) response gives a (K * C,) vector; a stack (n, K, C) gives (n, K * C)."""
    onehot = torch.zeros_like(response).scatter_(-1, response.argmax(-1, keepdim=True), 1.0)
    return onehot.flatten(-2) / math.sqrt(response.shape[-2])


def agreement(a: Tensor, b: Tensor) -> float:
    """Fraction of probe inputs on which two models (responses (n, C) on one probe set) predict the same class."""
    if a.shape != b.shape:
        raise PeaceError(f"responses of shapes {tuple(a.shape)} and {tuple(b.shape)} are not on one probe set / "
                         f"class count; only models of one io-space can be compared")
    return float((a.argmax(-1) == b.argmax(-1)).double().mean())


def agreement_matrix(responses_a: Sequence[Tensor], spaces_a: Sequence[str],
                     responses_b: Sequence[Tensor] | None = None, spaces_b: Sequence[str] | None = None) -> np.ndarray:
    """(len(a), len(b)) agreements; 0 between models of different io-spaces (they share no inputs)."""
    if responses_b is None:
        responses_b, spaces_b = responses_a, spaces_a
    sa, sb = np.asarray(spaces_a), np.asarray(spaces_b)
    out = np.zeros((len(sa), len(sb)), np.float32)
    for space in np.intersect1d(sa, sb):
        ia, ib = np.flatnonzero(sa == space), np.flatnonzero(sb == space)
        fa = fingerprint(torch.stack([responses_a[i] for i in ia]))
        fb = fingerprint(torch.stack([responses_b[i] for i in ib]))
        out[np.ix_(ia, ib)] = (fa @ fb.T).numpy()
    return out


PROJECTIONS = ("gaussian", "orthogonal")


@lru_cache(maxsize=64)
def _projection(space: str, width: int, dim: int, seed: int, kind: str = "gaussian") -> Tensor:
    """(dim, width) fixed random map of one io-space's fingerprints. ``gaussian``: i.i.d. N(0, 1/dim)
    entries. ``orthogonal``: orthonormal columns where width <= dim, so dot products are kept exactly;
    else orthonormal rows scaled by sqrt(width / dim), unbiased with a smaller error than Gaussian rows."""
    if kind not in PROJECTIONS:
        raise unknown("function-block projection", kind, PROJECTIONS)
    key = int(hashlib.sha1(f"{space}|{width}|{seed}".encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(key)
    if kind == "gaussian":
        return torch.randn(dim, width, generator=g) / math.sqrt(dim)
    q, r = torch.linalg.qr(torch.randn(max(dim, width), min(dim, width), generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # the QR with a positive diagonal is unique: one map on any LAPACK
    return (q if width <= dim else q.T * math.sqrt(width / dim)).float().contiguous()


def sketch(responses: Sequence[Tensor], spaces: Sequence[str], dim: int, seed: int = PROBE_SEED,
           projection: str = "gaussian") -> Tensor:
    """(n, dim) fixed random projections of the fingerprints, one matrix per io-space (``_projection``):
    their dot products approximate agreements (Johnson-Lindenstrauss, error about 1/sqrt(dim); none with
    ``orthogonal`` where probes x classes <= dim), and sketches of different spaces are nearly orthogonal.
    A fixed-size stand-in for the function-space vector."""
    out = torch.zeros(len(responses), dim)
    for space, rows in positions(spaces).items():
        classes = torch.stack([responses[i] for i in rows]).argmax(-1)  # (m, K): where each one-hot has its 1
        k, c = classes.shape[1], responses[rows[0]].shape[-1]
        # the map times a one-hot fingerprint is the sum of K of its columns; an embedding bag adds each
        # model's in index order, so a model's sketch is bitwise the same in any batch (a matrix product's
        # summation order depends on the batch's shape)
        columns = _columns(space, k * c, dim, seed, projection)
        out[rows] = F.embedding_bag(classes + c * torch.arange(k), columns, mode="sum") / math.sqrt(k)
    return out


@lru_cache(maxsize=64)
def _columns(space: str, width: int, dim: int, seed: int, kind: str) -> Tensor:
    """``_projection``'s columns as rows, (width, dim)."""
    return _projection(space, width, dim, seed, kind).T.contiguous()


def soft_sketch(probs: Tensor, space: str, dim: int, seed: int = PROBE_SEED, projection: str = "gaussian") -> Tensor:
    """``sketch`` with class probabilities (n, K, C) in place of one-hot predictions: differentiable,
    and ``sketch`` itself where the probabilities are one-hot. What refines decoded models towards an
    embedding's function block (``peace.learn.refine``)."""
    f = probs.flatten(-2) / math.sqrt(probs.shape[-2])
    return f @ _projection(space, f.shape[-1], dim, seed, projection).to(f).T
