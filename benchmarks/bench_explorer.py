"""Explorer responsiveness: time every page's rerun after the first load (goal: under 300 ms).

    python benchmarks/bench_explorer.py [--artifacts artifacts] [--repeats 5]

Drives `explorer/app.py` with streamlit's AppTest (the script run a browser interaction triggers,
without the browser's drawing) on the artifacts of `./scripts/demo`. For each page: the first load
(opening the embedding set, zoo and encoder, fitting s(W) and raw-weight vectors) and the median
and worst of the following reruns, with a different query model each time where the page has one.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["Map", "Neighbours", "Interpolation", "Generate", "Best for a task", "Symmetry lab", "Ablations",
         "Query your model"]
VIEWS = {"Map": "views/map.py", "Neighbours": "views/neighbours.py", "Interpolation": "views/interpolation.py",
         "Generate": "views/generate.py", "Best for a task": "views/rank.py",
         "Symmetry lab": "views/symmetry_lab.py", "Ablations": "views/ablations.py", "Query your model": "views/query.py"}
PICKERS = {"Neighbours": "query", "Symmetry lab": "sym_model", "Interpolation": "interp_b"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ["PEACE_ARTIFACTS"] = str(args.artifacts.resolve())
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=600)
    t0 = time.perf_counter()
    at.run()
    print(f"first load of the app: {time.perf_counter() - t0:.2f} s")
    print(f"{'page':18} {'first (s)':>9} {'p50 (ms)':>9} {'max (ms)':>9}")
    for page in PAGES:
        t0 = time.perf_counter()
        at.switch_page(VIEWS[page]).run()
        first = time.perf_counter() - t0
        assert not at.exception, [e.message for e in at.exception]
        times = []
        for i in range(args.repeats):
            if page in PICKERS:
                box = at.selectbox(key=PICKERS[page])
                box.set_value(box.options[(i + 2) % len(box.options)].split(" · ")[0])  # options show labels
            t0 = time.perf_counter()
            at.run()
            times.append(1e3 * (time.perf_counter() - t0))
        print(f"{page:18} {first:>9.2f} {statistics.median(times):>9.0f} {max(times):>9.0f}", flush=True)


if __name__ == "__main__":
    main()
