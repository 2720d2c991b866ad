"""The Generate page: new models sampled around prompt models with the run's decoder, measured beside
random initialization and the prompt, starred on the map, downloadable as model folders."""
from __future__ import annotations

import numpy as np
import streamlit as st
from shared import choose, current, model_picker, remembered, table

from peace.learn.generation import SampleConfig
from peace.serve.explore import typical_model
from peace.serve.plots import embedding_map, zoom_to

# docs/generation.md: bootstrapping was best on validation for both prompts measured there
RECIPES = {"bootstrapping: best of 20x, 5 rounds": dict(candidates=20, rounds=5, bandwidth=0.5),
           "subsampling: best of 5x": dict(candidates=5),
           "plain KDE (no selection)": dict()}


def _prompt(ex) -> list[str]:
    """Prompt models by architecture and task (the most accurate ones), or a model and its neighbours."""
    how = choose(st.radio, "Prompt models", ["by task", "a model and its neighbours"], "gen_how", horizontal=True)
    if how == "by task":
        archs = ex.decodable_archs()
        c1, c2, c3 = st.columns(3)
        arch = choose(c1.selectbox, "Architecture", archs, "gen_arch")
        t = ex.table[ex.table["arch"] == arch]
        task = choose(c2.selectbox, "Task", sorted(t["task"].unique()), "gen_task")
        of_task = t[t["task"] == task]
        if len(of_task) == 1:  # a slider needs two values
            c3.caption("The one model of this task and architecture.")
            return list(of_task["model_id"])
        best = remembered(c3.slider, "The most accurate", 1, len(of_task), key="gen_best", default=min(10, len(of_task)),
                          fit=lambda v: max(1, min(v, len(of_task))))
        return list(of_task.nlargest(best, "test_acc")["model_id"])
    q = model_picker(ex, "Model", "gen_model", typical_model(ex.table[ex.table["arch"].isin(ex.decodable_archs())]))
    k = remembered(st.slider, "Neighbours of its architecture", 0, 30, key="gen_k", default=5)
    arch = ex.table.iloc[ex.es.row_of[q]]["arch"]
    hits = ex.neighbours(q, 4 * k + 10) if k else ex.table.iloc[:0]
    return [q] + list(hits.loc[hits["arch"] == arch, "model_id"][:k])


def page_generate() -> None:
    ex = current()
    if ex is None:
        return
    from peace.learn.decoder import DecoderConfig, families_flag

    decodable = ex.decodable_archs()
    if not decodable:
        st.info(f"This set's run has no decoder for its architectures. Train one with `peace decoder --run {ex.run}` "
                f"(MLPs, CNNs and ResNets; ViTs with `{families_flag(DecoderConfig().families, 'vit')}`; about two "
                "minutes on the demo run), then reload this page.")
        return
    left = sorted(set(ex.table["arch"]) - set(decodable))
    if left:
        config = ex.decoder.config
        st.caption(f"Not written by this run's decoder: {'; '.join(left)}. ViTs are decoded on request (`peace "
                   f"decoder --run {ex.run} {families_flag(config.families, 'vit')}`); other architectures need "
                   f"{config.min_models} training models.")
    prompt = _prompt(ex)
    rows = ex.table.iloc[[ex.es.row_of[m] for m in prompt]]
    if rows["task"].nunique() > 1:
        st.warning(f"The prompt mixes tasks ({', '.join(sorted(rows['task'].unique()))}); the samples are measured "
                   f"on {rows['task'].iloc[0]!r}.")
    c1, c2, c3 = st.columns(3)
    n = remembered(c1.slider, "Models to sample", 1, 100, key="gen_n", default=10)
    recipe = choose(c2.selectbox, "Recipe (selection uses the task's training split)", list(RECIPES), "gen_recipe")
    seed = remembered(c3.number_input, "Seed", 0, 10_000, key="gen_seed", default=0)
    with st.spinner("Sampling, decoding and measuring ..."):
        s = ex.sample(prompt, SampleConfig(n=n, seed=seed, **RECIPES[recipe]))
    st.write(f"**{len(s.models)} new {s.spec.describe()} models** for {s.task!r}, sampled around {len(prompt)} prompt "
             f"model(s); test accuracy:")
    table(s.comparison.round(3))
    if not s.learned_from:
        st.warning(f"The decoder learned from no {s.spec.describe()} model of {s.task!r} (none in the run's training "
                   f"split): it writes such models at about chance (docs/generation.md).")
    st.download_button("Download as model folders (zip: model.safetensors + config.json each)", s.archive(),
                       file_name=f"sampled-{s.task}.zip", mime="application/zip")
    if why := ex.map_missing():
        st.info(why)
        return
    fig = embedding_map(ex.table, "task", symbol=None, height=560)
    fig.add_scatter(x=rows["umap_2d_x"], y=rows["umap_2d_y"], mode="markers", name="prompt",
                    marker=dict(size=12, color="rgba(0,0,0,0)", line=dict(color="black", width=2)))
    fig.add_scatter(x=s.map_xy[:, 0], y=s.map_xy[:, 1], mode="markers", name="sampled",
                    marker=dict(symbol="star", size=14, color="black"),
                    hovertext=[f"sampled {j}: acc {a:.3f}" for j, a in enumerate(s.accuracy)], hoverinfo="text")
    zoom_to(fig, np.vstack([s.map_xy, rows[["umap_2d_x", "umap_2d_y"]].to_numpy()]), 1.0, 0.5)
    st.plotly_chart(fig, width="stretch")
    st.caption("Stars: the sampled models, placed at the mean map position of their 5 nearest zoo models; rings: the "
               "prompt. `peace sample` writes the same as a zoo; the generative study (notebook 07) fine-tunes them.")


page_generate()
