"""The Best-for-a-task page: a task's models ranked without its labels, by how much each agrees with the
others (``peace rank``; weights only, or on the task's inputs), beside the accuracy the zoo records, so a user
sees how far to trust it."""
from __future__ import annotations

import plotly.express as px
import streamlit as st
from shared import choose, cols, current, table

from peace.core.errors import PeaceError
from peace.orchestrate.selection import agreement_with_record, parent_tasks, rank_models

READS = {"inputs the models write (weights only)": "written", "Gaussian probes (weights only, quicker)": "probes",
         "the task's unlabelled inputs": "data"}


@st.cache_data(max_entries=16, show_spinner="Running the models on shared inputs ...")
def ranking(_ex, set_sha: str, task: str, arch: str, read: str):
    """The set's models of ``task`` (and ``arch``) ranked on ``read`` (a value of READS), and what the score read."""
    t = _ex.table[(_ex.table["task"] == task) & ((_ex.table["arch"] == arch) | (arch == "all"))]
    return rank_models(_ex.zoo, " ".join(t["model_id"]), task=task if read == "data" else None,
                       probes=read == "probes")


def page_rank() -> None:
    ex = current()
    if ex is None:
        return
    st.write("Which of a task's models to use, when nobody labelled the task? Models that solve it agree with each "
             "other; models that do not err each their own way. From the weights alone, the better models write "
             "inputs, each for a class, and every model is scored by the probability it gives those classes; on "
             "inputs you have, by its agreement with the others. No label and no accuracy is read.")
    c1, c2, c3 = st.columns([1, 1, 1.2])
    task = choose(c1.selectbox, "Task", sorted(ex.table["task"].unique()), "rank_task")
    archs = ["all"] + sorted(ex.table.loc[ex.table["task"] == task, "arch"].unique())
    arch = choose(c2.selectbox, "Architecture", archs, "rank_arch")
    read = choose(c3.radio, "Read on", list(READS), "rank_read")
    try:
        ranked, what = ranking(ex, ex.es.info["embeddings_sha256"], task, arch, READS[read])
    except PeaceError as e:  # fewer than 3 models, say
        st.info(str(e))
        return
    tau = agreement_with_record(ranked)
    st.info(f"{len(ranked)} models ranked by {what}. "
            + (f"Kendall tau against the test accuracy the zoo records (not read by the ranking): {tau:.2f}."
               if tau is not None else "The zoo records no test accuracy for them to compare with."))
    parents = parent_tasks(ex.zoo, list(ranked["model_id"])) if READS[read] != "data" else {}
    if parents:
        st.warning(f"{sum(parents.values())} of these models were fine-tuned from models of {', '.join(parents)}: "
                   "from the weights alone, a fine-tune that still computes much of its parent's function can rank "
                   "high (the demo's digits-flip ranks at tau -0.26). Reading the task's unlabelled inputs ranks them "
                   "on its data.")
    table(cols(ranked.head(20).round({"score": 3}), ("rank", "score")), key="ranked")
    if tau is not None:
        fig = px.scatter(ranked, x="score", y="test_acc", color="arch", hover_name="model_id", height=420,
                         labels={"score": "score (no labels read)", "test_acc": "recorded test accuracy"})
        st.plotly_chart(fig, width="stretch")
    st.caption("Consensus: the share of inputs on which a model predicts what the others do, each other model weighted "
               "by how much the rest agree with it. Inputs the models write: the better models (by consensus on "
               "the probes) turn Gaussian noise into inputs they answer with a chosen class, and a model scores the "
               "probability it gives those classes. "
               "Measured on held-out tasks in docs/benchmarks.md (model selection); the same "
               "ranking from the command line: `peace rank`.")


page_rank()
