"""The Ablations page: an ablation grid's summary, metric by metric, with each configuration's spread over seeds;
or an evaluation's methods side by side (what the demo pipeline leaves)."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st
from shared import root

from peace.serve.explore import find_ablation_summaries, find_evaluations
from peace.serve.plots import ablation_bars


def page_ablations() -> None:
    grids, evaluations = find_ablation_summaries(root()), find_evaluations(root())
    if not grids and not evaluations:
        st.info(f"No ablation summaries under {root() / 'ablations'} and no evaluation under {root() / 'evaluation'}. "
                f"Run `peace ablate --grid default --out {root() / 'ablations' / 'demo'}` (or `--grid tiny` for a "
                "quick one), or `peace evaluate`.")
        return
    sources = [("grid", p) for p in grids] + [("evaluation", p) for p in evaluations]
    kind, path = st.selectbox("Comparison", sources, format_func=lambda s: f"ablation grid {s[1].parent.name}"
                              if s[0] == "grid" else f"evaluation {s[1].parent.name}: PEACE and the baselines")
    if kind == "grid":
        _grid(path)
    else:
        _evaluation(path)
    if not grids:
        st.caption(f"No ablation grid yet: `peace ablate --grid default --out {root() / 'ablations' / 'demo'}` "
                   "compares encoder configurations over seeds.")


def _evaluation(path) -> None:
    """``peace evaluate``'s methods side by side (what the demo pipeline leaves), from its metrics.json."""
    from peace.orchestrate.evaluation import summary_table
    from peace.serve.plots import method_comparison

    table_ = summary_table(json.loads(path.read_text()))
    st.plotly_chart(method_comparison(table_), width="stretch")
    st.dataframe(table_.round(3), width="stretch")
    st.caption(f"From {path}; the report beside it (report.md) says what each column measures.")


def _grid(path) -> None:
    from peace.orchestrate.ablation import best_per_metric, compare

    summary = pd.read_parquet(path)
    st.write(summary.groupby("status").size().rename("runs").to_frame().T)
    metrics = [c for c in summary.columns if "." in c and summary[c].notna().any()]
    metric = st.selectbox("Metric", metrics, index=metrics.index("retrieval_task.map") if "retrieval_task.map" in metrics else 0)
    table_ = compare(summary, metrics)
    st.plotly_chart(ablation_bars(table_, metric), width="stretch")
    shown = lambda t: t.assign(**{c: t[c].map(lambda v: "- (one seed)" if pd.isna(v) else f"{v:.4g}")  # noqa: E731
                                  for c in ("mean", "std")})  # one number format; no "None" for a single seed's spread
    st.dataframe(shown(table_[table_["metric"] == metric].sort_values("mean", ascending=False)), hide_index=True,
                 width="stretch")
    st.subheader("Best configuration per metric")
    st.dataframe(shown(best_per_metric(table_)), hide_index=True, width="stretch")


page_ablations()
