"""The Interpolation page: walking from model A to model B in embedding space and in weight space."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from shared import cols, current, model_picker, table

from peace.core.errors import PeaceError
from peace.serve.explore import typical_model
from peace.serve.plots import embedding_map, zoom_to


def page_interpolation() -> None:
    from peace.serve.teaching import partner

    ex = current()
    if ex is None:
        return
    if len(ex.table) < 2:
        st.info(f"The set {ex.path.name} holds one model: a path needs two.")
        return
    # one picker per row: a model's label (id, task, architecture, epoch, accuracy) needs the page's width
    a = model_picker(ex, "Model A", "interp_a", typical_model(ex.table))
    try:  # by default a twin of A: same architecture, task and epoch, another seed (weight space needs one)
        twin = partner(ex.zoo, a)
    except PeaceError:
        twin = ex.table["model_id"].iat[0]
    b = model_picker(ex, "Model B", "interp_b", twin)
    st.subheader("(a) In embedding space")
    path = ex.embedding_path(a, b)
    path = path[path["model_id"] != path["model_id"].shift()]  # one row per model met along the way
    table(cols(path, ("t", "cosine")))
    st.caption("Walking the straight line from A's embedding (t = 0) to B's (t = 1): the zoo model nearest to each "
               "point, with its cosine similarity to that point (1 = the point is that model).")
    _decoded(ex, a, b)
    st.subheader("(b) In weight space")
    if ex.zoo.spec(a) != ex.zoo.spec(b):
        st.warning(f"{a} and {b} have different architectures; pick two of one architecture for weight-space "
                   "interpolation.")
        return
    with st.spinner("Aligning, interpolating and embedding the path ..."):
        try:
            paths = ex.weight_path(a, b)
        except PeaceError as e:  # e.g. a model with NaN weights
            st.warning(str(e))
            return
    st.plotly_chart(_path_figure(paths), width="stretch")
    if why := ex.map_missing():
        st.info(why)
        return
    m = embedding_map(ex.table, "task", symbol=None, height=520)
    for (name, p), dash in zip(paths.items(), ("dot", "solid", "dash")):  # black: a path is not a task's colour
        m.add_scatter(x=p["map_xy"][:, 0], y=p["map_xy"][:, 1], mode="lines+markers", name=f"path ({name})",
                      line=dict(color="black", dash=dash, width=2), marker=dict(color="black", size=7))
    zoom_to(m, np.concatenate([p["map_xy"] for p in paths.values()]), 0.5, 0.5)  # at full zoom the paths vanish
    st.plotly_chart(m, width="stretch")
    st.caption("Path points are placed at the mean map position of their 5 nearest zoo models; the map is zoomed "
               "to the paths (double-click it to see the whole zoo).")


def _decoded(ex, a: str, b: str) -> None:
    """The same line decoded into new models (the run's decoder), or how to get a decoder."""
    with st.spinner("Decoding the path ..."):
        try:
            decoded = ex.decoded_path(a, b)
        except PeaceError as e:  # a model of no known task: its decoded points cannot be measured
            st.info(str(e))
            return
    if decoded is None:
        st.caption(f"With a decoder for {a}'s architecture, the points of this line become new models: "
                   f"`peace decoder --run {ex.run}` trains one (MLPs and CNNs).")
        return
    fig = go.Figure()
    for column in decoded.columns[1:]:
        fig.add_scatter(x=decoded["t"], y=decoded[column], name=column, mode="lines+markers",
                        line_dash="dash" if column.endswith(", refined") else "solid")
    ends = ex.table.iloc[[ex.es.row_of[a], ex.es.row_of[b]]]
    fig.add_scatter(x=[0, 1], y=ends["test_acc"], mode="markers", name="A and B themselves",
                    marker=dict(symbol="diamond", size=12, color="black"),
                    hovertext=[f"{r.model_id}: {r.task}, {r.test_acc:.3f}" for r in ends.itertuples()], hoverinfo="text")
    fig.update_layout(xaxis=dict(title="t (0 = A, 1 = B)", tickformat=".2f"), height=320,
                      yaxis=dict(title="test accuracy of the decoded model", tickformat=".2f", range=[0, 1]),
                      title="Models decoded along the line (the run's decoder, A's architecture)")
    st.plotly_chart(fig, width="stretch")
    st.caption("Decoded models come close to A and B only where the decoder was trained on models of their architecture "
               "and task; elsewhere they stay near chance. Refined (dashed, where the embedding's function block can be "
               "read back and the decoder's validation chose it for the architecture): the decoded weights, or the "
               "training model nearest to that point if its function ends closer, moved until they compute what that "
               "point of the line says (docs/generation.md).")


def _path_figure(paths: dict) -> go.Figure:
    fig = go.Figure()
    for name, p in paths.items():
        fig.add_scatter(x=p["alpha"], y=p["loss"], name=f"loss ({name})")
        fig.add_scatter(x=p["alpha"], y=p["acc"], name=f"accuracy ({name})", yaxis="y2", line_dash="dot")
    fig.update_layout(xaxis=dict(title="alpha (0 = A, 1 = B)", tickformat=".1f", dtick=0.1),
                      yaxis=dict(title="test loss", tickformat=".3g"),
                      yaxis2=dict(title="test accuracy", overlaying="y", side="right", tickformat=".2f"),
                      legend=dict(orientation="h", yanchor="top", y=-0.2), height=440, margin={"b": 110})
    return fig


page_interpolation()
