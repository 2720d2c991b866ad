"""Plotly figures shared by the notebooks and the explorer."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def accuracy_by_task(manifest: pd.DataFrame) -> go.Figure:
    """Box plot of final-epoch test accuracy per task, one colour per architecture family."""
    final = manifest[manifest["epoch"] == manifest["epochs"]]
    fig = px.box(final, x="task", y="test_acc", color="family", points="outliers",
                 hover_data=["model_id", "arch", "lr", "seed"],
                 title=f"Final test accuracy per task ({len(final)} runs)")
    fig.update_layout(yaxis_title="test accuracy", xaxis_title=None, legend_title="family")
    return fig


def accuracy_over_epochs(manifest: pd.DataFrame) -> go.Figure:
    """Mean test accuracy per recorded epoch and task: how the zoo's checkpoints spread over training."""
    g = manifest.groupby(["task", "epoch"], as_index=False)["test_acc"].mean()
    return px.line(g, x="epoch", y="test_acc", color="task", markers=True, title="Mean test accuracy by epoch")
