"""Plotly figures shared by the notebooks and the explorer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "MAP_LABELS", "MAX_POINTS", "MAX_POINTS_3D", "PALETTE", "ablation_bars", "accuracy_by_task", "accuracy_over_epochs",
    "embedding_map", "generative_curves", "interpolation_figure", "learning_curve", "method_comparison",
    "selection_bars", "training_history", "weight_heatmaps", "zoom_to"
]


def accuracy_by_task(manifest: pd.DataFrame) -> go.Figure:
    """Box plot of final-epoch test accuracy per task, one colour per architecture family."""
    final = manifest[manifest["epoch"] == manifest["epochs"]]
    fig = px.box(final, x="task", y="test_acc", color="family", points="outliers",
                 hover_data=["model_id", "arch", "lr", "seed"],
                 title=f"Final test accuracy per task ({len(final)} runs)")
    fig.update_layout(yaxis_title="test accuracy", xaxis_title=None, legend_title="family")
    return fig


def learning_curve(manifest: pd.DataFrame, column: str = "test_acc") -> pd.DataFrame:
    """Per task and recorded epoch: mean, 10 % and 90 % quantiles of ``column`` over the runs."""
    g = manifest.groupby(["task", "epoch"])[column]
    return pd.DataFrame({"mean": g.mean(), "q10": g.quantile(0.1), "q90": g.quantile(0.9), "runs": g.size()}).reset_index()


def accuracy_over_epochs(manifest: pd.DataFrame) -> go.Figure:
    """Mean test accuracy per recorded epoch and task, with the 10-90 % band over runs: how a zoo learns."""
    curve = learning_curve(manifest)
    fig = go.Figure()
    for i, (task, c) in enumerate(curve.groupby("task", sort=True)):
        colour = px.colors.qualitative.Dark24[i % 24]
        fig.add_trace(go.Scatter(x=list(c.epoch) + list(c.epoch[::-1]), y=list(c.q90) + list(c.q10[::-1]),
                                 fill="toself", fillcolor=colour, opacity=0.2, line={"width": 0}, hoverinfo="skip",
                                 legendgroup=task, showlegend=False))
        fig.add_trace(go.Scatter(x=c.epoch, y=c["mean"], name=task, mode="lines+markers", legendgroup=task,
                                 line={"color": colour}))
    fig.update_layout(title="Test accuracy by epoch: mean and 10-90 % of runs", xaxis_title="epoch",
                      yaxis_title="test accuracy")
    return fig


def weight_heatmaps(before: dict, after: dict, title: str = "Weights before and after") -> go.Figure:
    """Each weight matrix before (top row) and after (bottom row) a transform; conv kernels unrolled
    (normalization scales, vectors, are left out). Each panel has its own symmetric colour range, so
    a scaled layer does not leave the others blank."""
    names = [k for k in before if k.endswith("weight") and before[k].dim() >= 2]
    fig = make_subplots(rows=2, cols=len(names), row_titles=["before", "after"], column_titles=names,
                        vertical_spacing=0.08, horizontal_spacing=0.04)
    for row, params in ((1, before), (2, after)):
        for col, n in enumerate(names, 1):
            w = params[n].detach().reshape(params[n].shape[0], -1).float().numpy()
            top = float(np.abs(w).max()) or 1.0
            fig.add_trace(go.Heatmap(z=w, zmin=-top, zmax=top, colorscale="RdBu", showscale=False,
                                     hovertemplate=f"{n}<br>row %{{y}}, column %{{x}}: %{{z:.3g}}<extra></extra>"),
                          row=row, col=col)
    fig.update_layout(title=title + " (each panel's colours span its own largest |weight|; red < 0 < blue)",
                      height=520, margin={"t": 90})
    fig.update_annotations(font_size=11)
    fig.update_yaxes(autorange="reversed")
    return fig


def interpolation_figure(paths: dict) -> go.Figure:
    """Loss and accuracy along interpolation paths (one line per path, e.g. naive vs aligned)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["test loss", "test accuracy"])
    for i, (name, p) in enumerate(paths.items()):
        color = px.colors.qualitative.Plotly[i % 10]
        label = f"{name} (barrier {float(p['barrier']):.3f})" if "barrier" in p else name
        fig.add_trace(go.Scatter(x=p["alpha"], y=p["loss"], name=label, line={"color": color}), row=1, col=1)
        fig.add_trace(go.Scatter(x=p["alpha"], y=p["acc"], name=label, line={"color": color}, showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="alpha (0 = A, 1 = B)")
    fig.update_layout(title="Linear interpolation between two models")
    return fig


def generative_curves(summary: pd.DataFrame) -> go.Figure:
    """Test accuracy against fine-tuning epochs, one line per starting point (mean ± std over seeds),
    one panel per setting (the prompt's task, a new task): the generative study's picture."""
    settings = list(dict.fromkeys(summary["setting"]))
    fig = make_subplots(rows=1, cols=len(settings), subplot_titles=settings, shared_yaxes=True)
    for i, (method, g) in enumerate(summary.groupby("method", sort=False)):
        color = px.colors.qualitative.Plotly[i % 10]
        for j, setting in enumerate(settings):
            s = g[g["setting"] == setting].sort_values("epoch")
            fig.add_trace(go.Scatter(x=s["epoch"], y=s["mean"], error_y={"array": s["std"].fillna(0)}, name=method,
                                     mode="lines+markers", line={"color": color}, legendgroup=method,
                                     showlegend=j == 0), row=1, col=j + 1)
    fig.update_xaxes(title_text="fine-tuning epochs")
    fig.update_yaxes(title_text="test accuracy", col=1)
    fig.update_layout(title="Sampled models against random initialization, the prompt and retrieval")
    return fig


def zoom_to(fig: go.Figure, xy: np.ndarray, least: float, share: float) -> None:
    """Zoom a 2-D map to the points ``xy`` with a margin of ``share`` of their extent (at least ``least``
    map units); a point without coordinates (off a big set's map sample) leaves the zoom as it is."""
    if np.isfinite(xy).all():
        pad = np.maximum(least, share * (xy.max(0) - xy.min(0)))
        fig.update_layout(xaxis_range=[xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0]],
                          yaxis_range=[xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1]])


def training_history(history: pd.DataFrame) -> go.Figure:
    """Encoder training curves: losses (left) and validation mAP (right), best epoch marked."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["training losses", "validation mAP"])
    for col, name in (("train_loss", "total"), ("train_nce", "InfoNCE"), ("train_aux", "auxiliary MSE"),
                      ("train_reconstruction", "reconstruction (E.D)")):
        if col not in history:
            continue
        fig.add_trace(go.Scatter(x=history["epoch"], y=history[col], name=name, mode="lines+markers"), row=1, col=1)
    fig.add_trace(go.Scatter(x=history["epoch"], y=history["val_map"], name="val mAP", mode="lines+markers"),
                  row=1, col=2)
    best = history.loc[history["val_map"].idxmax()]
    fig.add_trace(go.Scatter(x=[best["epoch"]], y=[best["val_map"]], name="best", mode="markers",
                             marker={"size": 14, "symbol": "star"}), row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title="Encoder training")
    return fig


MAP_LABELS = {"umap_2d_x": "UMAP 1", "umap_2d_y": "UMAP 2", "umap_3d_x": "UMAP 1", "umap_3d_y": "UMAP 2",
              "umap_3d_z": "UMAP 3", "test_acc": "test accuracy"}
# 24 colours picked greedily from plotly's qualitative palettes (visible on white: CIELAB lightness 25-80) so
# that each is as far as possible from those before it: the first 12 are >= 48 CIELAB units apart (plotly's
# Dark24: 30; its #DA16FF and #FB00D1 read as one magenta), so a zoo's dozen tasks never look alike
PALETTE = ["#1F77B4", "#FB0D0D", "#1CA71C", "#FE00FA", "#F2B701", "#FF9DA6", "#00A08B", "#750D86", "#6C4516",
           "#FA0087", "#511CFB", "#DEA0FD", "#999999", "#3283FE", "#FF7F0E", "#AF0038", "#6C7C32", "#90AD1C",
           "#B279A2", "#C4451C", "#E15F99", "#FC1CBF", "#A6761D", "#DA60CA"]


MAX_POINTS = 60_000  # points one map draws (WebGL stays interactive); more are sampled
# points the 3-D view draws: where WebGL runs in software (headless or GPU-less browsers) a 3-D scene of the
# demo's 5,292 points takes 1.0-1.2 s from the click, of 1,000-1,500 points 0.8 s (docs/benchmarks.md), and a
# sample shows the same shape; the 2-D map, where models are searched and selected, draws them all
MAX_POINTS_3D = 1_500


def embedding_map(table: pd.DataFrame, color: str = "task", dims: int = 2, symbol: str | None = "family",
                  height: int | None = None, max_points: int | None = None) -> go.Figure:
    """UMAP scatter of an embedding set (``peace embed``), coloured by a metadata column: 24 distinct
    colours for categories, viridis for numbers (low values stay visible on white), half-transparent
    points so dense clusters do not hide others, readable axis titles and hover numbers. At most
    ``max_points`` are drawn (default ``MAX_POINTS``, ``MAX_POINTS_3D`` in 3-D; a random sample beyond,
    which the title says)."""
    n_all = len(table)
    if max_points is None:
        max_points = MAX_POINTS_3D if dims == 3 else MAX_POINTS
    axes = ["umap_3d_x", "umap_3d_y", "umap_3d_z"] if dims == 3 else ["umap_2d_x", "umap_2d_y"]
    table = table.dropna(subset=axes)  # big sets: only a sample was mapped (peace.serve.export.MAP_SAMPLE)
    if len(table) > max_points:  # the browser's limit, e.g. a big set's filters off
        table = table.sample(max_points, random_state=0).sort_index()
    hover = {c: (":.3f" if c == "test_acc" else True) for c in ("model_id", "task", "arch", "epoch", "test_acc")
             if c in table.columns}
    kw = dict(color=color, hover_data=hover, labels=MAP_LABELS, height=height, color_discrete_sequence=PALETTE,
              color_continuous_scale="Viridis", symbol=symbol if symbol in table.columns else None)
    if dims == 3:
        fig = px.scatter_3d(table, x="umap_3d_x", y="umap_3d_y", z="umap_3d_z", **kw)
        fig.update_traces(marker={"size": 3, "opacity": 0.7})
    else:
        fig = px.scatter(table, x="umap_2d_x", y="umap_2d_y", custom_data=["model_id"], **kw)
        fig.update_traces(marker={"size": 6, "opacity": 0.6})
    shown = f"{len(table)} models" if len(table) == n_all else f"{len(table):,} of {n_all:,} models (a sample)"
    fig.update_layout(title=f"{shown}, UMAP of their PEACE embeddings, coloured by {MAP_LABELS.get(color, color)}")
    return fig


def method_comparison(summary: pd.DataFrame, columns: tuple[str, ...] = ("task mAP", "hard mAP", "held-out task mAP",
                                                                         "lineage mAP")) -> go.Figure:
    """Grouped bars of headline metrics per method (``peace.orchestrate.evaluation.summary_table``)."""
    long = summary.reset_index().melt(id_vars="method", value_vars=list(columns), var_name="metric")
    return px.bar(long, x="metric", y="value", color="method", barmode="group",
                  title="Retrieval on held-out models (mean average precision)")


def selection_bars(study: dict) -> go.Figure:
    """Within-task Kendall tau of each label-free signal and each method's ridge probe on the held-out tasks
    (an evaluation's ``metrics["selection"]``), best first; signals that read the task's inputs in orange."""
    taus = pd.Series(study["methods"], dtype=float).dropna().sort_values()
    colors = ["#ff7f0e" if "unlabelled inputs" in name else "#1f77b4" for name in taus.index]
    fig = go.Figure(go.Bar(x=taus.to_numpy(), y=taus.index, orientation="h", marker_color=colors,
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    return fig.update_layout(title=f"Ranking {study['n_models']} models of {', '.join(study['tasks'])} without labels "
                             f"(orange: reads the task's unlabelled inputs)", xaxis_title="within-task Kendall tau",
                             height=120 + 28 * len(taus), margin=dict(l=10))


def ablation_bars(table: pd.DataFrame, metric: str, highlight: str = "full") -> go.Figure:
    """One metric across ablation configurations: mean over seeds with one-standard-deviation error
    bars (``peace.orchestrate.ablation.compare``), the full method in a different colour."""
    g = table[table["metric"] == metric].sort_values("mean", ascending=False)
    colors = ["#d62728" if c == highlight else "#1f77b4" for c in g["configuration"]]
    fig = go.Figure(go.Bar(x=g["configuration"], y=g["mean"], marker_color=colors,
                           error_y=dict(type="data", array=g["std"].fillna(0)),
                           customdata=g["count"], hovertemplate="%{x}: %{y:.3f} (%{customdata} seeds)<extra></extra>"))
    return fig.update_layout(title=f"{metric} per configuration (mean ± std over seeds; {highlight} in red)",
                             xaxis_tickangle=-40, yaxis_title=metric)
