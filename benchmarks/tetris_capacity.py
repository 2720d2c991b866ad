"""How the TETRIS-SEED data and batch size were chosen (issue 14): what the paper's FFN 16-5-4 tanh
without bias, uniform init (torch's U(0, 1)) and Adam 3e-5 reach in 75 epochs on candidate data.

    python benchmarks/tetris_capacity.py

Prints mean test accuracy over 20 seeds at epochs 0 / 25 / 50 / 75, the 10-90 % spread at epoch 75
and the steps per epoch, for the old data (every placement), the chosen data (one placement per
tetromino) at batch 32 / 8 / 4, and learning rates or inits the paper does not use, for reference.
About a minute on 2 CPU cores.
"""
from __future__ import annotations

import pandas as pd

from peace.nets.architectures import ArchSpec
from peace.zoo.population import HParams, Schedule, train_population
from peace.zoo.tasks import load_task, tetris_task

PAPER = ArchSpec(family="mlp", input_shape=(1, 4, 4), n_classes=4, hidden=(5,), activation="tanh", bias=False)


def row(label: str, task, batch: int, lr: float = 3e-5, init: str = "uniform", seeds: int = 20) -> None:
    res = train_population(task, PAPER, [HParams(seed=s, init=init, lr=lr) for s in range(1, seeds + 1)],
                           Schedule(75, batch, "adam", (0, 25, 50, 75)))
    m = pd.DataFrame(res.metrics)
    curve = " / ".join(f"{v:.3f}" for v in m.groupby("epoch").test_acc.mean())
    last = m[m.epoch == 75].test_acc
    print(f"{label:58s} {curve}   [{last.quantile(0.1):.2f}, {last.quantile(0.9):.2f}]   "
          f"{-(-len(task.y_train) // batch)} steps/epoch", flush=True)


def main() -> None:
    print(f"{'data, batch (Adam 3e-5, U(0, 1) unless said)':58s} test acc at 0 / 25 / 50 / 75   10-90 % at 75")
    everywhere = tetris_task(per_class=400, noise=0.2)
    canonical = load_task("tetris-canonical")
    row("every placement, noise 0.2, 400/class, batch 32", everywhere, 32)
    row("every placement, noise 0.2, 400/class, batch 4", everywhere, 4)
    for b in (32, 8, 4):
        row(f"tetris-canonical (noise 0.3, 600/class), batch {b}", canonical, b)
    row("tetris-canonical, batch 4, kaiming_uniform init", canonical, 4, init="kaiming_uniform")
    row("every placement, batch 32, lr 1e-2, kaiming_uniform", everywhere, 32, lr=1e-2, init="kaiming_uniform")


if __name__ == "__main__":
    main()
