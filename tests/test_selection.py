"""Model selection on tasks nobody labelled: the within-task ranking score, the confidence and the
consensus signals."""
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_model

from peace.core.errors import PeaceError
from peace.evaluate.metrics import within_group_tau
from peace.evaluate.selection import agreement_scores, confidence, consensus, written_score
from peace.nets.symmetry import random_symmetry


def test_within_group_tau_scores_the_order_inside_each_task_only():
    y = [0.1, 0.2, 0.3, 0.9, 0.8, 0.7]
    groups = ["a", "a", "a", "b", "b", "b"]
    assert within_group_tau(y, y, groups) == pytest.approx(1.0)
    # task a ordered right, task b reversed: the mean of +1 and -1
    assert within_group_tau(y, [1, 2, 3, 1, 2, 3], groups) == pytest.approx(0.0)
    # a prediction that only tells the tasks apart (b's models all above a's) orders nothing inside them
    assert within_group_tau(y, [0, 0, 0, 5, 5, 5], groups) == pytest.approx(0.0)
    # ... though pooled over both tasks it would look good: why the score is within tasks
    from scipy.stats import kendalltau
    assert kendalltau(y, [0, 0, 0, 5, 5, 5]).statistic > 0.6
    assert within_group_tau(y + [0.5, 0.4], [*y, 9, 0], [*groups, "c", "c"]) == pytest.approx(1.0)  # c: too few
    assert np.isnan(within_group_tau([1, 2], [1, 2], ["a", "b"]))


def test_confidence_reads_inputs_not_labels():
    task, spec, params = random_model("digits", dict(family="mlp", hidden=(8,), activation="relu"))
    sharp = {k: v * (3.0 if k.startswith("layers.1.") else 1.0) for k, v in params.items()}  # larger logits
    got = confidence([spec, spec, spec], [params, sharp, params], ["digits"] * 3)
    assert got.shape == (3,) and np.all((got > 1 / task.n_classes) & (got <= 1))
    assert got[1] > got[0] and got[0] == got[2]
    x = torch.as_tensor(task.X_test, dtype=torch.float32)
    with torch.no_grad():
        from peace.nets.architectures import forward
        ref = forward(spec, {k: v[None] for k, v in params.items()}, x)[0].softmax(-1).amax(-1).mean()
    assert got[0] == pytest.approx(float(ref), rel=1e-5)


def _voters(accuracies, n_inputs=2000, n_classes=10, seed=0):
    """Predicted classes of models that are right on a random share ``accuracy`` of the inputs and wrong
    at random otherwise: independent errors, the case the consensus signals assume."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n_inputs)
    out = []
    for a in accuracies:
        wrong = (truth + rng.integers(1, n_classes, n_inputs)) % n_classes
        out.append(np.where(rng.random(n_inputs) < a, truth, wrong))
    return np.stack(out), truth


@pytest.mark.parametrize("how", ["centrality", "majority", "spectral"])
def test_agreement_scores_rank_independent_voters_by_their_unseen_accuracy(how):
    acc = [0.15, 0.25, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9]
    P, _ = _voters(acc[::-1])  # the order given must not matter
    s = agreement_scores(P, how)
    assert list(np.argsort(-s)) == list(range(len(acc)))  # the most accurate first, exactly
    constant = np.vstack([P, np.zeros((1, P.shape[1]), int)])  # a model stuck on one class agrees with few
    assert agreement_scores(constant, how)[-1] < np.median(agreement_scores(constant, how))
    with pytest.raises(PeaceError, match="shape"):
        agreement_scores(P[0], how)


def test_two_models_that_err_alike_do_not_outrank_accurate_ones():
    """Two poor models that copy each other's mistakes back each other up; neither score lets them pass an
    accurate model."""
    P, truth = _voters([0.9, 0.85, 0.8, 0.75, 0.7, 0.2, 0.2])
    P[6] = P[5]
    for how in ("centrality", "majority", "spectral"):
        s = agreement_scores(P, how)
        assert s[:5].min() > s[5:].max(), how
    with pytest.raises(PeaceError, match="unknown agreement score"):
        agreement_scores(P, "vote")


def test_consensus_scores_inside_each_task_and_ignores_symmetries():
    task, spec, base = random_model("digits", dict(family="mlp", hidden=(16,), activation="relu"))
    rng = torch.Generator().manual_seed(0)
    noisy = [{k: v + s * torch.randn(v.shape, generator=rng) for k, v in base.items()} for s in (0.02, 0.04, 0.06, 3.0)]
    crowd = [base, *noisy]  # the first four stay near one function, the last is far from them
    scorers = {inputs: lambda specs, params, tasks, inputs=inputs: consensus(specs, params, tasks, inputs)
               for inputs in ("probes", "data")} | {"written": written_score}
    for name, score in scorers.items():
        s = score([spec] * 5, crowd, ["digits"] * 5)
        assert s.argmin() == 4, name
        # another task's models do not change a task's scores; a permuted, rescaled copy scores the same
        other_task, other_spec, other = random_model("wine", dict(family="mlp", hidden=(4,), activation="relu"))
        both = score([spec] * 5 + [other_spec] * 3, crowd + [other] * 3, ["digits"] * 5 + ["wine"] * 3)
        np.testing.assert_allclose(both[:5], s)
        moved = score([spec] * 5, [random_symmetry(spec, base, seed=3), *noisy], ["digits"] * 5)
        np.testing.assert_allclose(moved, s, atol=1e-12 if name != "written" else 1e-6)  # float32 probabilities
    own = torch.as_tensor(task.X_test)  # the user's own unlabelled inputs, here the task's: the same scores
    np.testing.assert_allclose(consensus([spec] * 5, crowd, ["mine"] * 5, own), consensus([spec] * 5, crowd, ["digits"] * 5))
    with pytest.raises(PeaceError, match="'data'.*'probes'.*written_score"):
        consensus([spec], [base], ["digits"], "labels")


def test_inverted_inputs_are_written_from_the_weights_alone(monkeypatch):
    """Inputs that the more central models answer with the class assigned to each, moved from Gaussian starts
    that are not the probes; no task data is read (weights only), and a model of another architecture reading
    the same space joins in."""
    import peace.evaluate.selection as selection
    from peace.nets.architectures import predict
    from peace.nets.probes import probe_inputs

    task, spec, base = random_model("digits", dict(family="mlp", hidden=(16,), activation="relu"))
    _, cnn, cnn_params = random_model("digits", dict(family="cnn2d", hidden=(4,), activation="relu"))
    rng = torch.Generator().manual_seed(0)
    crowd = [{k: v + s * torch.randn(v.shape, generator=rng) for k, v in base.items()} for s in (0.0, 0.02, 0.04, 3.0)]
    monkeypatch.setattr(selection, "load_task", lambda name: pytest.fail(f"read task {name!r}'s data"))
    specs, params = [spec] * 4 + [cnn], [*crowd, cnn_params]
    x = selection.inverted_inputs(specs, params, np.array([0.9, 0.8, 0.7, 0.1, 0.2]), n=40)
    assert x.shape == (40, 64) and torch.isfinite(x).all()
    starts = probe_inputs(spec.input_shape, 80)[40:].float().flatten(1)
    assert not torch.equal(x, starts) and x.pow(2).mean() < 4  # moved, and kept near the probes' scale by the decay
    wanted = torch.arange(40) % task.n_classes
    answers = predict(spec, crowd[:2], x).argmax(-1)  # two of the writers (the top half of five is two)
    assert (answers == wanted).float().mean() > 0.7  # 0.1 by chance
    assert (predict(spec, crowd[:2], starts).argmax(-1) == wanted).float().mean() < 0.5  # the starts are not written
    capped = selection.inverted_inputs(specs, params, np.array([0.9, 0.8, 0.7, 0.1, 0.2]), n=40, writers=1)
    assert torch.equal(capped, x)  # at least two write, whatever the cap
    two_writers = selection.inverted_inputs(specs[:3] * 2, params[:3] * 2, np.arange(6.0), n=40, writers=2)
    assert not torch.equal(two_writers, selection.inverted_inputs(specs[:3] * 2, params[:3] * 2, np.arange(6.0), n=40))
    s = written_score(specs, params, ["new"] * 5)  # any grouping: no task is looked up
    assert s.shape == (5,) and s[3] < s[:3].min()
    huge = {k: v * 1e30 for k, v in base.items()}  # finite weights whose logits overflow: inputs stay finite
    x = selection.inverted_inputs([spec] * 3, [huge, *crowd[:2]], np.array([1.0, 0.0, 0.0]), n=8)
    assert torch.isfinite(x).all()
    s = written_score([spec] * 5, [huge, *crowd], ["new"] * 5)  # its probabilities are their limit (one-hot), not NaN
    assert np.isfinite(s).all() and s[4] < s[:4].min()


def test_the_written_score_reads_the_written_classes_not_mere_sharpness():
    """A model sharp everywhere (huge random weights) gains nothing: what counts is the probability of the class
    each written input was written for. Of two models that answer alike, the sharper (its output layer scaled)
    gives those classes more probability."""
    from peace.evaluate.selection import written_classes

    _, spec, base = random_model("digits", dict(family="mlp", hidden=(16,), activation="relu"))
    rng = torch.Generator().manual_seed(1)
    crowd = [{k: v + s * torch.randn(v.shape, generator=rng) for k, v in base.items()} for s in (0.02, 0.04)]
    loud = {k: 30 * torch.randn(v.shape, generator=rng) for k, v in base.items()}  # near one-hot answers, at random
    sharp = {k: v * (3.0 if k.startswith("layers.1.") else 1.0) for k, v in base.items()}
    models = [base, sharp, *crowd, loud]
    x = torch.randn(200, 64, generator=rng)
    with torch.no_grad():
        from peace.nets.architectures import predict
        assert predict(spec, [loud], x).softmax(-1).amax(-1).mean() > predict(spec, [base], x).softmax(-1).amax(-1).mean()
    for rounds in (1, 2):
        s = written_score([spec] * 5, models, ["digits"] * 5, rounds)
        assert s[1] > s[0] and s.argmin() == 4 and np.all((s > 0) & (s < 1)), rounds
    probed = consensus([spec] * 5, models, ["x"] * 5, "probes")
    np.testing.assert_array_equal(written_score([spec] * 5, models, ["x"] * 5, probed=probed),
                                  written_score([spec] * 5, models, ["x"] * 5))
    assert written_classes(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(PeaceError, match="at least one round"):
        written_score([spec] * 5, models, ["x"] * 5, rounds=0)


def test_peace_rank_orders_a_tasks_models_without_labels(tiny_zoo, tmp_path):
    from conftest import run_peace

    from peace.orchestrate.selection import rank_models
    from peace.zoo.tasks import load_task

    chosen = "task == 'synth-1'"
    p = run_peace("rank", "--zoo", tiny_zoo.path, "--models", chosen, "--top", 5, "--csv", tmp_path / "r.csv")
    table = pd.read_csv(tmp_path / "r.csv")
    ids = set(tiny_zoo.manifest.query(chosen).index)
    assert set(table["model_id"]) == ids and list(table["rank"]) == list(range(1, len(ids) + 1))
    assert table["score"].is_monotonic_decreasing and "inputs written by the better models" in p.stdout
    assert "(weights only" in p.stdout and "Kendall tau between the two" in p.stdout
    assert p.stdout.count(" synth-1 ") == 5  # --top 5 rows
    quick = run_peace("rank", "--zoo", tiny_zoo.path, "--models", chosen, "--probes", "--csv", tmp_path / "q.csv")
    assert "consensus on Gaussian probe inputs (weights only" in quick.stdout
    assert set(pd.read_csv(tmp_path / "q.csv")["model_id"]) == ids
    np.save(tmp_path / "x.npy", load_task("synth-1").X_test)  # the user's own inputs, here the task's
    own, read = rank_models(tiny_zoo, chosen, inputs=tmp_path / "x.npy")
    assert own.equals(rank_models(tiny_zoo, chosen, task="synth-1")[0]) and "unlabelled inputs of" in read
    mixed, _ = rank_models(tiny_zoo, "task == 'digits'", task="digits")  # CNNs, ResNets and ViTs read one space
    assert set(mixed["arch"].str.split().str[0]) == {"cnn2d", "resnet", "vit"}


def test_bad_ranking_requests_get_one_line_and_touch_no_file(tiny_zoo, tmp_path, capsys):
    from peace.cli import main

    x = tmp_path / "x.npy"
    np.save(x, np.zeros((10, 16), np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))  # a pickle inside: never unpickled
    np.save(tmp_path / "nan.npy", np.full((4, 16), np.nan))
    np.save(tmp_path / "shape.npy", np.zeros((4, 7)))
    (tmp_path / "kept.csv").write_text("the user's file\n")
    ok = ["--zoo", str(tiny_zoo.path), "--models", "task == 'synth-1'"]
    cases = [
        (ok + ["--inputs", str(x), "--task", "synth-1"], "not both"),
        (["--zoo", str(tiny_zoo.path), "--models", "task == 'synth-1' or task == 'digits'"], "2 input -> class spaces"),
        (["--zoo", str(tiny_zoo.path), "--models", "task == 'nothing'"], "picks 0 usable models"),
        (["--zoo", str(tiny_zoo.path), "--models", "task =="], "neither model ids"),
        (ok + ["--inputs", str(tmp_path / "objects.npy")], "not a readable .npy array of numbers"),
        (ok + ["--inputs", str(tmp_path / "missing.npy")], "not a readable .npy array of numbers"),
        (ok + ["--inputs", str(tmp_path / "nan.npy")], "NaN or infinite"),
        (ok + ["--inputs", str(tmp_path / "shape.npy")], r"shape \(4, 7\).*16 features"),
        (ok + ["--task", "digits"], "task 'digits' has inputs"),
        (ok + ["--task", "no-such-task"], "unknown task"),
        (ok + ["--csv", str(tmp_path / "kept.csv")], "exists; name a new file"),
        (ok + ["--task", "synth-1", "--probes"], "drop --probes"),
    ]
    for args, message in cases:
        assert main(["rank", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("peace: error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert (tmp_path / "kept.csv").read_text() == "the user's file\n"


def test_peace_rank_reads_model_files_in_the_isolated_reader(tmp_path):
    from conftest import run_peace
    from torch import nn

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict()
    files = []
    for i, noise in enumerate((0.01, 0.02, 0.03, 3.0)):  # three near one function, one far from it
        torch.save({k: v + noise * torch.randn(v.shape) for k, v in base.items()}, tmp_path / f"m{i}.pt")
        files.append(tmp_path / f"m{i}.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32))
    p = run_peace("rank", *files, "--activation", "relu", "--inputs", tmp_path / "x.npy", "--csv", tmp_path / "r.csv")
    table = pd.read_csv(tmp_path / "r.csv")
    assert "4 models ranked by consensus on 300 unlabelled inputs" in p.stdout
    assert table["model_id"].iloc[-1].endswith("m3.pt") and set(table["arch"]) == {"mlp 64-32-10 relu"}
    torch.save(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).state_dict(), tmp_path / "other.pt")
    bad = run_peace("rank", *files[:2], tmp_path / "other.pt", "--activation", "relu", check=False)
    assert bad.returncode == 2 and "2 input -> class spaces" in bad.stderr
    both = run_peace("rank", *files, "--zoo", tmp_path, "--models", "x", check=False)
    assert both.returncode == 2 and "one of the two" in both.stderr


def test_rank_notes_fine_tunes_of_another_tasks_models_when_it_reads_only_weights(tiny_zoo):
    """The tiny zoo's synth-2 models are fine-tunes of synth-1 models: from the weights alone `peace rank` says
    so (and how to rank them on data); on the task's data, or for a task of fresh models, it says nothing."""
    from conftest import run_peace

    from peace.orchestrate.selection import parent_tasks

    m = tiny_zoo.manifest
    tuned = list(m[(m["task"] == "synth-2") & m["parent_id"].notna()].index)
    assert tuned and parent_tasks(tiny_zoo, tuned) == {"synth-1": len(tuned)}
    assert parent_tasks(tiny_zoo, list(m[m["task"] == "tetris"].index)) == {}
    weights = run_peace("rank", "--zoo", tiny_zoo.path, "--models", "task == 'synth-2'", "--probes")
    assert f"note: {len(tuned)} of these models were fine-tuned from models of 'synth-1'" in weights.stdout
    data = run_peace("rank", "--zoo", tiny_zoo.path, "--models", "task == 'synth-2'", "--task", "synth-2")
    fresh = run_peace("rank", "--zoo", tiny_zoo.path, "--models", "task == 'tetris'", "--probes")
    assert "note:" not in data.stdout and "note:" not in fresh.stdout
