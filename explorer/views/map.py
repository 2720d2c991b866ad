"""The Map page: every model of the set as a point of its UMAP map, coloured by a field; a click or a
search stars a model and rings its neighbours. Drawn from the set alone: no torch, no scikit-learn."""
from __future__ import annotations

from functools import partial

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from shared import choose, cols, current, highlight, keep, labels, remembered, table

from peace.serve.explore import Explorer, filter_table, find_models, search_reading
from peace.serve.plots import MAX_POINTS_3D, embedding_map


@st.cache_resource(max_entries=32, show_spinner=False)
def map_figure(_ex: Explorer, set_sha: str, color: str, symbol: str, dims: str, filters: tuple):
    """The filtered table and its scatter figure, built once per choice (5000 points take ~0.2 s)."""
    shown = filter_table(_ex.table, *filters)
    fig = embedding_map(shown, color, 2 if dims == "2-D" else 3, None if symbol == "none" else symbol,
                        height=620 if dims == "2-D" else 600)  # both fit a 1400x1000 window below the controls
    return shown, fig


def _map_controls(t: pd.DataFrame) -> tuple[str, str, str, tuple, object]:
    """The map's choices and the column its search box goes in: one row, so the map's axes fit a
    1400 x 1000 window."""
    c1, c2, c3, c4 = st.columns([1, 1, 0.7, 1.6])
    colors = [c for c in ("task", "arch", "activation", "family", "test_acc", "epoch", "split", "init", "optimizer")
              if c in t.columns]
    if st.query_params.get("color") in colors and "color" not in st.session_state.get("prefs", {}):
        keep("color", st.query_params["color"])  # a shared link's colouring, on a first visit
    color = choose(c1.selectbox, "Colour by", colors, "color")
    st.query_params["color"] = color
    symbol = choose(c2.selectbox, "Symbol by", ["none", "family", "activation", "split", "heldout_task"], "symbol")
    dims = choose(c3.radio, "Map", ["2-D", "3-D"], "dims", horizontal=True)
    # a toggle rather than an expander: an expander's widgets are drawn (and their scripts loaded) even closed
    if not remembered(st.toggle, "Filter the map (by task, architecture, activation, accuracy, epoch)",
                      key="filtering", default=False):
        return color, symbol, dims, (), c4
    f1, f2, f3 = st.columns(3)
    picks = []
    for col, label, key, column in ((f1, "Task", "tasks", "task"), (f2, "Architecture", "archs", "arch"),
                                    (f3, "Activation", "acts", "activation")):
        options = sorted(t[column].unique())
        picks.append(remembered(col.multiselect, label, options, key=key, default=[],
                                fit=lambda v, o=options: [x for x in v if x in o]))
    acc = remembered(st.slider, "Test accuracy", 0.0, 1.0, step=0.01, key="acc", default=(0.0, 1.0))
    emax = max(int(t["epoch"].max()), 1)
    epochs = remembered(st.slider, "Epoch", 0, emax, key="epochs", default=(0, emax),
                        fit=lambda v: (min(v[0], emax), min(v[1], emax)))
    tasks, archs, acts = picks
    return color, symbol, dims, (tuple(tasks), tuple(archs), tuple(acts), tuple(acc), tuple(epochs)), c4


def page_map() -> None:
    """The map is drawn from the set alone (pages that use the zoo or the encoder check it is current)."""
    controls, slot = st.container(), st.empty()
    if not st.session_state.get("map_seen"):  # the browser loads plotly.js (~1 s) while the set opens
        slot.plotly_chart(go.Figure(layout=dict(height=620, title="Drawing the map ...", xaxis_visible=False,
                                                yaxis_visible=False)))
    ex = current(check=False)
    why = ex.map_missing() if ex is not None else None
    if ex is None or why:
        slot.empty()
        if why:
            st.info(why)
        return
    st.session_state["map_seen"] = True
    _map(ex, controls, slot)


def _map(ex: Explorer, controls, slot) -> None:
    t = ex.table
    with controls:
        color, symbol, dims, filters, search = _map_controls(t)
    sha = ex.es.info["embeddings_sha256"]
    shown, fig = map_figure(ex, sha, color, symbol, dims, filters)
    other = "3-D" if dims == "2-D" else "2-D"  # the other view of these choices, built while the user looks
    st.session_state["ahead"] = {f"{other} map {sha} {color} {symbol} {filters}":
                                 partial(map_figure, ex, sha, color, symbol, other, filters)}
    names = labels(ex, sha)  # once: each cached call returns a fresh copy
    find = _find(search, shown, names)
    shown_note = (f"{len(shown)} of {len(t)} models shown. "
                  + ("Click a point (or draw a box / lasso) to see its nearest neighbours highlighted." if dims == "2-D"
                     else f"The 3-D view draws at most {MAX_POINTS_3D:,} of them (a random sample; filter the map to "
                          "choose which); selection works on the 2-D map."))
    if dims == "3-D":
        slot.plotly_chart(fig, width="stretch")
        st.caption(shown_note)
        return
    focus = find
    if focus is None:
        shared = st.query_params.get("model")
        if "map_pick" not in st.session_state and shared:  # a shared link opens on its model
            if shared in ex.es.row_of:
                st.session_state["map_pick"] = shared
            else:
                controls.warning(f"The link's model {shared!r} is not in this set; pick one on the map or search.")
        picked = st.session_state.get("map_pick")
        focus = picked if picked in ex.es.row_of else None
    if focus is not None:
        fig = go.Figure(fig)  # the cached figure stays as it is
        row = ex.table.iloc[ex.es.row_of[focus]]
        hits = ex.neighbours(focus, 10)
        highlight(fig, hits, (row["umap_2d_x"], row["umap_2d_y"]), focus)
        controls.info(f"★ {names.get(focus, focus)}: its {len(hits)} nearest models (PEACE) are ringed.")
    event = slot.plotly_chart(fig, width="stretch", on_select="rerun", selection_mode=("points", "box", "lasso"), key="map")
    st.caption(shown_note)
    picked = [p["customdata"][0] for p in (event.selection.points if event else []) if p.get("customdata")]
    if picked:
        if picked[0] != st.session_state.get("map_pick"):  # a new click: star it and ring its neighbours now
            st.session_state["map_pick"] = picked[0]
            keep("query", picked[0])
            st.query_params["model"] = picked[0]
            st.rerun()
        sel = shown[shown["model_id"].isin(picked)]
        st.subheader(f"Selection: {len(sel)} models")
        st.caption(f"{picked[0]} is the query on the Neighbours page now.")
        table(cols(sel))
        numbers = sel[[c for c in ("test_acc", "gen_gap", "epoch", "n_params") if c in sel]]
        if len(sel) > 1:  # one model has no spread: its values, not a table of NaN statistics
            st.dataframe(numbers.describe().T, width="stretch")


def _find(box, shown: pd.DataFrame, labels: dict[str, str]) -> str | None:
    """The map's search: a model id, or words of its task, architecture, epoch (a text box rather than a
    picker of every model: thousands of options slow every redraw of the page)."""
    text = box.text_input("Find a model (Enter)", key="map_find", placeholder="tetris mlp epoch 6 acc > 0.9",
                          help="An id, or words of a model's label (task, architecture, ...) and fields: epoch N, "
                               "acc > x (also >=, <, <=, =)")
    if not text.strip():
        return None
    found = find_models(pd.Series([labels[m] for m in shown["model_id"]], index=shown["model_id"]), text)
    box.caption(f"Read as: {search_reading(text)}.")
    if not found:
        box.caption(f"No model on the map matches {text!r}.")
    if len(found) > 1:
        return box.selectbox(f"{len(found):,} models match", found[:200], format_func=labels.__getitem__,
                             key="map_find_pick")
    return found[0] if found else None


page_map()
