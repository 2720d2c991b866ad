"""Predicting a network's test accuracy from its weights, on one architecture: the published peer's setting.

Neural Functional Networks (Zhou et al., NeurIPS 2023; the ``nfn`` package) are the standard
learned baseline here: stacks of permutation-equivariant layers over the weight space of one
architecture (NP: every neuron interchangeable, inputs and outputs too; HNP: hidden neurons only),
an invariant pooling and an MLP head, trained supervised. They read MLPs, and CNNs whose channels meet
the dense layers one to one (a global pool: the Small CNN Zoo's; a flatten over positions mixes channels
and positions in a way their layers do not model), and they are not invariant to the scaling and sign symmetries.

:func:`accuracy_study` takes the largest single-architecture group NFN reads (``nfn_readable``) and compares,
on its test models, NFN-HNP and NFN-NP predictors with ridge probes on every method's vectors
(PEACE, s(W), raw weights, function space), s(W) with gradient boosting, PEACE's own metric head,
ProbeGen (``peace.evaluate.probegen``: learned probes, the field's strongest prober) and PEACE's
encoder fine-tuned as NFN is trained (supervised, end to end, same stopping), its training models joined by
class-renamed copies of them (``with_renamed``: accuracy on a model's own task does not depend on the names of
its classes; chosen on validation, where the peers do no better with them).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import kendalltau
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import r2_score
from torch import Tensor, nn

from peace.core.errors import PeaceError
from peace.evaluate.baselines import Baseline, Models, WeightStats
from peace.evaluate.metrics import linear_probe
from peace.evaluate.probegen import ProbeGenConfig, ProbeGenRegressor
from peace.nets.architectures import ArchSpec
from peace.nets.renaming import relabel_classes

__all__ = [
    "NFN_MODES", "PREDICTORS", "EncoderRegressor", "NFNPredictor", "PredictorConfig", "accuracy_study", "fit_nfn",
    "fit_predictor", "fit_regressor", "largest_group", "nfn_readable", "predict_nfn", "predict_regressor", "with_renamed"
]

NFN_MODES = ("hnp", "np")
# the study's supervised predictors, in the order it trains them (``fit_predictor``)
PREDICTORS = (*(f"nfn-{m}" for m in NFN_MODES), "probegen", "probegen, free probes", "peace fine-tuned")


@dataclass(frozen=True)
class PredictorConfig:
    """The supervised accuracy predictors: NFN's shape, and the training shared by NFN and by PEACE's
    encoder fine-tuned end to end (Adam, MSE on standardized targets, early stopping on validation)."""

    channels: int = 16  # HNP's first and last layers grow with inputs x channels^2: 16 keeps it minutes on CPU
    layers: int = 2
    head: int = 64
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3           # NFN, trained from scratch
    finetune_lr: float = 1e-3  # PEACE's encoder from its contrastive weights (1e-4 / 3e-4 / 1e-3 on validation:
    # 0.763 / 0.773 / 0.788 Kendall tau, docs/benchmarks.md)
    finetune_epochs: int = 40
    patience: int = 20  # epochs without a better validation loss
    renamed: int = 2  # class-renamed copies of each training model for PEACE's fine-tuned encoder (same target;
    # chosen on validation, docs/benchmarks.md; the peers train as published: NFN loses with them, ProbeGen ties)

    def __post_init__(self) -> None:
        if min(self.channels, self.layers, self.head, self.epochs, self.batch_size, self.patience,
               self.finetune_epochs) < 1 or self.lr <= 0 or self.finetune_lr <= 0 or self.renamed < 0:
            raise PeaceError(f"every predictor setting must be positive (renamed copies >= 0), got {self}")


def nfn_readable(spec: ArchSpec) -> bool:
    """NFN layers model chains of two or more layers without normalization layers: MLPs, and CNNs whose last
    conv's channels meet the first dense layer one to one (a global pool, as in the Small CNN Zoo of NFN's
    CIFAR10-GS; their layers carry each conv weight's kernel as features)."""
    if spec.depth < 2 or spec.norm != "none" or spec.family not in ("mlp", "cnn1d", "cnn2d"):
        return False
    dense = next(layer for layer in spec.layers if layer.kind == "linear")
    return spec.family == "mlp" or math.prod(dense.flatten_from[1:]) == 1


def _wsfeat(spec: ArchSpec, params: Sequence[dict[str, Tensor]]):
    """nfn's WeightSpaceFeatures of same-architecture models: weights (B, 1, out, in), biases (B, 1, out)
    (zeros for a bias-free network)."""
    from nfn.common import WeightSpaceFeatures

    ws, bs = [], []
    for layer in spec.layers:
        ws.append(torch.stack([p[layer.weight_name].float() for p in params]).unsqueeze(1))
        bs.append(torch.stack([p[layer.bias_name].float() if layer.bias else torch.zeros(layer.out_features)
                               for p in params]).unsqueeze(1))
    return WeightSpaceFeatures(ws, bs)


class NFNPredictor(nn.Module):
    """NFN-HNP or NFN-NP invariant network for one architecture (``nfn_readable``): equivariant layers with ReLU,
    invariant pooling, MLP head -> one number. Inputs are scaled per tensor by training statistics."""

    def __init__(self, spec: ArchSpec, mode: str = "hnp", config: PredictorConfig = PredictorConfig()):
        super().__init__()
        from nfn.common import network_spec_from_wsfeat
        from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

        if mode not in NFN_MODES:
            raise PeaceError(f"unknown NFN mode {mode!r}; valid: {', '.join(NFN_MODES)}")
        if not nfn_readable(spec):
            raise PeaceError(f"NFN layers read MLPs of two or more layers and CNNs whose channels meet the dense "
                             f"layers one to one (a global pool); {spec.describe()} is neither")
        self.spec, self.mode = spec, mode
        dummy = _wsfeat(spec, [{k: torch.zeros(v) for k, v in spec.param_shapes().items()}])
        ns = network_spec_from_wsfeat(dummy)
        lin, pool = (HNPLinear, HNPPool) if mode == "hnp" else (NPLinear, NPPool)
        c = config.channels
        body: list[nn.Module] = []
        for i in range(config.layers):  # NP: learned input / output embeddings (nfn io_embed) tell inputs apart
            extra = {"io_embed": True} if mode == "np" and i == 0 else {}
            body += [lin(ns, 1 if i == 0 else c, c, **extra), TupleOp(nn.ReLU())]
        self.body, self.pool = nn.Sequential(*body), pool(ns)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * pool.get_num_outs(ns), config.head), nn.ReLU(),
                                  nn.Linear(config.head, 1))
        self.register_buffer("scale", torch.ones(2 * spec.depth))

    def forward(self, params: Sequence[dict[str, Tensor]]) -> Tensor:
        from nfn.common import WeightSpaceFeatures

        x = _wsfeat(self.spec, params)
        L = self.spec.depth
        x = WeightSpaceFeatures([w / self.scale[i] for i, w in enumerate(x.weights)],
                                [b / self.scale[L + i] for i, b in enumerate(x.biases)])
        return self.head(self.pool(self.body(x))).squeeze(-1)

    @torch.no_grad()
    def fit_scale(self, params: Sequence[dict[str, Tensor]]) -> None:
        x = _wsfeat(self.spec, params)
        for i, t in enumerate(list(x.weights) + list(x.biases)):
            self.scale[i] = t.std().clamp_min(1e-6) if t.numel() > 1 and t.abs().sum() > 0 else 1.0


class EncoderRegressor(nn.Module):
    """A trained PEACE encoder with a regression head on its embedding, for one architecture."""

    def __init__(self, encoder: nn.Module, spec: ArchSpec, head: int = 64):
        super().__init__()
        self.encoder, self.spec = copy.deepcopy(encoder), spec
        d = encoder.config.output_dim
        self.head = nn.Sequential(nn.Linear(d, head), nn.ReLU(), nn.Linear(head, 1))

    def forward(self, params: Sequence[dict[str, Tensor]]) -> Tensor:
        batch = self.encoder.batch([self.spec] * len(params), params, next(self.parameters()).device)
        return self.head(self.encoder(batch)["embedding"].float()).squeeze(-1)


def fit_regressor(model: nn.Module, train: Sequence[dict[str, Tensor]], y_train: np.ndarray,
                  val: Sequence[dict[str, Tensor]], y_val: np.ndarray, epochs: int, lr: float,
                  config: PredictorConfig = PredictorConfig(), seed: int = 0) -> nn.Module:
    """Train ``model`` (``model(params list) -> (n,)``) with MSE on standardized targets; keep the epoch
    with the best validation loss. Returns it in eval mode, with ``predict_regressor`` ready."""
    torch.manual_seed(seed)
    mu, sd = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
    yt = torch.tensor((np.asarray(y_train) - mu) / sd, dtype=torch.float32)
    yv = torch.tensor((np.asarray(y_val) - mu) / sd, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    best, best_state, bad = math.inf, None, 0
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        for s in range(0, len(order), config.batch_size):
            idx = order[s:s + config.batch_size]
            loss = nn.functional.mse_loss(model([train[i] for i in idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = float(nn.functional.mse_loss(model(val), yv))
        if v < best:
            best, best_state, bad = v, {k: t.clone() for k, t in model.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    model.target_mean, model.target_std = mu, sd
    return model


def fit_nfn(spec: ArchSpec, train: Sequence[dict[str, Tensor]], y_train: np.ndarray,
            val: Sequence[dict[str, Tensor]], y_val: np.ndarray, mode: str = "hnp",
            config: PredictorConfig = PredictorConfig(), seed: int = 0) -> NFNPredictor:
    """An NFN accuracy predictor trained from scratch on one architecture's models."""
    torch.manual_seed(seed)
    model = NFNPredictor(spec, mode, config)
    model.fit_scale(train)
    return fit_regressor(model, train, y_train, val, y_val, config.epochs, config.lr, config, seed)


@torch.no_grad()
def predict_regressor(model: nn.Module, params: Sequence[dict[str, Tensor]], batch_size: int = 256) -> np.ndarray:
    """Predictions of a model trained by :func:`fit_regressor`, in the target's units."""
    out = [model(params[i:i + batch_size]) for i in range(0, len(params), batch_size)]
    return torch.cat(out).numpy() * model.target_std + model.target_mean


predict_nfn = predict_regressor


def fit_predictor(name: str, spec: ArchSpec, params: Sequence[dict[str, Tensor]], y: np.ndarray,
                  val: Sequence[dict[str, Tensor]], y_val: np.ndarray, config: PredictorConfig = PredictorConfig(),
                  seed: int = 0, encoder: nn.Module | None = None) -> nn.Module:
    """One of the study's supervised predictors (``PREDICTORS``), trained on ``params`` as the study trains it:
    NFN from scratch, ProbeGen (deep linear generator, or freely learned probes: the paper's vanilla probing),
    or PEACE's ``encoder`` fine-tuned end to end from its contrastive weights; early stopping on ``val``."""
    if name not in PREDICTORS or (name == "peace fine-tuned" and encoder is None):
        raise PeaceError(f"unknown accuracy predictor {name!r} (choose from {', '.join(PREDICTORS)}; "
                         f"'peace fine-tuned' needs an encoder)")
    torch.manual_seed(seed)  # every new layer (NFN's, ProbeGen's, the encoder's head) starts from the seed
    if name.startswith("nfn-"):
        return fit_nfn(spec, params, y, val, y_val, name.removeprefix("nfn-"), config, seed)
    if name.startswith("probegen"):
        pg = ProbeGenConfig(generator="deep-linear" if name == "probegen" else "free")
        return fit_regressor(ProbeGenRegressor(spec, pg), params, y, val, y_val, config.epochs, pg.lr, config, seed)
    return fit_regressor(EncoderRegressor(encoder, spec, config.head), params, y, val, y_val, config.finetune_epochs,
                         config.finetune_lr, config, seed)


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"r2": float(r2_score(y, pred)), "kendall_tau": float(kendalltau(y, pred).statistic)}


def with_renamed(spec: ArchSpec, params: Sequence[dict[str, Tensor]], y: np.ndarray, copies: int,
                 seed: int = 0) -> tuple[list[dict[str, Tensor]], np.ndarray]:
    """The training models and ``copies`` class-renamed copies of each (``peace.nets.renaming``), every copy
    with its original's target: a model's accuracy on its own task does not depend on what its classes are
    called, so a predictor taught this reads a task whose labels are a renaming of a training task's."""
    rng = np.random.default_rng([seed, 31])
    extra = [relabel_classes(spec, p, rng) for p in params for _ in range(copies)]
    return list(params) + extra, np.concatenate([np.asarray(y, float), np.repeat(np.asarray(y, float), copies)])


def largest_group(train: Models, val: Models, test: Models, min_models: int = 10) -> str | None:
    """The architecture (``arch`` column) with the most training models that NFN layers can read,
    among those with ``min_models`` training and 3 validation and test models."""
    readable = [a for a, s in zip(train.rows["arch"], train.specs) if nfn_readable(s)]
    counts = {a: readable.count(a) for a in dict.fromkeys(readable)}
    ok = [a for a, n in counts.items() if n >= min_models and (val.rows["arch"] == a).sum() >= 3
          and (test.rows["arch"] == a).sum() >= 3]
    return max(ok, key=lambda a: (counts[a], a)) if ok else None


def _take(models: Models, arch: str) -> Models:
    idx = [i for i, a in enumerate(models.rows["arch"]) if a == arch]
    return Models(models.rows.iloc[idx].reset_index(drop=True), [models.specs[i] for i in idx],
                  [models.params[i] for i in idx])


def accuracy_study(train: Models, val: Models, test: Models, methods: Sequence[Baseline], target: str = "test_acc",
                   config: PredictorConfig = PredictorConfig(), seed: int = 0, arch: str | None = None,
                   extra: dict[str, Callable] | None = None, min_models: int = 10,
                   encoder: nn.Module | None = None) -> dict:
    """R² and Kendall tau of ``target`` predictions on the test models of one architecture NFN reads.

    Every method of ``methods`` (already fit) gets a ridge probe trained on the group's training
    models; NFN-HNP / NFN-NP are trained on them (early stopping on the group's validation models);
    s(W) also gets gradient boosting. ``extra`` maps a name to ``f(models) -> predictions`` for
    predictors that need no fitting (PEACE's auxiliary head); ``encoder`` (a trained PEACE encoder)
    is also fine-tuned end to end as NFN is trained, with a regression head on its embedding."""
    arch = arch or largest_group(train, val, test, min_models)
    if arch is None:
        return {"skipped": f"no architecture NFN reads (an MLP, a globally pooled CNN) with {min_models} or more "
                           f"training models and 3 or more validation and test models"}
    tr, va, te = _take(train, arch), _take(val, arch), _take(test, arch)
    if min(len(tr), len(va), len(te)) < 3:
        return {"arch": arch, "skipped": f"{len(tr)} train / {len(va)} val / {len(te)} test models of {arch}"}
    y_tr, y_va, y_te = (m.rows[target].to_numpy(float) for m in (tr, va, te))
    out: dict = {"arch": arch, "target": target, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
                 "tasks": sorted(set(tr.rows["task"]) | set(te.rows["task"])), "config": asdict(config), "methods": {}}
    for m in methods:
        out["methods"][f"{m.name} + ridge"] = {k: v for k, v in linear_probe(m.transform(tr), y_tr, m.transform(te),
                                                                               y_te).items()}
    stats = WeightStats().fit(tr)
    gbt = HistGradientBoostingRegressor(random_state=seed).fit(stats.transform(tr), y_tr)
    out["methods"]["stats + gradient boosting"] = _scores(y_te, gbt.predict(stats.transform(te)))
    for name, f in (extra or {}).items():
        out["methods"][name] = _scores(y_te, f(te))
    spec = tr.specs[0]
    for name in (p for p in PREDICTORS if encoder is not None or p != "peace fine-tuned"):
        params, y = (with_renamed(spec, tr.params, y_tr, config.renamed, seed) if name == "peace fine-tuned"
                     else (tr.params, y_tr))  # PEACE's encoder also reads class-renamed copies
        model = fit_predictor(name, spec, params, y, va.params, y_va, config, seed, encoder)
        out["methods"][name] = _scores(y_te, predict_regressor(model, te.params))
    return out
