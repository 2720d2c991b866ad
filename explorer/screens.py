"""The explorer's pages (layout only: every figure is computed by ``peace.explore.Explorer``).

Each page is one function; ``explorer/views/*.py`` run them through ``st.navigation`` (``app.py``),
so every page has its own URL. Choices a user makes (colouring, filters, the query model) live in
``st.session_state["prefs"]`` and survive page changes; the query model and the map's colouring
are also in the URL (``?model=...&color=...``), so a view can be shared. Each page imports the
heavy parts it needs: the map, the first page, imports neither torch nor scikit-learn.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from peace.errors import PeaceError
from peace.explore import (
    Explorer,
    activation_advice,
    filter_table,
    find_ablation_summaries,
    find_embedding_sets,
    find_models,
    model_label,
    typical_model,
)
from peace.plots import ablation_bars, embedding_map, weight_heatmaps


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


# --- state shared by the pages ---------------------------------------------------------------------

def pref(key: str, default):
    """A choice remembered across pages (and reruns)."""
    return st.session_state.setdefault("prefs", {}).get(key, default)


def keep(key: str, value):
    st.session_state.setdefault("prefs", {})[key] = value
    return value


def choose(widget, label: str, options: list, key: str, **kw):
    """``widget`` (selectbox / radio) over ``options`` starting at the remembered choice; remembers the new one."""
    start = pref(key, options[0])
    return keep(key, widget(label, options, index=options.index(start) if start in options else 0, **kw))


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
    return ex


def cols(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return df[[c for c in SHOW[:1] + list(extra) + SHOW[1:] if c in df.columns]]


def table(df: pd.DataFrame, key: str | None = None) -> None:
    st.dataframe(df, hide_index=True, width="stretch", column_config=COLUMNS, key=key)


@st.cache_resource(show_spinner=False, max_entries=8)
def _labels(_ex: Explorer, set_sha: str) -> dict[str, str]:
    return {r.model_id: model_label(r._asdict()) for r in _ex.table.itertuples(index=False)}


QUERY_MAP_POINTS = 1_000  # a sample of the map shows where a query lands, and draws in a tenth of the time
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
    start = st.query_params.get("model") if url else None
    start = start if start in ex.es.row_of else pref(key, default)
    ids = _picker_ids(ex, ex.es.info["embeddings_sha256"], MAX_PICKER)
    if len(ids) < len(ex.table):
        st.caption(f"Listing {len(ids):,} of {len(ex.table):,} models (those on the map); open any other with "
                   f"?model=ID in the page's URL.")
        ids = ids if start not in ex.es.row_of or start in ids else [start, *ids]
    labels = _labels(ex, ex.es.info["embeddings_sha256"])
    chosen = keep(key, st.selectbox(label, ids, index=ids.index(start) if start in ex.es.row_of else 0,
                                    format_func=labels.__getitem__, key=key))
    if url and st.query_params.get("model") != chosen:
        st.query_params["model"] = chosen
    return chosen


# --- pages -------------------------------------------------------------------------------------------

@st.cache_resource(max_entries=32, show_spinner=False)
def map_figure(_ex: Explorer, set_sha: str, color: str, symbol: str, dims: str, filters: tuple):
    """The filtered table and its scatter figure, built once per choice (5000 points take ~0.2 s)."""
    shown = filter_table(_ex.table, *filters)
    fig = embedding_map(shown, color, 2 if dims == "2-D" else 3, None if symbol == "none" else symbol,
                        height=620 if dims == "2-D" else 680)
    return shown, fig


def _map_controls(t: pd.DataFrame) -> tuple[str, str, str, tuple]:
    c1, c2, c3 = st.columns(3)
    colors = [c for c in ("task", "arch", "activation", "family", "test_acc", "epoch", "split", "init", "optimizer")
              if c in t.columns]
    if st.query_params.get("color") in colors and "color" not in st.session_state.get("prefs", {}):
        keep("color", st.query_params["color"])
    color = choose(c1.selectbox, "Colour by", colors, "color")
    st.query_params["color"] = color
    symbol = choose(c2.selectbox, "Symbol by", ["none", "family", "activation", "split", "heldout_task"], "symbol")
    dims = choose(c3.radio, "Map", ["2-D", "3-D"], "dims", horizontal=True)
    # a toggle rather than an expander: an expander's widgets are drawn (and their scripts loaded) even closed
    if not keep("filtering", st.toggle("Filter the map (by task, architecture, activation, accuracy, epoch)",
                                       pref("filtering", False), key="map_filtering")):
        return color, symbol, dims, ()
    f1, f2, f3 = st.columns(3)
    tasks = keep("tasks", f1.multiselect("Task", sorted(t["task"].unique()), default=pref("tasks", [])))
    archs = keep("archs", f2.multiselect("Architecture", sorted(t["arch"].unique()), default=pref("archs", [])))
    acts = keep("acts", f3.multiselect("Activation", sorted(t["activation"].unique()), default=pref("acts", [])))
    acc = keep("acc", st.slider("Test accuracy", 0.0, 1.0, pref("acc", (0.0, 1.0)), 0.01))
    emax = max(int(t["epoch"].max()), 1)
    epochs = keep("epochs", st.slider("Epoch", 0, emax, pref("epochs", (0, emax))))
    return color, symbol, dims, (tuple(tasks), tuple(archs), tuple(acts), tuple(acc), tuple(epochs))


def page_map() -> None:
    """The map is drawn from the set alone (pages that use the zoo or the encoder check it is current)."""
    controls, slot = st.container(), st.empty()
    if not st.session_state.get("map_seen"):  # the browser loads plotly.js (~1 s) while the set opens
        slot.plotly_chart(go.Figure(layout=dict(height=620, title="Drawing the map ...", xaxis_visible=False,
                                                yaxis_visible=False)))
    ex = current(check=False)
    if ex is None:
        slot.empty()
        return
    st.session_state["map_seen"] = True
    _map(ex, controls, slot)


def _map(ex: Explorer, controls, slot) -> None:
    t = ex.table
    with controls:
        color, symbol, dims, filters = _map_controls(t)
    shown, fig = map_figure(ex, ex.es.info["embeddings_sha256"], color, symbol, dims, filters)
    labels = _labels(ex, ex.es.info["embeddings_sha256"])  # once: each cached call returns a fresh copy
    find = _find(controls, shown, labels)
    controls.caption(f"{len(shown)} of {len(t)} models shown. "
                     + ("Click a point (or draw a box / lasso) to see its nearest neighbours highlighted." if dims == "2-D"
                        else "Selection works on the 2-D map."))
    if dims == "3-D":
        slot.plotly_chart(fig, width="stretch")
        return
    focus = find
    if focus is None:
        picked = st.session_state.get("map_pick")
        focus = picked if picked in ex.es.row_of else None
    if focus is not None:
        fig = go.Figure(fig)  # the cached figure stays as it is
        row = ex.table.iloc[ex.es.row_of[focus]]
        _highlight(fig, ex.neighbours(focus, 10), (row["umap_2d_x"], row["umap_2d_y"]), focus)
    event = slot.plotly_chart(fig, width="stretch", on_select="rerun", selection_mode=("points", "box", "lasso"), key="map")
    picked = [p["customdata"][0] for p in (event.selection.points if event else []) if p.get("customdata")]
    if picked:
        st.session_state["map_pick"] = picked[0]
        keep("query", picked[0])
        st.query_params["model"] = picked[0]
        sel = shown[shown["model_id"].isin(picked)]
        st.subheader(f"Selection: {len(sel)} models")
        st.caption(f"{picked[0]} is the query on the Neighbours page now.")
        table(cols(sel))
        st.dataframe(sel[[c for c in ("test_acc", "gen_gap", "epoch", "n_params") if c in sel]].describe().T,
                     width="stretch")


def _find(box, shown: pd.DataFrame, labels: dict[str, str]) -> str | None:
    """The map's search: a model id, or words of its task, architecture, epoch (a text box rather than a
    picker of every model: thousands of options slow every redraw of the page)."""
    text = box.text_input("Find a model (an id, or words of its label, e.g. \"tetris mlp epoch 5\"; Enter)",
                          key="map_find")
    if not text.strip():
        return None
    found = find_models(pd.Series([labels[m] for m in shown["model_id"]], index=shown["model_id"]), text)
    if not found:
        box.caption(f"No model on the map matches {text!r}.")
    if len(found) > 1:
        return box.selectbox(f"{len(found):,} models match", found[:200], format_func=labels.__getitem__,
                             key="map_find_pick")
    return found[0] if found else None


def _highlight(fig: go.Figure, hits: pd.DataFrame, at: tuple[float, float], name: str, zoom: bool = True) -> None:
    """Star a model at map position ``at``, ring its PEACE neighbours ``hits`` and (``zoom``) zoom to them."""
    hits = hits.dropna(subset=["umap_2d_x"])
    fig.add_scatter(x=hits["umap_2d_x"], y=hits["umap_2d_y"], mode="markers", name=f"{len(hits)} nearest (PEACE)",
                    marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(color="black", width=2)),
                    hovertext=hits["model_id"], hoverinfo="text")
    fig.add_scatter(x=[at[0]], y=[at[1]], mode="markers", name=name, marker=dict(symbol="star", size=20, color="black"))
    xy = np.vstack([hits[["umap_2d_x", "umap_2d_y"]].to_numpy(), [at]])
    if zoom and np.isfinite(xy).all():
        pad = np.maximum(1.0, 0.6 * (xy.max(0) - xy.min(0)))
        fig.update_layout(xaxis_range=[xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0]],
                          yaxis_range=[xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1]])


def page_neighbours() -> None:
    ex = current()
    if ex is None:
        return
    q = model_picker(ex, "Query model (type to search)", "query", typical_model(ex.table), url=True)
    k = keep("k", st.slider("k", 1, min(50, len(ex.table) - 1), min(pref("k", 10), len(ex.table) - 1)))
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
        st.caption("Raw-weight neighbours are not stored for sets this big (peace.baseline_vectors.MAX_RAW).")


def page_interpolation() -> None:
    from peace.teaching import partner

    ex = current()
    if ex is None:
        return
    c1, c2 = st.columns(2)
    with c1:
        a = model_picker(ex, "Model A", "interp_a", typical_model(ex.table))
    try:  # by default a twin of A: same architecture, task and epoch, another seed (weight space needs one)
        twin = partner(ex.zoo, a)
    except PeaceError:
        twin = ex.table["model_id"].iat[0]
    with c2:
        b = model_picker(ex, "Model B", "interp_b", twin)
    st.subheader("(a) In embedding space")
    path = ex.embedding_path(a, b)
    path = path[path["model_id"] != path["model_id"].shift()]  # one row per model met along the way
    table(cols(path, ("t", "cosine")))
    st.caption("Walking the straight line from A's embedding (t = 0) to B's (t = 1): the zoo model nearest to each "
               "point, with its cosine similarity to that point (1 = the point is that model).")
    st.subheader("(b) In weight space")
    if ex.zoo.spec(a) != ex.zoo.spec(b):
        st.warning(f"{a} and {b} have different architectures; pick two of one architecture for weight-space "
                   "interpolation.")
        return
    with st.spinner("Aligning, interpolating and embedding the path ..."):
        try:
            paths = ex.weight_path(a, b)
        except PeaceError as e:  # e.g. weight matching does not read Transformers yet
            st.warning(str(e))
            return
    st.plotly_chart(_path_figure(paths), width="stretch")
    m = embedding_map(ex.table, "task", symbol=None, height=520)
    for name, p in paths.items():
        m.add_scatter(x=p["map_xy"][:, 0], y=p["map_xy"][:, 1], mode="lines+markers", name=f"path ({name})")
    xy = np.concatenate([p["map_xy"] for p in paths.values()])  # zoom to the paths: at full zoom they vanish
    pad = np.maximum(0.5, 0.5 * (xy.max(0) - xy.min(0)))
    m.update_layout(xaxis_range=[xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0]],
                    yaxis_range=[xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1]])
    st.plotly_chart(m, width="stretch")
    st.caption("Path points are placed at the mean map position of their 5 nearest zoo models; the map is zoomed "
               "to the paths (double-click it to see the whole zoo).")


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


def page_ablations() -> None:
    from peace.ablation import best_per_metric, compare

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


def page_symmetry() -> None:
    from peace.symmetry import allowed, group_labels

    ex = current()
    if ex is None:
        return
    mid = model_picker(ex, "Model", "sym_model", typical_model(ex.table))
    spec = ex.zoo.spec(mid)
    ok = allowed(spec)
    c1, c2, c3, c4 = st.columns(4)
    permute = c1.checkbox("Permute hidden units", True)
    scale = c2.checkbox("Positive scaling", ok["scale"], disabled=not ok["scale"],
                        help=None if ok["scale"] else f"{spec.activation} does not commute with scaling")
    flip = c3.checkbox("Sign flips", ok["flip"], disabled=not ok["flip"],
                       help=None if ok["flip"] else f"{spec.activation} is not odd")
    seed = c4.number_input("Seed", 0, 10_000, 0)
    labels = group_labels(spec)
    which = st.selectbox("Units to transform", ["every group"] + labels,
                         help="hidden units that must move together: a layer's units, or a residual stream (the "
                              "stem and every block output an identity shortcut adds into share one permutation)")
    groups = None if which == "every group" else (labels.index(which),)
    res = ex.symmetry_lab(mid, permute, scale and ok["scale"], flip and ok["flip"], int(seed), groups)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Max output change", f"{res['max_output_change']:.2e}")
    m2.metric("Raw-weight cosine distance", f"{res['raw']:.4f}")
    m3.metric("s(W) cosine distance", f"{res['stats']:.4f}")
    m4.metric("PEACE cosine distance", f"{res['peace']:.2e}")
    st.caption("The network computes the same function; raw weights call it a different model, PEACE does not.")
    st.plotly_chart(weight_heatmaps(res["original"], res["transformed"]), width="stretch")


def _function_check(spec, check: pd.DataFrame, advice: str | None) -> None:
    """What the activation check saw (``Explorer.activation_check``): a wrong Activation field would
    silently embed another function."""
    if check.empty:
        st.caption(f"No zoo task has this network's {np.prod(spec.input_shape)} inputs and {spec.n_classes} classes, so "
                   f"its activation ({spec.activation}) cannot be checked on data: make sure it is the one the network "
                   "was trained with.")
        return
    with st.expander(f"Function check: accuracy on zoo tasks' test inputs under each activation "
                     f"({spec.activation} {'looks wrong' if advice else 'fits'})"):
        st.dataframe(check.pivot(index="activation", columns="task", values="accuracy"), width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in check["task"].unique()})


def _query_config(activation: str, heads: int, shape: str, pool: str) -> dict:
    cfg = {} if activation == "from the file's layout" else {"activation": activation}
    if heads:
        cfg["num_heads"] = int(heads)
    if shape.strip():
        try:
            cfg.update(input_shape=[int(v) for v in shape.split(",")], pool=pool)
        except ValueError:
            raise PeaceError(f"input shape {shape!r} must be integers separated by commas, e.g. 1,8,8") from None
    return cfg


def page_query() -> None:
    ex = current()
    if ex is None:
        return
    st.write("Upload a safetensors file or a PyTorch state dict. It is parsed by PEACE's strict reader in a separate, "
             "resource-limited process (never by `torch.load`, never in this server); nothing in the file is "
             "executed. Architecture widths come from the tensor shapes.")
    limit = st.get_option("server.maxUploadSize")
    # the widget prints its limit rounded to whole units (512 MiB reads "1GB"): say it in the label instead
    st.html("<style>[data-testid='stFileUploaderDropzoneInstructions'] {display: none}</style>")
    up = st.file_uploader(f"Model file (up to {limit} MiB)", type=None)
    example = st.button("No file at hand? Try an example: a zoo model with its hidden units shuffled")
    c1, c2, c3, c4 = st.columns(4)
    activation = c1.selectbox("Activation", ["from the file's layout", "relu", "tanh", "sigmoid", "leaky_relu", "gelu",
                                             "identity"],
                              help="torchvision ResNets use relu and timm ViTs gelu; a plain chain must be told")
    shape = c2.text_input("Input shape (C,H,W)", "", help="for convolutional and residual networks, e.g. 1,8,8")
    pool = c3.selectbox("CNN pooling", ["avg", "max", "none"])
    heads = c4.number_input("Attention heads", 0, 1024, 0, help="Transformers only: not in the weights (0: not one)")
    k = st.slider("k", 1, 30, 10, key="upload_k")
    if up is not None or example:
        _query_results(ex, up, (activation, heads, shape, pool), k)
    ex.prepare_query()  # the next file's reader starts (and the encoder loads) while the user picks a file


def _query_results(ex: Explorer, up, fields: tuple, k: int) -> None:
    """An uploaded file (or, without one, the example) parsed in isolation, its neighbours and map position;
    ``fields``: the page's activation, heads, input shape and pooling."""
    with tempfile.TemporaryDirectory() as d:
        if up is None:
            path, original = ex.example_file(Path(d) / "example")
            name = f"{original} (hidden units shuffled)"
        else:
            path, name = Path(d) / Path(up.name).name, up.name
            path.write_bytes(up.getvalue())
        try:
            cfg = {} if up is None else _query_config(*fields)
            m, hits, xy = ex.query_file(path, cfg, k)
        except PeaceError as e:  # the importer names the CLI's options; here they are this page's fields
            fields = {"--input-shape": "the Input shape field", "--activation": "the Activation field",
                      "--pool": "the CNN pooling field", "config.json: ": "the Attention heads field; config.json: "}
            msg = str(e).replace(str(path), name)
            for option, field in fields.items():
                msg = msg.replace(option, field)
            st.error(msg)
            return
    st.success(f"{name}: {m.spec.describe()}, {m.spec.n_params} parameters")
    check = ex.activation_check(m.spec, m.params)
    advice = activation_advice(check)
    if advice:
        st.warning(advice)
    table(cols(hits, ("cosine",)), key="upload_hits")
    fig = embedding_map(ex.table, "task", symbol=None, height=520, max_points=QUERY_MAP_POINTS)
    _highlight(fig, hits, xy, name, zoom=False)
    st.plotly_chart(fig, width="stretch")
    _function_check(m.spec, check, advice)
