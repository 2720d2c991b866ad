"""The Ablations page: an ablation grid's summary, metric by metric, with each configuration's spread over seeds."""
from __future__ import annotations

import pandas as pd
import streamlit as st
from shared import root

from peace.serve.explore import find_ablation_summaries
from peace.serve.plots import ablation_bars


def page_ablations() -> None:
    from peace.orchestrate.ablation import best_per_metric, compare

    found = find_ablation_summaries(root())
    if not found:
        st.info(f"No ablation summaries under {root() / 'ablations'}. Run `peace ablate --grid default --out "
                f"{root() / 'ablations' / 'demo'}` (or `--grid tiny` for a quick one).")
        return
    path = st.selectbox("Summary", found, format_func=lambda p: str(p.parent.name))
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
