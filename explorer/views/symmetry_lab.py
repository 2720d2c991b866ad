"""The Symmetry lab: transform a zoo model by a weight-space symmetry and see what changes (the weights)
and what does not (its function, its PEACE embedding)."""
from __future__ import annotations

import streamlit as st
from shared import current, model_picker

from peace.serve.explore import typical_model
from peace.serve.plots import weight_heatmaps


def page_symmetry() -> None:
    from peace.nets.symmetry import allowed, group_labels

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


page_symmetry()
