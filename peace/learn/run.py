"""A training run directory, the one owner of its files: names, checks, reading and writing.

    config.yaml          the full, resolved config (held-out tasks included)
    splits.parquet       model_id -> train / val / test, heldout_task
    views/               cached pruned and distilled positive views (safetensors)
    checkpoint.pt        last epoch: weights, optimizer, history (read back with peace.intake.torchfile, not torch.load)
    encoder.safetensors  best encoder weights (by validation same-task, or same-lineage, mAP)
    encoder.json         its config, standardization and provenance, and the weights' checksum
    history.parquet      one row per epoch
    run.json             zoo, device, status and, when finished, the best epoch
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peace import __version__
from peace.core.atomic import atomic_path, sha256_file, write_json
from peace.core.config import read_yaml
from peace.core.device import resolve_device
from peace.core.errors import PeaceError
from peace.learn.encoder import ENCODER_FORMAT, Embedder, EncoderConfig, PeaceEncoder, upgrade_state
from peace.learn.flat_encoder import FlatMLPEncoder
from peace.learn.runconfig import RunConfig, config_from_dict

__all__ = ["RunDir", "TrainResult", "build_encoder", "load_encoder"]


def _saved_config(path: Path) -> RunConfig:
    """A run's config.yaml with the defaults of keys added since it was written filled in, so that a run
    interrupted under an older PEACE resumes under this one."""
    return config_from_dict(read_yaml(path, "run config"))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two nested config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif json.loads(json.dumps(x)) != json.loads(json.dumps(y)):
            out.append(f"{prefix}{k}")
    return out


def build_encoder(config: EncoderConfig) -> Embedder:
    """The encoder ``config.kind`` names: PEACE's graph encoder, or the flat-MLP control."""
    return FlatMLPEncoder(config) if config.kind == "mlp" else PeaceEncoder(config)


@dataclass
class TrainResult:
    path: Path
    history: pd.DataFrame
    best_epoch: int
    best_val_map: float
    stopped_early: bool
    relevance: str = "task"  # what validation mAP counted as relevant: task or lineage


class RunDir:
    """A training run's directory (see the module docstring)."""

    CONFIG, SPLITS, VIEWS, CHECKPOINT = "config.yaml", "splits.parquet", "views", "checkpoint.pt"
    ENCODER, ENCODER_META, HISTORY, INFO = "encoder.safetensors", "encoder.json", "history.parquet", "run.json"
    DECODER = ("decoder.safetensors", "decoder.json")  # written by ``peace decoder`` (peace.learn.decoder)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @staticmethod
    def looks_like(path: Path) -> bool:
        """Whether ``path`` holds a training run (an embedding set may not be written there)."""
        return (path / RunDir.ENCODER).exists() or (path / RunDir.INFO).exists()

    # --- starting and resuming ---------------------------------------------------------------------

    def prepare(self, cfg: RunConfig, zoo_sha256: str, resume: bool) -> None:
        """A new run needs an empty directory; a resumed one the same config and zoo."""
        out, saved = self.path, self / self.CONFIG
        if not resume:
            if out.exists() and any(out.iterdir()):
                raise PeaceError(f"{out} is not empty; pass --resume to continue the run there, or choose a new --out")
            out.mkdir(parents=True, exist_ok=True)
            return
        if not saved.exists():
            raise PeaceError(f"nothing to resume in {out} (no config.yaml); start a new run without --resume")
        differ = _differences(_saved_config(saved).to_dict(), cfg.to_dict())
        if differ:
            raise PeaceError(f"{out} was trained with a different config ({', '.join(differ[:5])} differ); resume "
                             f"needs the same one (see {saved}), or start a new --out")
        if self.info()["zoo_manifest_sha256"] != zoo_sha256:
            raise PeaceError(f"{out} was trained on another zoo (manifest checksum differs); resume needs the same zoo")

    def start(self, cfg: RunConfig, splits: pd.DataFrame, info: dict) -> None:
        """The files a new run writes before its first epoch."""
        with atomic_path(self / self.CONFIG) as tmp:
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        with atomic_path(self / self.SPLITS) as tmp:
            splits.to_parquet(tmp)
        write_json(self / self.INFO, {**info, "status": "running"})

    def read_checkpoint(self) -> dict | None:
        path = self / self.CHECKPOINT
        if not path.exists():
            return None
        from peace.intake.torchfile import read_torch_file

        try:
            return read_torch_file(path, max_bytes=path.stat().st_size)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: start that epoch again
            raise PeaceError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to restart "
                             f"the run from scratch") from None

    # --- after each epoch --------------------------------------------------------------------------

    def save_encoder(self, encoder: Embedder, cfg: RunConfig, meta: dict) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        with atomic_path(self / self.ENCODER) as tmp:
            save_file(state, str(tmp))
        # the checksum pairs the two files: a crash between the writes is detected, not misread
        write_json(self / self.ENCODER_META, {"format_version": ENCODER_FORMAT, "peace_version": __version__,
                                              "config": cfg.to_dict(), "weights_sha256": self.encoder_sha256(), **meta})

    def save_epoch(self, encoder: Embedder, opt: torch.optim.Optimizer, cfg: RunConfig, meta: dict,
                   history: list[dict], improved: bool, best: float, bad: int, extra: dict | None = None) -> None:
        """The best encoder (when it improved), the history and the checkpoint (with ``extra``'s entries:
        other modules' states that training resumes from, such as E.D's decoder)."""
        row = history[-1]
        if improved:
            self.save_encoder(encoder, cfg, meta | {"epoch": row["epoch"], "val_map": row["val_map"]})
        with atomic_path(self / self.HISTORY) as tmp:
            pd.DataFrame(history).to_parquet(tmp)
        with atomic_path(self / self.CHECKPOINT) as tmp:
            torch.save({"model": encoder.state_dict(), "optimizer": opt.state_dict(), "epoch": row["epoch"],
                        "history": history, "best": best, "bad_epochs": bad, **(extra or {})}, tmp)

    def finish(self, history: pd.DataFrame, stopped: bool, processes: int) -> None:
        best = history.loc[history["val_map"].idxmax()]
        write_json(self / self.INFO, self.info() | {
            "status": "early-stopped" if stopped else "finished", "best_epoch": int(best.epoch),
            "best_val_map": float(best.val_map), "epochs_run": len(history), "processes": processes})

    # --- reading -----------------------------------------------------------------------------------

    def info(self) -> dict:
        return json.loads((self / self.INFO).read_text())

    def has_encoder(self) -> bool:
        return (self / self.ENCODER).is_file()

    def encoder_sha256(self) -> str:
        return sha256_file(self / self.ENCODER)

    def splits(self) -> pd.DataFrame:
        """model_id, split (train / val / test), heldout_task."""
        return pd.read_parquet(self / self.SPLITS)

    def has_splits(self) -> bool:
        return (self / self.SPLITS).exists()

    def history(self) -> pd.DataFrame:
        return pd.read_parquet(self / self.HISTORY)

    def result(self) -> TrainResult:
        """A finished run's result (e.g. after training in several processes)."""
        info = self.info()
        relevance = json.loads((self / self.ENCODER_META).read_text()).get("val_relevance", "task")
        return TrainResult(self.path, self.history(), int(info["best_epoch"]), float(info["best_val_map"]),
                           info["status"] == "early-stopped", relevance)

    def load_encoder(self, device: str = "cpu", backend: str | None = None) -> Embedder:
        """The best encoder of a finished (or running) run, in eval mode, checked against its checksum."""
        meta_path, weights = self / self.ENCODER_META, self / self.ENCODER
        if not (meta_path.exists() and weights.exists()):
            raise PeaceError(f"{self.path} holds no trained encoder (encoder.json + encoder.safetensors); train one "
                             f"with `peace train --zoo ZOO --out {self.path}`")
        meta = json.loads(meta_path.read_text())
        if meta.get("weights_sha256", self.encoder_sha256()) != self.encoder_sha256():
            raise PeaceError(f"{weights} and {meta_path} are from different epochs (training was interrupted while "
                             f"saving the best encoder); finish the run with `peace train ... --out {self.path} --resume`")
        cfg = config_from_dict(meta["config"])
        if backend is not None:
            cfg.encoder.backend = backend
        elif torch.device(device).type != "cpu" and cfg.encoder.backend != "torch":
            cfg.encoder.backend = "torch"
        encoder = build_encoder(cfg.encoder)
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as e:
            raise PeaceError(f"{weights} is damaged ({e}); retrain or restore it") from None
        encoder.load_state_dict(upgrade_state(state, int(meta.get("format_version", 1))))
        encoder.meta = meta
        return encoder.to(resolve_device(device)).eval()


def load_encoder(run_dir: str | Path, device: str = "cpu", backend: str | None = None) -> Embedder:
    """The best encoder of the run at ``run_dir`` (``RunDir(run_dir).load_encoder``)."""
    return RunDir(run_dir).load_encoder(device, backend)
