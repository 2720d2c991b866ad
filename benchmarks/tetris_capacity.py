"""Why the TETRIS-SEED zoo barely learns (issue 14): what the paper's FFN 16-5-4 tanh (no bias)
reaches on our generated tetris data at several learning rates, noise levels and data sizes.

    python benchmarks/tetris_capacity.py

Prints mean train / test accuracy over 20 seeds at epochs 0, 10 and 75 (Adam, batch 32), and a
64-unit MLP for reference. Population training: about a minute on 2 CPU cores.
"""
from __future__ import annotations

import pandas as pd

from peace.architectures import ArchSpec
from peace.population import HParams, Schedule, train_population
from peace.tasks import _tetris

PAPER = ArchSpec(family="mlp", input_shape=(1, 4, 4), n_classes=4, hidden=(5,), activation="tanh", bias=False)


def curve(spec: ArchSpec, lr: float, noise: float = 0.2, per_class: int = 400, seeds: int = 20) -> list:
    res = train_population(_tetris(per_class=per_class, noise=noise), spec,
                           [HParams(seed=s, init="uniform", lr=lr) for s in range(1, seeds + 1)],
                           Schedule(75, 32, "adam", (0, 10, 75)))
    return pd.DataFrame(res.metrics).groupby("epoch")[["train_acc", "test_acc"]].mean().round(3).values.tolist()


def main() -> None:
    print("FFN 16-5-4 tanh, no bias: [[train, test] at epochs 0, 10, 75]")
    for noise, per_class, lr in [(0.2, 400, 3e-5), (0.2, 4000, 3e-5), (0.2, 400, 1e-3), (0.2, 400, 1e-2),
                                 (0.05, 400, 1e-3), (0.05, 400, 1e-2)]:
        print(f"noise {noise}, {per_class} per class, lr {lr:g}: {curve(PAPER, lr, noise, per_class)}", flush=True)
    wide = ArchSpec(family="mlp", input_shape=(1, 4, 4), n_classes=4, hidden=(64,), activation="tanh", bias=True)
    print(f"reference, MLP 16-64-4 tanh, lr 1e-3: {curve(wide, 1e-3, seeds=5)}")


if __name__ == "__main__":
    main()
