"""Transfer to a new task with or without a fresh output layer: chosen on validation, reported on test.

    python benchmarks/new_task_heads.py --run artifacts/runs/demo [--tasks digits-labelperm digits-rot90 digits-flip]
    python benchmarks/new_task_heads.py --run artifacts/runs/demo --tasks tetris-canonical \
        --prompt "task == 'tetris' and arch == 'mlp 16-16-4 gelu' and epoch == 24"

For each new task, the generative study (SANE's protocol, the default prompt or ``--prompt``) runs on the
validation split with the transferred models' own output layer and with torch's fresh one
(``GenerativeConfig.new_head``);
the better of the two for plain sampled models after the fine-tuning budget is then run on the test
split. Prints each study's tables (validation, then the chosen one on test) and the choice.
"""
from __future__ import annotations

import argparse
import dataclasses

import pandas as pd

from peace.orchestrate.generation import GenerativeConfig, generative_markdown, generative_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--tasks", nargs="+", default=["digits-labelperm", "digits-rot90", "digits-flip"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--prompt", help="prompt models (a manifest query or ids; default: the study's default prompt)")
    a = ap.parse_args()
    for task in a.tasks:
        base = GenerativeConfig(new_task=task, seeds=a.seeds, prompt=a.prompt)
        scores = {}
        for new_head in (False, True):
            study = generative_study(a.run, dataclasses.replace(base, new_head=new_head, split="val"), progress=False)
            s = pd.DataFrame(study["summary"])
            pick = (s["setting"] == "new task") & (s["method"] == "sampled") & (s["epoch"] == s["epoch"].max())
            scores[new_head] = float(s.loc[pick, "mean"].iloc[0])
            print(generative_markdown(study), flush=True)
        chosen = max(scores, key=scores.get)
        study = generative_study(a.run, dataclasses.replace(base, new_head=chosen), progress=False)
        print(f"\n{task}: chosen on validation: {'fresh' if chosen else 'own'} output layer (sampled, last epoch: "
              f"own {scores[False]:.3f}, fresh {scores[True]:.3f}); test:\n{generative_markdown(study)}", flush=True)


if __name__ == "__main__":
    main()
