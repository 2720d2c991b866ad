"""Positive views, hard negatives and the InfoNCE loss."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MODELS, random_model

from peace.core.errors import PeaceError
from peace.learn.contrastive import (
    AugmentConfig,
    Kinship,
    PairSampler,
    augment,
    build_views,
    config_key,
    functional_neighbours,
    functional_targets,
    info_nce,
    magnitude_prune,
    nce_logits,
    task_targets,
)
from peace.nets.architectures import forward, stack_params
from peace.nets.renaming import relabel_classes


def _out(spec, params, X):
    return forward(spec, {k: v.unsqueeze(0) for k, v in params.items()}, X)[0]


@pytest.mark.parametrize("case", [0, 1, 3, 5])
def test_symmetry_augmentations_preserve_the_function_noise_and_erasing_do_not(case):
    task, spec, params = random_model(*MODELS[case], seed=case)
    X = torch.from_numpy(task.X_test[:64]).reshape(-1, *spec.input_shape)
    exact = augment(spec, params, 3, AugmentConfig(noise=0.0, erase=0.0))
    assert torch.allclose(_out(spec, exact, X), _out(spec, params, X), atol=1e-4)
    assert any(not torch.equal(exact[k], params[k]) for k in params)  # the weights did move
    noisy = augment(spec, params, 3, AugmentConfig(noise=0.1, erase=0.3))
    assert not torch.allclose(_out(spec, noisy, X), _out(spec, params, X), atol=1e-3)
    zeros = sum(int((noisy[n.weight_name] == 0).sum()) for n in spec.layers)
    total = sum(noisy[n.weight_name].numel() for n in spec.layers)
    assert 0.15 < zeros / total < 0.45
    assert all(torch.equal(a, b) for a, b in zip(augment(spec, params, 3, AugmentConfig()).values(),
                                                 augment(spec, params, 3, AugmentConfig()).values()))  # seeded


def test_magnitude_prune_zeroes_the_smallest_weights():
    _, spec, params = random_model(*MODELS[1])
    pop = stack_params([params, params])
    pruned = magnitude_prune(spec, pop, 0.4)
    w = torch.cat([pruned[layer.weight_name][0].flatten() for layer in spec.layers])
    orig = torch.cat([params[layer.weight_name].flatten() for layer in spec.layers])
    kept = w != 0
    assert abs((~kept).float().mean().item() - 0.4) < 0.05
    assert orig[kept].abs().min() >= orig[~kept].abs().max()
    assert torch.equal(pruned[spec.layers[0].bias_name], pop[spec.layers[0].bias_name])


def test_info_nce_matches_the_textbook_formula_and_masks_relatives():
    g = torch.Generator().manual_seed(0)
    u, v = F.normalize(torch.randn(4, 8, generator=g), dim=1), F.normalize(torch.randn(4, 8, generator=g), dim=1)
    tau = 0.5
    z = torch.cat([u, v])
    expected = 0.0
    for i in range(8):
        pos = (i + 4) % 8
        logits = torch.stack([z[i] @ z[j] / tau for j in range(8) if j != i])
        expected += -(z[i] @ z[pos] / tau - torch.logsumexp(logits, 0))
    assert torch.isclose(info_nce(u, v, tau), expected / 8, atol=1e-5)
    everyone_related = torch.ones(4, 4, dtype=torch.bool)
    assert info_nce(u, v, tau, same=everyone_related).abs() < 1e-6  # only the positive is left
    extra = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    assert info_nce(u, v, tau, extra=extra) > info_nce(u, v, tau)  # more negatives, harder
    assert torch.isclose(info_nce(u, v, tau, extra=extra, extra_same=torch.ones(4, 3, dtype=torch.bool)),
                         info_nce(u, v, tau), atol=1e-6)


def test_soft_info_nce_with_one_hot_targets_is_the_plain_loss_and_follows_its_targets():
    g = torch.Generator().manual_seed(1)
    u, v = F.normalize(torch.randn(5, 8, generator=g), dim=1), F.normalize(torch.randn(5, 8, generator=g), dim=1)
    extra = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    onehot = torch.zeros(10, 13)
    onehot[torch.arange(10), (torch.arange(10) + 5) % 10] = 1.0
    assert torch.isclose(info_nce(u, v, 0.2, extra=extra, targets=onehot), info_nce(u, v, 0.2, extra=extra), atol=1e-6)
    # soft targets: cross-entropy against the distribution, by hand
    t = torch.softmax(torch.randn(10, 13, generator=g), 1)
    t[torch.arange(10), torch.arange(10)] = 0.0  # a view is never its own target
    t = t / t.sum(1, keepdim=True)
    logp = nce_logits(u, v, 0.2, extra=extra).log_softmax(1)
    expected = -(t * torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)).sum(1).mean()
    assert torch.isclose(info_nce(u, v, 0.2, extra=extra, targets=t), expected, atol=1e-6)


def test_functional_targets_grade_candidates_by_agreement_within_their_io_space():
    B = 3
    agree = torch.tensor([[1.0, 0.2, 0.9, 0.95, 0.1, 0.8, 0.99],
                          [0.2, 1.0, 0.3, 0.2, 0.97, 0.3, 0.5],
                          [0.9, 0.3, 1.0, 0.85, 0.3, 0.96, 0.2],
                          [0.95, 0.2, 0.85, 1.0, 0.1, 0.8, 0.9],
                          [0.1, 0.97, 0.3, 0.1, 1.0, 0.3, 0.5],
                          [0.8, 0.3, 0.96, 0.8, 0.3, 1.0, 0.2]])
    space = torch.ones(2 * B, 2 * B + 1, dtype=torch.bool)
    space[:, 6] = torch.tensor([True, False, True, True, False, True])
    assert torch.equal(functional_targets(agree, space, 0.0, 0.05).argmax(1), (torch.arange(6) + B) % 6)
    t = functional_targets(agree, space, 1.0, 0.05)
    assert torch.allclose(t.sum(1), torch.ones(6)) and (t.diagonal() == 0).all()
    assert t[0, 6] > t[0, 3] > t[0, 2] > t[0, 5] > t[0, 1]  # ordered by agreement
    assert t[1, 6] == 0  # another io-space gets nothing
    half = functional_targets(agree, space, 0.5, 0.05)
    assert torch.allclose(half, 0.5 * t + 0.5 * functional_targets(agree, space, 0.0, 0.05))


def test_task_targets_move_a_share_evenly_to_the_views_of_the_same_task():
    B = 2  # views: a0 a1 | p0 p1 | one extra candidate
    tasks = ["x", "y", "x", "z", "y"]
    same = torch.tensor([[a == b for b in tasks] for a in tasks[:2 * B]])
    base = torch.full((2 * B, 2 * B + 1), 0.2)
    t = task_targets(base, same, 0.5)
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[0, 2] == 0.1 + 0.5 and t[0, 1] == t[0, 3] == 0.1  # a0's only other x view is its positive
    assert torch.allclose(t[1, 4], torch.tensor(0.1 + 0.25)) and torch.allclose(t[1, 3], torch.tensor(0.1 + 0.25))
    assert t[1, 1] == 0.1  # itself excluded: the base share only
    assert torch.equal(task_targets(base, same, 0.0), base)


def test_functional_neighbours_agree_most_and_come_from_other_runs(tiny_zoo):
    from peace.nets.probes import agreement, io_space, responses

    rows = tiny_zoo.manifest.reset_index(drop=True)
    specs = [tiny_zoo.spec(m) for m in rows.model_id]
    resp = responses(specs, tiny_zoo.load_many(list(rows.model_id)), 64)
    spaces = [io_space(s) for s in specs]
    nb = functional_neighbours(rows, resp, spaces, k=3)
    i_of = {m: i for i, m in enumerate(rows.model_id)}
    for m, others in nb.items():
        i = i_of[m]
        assert len(others) <= 3 and all(rows.run_id[i_of[o]] != rows.run_id[i] for o in others)
        assert all(spaces[i_of[o]] == spaces[i] for o in others)
        rest = [agreement(resp[i], resp[j]) for j in range(len(rows))
                if spaces[j] == spaces[i] and rows.run_id[j] != rows.run_id[i] and rows.model_id[j] not in others]
        if others and rest:
            assert min(agreement(resp[i], resp[i_of[o]]) for o in others) >= max(rest) - 1e-6
    assert functional_neighbours(rows, resp, spaces, k=3, block=5) == nb  # blockwise: the same, ties included
    for m, others in nb.items():  # ties go to the earlier row, as a stable sort would
        i = i_of[m]
        same = [j for j in range(len(rows)) if spaces[j] == spaces[i] and rows.run_id[j] != rows.run_id[i]]
        ranked = sorted(same, key=lambda j: (-round(agreement(resp[i], resp[j]) * 64), j))
        assert others == [rows.model_id[j] for j in ranked[:3]]
    sampler = PairSampler(rows, AugmentConfig(functional=True, same_config=False, checkpoint=False, pruned=False,
                                              distilled=False), {}, nb)
    assert any(set(sampler.candidates(m)) == {"self", "functional"} for m in rows.model_id)


@pytest.mark.parametrize("case", [0, 1, 3])
def test_relabelled_copies_keep_the_weights_but_never_a_prediction(case):
    from peace.nets.probes import agreement, responses

    _, spec, params = random_model(*MODELS[case], seed=case)
    moved = relabel_classes(spec, params, np.random.default_rng(case))
    last = spec.layers[-1]
    assert all(torch.equal(moved[k], params[k]) for k in params if not k.startswith(f"layers.{last.index}."))
    assert sorted(moved[last.weight_name].sum(1).tolist()) == pytest.approx(sorted(params[last.weight_name].sum(1).tolist()))
    a, b = responses([spec, spec], [params, moved], 128)
    assert agreement(a, b) == 0.0  # a derangement of the classes changes every prediction


def test_views_are_trained_cached_and_distilled_students_imitate(tiny_zoo, tmp_path, monkeypatch):
    rows = tiny_zoo.manifest[tiny_zoo.manifest.task == "synth-1"].reset_index(drop=True)
    weights = dict(zip(rows.model_id, tiny_zoo.load_many(list(rows.model_id))))
    cfg = AugmentConfig(distill_epochs=30, prune_fraction=0.5)
    views = build_views(rows, weights, cfg, seed=0, cache_dir=tmp_path)
    assert set(views) == set(rows.model_id) and all(set(v) == {"pruned", "distilled"} for v in views.values())
    m = rows.model_id[rows.epoch.idxmax()]
    spec, task = tiny_zoo.spec(m), tiny_zoo.task(m)
    X = torch.from_numpy(task.X_test).reshape(-1, *spec.input_shape)
    teacher, student = _out(spec, weights[m], X).argmax(1), _out(spec, views[m]["distilled"], X).argmax(1)
    assert (teacher == student).float().mean() > 0.7
    assert not torch.equal(views[m]["pruned"]["layers.0.weight"], weights[m]["layers.0.weight"])
    # a second call reads the cache: nothing is trained again
    monkeypatch.setattr("peace.learn.contrastive._make_views", lambda *a, **k: pytest.fail("views were rebuilt"))
    again = build_views(rows, weights, cfg, seed=0, cache_dir=tmp_path)
    assert torch.equal(again[m]["distilled"]["layers.0.weight"], views[m]["distilled"]["layers.0.weight"])


def test_partners_and_hard_negatives_follow_their_definitions(tiny_zoo):
    rows = tiny_zoo.manifest.reset_index(drop=True)
    sampler = PairSampler(rows, AugmentConfig(hard_negatives=6), views={})
    key = config_key(rows.set_index("model_id"))
    r = rows.set_index("model_id")
    rng = np.random.default_rng(0)
    seen = set()
    for m in rows.model_id:
        cands = sampler.candidates(m)
        for o in cands.get("same_config", []):
            assert key[o] == key[m] and r.run_id[o] != r.run_id[m] and r.epoch[o] == r.epoch[m]
        for o in cands.get("checkpoint", []):
            assert r.run_id[o] == r.run_id[m] and o != m
        seen |= set(cands)
        source, partner = sampler.partner(m, rng)
        assert partner in cands[source]
    assert {"self", "same_config", "checkpoint"} <= seen
    anchors = list(rows.model_id[:10])
    negs = sampler.hard_negatives(anchors, rng)
    assert 0 < len(negs) <= 6
    for n in negs:  # each negative is hard for some anchor
        assert any((r.arch[n] == r.arch[a] and r.task[n] != r.task[a])
                   or (r.task[n] == r.task[a] and abs(r.test_acc[n] - r.test_acc[a]) >= 0.25) for a in anchors)
    kin = Kinship(rows)
    rel = kin.related(list(rows.model_id), list(rows.model_id))
    assert rel.diagonal().all()
    for i, j in zip(*np.nonzero(rel)):
        a, b = rows.iloc[i], rows.iloc[j]
        assert a.run_id == b.run_id or (key[a.model_id] == key[b.model_id] and a.epoch == b.epoch)
    same_cfg_other_epoch = [(i, j) for i in range(len(rows)) for j in range(len(rows))
                            if key[rows.model_id[i]] == key[rows.model_id[j]] and rows.epoch[i] != rows.epoch[j]
                            and rows.run_id[i] != rows.run_id[j]]
    assert same_cfg_other_epoch and not any(rel[i, j] for i, j in same_cfg_other_epoch)  # those stay negatives
    off = PairSampler(rows, AugmentConfig(same_config=False, checkpoint=False, pruned=False, distilled=False), {})
    assert all(set(off.candidates(m)) == {"self"} for m in rows.model_id)


def test_bad_augment_configs():
    with pytest.raises(PeaceError, match="erase"):
        AugmentConfig(erase=1.5)
    with pytest.raises(PeaceError, match="distill_epochs"):
        AugmentConfig(distill_epochs=0)


def test_models_of_unknown_recipe_are_each_a_configuration_of_their_own_and_a_zoo_of_them_trains(tiny_zoo, tmp_path):
    """Models added with `peace zoo add` have no init, lr or optimizer: none is another's same-configuration
    partner (they share only what is unknown), their key has no missing piece (pandas 3 keeps None missing
    through astype(str), which broke the concatenation), and an encoder trains on a zoo of them."""
    from conftest import QUICK

    from peace.intake.model import ImportedModel
    from peace.learn.runconfig import load_config
    from peace.learn.trainer import fit
    from peace.zoo.imported import add_models
    from peace.zoo.store import Zoo

    rows = tiny_zoo.manifest.query("family == 'mlp' and status == 'ok' and epoch == epochs")
    zoo = tmp_path / "mine"
    for i, (task, g) in enumerate(rows[rows["task"].isin(["synth-1", "tetris"])].groupby("task")):
        models = [ImportedModel(tiny_zoo.spec(m), tiny_zoo.weights(m), m) for m in g["model_id"]]
        add_models(zoo, models, task=task, new=i == 0)
    mine = Zoo(zoo).manifest
    key = config_key(mine)
    assert key.notna().all() and key.is_unique and mine["init"].isna().all()
    known = config_key(tiny_zoo.manifest)
    assert not known.is_unique and not known.str.startswith("run ").any()  # the zoo's own seeds still share theirs
    res = fit(zoo, load_config("tiny", [*QUICK, "train.holdout_tasks=0"]), tmp_path / "run", progress=False)
    assert res.best_epoch >= 1 and np.isfinite(res.best_val_map) and res.relevance == "task"
    named = tmp_path / "named"  # tasks by name only (config.json metadata): no accuracy measured, nothing to regress
    every = tiny_zoo.manifest.query("family == 'mlp' and status == 'ok' and epoch > 0").drop_duplicates("checksum")
    for i, (task, g) in enumerate(every[every["task"].isin(["synth-1", "tetris"])].groupby("task")):
        models = [ImportedModel(tiny_zoo.spec(m), tiny_zoo.weights(m), m) for m in g["model_id"]]
        add_models(named, models, metadata={"task": f"mine-{task}"}, new=i == 0)
    assert Zoo(named).manifest["test_acc"].isna().all()
    res = fit(named, load_config("tiny", [*QUICK, "train.holdout_tasks=0"]), tmp_path / "run-named", progress=False)
    assert np.isfinite(res.history[["train_loss", "train_nce", "train_aux"]].to_numpy()).all()  # were NaN
    from peace.orchestrate.evaluation import evaluate, summary_table

    metrics = evaluate(res.path, tmp_path / "ev", progress=False, transfer=None, accuracy=None, probegen=0)
    table = summary_table(metrics)  # no accuracy, learning rate or epoch to probe: left out, not a traceback
    assert np.isfinite(table.loc["peace", "task mAP"]) and np.isnan(table.loc["peace", "R2 test_acc"])
    assert not {"test_acc", "log10_lr", "epoch"} & set(metrics["methods"]["peace"]["probes"])
    one = rows[rows["task"] == "synth-1"]["model_id"]  # one task: validated by lineage, which such models lack
    add_models(tmp_path / "one", [ImportedModel(tiny_zoo.spec(m), tiny_zoo.weights(m), m) for m in one], new=True)
    with pytest.raises(PeaceError, match="a lineage of its own .*peace embed --zoo Z --run R"):
        fit(tmp_path / "one", load_config("tiny", [*QUICK, "train.holdout_tasks=0", "train.batch_size=2"]),
            tmp_path / "run1", progress=False)
