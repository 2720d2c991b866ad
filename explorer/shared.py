"""What the explorer's pages share: the artifacts root, choices remembered across pages and kept in
the URL, the opened embedding set, and the widgets several pages draw (tables, the model picker, a
highlighted model on a map).

Choices a user makes (colouring, filters, the query model) live in ``st.session_state["prefs"]`` and survive
page changes; the query model and the map's colouring are also in the URL (``?model=...&color=...``), so a
view can be shared. No torch, no scikit-learn here: the Map page opens without them."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from peace.core.errors import PeaceError
from peace.serve.explore import Explorer, find_embedding_sets, model_label
from peace.serve.plots import zoom_to

__all__ = ["COLUMNS", "FIX", "MAX_PICKER", "SHOW", "choose", "cols", "current", "highlight", "keep", "labels",
           "model_picker", "open_explorer", "pref", "remembered", "root", "sidebar_set", "table"]


def root() -> Path:
    """The artifacts directory: ``$PEACE_ARTIFACTS``, else ``artifacts/`` beside this repository (read
    on every run: this module stays imported while the app's script reruns)."""
    return Path(os.environ.get("PEACE_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


FIX = "Run `./scripts/demo` (or `peace pipeline --preset demo`) to build the artifacts."
SHOW = ["model_id", "task", "arch", "epoch", "test_acc", "split"]
COLUMNS = {  # one number format everywhere, and widths that keep every column on screen
    "model_id": st.column_config.TextColumn("model", width="medium"),
    "arch": st.column_config.TextColumn("architecture", width="medium"),
    "test_acc": st.column_config.NumberColumn("test acc", format="%.3f", width="small"),
    "cosine": st.column_config.NumberColumn("cosine", format="%.3f", width="small",
                                            help="cosine similarity to the query in this method's space"),
    "agreement": st.column_config.NumberColumn("agreement", format="%.2f", width="small",
                                               help="share of shared random probe inputs on which the model predicts "
                                                    "what the query does (blank: other input or output space)"),
    "epoch": st.column_config.NumberColumn("epoch", width="small"),
    "t": st.column_config.NumberColumn("t", format="%.2f", width="small"),
}


def pref(key: str, default):
    """A choice remembered across pages (and reruns)."""
    return st.session_state.setdefault("prefs", {}).get(key, default)


def keep(key: str, value):
    st.session_state.setdefault("prefs", {})[key] = value
    return value


def remembered(widget, label: str, *args, key: str, default, fit=lambda v: v, **kw):
    """``widget`` keyed to the remembered choice ``key``, starting from it when new (``fit``: made valid here).
    Given the choice as its index or value instead, it was re-created after each change and lost the next."""
    if f"pref_{key}" not in st.session_state:
        st.session_state[f"pref_{key}"] = fit(pref(key, default))
    return keep(key, widget(label, *args, key=f"pref_{key}", **kw))


def choose(widget, label: str, options: list, key: str, **kw):
    """``widget`` (selectbox / radio) over ``options``, starting at the remembered choice; remembers the new one."""
    if st.session_state.get(f"pref_{key}", options[0]) not in options:  # another set, other options
        del st.session_state[f"pref_{key}"]
    return remembered(widget, label, options, key=key, default=options[0],
                      fit=lambda v: v if v in options else options[0], **kw)


@st.cache_resource(show_spinner="Opening the embedding set, its zoo and encoder ...")
def open_explorer(path: str, stamp: float) -> Explorer:  # stamp: index.json's mtime, so a rebuilt set reloads
    return Explorer(Path(path))


def sidebar_set() -> Path | None:
    """The embedding-set picker (every page shows it); remembered across pages."""
    sets = find_embedding_sets(root())
    if not sets:
        return None
    return choose(st.sidebar.selectbox, "Embedding set", sets, "set", format_func=lambda p: p.name)


def current(check: bool = True) -> Explorer | None:
    """The chosen set opened (cached), or None after saying what is wrong and how to fix it. ``check``:
    also open its zoo and refuse a stale set (the map, drawn from the set alone, skips it)."""
    path = pref("set", None)
    if path is None:
        st.warning(f"No embedding sets under {root() / 'embeddings'}. {FIX}")
        return None
    try:
        ex = open_explorer(str(path), (path / "index.json").stat().st_mtime if (path / "index.json").exists() else 0.0)
        if check:
            ex.check()
    except (PeaceError, OSError) as e:
        st.error(f"The embedding set {path.name} cannot be used: {e}")
        st.info(FIX)
        return None
    st.sidebar.caption(f"{len(ex.table)} models · zoo {ex.es.source('zoo').name} · run {ex.run.name}")
    st.session_state["opened"] = ex  # the app prefetches for its other pages while the user looks at this one
    return ex


def cols(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return df[[c for c in SHOW[:1] + list(extra) + SHOW[1:] if c in df.columns]]


def table(df: pd.DataFrame, key: str | None = None) -> None:
    st.dataframe(df, hide_index=True, width="stretch", column_config=COLUMNS, key=key)


@st.cache_resource(show_spinner=False, max_entries=8)
def labels(_ex: Explorer, set_sha: str) -> dict[str, str]:
    return {r.model_id: model_label(r._asdict()) for r in _ex.table.itertuples(index=False)}


MAX_PICKER = 50_000  # models a picker lists; a bigger set lists those on its map (any other opens by URL)


@st.cache_resource(show_spinner=False, max_entries=8)
def _picker_ids(_ex: Explorer, set_sha: str, limit: int) -> list[str]:
    t = _ex.table
    if len(t) > limit:  # a browser cannot take a million options: the map's sample, then the rest cut
        t = t[t["umap_2d_x"].notna()] if "umap_2d_x" in t else t
        t = t.iloc[:limit]
    return list(t.sort_values("test_acc", ascending=False)["model_id"])


def model_picker(ex: Explorer, label: str, key: str, default: str, url: bool = False) -> str:
    """A model chosen by id, task, architecture or accuracy (type to search); remembered across pages,
    and (``url``) kept in the page's URL."""
    if (start := st.query_params.get("model") if url else None) and start not in ex.es.row_of:
        st.warning(f"The link's model {start!r} is not in this set; showing another (pick one below).")
    start = start if start in ex.es.row_of else pref(key, default)
    ids = _picker_ids(ex, ex.es.info["embeddings_sha256"], MAX_PICKER)
    if len(ids) < len(ex.table):
        st.caption(f"Listing {len(ids):,} of {len(ex.table):,} models (those on the map); open any other with "
                   f"?model=ID in the page's URL.")
        ids = ids if start not in ex.es.row_of or start in ids else [start, *ids]
    names = labels(ex, ex.es.info["embeddings_sha256"])
    chosen = keep(key, st.selectbox(label, ids, index=ids.index(start) if start in ex.es.row_of else 0,
                                    format_func=names.__getitem__, key=key))
    if url and st.query_params.get("model") != chosen:
        st.query_params["model"] = chosen
    return chosen


def highlight(fig: go.Figure, hits: pd.DataFrame, at: tuple[float, float], name: str, zoom: bool = True) -> None:
    """Star a model at map position ``at``, ring its PEACE neighbours ``hits`` and (``zoom``) zoom to them."""
    hits = hits.dropna(subset=["umap_2d_x"])
    fig.add_scatter(x=hits["umap_2d_x"], y=hits["umap_2d_y"], mode="markers", name=f"{len(hits)} nearest (PEACE)",
                    marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(color="black", width=2)),
                    hovertext=hits["model_id"], hoverinfo="text")
    fig.add_scatter(x=[at[0]], y=[at[1]], mode="markers", name=name, marker=dict(symbol="star", size=20, color="black"))
    if zoom:
        zoom_to(fig, np.vstack([hits[["umap_2d_x", "umap_2d_y"]].to_numpy(), [at]]), 1.0, 0.6)

