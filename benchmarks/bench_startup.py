"""What a fresh process pays before its first useful work, side by side: UMAP's numba kernels and the CLI.

    python benchmarks/bench_startup.py [--points 60 5292] [--files 20] [--repeats 3]

Each figure is the median over ``--repeats`` fresh interpreters (the cost is per process):
- UMAP: the 2-D map of N random 32-d points (the `peace embed` / export step's map), timed inside the
  child around the call only (imports excluded): umap-learn as PEACE called it before (its kernels
  compiled in every process; from 4,096 points NNDescent, whose kernels no cache keeps) against
  ``peace.serve.export.umap_coordinates`` (numba's on-disk cache turned on for umap-learn's kernels:
  compiled by the first process on the machine, loaded by every later one; exact neighbours from
  scikit-learn instead of NNDescent).
- Isolated reads of ``--files`` small model files (`peace zoo add`, `peace rank`, the explorer's uploads):
  one fresh interpreter per file importing the reader, as ``peace.intake.sandbox`` started before,
  against ``load_model_isolated`` now (one process imports the reader, then forks a child per file),
  timed from the first read to the last in a fresh process, the forking process's start included.
- The same reads, ten times as many files, the forking process started: one child at a time against
  ``load_models_isolated`` (a child per core at a time), and that with a child per file against the same with
  small files read in batches, a child per batch (``sandbox.BATCH_FILES``).
- ``peace --help``: the whole command, interpreter start included (every `peace` command pays it), against
  the same with the scikit-learn modules imported first that ``peace.evaluate.baselines`` imported at the
  top before (every command's parser reached them; now imported where a baseline is fit).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

BEFORE = ("import umap; import numpy as np; import time; x = np.random.default_rng(0).normal(size=({n}, 32))"
          ".astype('float32'); t = time.perf_counter(); umap.UMAP(n_components=2, n_neighbors=15, metric='cosine', "
          "random_state=0, n_jobs=1).fit_transform(x); print(time.perf_counter() - t)")
AFTER = ("from peace.serve.export import umap_coordinates; import numpy as np; import time; "
         "x = np.random.default_rng(0).normal(size=({n}, 32)).astype('float32'); t = time.perf_counter(); "
         "umap_coordinates(x, 2); print(time.perf_counter() - t)")


def child_seconds(code: str) -> float:
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def wall_seconds(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - t0


def isolated_reads(n: int, repeats: int) -> tuple[float, float]:
    """Seconds to read ``n`` model files in isolation: a fresh interpreter each, against forks of one."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = [f"{tmp}/m{i}.pt" for i in range(n)]
        save = "import torch, sys; torch.manual_seed(0); [torch.save(torch.nn.Sequential(torch.nn.Linear(16, 32), " \
               "torch.nn.ReLU(), torch.nn.Linear(32, 4)).state_dict(), f) for f in sys.argv[1:]]"
        subprocess.run([sys.executable, "-c", save, *files], check=True)
        old = "from peace.intake.importers import load_model; import sys; load_model(sys.argv[1], {'activation': 'relu'})"
        before = statistics.median(sum(wall_seconds([sys.executable, "-c", old, f]) for f in files)
                                   for _ in range(repeats))
        now = ("from peace.intake.sandbox import load_model_isolated; import sys, time; t = time.perf_counter(); "
               "[load_model_isolated(f, {'activation': 'relu'}) for f in sys.argv[1:]]; print(time.perf_counter() - t)")
        after = statistics.median(float(subprocess.run([sys.executable, "-c", now, *files], capture_output=True,
                                                       text=True, check=True).stdout) for _ in range(repeats))
    return before, after


def concurrent_reads(n: int, repeats: int) -> tuple[float, float, float]:
    """Seconds to read ``n`` model files in isolation, after the forking process started: one child at a time
    (``load_model_isolated`` in a loop, as `peace zoo add` / `peace rank` read before), a child per core at a
    time with a child per file (``load_models_isolated`` with ``BATCH_FILES = 1``) and with small files in
    batches (``load_models_isolated`` as it is), in one process each, alternated."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = [f"{tmp}/m{i}.pt" for i in range(n)]
        save = "import torch, sys; torch.manual_seed(0); [torch.save(torch.nn.Sequential(torch.nn.Linear(64, 32), " \
               "torch.nn.ReLU(), torch.nn.Linear(32, 10)).state_dict(), f) for f in sys.argv[1:]]"
        subprocess.run([sys.executable, "-c", save, *files], check=True)
        code = ("import sys, time; import peace.intake.sandbox as s; s.prepare_reader(); "
                "s.load_model_isolated(sys.argv[2], {'activation': 'relu'}); "
                "s.BATCH_FILES = 1 if sys.argv[1] == 'perfile' else s.BATCH_FILES; t = time.perf_counter(); "
                "([s.load_model_isolated(f, {'activation': 'relu'}) for f in sys.argv[2:]] if sys.argv[1] == 'one' "
                "else s.load_models_isolated(sys.argv[2:], {'activation': 'relu'})); print(time.perf_counter() - t)")
        times: dict[str, list[float]] = {"one": [], "perfile": [], "many": []}
        for _ in range(repeats):
            for how, seconds in times.items():
                seconds.append(float(subprocess.run([sys.executable, "-c", code, how, *files], capture_output=True,
                                                    text=True, check=True).stdout))
    return statistics.median(times["one"]), statistics.median(times["perfile"]), statistics.median(times["many"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, nargs="*", default=[60, 5292])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"{'what':<40} {'before s':>9} {'after s':>9} {'ratio':>7}")
    if a.files:
        before, after = isolated_reads(a.files, a.repeats)
        print(f"{f'isolated reads of {a.files} model files':<40} {before:>9.2f} {after:>9.2f} {before / after:>6.1f}x",
              flush=True)
    if a.files:
        one, perfile, batched = concurrent_reads(10 * a.files, a.repeats)
        print(f"{f'{10 * a.files} files, a child per core at a time':<40} {one:>9.2f} {perfile:>9.2f} "
              f"{one / perfile:>6.1f}x", flush=True)
        print(f"{f'{10 * a.files} files, a child per batch':<40} {perfile:>9.2f} {batched:>9.2f} "
              f"{perfile / batched:>6.1f}x", flush=True)
    child_seconds(AFTER.format(n=60))  # the machine's one compilation, so that every timed run below is a later one
    for n in a.points:
        before = statistics.median(child_seconds(BEFORE.format(n=n)) for _ in range(a.repeats))
        after = statistics.median(child_seconds(AFTER.format(n=n)) for _ in range(a.repeats))
        print(f"{f'2-D UMAP of {n:,} points, fresh process':<40} {before:>9.2f} {after:>9.2f} {before / after:>6.1f}x",
              flush=True)
    old = ("import sklearn.decomposition, sklearn.feature_extraction.text, sklearn.preprocessing, runpy, sys; "
           "sys.argv = ['peace', '--help']; runpy.run_module('peace', run_name='__main__')")
    before = statistics.median(wall_seconds([sys.executable, "-c", old]) for _ in range(a.repeats))
    after = statistics.median(wall_seconds([sys.executable, "-m", "peace", "--help"]) for _ in range(a.repeats))
    print(f"{'peace --help (whole command)':<40} {before:>9.2f} {after:>9.2f} {before / after:>6.1f}x")


if __name__ == "__main__":
    main()
