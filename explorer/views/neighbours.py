"""The Neighbours page: a query model's nearest models in PEACE's space beside the baselines' spaces."""
from __future__ import annotations

import streamlit as st
from shared import cols, current, model_picker, remembered, table

from peace.serve.explore import typical_model


def page_neighbours() -> None:
    ex = current()
    if ex is None:
        return
    if len(ex.table) < 2:
        st.info(f"The set {ex.path.name} holds one model: neighbours need two or more (`peace zoo add` more models, "
                f"then `peace embed` again).")
        return
    q = model_picker(ex, "Query model (type to search)", "query", typical_model(ex.table), url=True)
    kmax = min(50, len(ex.table) - 1)
    k = remembered(st.slider, "k", 1, kmax, key="k", default=10, fit=lambda v: max(1, min(v, kmax)))
    row = ex.table.iloc[ex.es.row_of[q]]
    st.write(f"**{q}**: {row['task']}, {row['arch']}, epoch {row['epoch']}, test accuracy {row['test_acc']:.3f}")
    titles = {"function": "Function space (probe predictions)", "stats": "s(W) weight statistics", "raw": "Raw weights"}
    with st.spinner("Finding neighbours ..."):
        hits = ex.neighbours(q, k)
        hits["agreement"] = ex.agreement(q, list(hits["model_id"]))
        others = {m: ex.baseline_neighbours(q, m, k) for m in titles if m in ex.baselines.methods}
        for other in others.values():
            other["agreement"] = ex.agreement(q, list(other["model_id"]))
    same = lambda d: f"{(d['task'] == row['task']).mean():.0%}"  # noqa: E731
    st.info(f"Same task among the top {k}: PEACE {same(hits)}, "
            + ", ".join(f"{titles[m].split(' (')[0]} {same(d)}" for m, d in others.items()))
    st.subheader("PEACE (Annoy)")
    table(cols(hits, ("cosine", "agreement")), key="peace_hits")
    st.subheader("The same query in the baselines' spaces")
    for tab, (method, other) in zip(st.tabs([titles[m] for m in others]), others.items()):
        with tab:
            table(cols(other, ("cosine", "agreement")))
    if "raw" not in others:
        st.caption("Raw-weight neighbours are not stored for sets this big (peace.serve.baseline_vectors.MAX_RAW).")


page_neighbours()
