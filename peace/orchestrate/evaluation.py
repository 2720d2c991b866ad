"""``peace evaluate``: PEACE against every baseline on the run's held-out models.

Baselines and probes are fit on the training split; every figure is measured on the test split
(held-out runs of training tasks plus whole held-out tasks). Writes ``metrics.json``,
``report.md`` and plotly HTML figures.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from peace.core.atomic import atomic_path, write_json
from peace.core.cluster import Engine
from peace.core.errors import PeaceError
from peace.evaluate.baselines import Baseline, FunctionSpace, MetadataSearch, Models, weight_baselines
from peace.evaluate.metrics import (
    clustering_scores,
    functional_similarity,
    hard_queries,
    invariance_ratio,
    linear_probe,
    retrieval_scores,
    within_group_tau,
)
from peace.evaluate.prediction import PredictorConfig, accuracy_study
from peace.evaluate.selection import (CONFIDENCE, DATA_CONSENSUS, PROBE_CONSENSUS, WRITTEN_SCORE, confidence,
                                     consensus, written_score)
from peace.evaluate.transfer import TransferConfig, transfer_study
from peace.learn.probegen import ProbeGenEmbedding
from peace.learn.run import RunDir, load_encoder
from peace.nets.probes import io_space, responses
from peace.nets.symmetry import random_symmetry
from peace.orchestrate.generation import GenerativeConfig, generative_markdown, generative_study
from peace.serve.plots import method_comparison
from peace.zoo.store import Zoo, usable

__all__ = [
    "CATEGORY_TARGETS", "REGRESSION_TARGETS", "REVEALS", "EncoderMethod", "accuracy_markdown", "aggregate",
    "evaluate", "evaluate_method", "evaluate_runs", "markdown_table", "report_markdown", "selection_markdown",
    "split_models", "summarize_evaluations", "summary_markdown", "summary_table", "transfer_markdown"
]

REGRESSION_TARGETS = ("test_acc", "gen_gap", "epoch", "log10_lr")
CATEGORY_TARGETS = ("activation", "init", "optimizer")
# model-card columns that state a probe target outright: metadata search must not see them
REVEALS = {"epoch": ("epoch",), "log10_lr": ("lr",), "activation": ("activation", "arch"), "init": ("init",),
           "optimizer": ("optimizer",)}


class EncoderMethod(Baseline):
    """A trained encoder run behind the baseline interface (PEACE itself, or the flat MLP control).
    ``learned_only`` keeps the learned part of an embedding that carries a function block."""

    def __init__(self, run_dir: str | Path, name: str, learned_only: bool = False, encoder=None):
        self.encoder, self.name = encoder if encoder is not None else load_encoder(run_dir), name
        self.learned_only = learned_only

    def transform(self, models: Models) -> np.ndarray:
        e = self.encoder.embed(models.specs, models.params).numpy()
        return e[:, :self.encoder.config.embedding_dim] if self.learned_only else e


def _sample(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return rows if len(rows) <= n else rows.sample(n, random_state=seed)


def _functional(method: Baseline, models: Models, seed: int, per_group: int = 150) -> float:
    """Spearman(embedding distance, prediction disagreement) within io-spaces, on the shared Gaussian
    probe inputs of ``peace.nets.probes``; averaged over spaces weighted by size."""
    keyed = models.rows.assign(io=[io_space(s) for s in models.specs], i=range(len(models)))
    scores, weights = [], []
    for io, g in keyed.groupby("io"):
        g = _sample(g, per_group, seed)
        if len(g) < 3:
            continue
        idx = list(g["i"])
        preds = np.stack([r.argmax(-1).numpy() for r in responses([models.specs[i] for i in idx],
                                                                   [models.params[i] for i in idx], seed=seed)])
        sub = Models(models.rows.iloc[idx].reset_index(drop=True), [models.specs[i] for i in idx],
                     [models.params[i] for i in idx])
        scores.append(functional_similarity(method.transform(sub), preds))
        weights.append(len(idx))
    return float(np.average(scores, weights=weights)) if scores else float("nan")


def _probes(method: Baseline, train: Models, test: Models, e_train: np.ndarray, e_test: np.ndarray) -> dict:
    """Linear probes of each model-card target, on the models that record it (a model added from elsewhere has no
    learning rate or epoch, and no accuracy without a task); a target too few models record, or with one value
    only, is left out."""
    probes = {}
    tr, te = train.rows.assign(log10_lr=np.log10(train.rows["lr"])), test.rows.assign(log10_lr=np.log10(test.rows["lr"]))
    for t in REGRESSION_TARGETS + CATEGORY_TARGETS:
        categorical = t in CATEGORY_TARGETS
        k_tr, k_te = tr[t].notna().to_numpy(), te[t].notna().to_numpy()
        if k_tr.sum() < 3 or k_te.sum() < 2 or tr.loc[k_tr, t].nunique() < 2:  # nothing recorded, or one value
            continue
        x_tr, x_te = e_train, e_test
        if isinstance(method, MetadataSearch) and t in REVEALS:  # a card without the answer
            blind = MetadataSearch([c for c in method.columns if c not in REVEALS[t]]).fit(train)
            x_tr, x_te = blind.transform(train), blind.transform(test)
        held = te["heldout_task"].to_numpy(bool)[k_te] if "heldout_task" in te else np.zeros(k_te.sum(), bool)
        # test_acc also ranks the held-out tasks' models, unlabelled: model selection (peace.evaluate.selection)
        within = np.where(held, te["task"].to_numpy(object)[k_te], None) if t == "test_acc" and held.any() else None
        probes[t] = linear_probe(x_tr[k_tr], tr[t].to_numpy()[k_tr], x_te[k_te], te[t].to_numpy()[k_te],
                                 categorical=categorical, rank_within=within,
                                 subsets={"seen_tasks": ~held, "heldout_tasks": held} if held.any() else None)
    return probes


def evaluate_method(method: Baseline, train: Models, test: Models, seed: int = 0) -> dict:
    """Every metric of one method (already fit on ``train``) on the test models."""
    e_train, e_test = method.transform(train), method.transform(test)
    rows = test.rows
    out: dict = {"retrieval_task": retrieval_scores(e_test, rows["task"].to_numpy()),
                 "retrieval_task_hard": retrieval_scores(e_test, rows["task"].to_numpy(), hard_queries(rows)),
                 "retrieval_task_heldout": retrieval_scores(e_test, rows["task"].to_numpy(), rows["heldout_task"].to_numpy()),
                 "retrieval_task_cross_arch": retrieval_scores(e_test, rows["task"].to_numpy(),
                                                               other_than=rows["arch"].to_numpy()),
                 "retrieval_lineage": retrieval_scores(e_test, rows["lineage_id"].to_numpy())}
    tasks = rows["task"].to_numpy()
    n_tasks = len(np.unique(tasks))  # a zoo of one task (a seed zoo) has no task clusters to find: n/a
    out["clustering_task"] = (clustering_scores(e_test, tasks, seed) if 2 <= n_tasks < len(rows)
                              else dict.fromkeys(("nmi", "silhouette", "davies_bouldin"), math.nan))
    out["probes"] = probes = _probes(method, train, test, e_train, e_test)
    if "within_group_tau" in probes.get("test_acc", {}):
        out["selection_tau"] = probes["test_acc"]["within_group_tau"]
    inv = _sample(rows.reset_index(drop=True).assign(i=range(len(rows))), 100, seed)
    moved = Models(inv.drop(columns="i"), [test.specs[i] for i in inv["i"]],
                   [random_symmetry(test.specs[i], test.params[i], seed=seed + k) for k, i in enumerate(inv["i"])])
    out["invariance"] = invariance_ratio(e_test[inv["i"].to_numpy()], method.transform(moved), e_test)
    out["functional_spearman"] = _functional(method, test, seed)
    return out


def split_models(run_dir: str | Path, zoo: Zoo, splits: tuple[str, ...] = ("train", "test")) -> tuple[Models, ...]:
    """The run's models of each split in ``splits`` (finite ones only); every set's rows carry the
    split columns (``split``, ``heldout_task``)."""
    table = RunDir(run_dir).splits()
    rows = zoo.manifest.reset_index(drop=True).merge(table, on="model_id")
    rows = rows[usable(rows)]
    ids = {s: list(rows.loc[rows["split"] == s, "model_id"]) for s in splits}
    if min(len(v) for v in ids.values()) < 2:
        raise PeaceError(f"the run's splits leave {', '.join(f'{len(v)} {s}' for s, v in ids.items())} models; "
                         f"evaluation needs at least 2 of each")
    out = []
    for s in splits:
        models = Models.from_zoo(zoo, ids[s])
        models.rows = models.rows.merge(table, on="model_id", how="left")
        out.append(models)
    return tuple(out)


def _methods(run_dir: Path, peace: EncoderMethod, mlp_run: str | Path | None, spaces: list[str], probegen: int,
             seed: int) -> list[Baseline]:
    """What ``evaluate`` compares: PEACE (and its learned part alone where it has a function block), the
    flat-MLP control, the weight-space baselines, the function space (also on the run's own probes, where
    it reads learned or inverted ones) and contrastive ProbeGen."""
    methods: list[Baseline] = [peace] + ([EncoderMethod(mlp_run, "mlp-encoder")] if mlp_run else []) + weight_baselines()
    if peace.encoder.config.function_block:  # what the learned encoder does without the sketch
        methods.insert(1, EncoderMethod(run_dir, "peace-learned", learned_only=True, encoder=peace.encoder))
    methods.append(FunctionSpace(spaces=spaces))
    bank = peace.encoder.probe_bank.inputs()
    if bank:
        methods.append(FunctionSpace(peace.encoder.config.probes, spaces=spaces, inputs=bank))
    if probegen:  # the learned prober, trained contrastively as PEACE is (peace.learn.probegen)
        methods.append(ProbeGenEmbedding(steps=probegen, seed=seed, spaces=spaces))
    return methods


def evaluate(run_dir: str | Path, out: str | Path, zoo: Zoo | str | Path | None = None,
             mlp_run: str | Path | None = None, seed: int = 0, progress: bool = True,
             transfer: TransferConfig | None = TransferConfig(), accuracy: PredictorConfig | None = PredictorConfig(),
             engine: Engine | None = None, generative: GenerativeConfig | None = None, probegen: int = 100) -> dict:
    """Evaluate the run's encoder and every baseline; write metrics.json, report.md and figures to ``out``.

    ``transfer=None`` skips the fine-tuning study (the slowest part; ``engine`` spreads its
    fine-tuning over Ray workers); ``accuracy=None`` the accuracy-prediction study against NFN on
    the largest architecture NFN reads (an MLP, or a globally pooled CNN such as the Small CNN Zoo's);
    ``generative`` adds SANE's study of sampled models (the run needs a decoder: ``peace decoder``); ``probegen``
    steps of contrastive ProbeGen training (0: not compared)."""
    run_dir, out = Path(run_dir), Path(out)
    peace = EncoderMethod(run_dir, "peace")
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo or peace.encoder.meta["zoo"])
    if peace.encoder.meta.get("zoo_manifest_sha256") != zoo.info["manifest_sha256"]:
        raise PeaceError(f"the run {run_dir} was trained on another zoo than {zoo.path}; evaluate it on its own zoo "
                         f"(its splits say which models were held out)")
    train, val, test = split_models(run_dir, zoo, ("train", "val", "test"))
    spaces = sorted({io_space(s) for s in train.specs + test.specs})  # held-out tasks may bring their own
    methods = _methods(run_dir, peace, mlp_run, spaces, probegen, seed)
    results = {}
    for m in tqdm(methods, desc="evaluate", disable=not progress, leave=False):
        m.fit(train)
        results[m.name] = evaluate_method(m, train, test, seed)
    metrics = {"run": str(run_dir), "zoo": str(zoo.path), "n_train": len(train), "n_test": len(test),
               "heldout_tasks": peace.encoder.meta.get("holdout_tasks", []), "methods": results}
    held = test.rows["heldout_task"].to_numpy(bool)
    if held.any():
        idx = np.flatnonzero(held)
        specs, params, tasks = [test.specs[i] for i in idx], [test.params[i] for i in idx], test.rows["task"].iloc[idx]
        probed = consensus(specs, params, tasks, "probes")
        label_free = {PROBE_CONSENSUS: probed, WRITTEN_SCORE: written_score(specs, params, tasks, probed=probed),
                      CONFIDENCE: confidence(specs, params, tasks),
                      DATA_CONSENSUS: consensus(specs, params, tasks, "data")}
        metrics["selection"] = {"tasks": sorted(set(tasks)), "n_models": len(idx), "methods": {
            **{n: r["selection_tau"] for n, r in results.items()},
            **{n: within_group_tau(test.rows["test_acc"].iloc[idx], v, tasks) for n, v in label_free.items()}}}
    if accuracy is not None:
        aux = peace.encoder.config.aux_targets
        head = {} if "test_acc" not in aux else {
            "peace aux head": lambda m: peace.encoder.predict(m.specs, m.params)[:, aux.index("test_acc")].numpy()}
        metrics["accuracy_prediction"] = accuracy_study(train, val, test, methods, config=accuracy, seed=seed, extra=head,
                                                        encoder=peace.encoder)
    if transfer is not None:
        metrics["transfer"] = transfer_study(methods, train, test, transfer, seed, progress, engine)
    if generative is not None:
        metrics["generative"] = generative_study(run_dir, generative, zoo, progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    table = summary_table(metrics)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report_markdown(metrics, table))
    with atomic_path(out / "retrieval.html") as tmp:
        method_comparison(table).write_html(str(tmp), include_plotlyjs=True)  # self-contained: works offline
    return metrics


def summary_table(metrics: dict) -> pd.DataFrame:
    """One row per method with the headline numbers."""
    rows = {}
    for name, r in metrics["methods"].items():
        p = {t: r["probes"].get(t, {}) for t in ("test_acc", "gen_gap", "epoch")}  # a target no model records: NaN
        rows[name] = {"task mAP": r["retrieval_task"]["map"], "task P@10": r["retrieval_task"]["precision@10"],
                      "hard mAP": r["retrieval_task_hard"]["map"], "held-out task mAP": r["retrieval_task_heldout"]["map"],
                      "cross-arch mAP": r["retrieval_task_cross_arch"]["map"],
                      "lineage mAP": r["retrieval_lineage"]["map"], "NMI": r["clustering_task"]["nmi"],
                      "R2 test_acc": p["test_acc"].get("r2", math.nan),
                      "R2 test_acc (seen tasks)": p["test_acc"].get("r2_seen_tasks", p["test_acc"].get("r2", math.nan)),
                      "R2 gen_gap": p["gen_gap"].get("r2", math.nan), "R2 epoch": p["epoch"].get("r2", math.nan),
                      "selection tau": r.get("selection_tau", math.nan),
                      "func. Spearman": r["functional_spearman"], "invariance ratio": r["invariance"]["ratio"]}
    return pd.DataFrame(rows).T.rename_axis("method")


def evaluate_runs(run_dirs: list[str | Path], out: str | Path, **kwargs) -> pd.DataFrame:
    """Evaluate several runs (e.g. encoder seeds) into ``out/<run name>/`` and summarize them: every
    headline figure as mean and standard deviation over runs, in ``out/summary.parquet`` and
    ``out/summary.md``. Each run is evaluated on its own split (seeds also redraw the held-out tasks),
    so the spread covers both the encoder's seed and the split."""
    out = Path(out)
    names = [Path(r).name for r in run_dirs]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    for name, run in zip(names, run_dirs):
        evaluate(run, out / name, **kwargs)
    return summarize_evaluations([out / n for n in names], out)


def summarize_evaluations(eval_dirs: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Mean ± std over evaluations already written (folders holding ``metrics.json``, e.g. the
    ``eval`` folders of an ablation's seeds), into ``out/summary.parquet`` and ``out/summary.md``."""
    out, eval_dirs = Path(out), [Path(d) for d in eval_dirs]
    missing = [str(d) for d in eval_dirs if not (d / "metrics.json").is_file()]
    if missing:
        raise PeaceError(f"no metrics.json in {missing}; run `peace evaluate` for those runs first")
    names = [str(d) for d in eval_dirs]
    tables = [summary_table(json.loads((d / "metrics.json").read_text())).assign(run=n) for d, n in zip(eval_dirs, names)]
    summary = aggregate(tables)
    with atomic_path(out / "summary.parquet") as tmp:
        summary.to_parquet(tmp)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(f"# PEACE evaluation over {len(names)} runs\n\nEvaluations: {', '.join(names)} (each on its "
                       f"own split). Mean ± standard deviation over runs.\n\n{summary_markdown(summary)}")
    return summary


def aggregate(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Long table (method, metric, mean, std, n) over several ``summary_table`` results."""
    long = pd.concat([t.reset_index().melt(id_vars=["method", "run"], var_name="metric") for t in tables])
    long["value"] = long["value"].astype(float)
    g = long.groupby(["method", "metric"], sort=False)["value"]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()


def summary_markdown(summary: pd.DataFrame) -> str:
    """A method x metric markdown table of ``mean ± std`` cells from :func:`aggregate`."""
    cell = lambda r: "n/a" if math.isnan(r["mean"]) else (  # noqa: E731
        f"{r['mean']:.3f}" + ("" if r["n"] < 2 or math.isnan(r["std"]) else f" ± {r['std']:.3f}"))
    wide = summary.assign(cell=summary.apply(cell, axis=1)).pivot(index="method", columns="metric", values="cell")
    return markdown_table(wide.loc[list(dict.fromkeys(summary["method"])), list(dict.fromkeys(summary["metric"]))])


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a markdown table, one row per method (its index): numbers to 3 decimals, missing ones
    as n/a, text as it is (cells already formatted)."""
    cell = lambda v: v if isinstance(v, str) else "n/a" if v is None or math.isnan(v) else f"{v:.3f}"  # noqa: E731
    head = "| method | " + " | ".join(table.columns) + " |\n|---|" + "---|" * len(table.columns) + "\n"
    return head + "".join(f"| {m} | " + " | ".join(cell(v) for v in r) + " |\n" for m, r in table.iterrows())


def report_markdown(metrics: dict, table: pd.DataFrame) -> str:
    return (f"# PEACE evaluation\n\nRun `{metrics['run']}` on zoo `{metrics['zoo']}`: {metrics['n_train']} training "
            f"models (baselines and probes fit on them), {metrics['n_test']} test models (every figure below), "
            f"held-out tasks {', '.join(metrics['heldout_tasks']) or 'none'}.\n\n{markdown_table(table)}\n"
            "mAP: leave-one-out cosine retrieval among test models, relevance = same task (hard: queries whose "
            "architecture is trained on other tasks too; held-out: queries of tasks never seen in training; "
            "cross-arch: each query ranks only models of other architectures) or same fine-tune lineage. "
            "function: class predictions on shared random probe inputs (training-free; compares models of one "
            "io-space only); function (run's probes): the same on the probes the run's encoder reads (learned "
            "or inverted), where they are its own. probegen: ProbeGen's learned probes and reader, trained "
            "contrastively on PEACE's "
            "partners. "
            "peace-learned: PEACE's learned embedding without its function-space block. R2: ridge "
            "probes (seen tasks: the test models of training tasks only). Func. Spearman: rank correlation of "
            "embedding distance with prediction disagreement on shared probe inputs. Invariance ratio: distance to a random symmetry "
            "transform over distance to the nearest other model (lower is better; 0 = exactly invariant).\n\n"
            f"{selection_markdown(metrics.get('selection'))}"
            f"{accuracy_markdown(metrics.get('accuracy_prediction'))}{transfer_markdown(metrics.get('transfer'))}"
            f"{generative_markdown(metrics.get('generative'))}All numbers: `metrics.json`.\n")


def selection_markdown(study: dict | None) -> str:
    """The report's model-selection table (held-out tasks); empty when the run holds out no task."""
    if not study:
        return ""
    return (f"## Model selection on tasks nobody labelled\n\nThe {study['n_models']} test models of the held-out "
            f"tasks {', '.join(study['tasks'])}, ranked by predicted test accuracy (a ridge probe on each method's "
            f"vectors, fit on the training tasks' models: no label of these tasks is used); Kendall tau against "
            f"their true test accuracy inside each task, averaged over tasks. {CONFIDENCE}: each model's mean top "
            f"softmax probability on the task's test inputs (uses the task's data, not its labels). Consensus: how "
            f"much a model agrees with the task's other models (each weighted by its own centrality), on the task's "
            f"unlabelled inputs or on Gaussian probes (weights only). {WRITTEN_SCORE}: the task's better models (by "
            f"consensus on the probes) write inputs, each for a class, and each model scores its mean probability of "
            f"those classes (`peace rank`'s default), `peace.evaluate.selection`.\n\n"
            f"{markdown_table(pd.DataFrame({'within-task Kendall tau': study['methods']}))}\n")


def accuracy_markdown(study: dict | None) -> str:
    """The accuracy-prediction table of the report (NFN's setting); empty when the study was skipped."""
    if not study:
        return ""
    if "skipped" in study:
        return f"## Accuracy prediction on one architecture\n\nSkipped: {study['skipped']}.\n\n"
    rows = "".join(f"| {m} | {r['r2']:.3f} | {r['kendall_tau']:.3f} |\n" for m, r in study["methods"].items())
    return (f"## Accuracy prediction on one architecture\n\nThe largest architecture NFN reads in the training split, "
            f"`{study['arch']}` ({study['n_train']} training / {study['n_val']} validation / {study['n_test']} test "
            f"models; tasks {', '.join(study['tasks'])}): predictors of `{study['target']}` fit on its training "
            f"models, scored on its test models. nfn-hnp / nfn-np: Neural Functional Networks (Zhou et al. 2023) "
            f"trained supervised; probegen: ProbeGen (Kahana et al. 2025), the models' outputs on 64 probes made by "
            f"a learned deep linear generator, read by an MLP, trained supervised (free probes: the probes learned "
            f"directly); `+ ridge`: a ridge probe on the method's vectors; peace aux head: the encoder's "
            f"own metric head, not refit.\n\n| predictor | R2 | Kendall tau |\n|---|---|---|\n{rows}\n")


def transfer_markdown(transfer: dict | None) -> str:
    """The transfer-learning and zero-shot table of the report (empty when the study was skipped)."""
    if not transfer:
        return ""
    skipped = "".join(f"- {t} skipped: {why}\n" for t, why in transfer["skipped"].items())
    if not transfer["tasks"]:
        return f"## Transfer learning\n\nNo held-out task could be studied.\n{skipped}\n"
    c = transfer["config"]
    budgets = transfer.get("budgets") or {c["epochs"]: transfer["methods"]}
    tables = ""
    for b, methods in sorted(budgets.items(), key=lambda kv: int(kv[0])):
        tables += f"### {b} epochs of fine-tuning\n\n{markdown_table(pd.DataFrame(methods).T)}\n"
    return (f"## Transfer learning\n\nHeld-out tasks {', '.join(transfer['tasks'])}: for {c['queries']} query models "
            f"per task, each method's top {c['k']} compatible training models (and {c['k']} random ones) were "
            f"fine-tuned for {c['epochs']} epochs (Adam, lr {c['lr']}), read at each budget below. final_val_acc: "
            f"after the budget; step_ratio_vs_random: steps until the target accuracy (quantile {c['target']} of "
            f"every candidate's accuracy at that budget) over random's (lower is better); reached_target: share of "
            f"picks that reach it; zero_shot_spearman: rank correlation of a model's mean similarity to the task's "
            f"models with its fine-tuned accuracy ({c['pool']} random compatible models); picked_epoch / "
            f"picked_own_acc: the training epoch of the picks and their accuracy on their own task.\n\n"
            f"{tables}{skipped}\n")
