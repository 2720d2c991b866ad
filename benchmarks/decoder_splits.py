"""A run's saved decoder judged on its validation and test splits, by function (what the decoder settings
of docs/generation.md were chosen and reported by): per family and over all models, the decoded models'
and, where the run's embedding has a function block, the models as the decoder decodes them (refined
where validation chose it per architecture) test accuracy, share keeping 90 % of the original's accuracy,
and agreement with the original.

    python benchmarks/decoder_splits.py artifacts/runs/vision-ot25 artifacts/runs/vision-fi64
"""
from __future__ import annotations

import argparse

import pandas as pd

from peace.learn.generation import decoder_groups, mark_heldout, reconstruction, reconstruction_summary, run_decoder
from peace.learn.refine import sketch_fit
from peace.learn.run import RunDir

COLUMNS = ["decoded_acc", "decoded_kept", "decoded_agreement", "refined_acc", "refined_kept", "refined_agreement"]


def judged(run: str) -> pd.DataFrame:
    """``reconstruction_summary`` of the run's validation and test splits with its saved decoder."""
    dec, _ = run_decoder(run)
    zoo, groups, _ = decoder_groups(run)
    fit = sketch_fit(RunDir(run).load_encoder())
    parts = []
    for split in ("val", "test"):
        written = [g for g in groups[split] if g.spec in dec.specs]  # a decoder of older code may lack a family
        table = mark_heldout(reconstruction(dec, zoo, written, fit), RunDir(run))
        parts.append(reconstruction_summary(table).assign(run=run, split=split))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training runs with a decoder (peace decoder --run)")
    args = ap.parse_args()
    df = pd.concat([judged(r) for r in args.runs], ignore_index=True)
    cols = ["run", "split", "family", "heldout_task", "models"] + [c for c in COLUMNS if c in df]
    print(df[cols].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
