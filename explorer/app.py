"""PEACE explorer: `streamlit run explorer/app.py` (artifacts from `./scripts/demo`).

Layout only: everything it shows is computed by `peace.explore.Explorer`. The artifacts directory
is ``artifacts/`` beside this repository, or ``$PEACE_ARTIFACTS``.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from peace.ablation import best_per_metric, compare
from peace.errors import PeaceError
from peace.explore import Explorer, filter_table, find_ablation_summaries, find_embedding_sets
from peace.plots import ablation_bars, embedding_map, weight_heatmaps
from peace.symmetry import allowed, group_labels
from peace.teaching import partner

ROOT = Path(os.environ.get("PEACE_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
PAGES = ["Map", "Neighbours", "Interpolation", "Ablations", "Symmetry lab", "Query your model"]
FIX = "Run `./scripts/demo` (or `peace pipeline --preset demo`) to build the artifacts."
SHOW = ["model_id", "task", "arch", "epoch", "test_acc", "split"]

st.set_page_config(page_title="PEACE explorer", layout="wide")


@st.cache_resource(show_spinner="Opening the embedding set, its zoo and encoder ...")
def open_explorer(path: str, stamp: float) -> Explorer:  # stamp: index.json's mtime, so a rebuilt set reloads
    return Explorer(Path(path))


def cols(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return df[[c for c in SHOW[:1] + list(extra) + SHOW[1:] if c in df.columns]]


def model_picker(ex: Explorer, label: str, key: str, default: int | str = 0) -> str:
    """A model id; ``default`` is a position in accuracy order or a model id."""
    ids = list(ex.table.sort_values("test_acc", ascending=False)["model_id"])
    chosen = st.session_state.get("clicked_model") if key == "query" else None
    if chosen not in ids:
        chosen = default if default in ids else ids[min(default if isinstance(default, int) else 1, len(ids) - 1)]
    return st.selectbox(label, ids, index=ids.index(chosen), key=key)


@st.cache_resource(max_entries=32, show_spinner=False)
def map_figure(_ex: Explorer, set_sha: str, color: str, symbol: str, dims: str, filters: tuple):
    """The filtered table and its scatter figure, built once per choice (5000 points take ~0.2 s)."""
    shown = filter_table(_ex.table, *filters)
    fig = embedding_map(shown, color, 2 if dims == "2-D" else 3, None if symbol == "none" else symbol,
                        height=620 if dims == "2-D" else 680)
    return shown, fig


def page_map(ex: Explorer) -> None:
    t = ex.table
    c1, c2, c3, c4 = st.columns(4)
    color = c1.selectbox("Colour by", [c for c in ("task", "arch", "activation", "family", "test_acc", "epoch", "split",
                                                   "init", "optimizer") if c in t.columns])
    symbol = c2.selectbox("Symbol by", ["none", "family", "activation", "split", "heldout_task"])
    dims = c3.radio("Map", ["2-D", "3-D"], horizontal=True)
    with st.expander("Filters", expanded=False):
        f1, f2, f3 = st.columns(3)
        tasks = f1.multiselect("Task", sorted(t["task"].unique()))
        archs = f2.multiselect("Architecture", sorted(t["arch"].unique()))
        acts = f3.multiselect("Activation", sorted(t["activation"].unique()))
        acc = st.slider("Test accuracy", 0.0, 1.0, (0.0, 1.0), 0.01)
        emax = int(t["epoch"].max())
        epochs = st.slider("Epoch", 0, max(emax, 1), (0, max(emax, 1)))
    filters = (tuple(tasks), tuple(archs), tuple(acts), tuple(acc), tuple(epochs))
    shown, fig = map_figure(ex, ex.es.info["embeddings_sha256"], color, symbol, dims, filters)
    c4.metric("Models shown", f"{len(shown)} / {len(t)}")
    if dims == "2-D":
        event = st.plotly_chart(fig, width="stretch", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                key="map")
        picked = [p["customdata"][0] for p in (event.selection.points if event else []) if p.get("customdata")]
    else:
        st.plotly_chart(fig, width="stretch")
        picked = []
    if picked:
        sel = shown[shown["model_id"].isin(picked)]
        st.subheader(f"Selection: {len(sel)} models")
        st.session_state["clicked_model"] = picked[0]
        st.caption(f"{picked[0]} is preselected on the Neighbours page.")
        st.dataframe(cols(sel), hide_index=True, width="stretch")
        st.dataframe(sel[[c for c in ("test_acc", "gen_gap", "epoch", "n_params") if c in sel]].describe().T,
                     width="stretch")
    else:
        st.caption("Select points (click, box or lasso) to list them with summary statistics.")


def page_neighbours(ex: Explorer) -> None:
    q = model_picker(ex, "Query model (type to search)", "query")
    k = st.slider("k", 1, min(50, len(ex.table) - 1), min(10, len(ex.table) - 1))
    row = ex.table.loc[ex.es.row_of[q]]
    st.write(f"**{q}**: {row['task']}, {row['arch']}, epoch {row['epoch']}, test accuracy {row['test_acc']:.3f}")
    hits = ex.neighbours(q, k)
    hits["agreement"] = ex.agreement(q, list(hits["model_id"]))
    st.subheader("PEACE (Annoy)")
    st.dataframe(cols(hits, ("cosine", "agreement")), hide_index=True, width="stretch", key="peace_hits")
    st.caption("agreement: share of shared random probe inputs on which the neighbour predicts what the query does "
               "(blank where input or output spaces differ).")
    titles = (("function", "Function space (probe predictions)"), ("stats", "s(W) weight statistics"),
              ("raw", "Raw weights"))
    with st.spinner(f"Computing function-space, s(W) and raw-weight vectors of {len(ex.table)} models "
                    f"(first time only) ..."):
        others = {m: ex.baseline_neighbours(q, m, k) for m, _ in titles}
    for col, (method, title) in zip(st.columns(3), titles):
        with col:
            st.subheader(title)
            other = others[method]
            other["agreement"] = ex.agreement(q, list(other["model_id"]))
            st.dataframe(cols(other, ("cosine", "agreement")), hide_index=True, width="stretch")
    same = lambda d: (d["task"] == row["task"]).mean()  # noqa: E731
    st.info(f"Same task among the top {k}: PEACE {same(hits):.0%}, function space {same(others['function']):.0%}, "
            f"s(W) {same(others['stats']):.0%}, raw {same(others['raw']):.0%}")


def page_interpolation(ex: Explorer) -> None:
    c1, c2 = st.columns(2)
    with c1:
        a = model_picker(ex, "Model A", "interp_a", 0)
    try:  # by default a twin of A: same architecture, task and epoch, another seed (weight space needs one)
        twin: int | str = partner(ex.zoo, a)
    except PeaceError:
        twin = 1
    with c2:
        b = model_picker(ex, "Model B", "interp_b", twin)
    st.subheader("(a) In embedding space")
    path = ex.embedding_path(a, b)
    st.dataframe(cols(path, ("t", "cosine")), hide_index=True, width="stretch")
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
    fig = go.Figure()
    for name, p in paths.items():
        fig.add_scatter(x=p["alpha"], y=p["loss"], name=f"loss ({name})")
        fig.add_scatter(x=p["alpha"], y=p["acc"], name=f"accuracy ({name})", yaxis="y2", line_dash="dot")
    fig.update_layout(xaxis_title="alpha (0 = A, 1 = B)", yaxis_title="test loss",
                      yaxis2=dict(title="test accuracy", overlaying="y", side="right"), height=420)
    st.plotly_chart(fig, width="stretch")
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


def page_ablations() -> None:
    found = find_ablation_summaries(ROOT)
    if not found:
        st.info(f"No ablation summaries under {ROOT / 'ablations'}. Run `peace ablate --grid default --out "
                f"{ROOT / 'ablations' / 'demo'}` (or `--grid tiny` for a quick one).")
        return
    path = st.selectbox("Summary", found, format_func=lambda p: str(p.parent.name))
    summary = pd.read_parquet(path)
    st.write(summary.groupby("status").size().rename("runs").to_frame().T)
    metrics = [c for c in summary.columns if "." in c and summary[c].notna().any()]
    metric = st.selectbox("Metric", metrics, index=metrics.index("retrieval_task.map") if "retrieval_task.map" in metrics else 0)
    table = compare(summary, metrics)
    st.plotly_chart(ablation_bars(table, metric), width="stretch")
    shown = lambda t: t.assign(**{c: t[c].map(lambda v: "- (one seed)" if pd.isna(v) else f"{v:.4g}")  # noqa: E731
                                  for c in ("mean", "std")})  # one number format; no "None" for a single seed's spread
    st.dataframe(shown(table[table["metric"] == metric].sort_values("mean", ascending=False)), hide_index=True,
                 width="stretch")
    st.subheader("Best configuration per metric")
    st.dataframe(shown(best_per_metric(table)), hide_index=True, width="stretch")


def page_symmetry(ex: Explorer) -> None:
    mid = model_picker(ex, "Model", "sym_model")
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
    st.plotly_chart(weight_heatmaps(ex.zoo.weights(mid), res["transformed"]), width="stretch")


def page_query(ex: Explorer) -> None:
    st.write("Upload a safetensors file or a PyTorch state dict. It is parsed by PEACE's strict reader in a separate, "
             "resource-limited process (never by `torch.load`, never in this server); nothing in the file is "
             "executed. Architecture widths come from the tensor shapes.")
    up = st.file_uploader("Model file", type=None)
    c1, c2, c3, c4 = st.columns(4)
    activation = c1.selectbox("Activation", ["from the file's layout", "relu", "tanh", "sigmoid", "leaky_relu", "gelu",
                                             "identity"],
                              help="torchvision ResNets use relu and timm ViTs gelu; a plain chain must be told")
    shape = c2.text_input("Input shape (C,H,W)", "", help="for convolutional and residual networks, e.g. 1,8,8")
    pool = c3.selectbox("CNN pooling", ["avg", "max", "none"])
    heads = c4.number_input("Attention heads", 0, 1024, 0, help="Transformers only: not in the weights (0: not one)")
    k = st.slider("k", 1, 30, 10, key="upload_k")
    if up is None:
        return
    cfg = {} if activation == "from the file's layout" else {"activation": activation}
    if heads:
        cfg["num_heads"] = int(heads)
    if shape.strip():
        try:
            cfg.update(input_shape=[int(v) for v in shape.split(",")], pool=pool)
        except ValueError:
            st.error(f"input shape {shape!r} must be integers separated by commas, e.g. 1,8,8")
            return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / Path(up.name).name
        path.write_bytes(up.getvalue())
        try:
            m, hits, xy = ex.query_file(path, cfg, k)
        except PeaceError as e:  # the importer names the CLI's options; here they are this page's fields
            fields = {"--input-shape": "the Input shape field", "--activation": "the Activation field",
                      "--pool": "the CNN pooling field", "config.json: ": "the Attention heads field; config.json: "}
            msg = str(e).replace(str(path), up.name)
            for option, field in fields.items():
                msg = msg.replace(option, field)
            st.error(msg)
            return
    st.success(f"{up.name}: {m.spec.describe()}, {m.spec.n_params} parameters")
    st.dataframe(cols(hits, ("cosine",)), hide_index=True, width="stretch", key="upload_hits")
    fig = embedding_map(ex.table, "task", symbol=None, height=520)
    fig.add_scatter(x=[xy[0]], y=[xy[1]], mode="markers", marker=dict(symbol="star", size=18, color="black"),
                    name=up.name)
    st.plotly_chart(fig, width="stretch")


def main() -> None:
    st.sidebar.title("PEACE explorer")
    page = st.sidebar.radio("Page", PAGES, key="page")
    sets = find_embedding_sets(ROOT)
    path = st.sidebar.selectbox("Embedding set", sets, format_func=lambda p: p.name) if sets else None
    if page == "Ablations":
        page_ablations()
        return
    if path is None:
        st.warning(f"No embedding sets under {ROOT / 'embeddings'}. {FIX}")
        return
    try:
        ex = open_explorer(str(path), (path / "index.json").stat().st_mtime if (path / "index.json").exists() else 0.0)
    except (PeaceError, OSError) as e:
        st.error(f"The embedding set {path.name} cannot be used: {e}")
        st.info(FIX)
        return
    st.sidebar.caption(f"{len(ex.table)} models · zoo {ex.zoo.name} · run {ex.run.name}")
    t0 = time.perf_counter()
    {"Map": page_map, "Neighbours": page_neighbours, "Interpolation": page_interpolation,
     "Symmetry lab": page_symmetry, "Query your model": page_query}[page](ex)
    st.sidebar.caption(f"page computed in {1e3 * (time.perf_counter() - t0):.0f} ms")


main()
