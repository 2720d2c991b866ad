"""The Symmetry lab: transform a zoo model by a weight-space symmetry and see what changes (the weights)
and what does not (its function, its PEACE embedding)."""
from __future__ import annotations

import streamlit as st
from shared import current, model_picker, remembered

from peace.serve.explore import typical_model
from peace.serve.plots import weight_heatmaps


def _transform(col, label: str, key: str, possible: bool, why: str) -> bool:
    """A remembered transform box (a choice survives models it cannot apply to); greyed out and off where
    the model's activation does not allow the transform."""
    if not possible:
        col.checkbox(label, False, disabled=True, help=why, key=f"{key}_unavailable")
        return False
    return remembered(col.checkbox, label, key=key, default=True)


def page_symmetry() -> None:
    from peace.nets.symmetry import allowed, group_labels

    ex = current()
    if ex is None:
        return
    mid = model_picker(ex, "Model", "sym_model", typical_model(ex.table))
    spec = ex.zoo.spec(mid)
    ok = allowed(spec)
    c1, c2, c3, c4 = st.columns(4)
    permute = remembered(c1.checkbox, "Permute hidden units", key="sym_permute", default=True)
    scale = _transform(c2, "Positive scaling", "sym_scale", ok["scale"], f"{spec.activation} does not commute with scaling")
    flip = _transform(c3, "Sign flips", "sym_flip", ok["flip"], f"{spec.activation} is not odd")
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
    if permute or scale or flip:
        st.caption("The network computes the same function; raw weights call it a different model, PEACE does not.")
    else:
        st.caption("Every transform is off: the model is compared with itself, so every distance is 0. Turn one on.")
    st.plotly_chart(weight_heatmaps(res["original"], res["transformed"]), width="stretch")


page_symmetry()
