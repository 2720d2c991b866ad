"""The Query page: an uploaded model file (read in an isolated, resource-limited process) placed among the
zoo's models, with a check of its activation on data."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from shared import cols, current, highlight, table

from peace.core.errors import PeaceError
from peace.intake.importers import NO_ACTIVATION
from peace.serve.explore import Explorer, activation_advice
from peace.serve.plots import embedding_map

QUERY_MAP_POINTS = 1_000  # a sample of the map shows where a query lands, and draws in a tenth of the time


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


def _closeness(ex: Explorer, hits: pd.DataFrame, check: pd.DataFrame) -> None:
    """How close the query is to the zoo, against how close zoo models are to each other, and which zoo task
    the network solves on data: a weak match must look weak."""
    nearest, typical = float(hits["cosine"].iloc[0]), ex.es.typical_nearest_cosine
    weak = ex.es.weak_match(nearest)
    solved = check[check["chosen"]].sort_values("accuracy", ascending=False) if not check.empty else check
    verdict = (f" On the zoo tasks' test data it scores best on {solved['task'].iloc[0]} "
               f"({solved['accuracy'].iloc[0]:.3f}; chance {solved['chance'].iloc[0]:.2f}).") if len(solved) else ""
    text = (f"Nearest zoo model at cosine {nearest:.3f}; zoo models' nearest neighbours are typically at "
            f"{typical:.3f} (median).{verdict}")
    if weak:
        st.warning(f"A weak match: {text} Nothing in this zoo is close to what this network computes.")
    else:
        st.caption(text)


def _query_config(activation: str, heads: int, shape: str, pool: str, padding: str) -> dict:
    cfg = {} if activation == "from the file's layout" else {"activation": activation}
    if heads:
        cfg["num_heads"] = int(heads)
    if shape.strip():
        try:
            cfg.update(input_shape=[int(v) for v in shape.split(",")], pool=pool, padding=padding)
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
    c1, c2, c3, c5, c4 = st.columns(5)
    activation = c1.selectbox("Activation", ["from the file's layout", "relu", "tanh", "sigmoid", "leaky_relu", "gelu",
                                             "identity"],
                              help="torchvision ResNets use relu and timm ViTs gelu; a plain chain must be told")
    shape = c2.text_input("Input shape (C,H,W)", "", help="for convolutional and residual networks, e.g. 1,8,8")
    pool = c3.selectbox("CNN pooling", ["avg", "max", "none"])
    padding = c5.selectbox("CNN padding", ["same", "valid"], help="valid: unpadded convolutions (torch's default)")
    heads = c4.number_input("Attention heads", 0, 1024, 0, help="Transformers only: not in the weights (0: not one)")
    k = st.slider("k", 1, 30, 10, key="upload_k")
    if up is not None or example:
        _query_results(ex, up, (activation, heads, shape, pool, padding), k)
    ex.prepare_query()  # the next file's reader starts (and the encoder loads) while the user picks a file


def _query_results(ex: Explorer, up, fields: tuple, k: int) -> None:
    """An uploaded file (or, without one, the example) parsed in isolation, its neighbours and map position;
    ``fields``: the page's activation, heads, input shape, pooling and padding."""
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
                      "--pool": "the CNN pooling field", "--padding": "the CNN padding field",
                      "config.json: ": "the Attention heads field; config.json: "}
            msg = str(e).replace(str(path), name)
            for option, field in fields.items():
                msg = msg.replace(option, field)
            if NO_ACTIVATION in msg:  # not a fault of the file: a question for the user
                st.info(f"{msg}. Choose it in the Activation field above; the file is read again at once.")
            else:
                st.error(msg)
            return
    st.success(f"{name}: {m.spec.describe()}, {m.spec.n_params} parameters")
    check = ex.activation_check(m.spec, m.params)
    if "activation" in m.inferred:
        best = check.loc[check["accuracy"].idxmax()]
        close = sorted(set(check.loc[(check["task"] == best["task"]) & (check["accuracy"] >= best["accuracy"] - 0.02),
                                     "activation"]) - {best["activation"]})
        st.info(f"The file does not name its activation; {best['activation']} fits it best on the zoo tasks' data "
                f"({best['task']}: {best['accuracy']:.3f}; the function check below), so it was read as that"
                + (f" ({', '.join(close)} within 0.02: as good a fit on this data)" if close else "")
                + ". Pick another in the Activation field if you know better.")
    advice = activation_advice(check)
    if advice:
        st.warning(advice)
    _closeness(ex, hits, check)
    table(cols(hits, ("cosine",)), key="upload_hits")
    fig = embedding_map(ex.table, "task", symbol=None, height=520, max_points=QUERY_MAP_POINTS)
    highlight(fig, hits, xy, name, zoom=False)
    st.plotly_chart(fig, width="stretch")
    _function_check(m.spec, check, advice)


page_query()
