"""The config of an encoder training run: encoder, augmentation and optimisation, as dataclasses
read from a built-in name or a YAML file plus ``key=value`` overrides."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from peace.core.atomic import read_json_or_none
from peace.core.config import apply_overrides, checked, read_yaml
from peace.core.errors import PeaceError, unknown
from peace.learn.contrastive import AugmentConfig
from peace.learn.encoder import EncoderConfig

__all__ = ["CONFIG_DIR", "VAL_RELEVANCE", "RunConfig", "TrainConfig", "config_for_zoo", "config_from_dict", "config_names",
           "load_config"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "presets" / "encoder"
VAL_RELEVANCE = ("auto", "task", "lineage")


@dataclass
class TrainConfig:
    """The optimisation and data side of a run."""

    epochs: int = 20
    batch_size: int = 64          # anchors per step (2 views each, plus hard negatives)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1      # InfoNCE tau
    aux_weight: float = 1.0       # lambda for the auxiliary metric MSE; 0 switches it off
    patience: int = 4             # epochs without a better validation mAP before stopping
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    holdout_tasks: int | list[str] = 1   # how many tasks (or which) go entirely to test
    val_holdout_tasks: int | list[str] = 0  # ... and entirely to validation (early stopping rewards generalization)
    val_relevance: str = "auto"   # validation mAP relevance: task, lineage, or auto (task if >= 2 tasks)
    max_models_per_epoch: int | None = None  # subsample big zoos: each epoch sees this many anchors
    max_val_models: int | None = None  # big zoos: validate on whole lineages drawn up to about this many models
    grad_clip: float = 1.0
    amp: bool = True              # bfloat16 autocast on CUDA
    functional_weight: float = 0.0  # soft InfoNCE: share of the target graded by prediction agreement; 0 = plain
    functional_temperature: float = 0.05  # of the agreement softmax (agreements lie in [0, 1])
    task_weight: float = 0.0      # share of the soft target spread over the batch's views of the anchor's task
    #                               (training tasks' labels; off, and saved as 0, where the training split has one task)
    probe_steps: int = 100        # ProbeGen steps that learn the probes (encoder.probe_source=learned)
    reconstruction: float = 0.0   # E.D: weight of decoding each anchor's aligned weights from its embedding; 0 = off

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1 or self.probe_steps < 1:
            raise PeaceError(f"need epochs >= 1, batch_size >= 2, patience >= 1, probe_steps >= 1; got {self.epochs}, "
                             f"{self.batch_size}, {self.patience}, {self.probe_steps}")
        if not (self.temperature > 0 and self.lr > 0 and self.aux_weight >= 0 and self.functional_temperature > 0
                and self.reconstruction >= 0):
            raise PeaceError("temperature, functional_temperature and lr must be > 0, aux_weight and reconstruction >= 0")
        if not 0 <= self.functional_weight <= 1:
            raise PeaceError(f"functional_weight must be in [0, 1], got {self.functional_weight}")
        if not 0 <= self.task_weight <= 1:
            raise PeaceError(f"task_weight must be in [0, 1], got {self.task_weight}")
        if self.val_relevance not in VAL_RELEVANCE:
            raise unknown("val_relevance", self.val_relevance, VAL_RELEVANCE)
        if self.max_val_models is not None and self.max_val_models < 4:
            raise PeaceError(f"max_val_models must be at least 4 (or null for all), got {self.max_val_models}")
        if self.max_models_per_epoch is not None and self.max_models_per_epoch < self.batch_size:
            raise PeaceError(f"max_models_per_epoch ({self.max_models_per_epoch}) must be at least batch_size "
                             f"({self.batch_size})")


@dataclass
class RunConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run directory."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(d: dict) -> RunConfig:
    d = dict(d)
    for name, cls in (("encoder", EncoderConfig), ("augment", AugmentConfig), ("train", TrainConfig)):
        d[name] = checked(cls, d.get(name) or {}, name)
    return checked(RunConfig, d, "encoder training config")


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_for_zoo(zoo: str | Path) -> tuple[str, list[str], str]:
    """The encoder config a zoo is meant to be trained with, its overrides, and why: what its recipe names
    (``encoder_config``, ``encoder_set``: each built-in preset names its own), else ``default``."""
    recipe = read_json_or_none(Path(zoo) / "recipe.json") or {}
    named, overrides = recipe.get("encoder_config"), recipe.get("encoder_set") or []
    if isinstance(named, str) and named and isinstance(overrides, list):
        return named, [str(o) for o in overrides], "named by the zoo's recipe"
    return "default", [], "the zoo's recipe names none"


def load_config(config: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """A built-in config by name (``default``, ``tiny``), a YAML file, or the defaults; then overrides."""
    if config is None:
        d: dict = {}
    elif str(config) in config_names():
        d = read_yaml(CONFIG_DIR / f"{config}.yaml", "encoder config")
    elif Path(config).suffix in (".yaml", ".yml") or Path(config).exists():
        d = read_yaml(config, "encoder config")
    else:
        raise unknown("encoder config", str(config), config_names(), "Or pass the path of a YAML file.")
    return config_from_dict(apply_overrides(d, overrides or [], RunConfig))
