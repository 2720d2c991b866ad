"""How a zoo learns: mean and 10-90 % band of test accuracy (and generalization gap) over its runs
at each recorded epoch, printed and drawn as a PNG for the docs.

    python benchmarks/zoo_curves.py --zoo artifacts/zoos/tetris-seed --png docs/figures/tetris-seed-curve.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from peace.serve.plots import learning_curve  # noqa: E402
from peace.zoo.store import open_zoo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--png", type=Path, default=None, help="write the figure here")
    args = ap.parse_args()
    zoo = open_zoo(args.zoo)
    ok = zoo.manifest[zoo.manifest["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col, label in zip(axes, ("test_acc", "gen_gap"), ("test accuracy", "generalization gap")):
        curve = learning_curve(ok, col)
        for task, c in curve.groupby("task"):
            ax.fill_between(c.epoch, c.q10, c.q90, alpha=0.25)
            ax.plot(c.epoch, c["mean"], label=f"{task} (mean, 10-90 %)")
            marks = c[c.epoch.isin(sorted(set(c.epoch))[:: max(1, len(c) // 8)] + [c.epoch.max()])]
            print(f"{zoo.name} {task} {label}: " + ", ".join(
                f"ep {e}: {m:.3f} [{lo:.3f}, {hi:.3f}]" for e, m, lo, hi in zip(marks.epoch, marks["mean"], marks.q10, marks.q90)))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{zoo.name}: {ok.run_id.nunique()} runs")
    fig.tight_layout()
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
