"""Models sampled on the explorer's Generate page, and the model folders a user downloads them as (read back by
`peace query DIR` and `peace zoo add`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from peace.nets.architectures import ArchSpec

__all__ = ["Sample", "folder_config"]


@dataclass
class Sample:
    """Models sampled on the Generate page: their architecture, task and prompt, weights, test accuracies,
    the comparison table, their map positions and how many models of the pair the decoder learned from
    (``learned_from``; 0: it writes them at about chance); ``archive()`` packs them as model folders."""

    spec: ArchSpec
    task: str
    prompt: list[str]
    models: list[dict]
    accuracy: np.ndarray
    comparison: pd.DataFrame
    map_xy: np.ndarray
    learned_from: int

    def archive(self) -> bytes:
        """A zip of one folder per model (``model.safetensors`` + ``config.json``), each readable by
        ``peace query DIR`` and ``peace zoo add``."""
        import io
        import zipfile

        from safetensors.torch import save

        buffer = io.BytesIO()
        meta = {"task": self.task, "provenance": json.dumps({"sampled_from": self.prompt[:100]})}
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for j, m in enumerate(self.models):
                z.writestr(f"sampled-{j:03d}/model.safetensors", save({k: v.contiguous() for k, v in m.items()}))
                z.writestr(f"sampled-{j:03d}/config.json", json.dumps(folder_config(self.spec, meta), indent=1))
        return buffer.getvalue()


def folder_config(spec: ArchSpec, metadata: dict | None = None) -> dict:
    """The ``config.json`` of a model folder (``peace query DIR``, ``peace zoo add``): what the weights
    do not say (activation; a CNN's or Transformer's input shape and pooling; a Transformer's heads), plus
    ``metadata``."""
    from peace.nets.architectures import OPTIONAL_KEYS  # here: the explorer's map opens without torch

    config: dict = {"activation": spec.activation}
    if spec.family != "mlp":
        config.update(input_shape=list(spec.input_shape), pool=spec.pool)
        config.update({k: v for k, v in spec.to_dict().items() if k in OPTIONAL_KEYS})  # a CNN made elsewhere
    if spec.family == "vit":  # the weights do not say how the width splits into heads
        config["num_heads"] = spec.heads
    return {**config, **({"metadata": metadata} if metadata else {})}
