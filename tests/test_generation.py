"""The way back from embeddings to weights: aligned forms, the decoder, sampling into a zoo, the study."""
import copy
import dataclasses
import json
import random
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MODELS, kill_when, random_model, run_peace
from safetensors.torch import load_file, save_file

from peace.core.atomic import sha256_file
from peace.core.errors import PeaceError
from peace.learn.decoder import (
    DECODABLE,
    DecoderConfig,
    Pairs,
    WeightDecoder,
    aligned_form,
    fit_decoder,
    flatten,
    head_form,
    head_spec,
    load_decoder,
    models,
    unflatten,
)
from peace.learn.generation import (
    SampleConfig,
    accuracy,
    choose_refinement,
    decoder_groups,
    judge_zoo,
    kde_draws,
    run_decoder,
    sample_models,
    train_decoder,
)
from peace.learn.refine import RefineConfig, SketchFit, sketch_fit
from peace.learn.run import RunDir
from peace.nets.architectures import ArchSpec, evaluate, forward, stack_params
from peace.nets.symmetry import canonicalize, random_symmetry
from peace.orchestrate.generation import (
    GenerativeConfig,
    generative_markdown,
    generative_study,
    resolve_prompt,
    sample_zoo,
)
from peace.zoo.store import Zoo
from peace.zoo.tasks import load_task

QUICK = DecoderConfig(min_models=2, epochs=40, hidden=64, patience=10, families=DECODABLE)


@pytest.mark.parametrize("task,kw", [(t, kw) for t, kw in MODELS if kw["family"] in DECODABLE
                                     and (kw["family"] == "vit" or kw.get("norm", "none") in ("none", "batch"))])
def test_aligned_form_is_the_same_for_every_symmetric_copy(task, kw):
    _, spec, params = random_model(task, kw, seed=1)
    head = head_spec(spec)  # BatchNorm folded: the eval-mode function the embedding describes
    reference = canonicalize(head, head_form(spec, random_model(task, kw, seed=2)[2]))
    want = aligned_form(head, head_form(spec, params), reference)
    for seed in range(3):
        got = aligned_form(head, head_form(spec, random_symmetry(spec, params, seed)), reference)
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=f"{spec.describe()} {k}")
    X = torch.randn(20, *spec.input_shape)
    same = evaluate(spec, stack_params([params]), X, torch.zeros(20, dtype=torch.long), spec.n_classes)["loss"]
    aligned = evaluate(head, stack_params([want]), X.reshape(20, *head.input_shape), torch.zeros(20, dtype=torch.long),
                       spec.n_classes)["loss"]
    assert aligned[0] == pytest.approx(same[0], rel=1e-4)  # the aligned form computes the same function
    written = models(spec, flatten(head, want)[None])[0]  # and written back in the model's own architecture
    assert set(written) == set(params)
    again = evaluate(spec, stack_params([written]), X, torch.zeros(20, dtype=torch.long), spec.n_classes)["loss"]
    assert again[0] == pytest.approx(same[0], rel=1e-4)
    assert all(torch.equal(v, want[k]) for k, v in head_form(spec, written).items())  # folding it gives it back exactly


def _toy(spec: ArchSpec, n: int, seed: int, scale_first: float = 1.0):
    """Embeddings z and weights that are a fixed linear function of z (plus the first tensor scaled)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g)
    mix = torch.randn(6, spec.n_params, generator=torch.Generator().manual_seed(0))
    y = z @ mix
    first = next(iter(spec.param_shapes().values()))
    y[:, :int(np.prod(first))] *= scale_first
    return Pairs(z, y)


def test_decoder_learns_and_its_loss_weighs_every_layer_the_same():
    spec = ArchSpec(input_shape=(5,), n_classes=3, family="mlp", hidden=(4,), activation="relu")
    cfg = DecoderConfig(epochs=150, hidden=64, patience=150, function_weight=0.0)
    dec, history = fit_decoder([spec], [_toy(spec, 200, 1)], [_toy(spec, 50, 2)], cfg)
    assert history[-1]["val_loss"] < 0.1 * history[0]["val_loss"]  # learned, judged on held-out pairs
    z = _toy(spec, 50, 3)
    # layer-wise normalization: scaling one tensor by 1000 leaves the loss of the re-fitted statistics unchanged
    big = [_toy(spec, 200, 1, scale_first=1000.0)]
    dec_big, _ = fit_decoder([spec], big, [_toy(spec, 50, 2, scale_first=1000.0)], cfg)
    big = _toy(spec, 50, 3, scale_first=1000.0)
    with torch.no_grad():
        assert dec_big.loss(big.z, big.y, 0).item() == pytest.approx(dec.loss(z.z, z.y, 0).item(), rel=0.05)
    decoded = dec.decode(z.z[:2], spec)
    assert set(decoded[0]) == set(spec.param_shapes()) and flatten(spec, unflatten(spec, z.y[0])).equal(z.y[0])


def test_the_functional_term_is_zero_exactly_when_the_decoded_models_compute_the_targets():
    spec = ArchSpec(input_shape=(5,), n_classes=3, family="mlp", hidden=(4,), activation="tanh")
    dec = WeightDecoder(6, [spec], DecoderConfig(hidden=16))
    z, x = torch.randn(4, 6), torch.randn(30, 5)
    with torch.no_grad():
        own = forward(spec, stack_params([unflatten(spec, f) for f in dec.flat(z, 0)]), x).softmax(-1)
        assert dec.function_loss(z, x, own, 0).item() == pytest.approx(0.0, abs=1e-5)
        assert dec.function_loss(z, x, own.flip(-1), 0).item() > 1e-3


def test_a_subsample_of_the_inputs_estimates_the_functional_term_without_bias():
    spec = ArchSpec(input_shape=(5,), n_classes=3, family="mlp", hidden=(4,), activation="tanh")
    z, x = torch.randn(4, 6), torch.randn(40, 5)
    pairs = Pairs(z, torch.randn(4, spec.n_params), x, torch.softmax(torch.randn(4, 40, 3), -1))
    every = WeightDecoder(6, [spec], DecoderConfig(hidden=16, function_inputs=0))
    some = WeightDecoder(6, [spec], DecoderConfig(hidden=16, function_inputs=8))
    some.load_state_dict(every.state_dict())
    with torch.no_grad():
        full = pairs.loss(every, 0).item()
        draws = torch.tensor([pairs.loss(some, 0).item() for _ in range(600)])
    assert pairs.loss(every, 0).item() == full and draws.std() > 1e-3  # all inputs: exact; 8 of 40: a new draw each step
    assert draws.mean().item() == pytest.approx(full, rel=0.03)
    with pytest.raises(PeaceError, match="function_inputs"):
        DecoderConfig(function_inputs=-1)


def test_the_functional_term_can_weigh_each_models_own_task_inputs_more():
    """``other_tasks``: a model's own task's inputs count 1, the others' ``other_tasks``; a task none of the
    inputs come from counts every input alike; 1 is the plain mean (no weights at all)."""
    from peace.learn.generation import _input_weights

    inputs = np.array(["a", "a", "b", "b", "b", "c"])
    w = _input_weights(np.array(["a", "b", "z"]), inputs, 0.25)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[0], np.array([1, 1, 0.25, 0.25, 0.25, 0.25]) / 3.0, rtol=1e-6)
    np.testing.assert_allclose(w[2], np.full(6, 1 / 6), rtol=1e-6)
    assert _input_weights(np.array(["a"]), inputs, 1.0) is None
    own = _input_weights(np.array(["a", "b"]), inputs, 0.0)
    assert own[0, 2:].sum() == 0 and own[1, :2].sum() == 0 and own[1, 5] == 0

    spec = ArchSpec(input_shape=(5,), n_classes=3, family="mlp", hidden=(4,), activation="tanh")
    dec = WeightDecoder(6, [spec], DecoderConfig(hidden=16, function_inputs=0))
    z, x = torch.randn(2, 6), torch.randn(6, 5)
    with torch.no_grad():
        probs = forward(spec, stack_params([unflatten(spec, f) for f in dec.flat(z, 0)]), x).softmax(-1)
        wrong = torch.where((own == 0)[..., None], probs.flip(-1), probs)  # right on each model's own task only
        assert dec.function_loss(z, x, wrong, 0, own).item() < 1e-5 < dec.function_loss(z, x, wrong, 0).item()
        y = torch.randn(2, spec.n_params)
        assert Pairs(z, y, x, wrong, own).loss(dec, 0) < Pairs(z, y, x, wrong).loss(dec, 0)
    with pytest.raises(PeaceError, match="other_tasks"):
        DecoderConfig(other_tasks=1.5)


def test_kde_draws_sit_around_the_prompt_and_repeat_with_the_seed():
    z = torch.randn(12, 8) * 0.1 + 5.0
    a, b = kde_draws(z, 500, 1.0, 0, torch.full((8,), 0.01)), kde_draws(z, 500, 1.0, 0, torch.full((8,), 0.01))
    assert a.equal(b) and not a.equal(kde_draws(z, 500, 1.0, 1, torch.full((8,), 0.01)))
    assert (a.mean(0) - z.mean(0)).abs().max() < 0.03 and 0.05 < a.std(0).mean() < 0.3
    one = kde_draws(z[:1], 200, 1.0, 0, torch.full((8,), 0.01))  # one prompt model: the floor is its spread
    assert (one - z[0]).abs().max() < 0.1 and one.std(0).min() > 0.001


@pytest.fixture(scope="module")
def decoded_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with a decoder trained on it."""
    run = tmp_path_factory.mktemp("decoded") / "run"
    shutil.copytree(tiny_run.path, run)
    dec, table = train_decoder(run, QUICK)
    return run, dec, table


def _refining(dec: WeightDecoder) -> WeightDecoder:
    """``dec`` refining every head, whatever its validation chose (the tests of refinement itself)."""
    out = copy.copy(dec)
    out.refines = [True] * len(dec.specs)
    return out


def test_decoder_on_a_run_reconstructs_judged_by_function(decoded_run):
    run, dec, table = decoded_run
    assert {"mlp", "resnet", "vit"} <= {s.family for s in dec.specs}  # every family has an aligned form
    assert all(s.norm != "batch" for s in dec.specs)  # heads write the eval-mode function, BatchNorm folded
    meta = json.loads((run / "decoder.json").read_text())
    assert meta["skipped"] and all("fewer than" in w for w in meta["skipped"].values())
    assert len(table) == meta["models"]["test"] > 0
    for c in ("decoded_acc", "decoded_agreement", "decoded_probe_agreement", "mean_acc", "nearest_agreement"):
        assert table[c].between(0, 1).all(), c
    assert meta["reconstruction"][-1]["family"] == "all" and meta["reconstruction"][-1]["models"] == len(table)
    assert 0 <= meta["reconstruction"][-1]["decoded_kept"] <= 1 and table["heldout_task"].dtype == bool
    loaded, _ = load_decoder(run)
    z = torch.randn(3, loaded.z_mean.shape[0])
    for k, v in loaded.decode(z, dec.specs[0])[0].items():
        torch.testing.assert_close(v, dec.decode(z, dec.specs[0])[0][k])


def test_a_saved_decoder_judges_another_zoos_models_as_it_judged_the_runs_test_split(decoded_run, tiny_zoo):
    run, dec, table = decoded_run
    judged, skipped = judge_zoo(run, tiny_zoo.path, max_models=10**6)
    assert skipped and all(w == "the decoder does not write this architecture" for w in skipped.values())
    assert any("vit" in a for a in skipped) and not any("resnet" in a for a in skipped)
    same = judged.set_index("model_id").loc[table["model_id"]]  # the run's test models, judged from outside
    assert len(judged) > len(table) and same["task"].tolist() == table["task"].tolist()
    for c in ("original_acc", "decoded_acc", "mean_acc", "nearest_acc", "refined_acc"):
        np.testing.assert_allclose(same[c].to_numpy(), table[c].to_numpy(), atol=0.05, err_msg=c)
    held = RunDir(run).splits().set_index("model_id")["heldout_task"]
    assert judged["heldout_task"].dtype == bool and judged.loc[judged["model_id"].map(held).eq(True), "heldout_task"].all()
    assert not judged.loc[judged["model_id"].isin(RunDir(run).splits().query("split == 'train'")["model_id"]),
                          "heldout_task"].any()
    two, _ = judge_zoo(run, tiny_zoo.path, RefineConfig(steps=0), max_models=2)
    assert "refined_acc" not in two and two.groupby("arch").size().max() <= 2
    with pytest.raises(PeaceError, match="models judged per architecture must be >= 1"):
        judge_zoo(run, tiny_zoo.path, max_models=0)


def test_refined_models_compute_more_of_what_their_embeddings_say(decoded_run):
    run, dec, table = decoded_run
    encoder = RunDir(run).load_encoder()
    zoo = Zoo(json.loads((run / "decoder.json").read_text())["zoo"])
    fit = sketch_fit(encoder, RefineConfig(steps=100, lr=0.03))
    spec = next(s for s in dec.specs if fit.reads(s))  # a 4-class space: 16 probes x 4 classes in a 16-number sketch
    ids = [i for i in zoo.manifest.index if head_spec(zoo.spec(i)) == spec][:24]
    z = encoder.embed([spec] * len(ids), zoo.load_many(ids))
    decoded, refined = dec.decode(z, spec), _refining(dec).decode(z, spec, fit)

    def said(models):  # cosine of the models' own function blocks with the embeddings'
        return (fit.target(encoder.embed([spec] * len(models), models)) * fit.target(z)).sum(-1)

    assert said(refined).mean() > max(0.8, said(decoded).mean() + 0.3), (said(decoded), said(refined))
    wide = dataclasses.replace(spec, n_classes=spec.n_classes * 8)  # 8x the answers: too compressed to read back
    flat = torch.randn(2, wide.n_params)
    assert not fit.reads(wide) and torch.equal(fit.refine(wide, flat, z[:2]), flat)
    assert sketch_fit(encoder, RefineConfig(steps=0)) is None
    assert {"refined_acc", "refined_agreement", "refined_probe_agreement"} <= set(table.columns)
    assert "refined_kept" in json.loads((run / "decoder.json").read_text())["reconstruction"][-1]
    encoder.config.function_block = 0
    with pytest.raises(PeaceError, match="no function block.*--refine-steps 0"):
        SketchFit(encoder)
    assert sketch_fit(encoder) is None
    with pytest.raises(PeaceError, match="steps >= 0 and lr"):
        RefineConfig(steps=-1)


def test_refinement_also_starts_from_the_retrieved_training_model_and_keeps_the_closer_sketch(decoded_run, tmp_path):
    run, dec, _ = decoded_run
    dec = _refining(dec)
    encoder = RunDir(run).load_encoder()
    fit = sketch_fit(encoder, RefineConfig(steps=30, lr=0.03))
    i, spec = next((i, s) for i, s in enumerate(dec.specs) if fit.reads(s))
    meta = json.loads((run / "decoder.json").read_text())
    library_z, library_y = getattr(dec, f"memory_z_{i}"), getattr(dec, f"memory_y_{i}")
    assert meta["memory"][i] == len(library_z) == len(library_y) >= 2  # the decoder keeps its training models
    assert dec.retrieve(library_z[[1, 0]], i).equal(library_y[[1, 0]])  # a training embedding retrieves its own model
    jitter = torch.randn(6, library_z.shape[1], generator=torch.Generator().manual_seed(0))
    z = library_z[torch.arange(6) % len(library_z)] + 0.3 * library_z.std(0) * jitter
    with torch.no_grad():
        decoded, scale = dec.flat(z, i), getattr(dec, f"scale_{i}")
    retrieved = dec.retrieve(z, i)
    alone = [fit.refine(spec, start, z, scale) for start in (decoded, retrieved)]
    both = fit.refine(spec, decoded, z, scale, retrieved)
    target, x = fit.target(z), fit.inputs(spec)
    with torch.no_grad():
        sims = torch.stack([fit.similarity(spec, a, target, x) for a in alone])
    want = torch.stack(alone)[sims.argmax(0), torch.arange(len(z))]
    torch.testing.assert_close(both, want, atol=1e-4, rtol=1e-4)  # each row: the start whose sketch ends closer

    def flat(models):
        return torch.stack([flatten(spec, m) for m in models])

    torch.testing.assert_close(flat(dec.decode(z, spec, fit)), both, atol=1e-4, rtol=1e-4)
    only = fit.decoded_only()
    assert not only.config.retrieve and fit.config.retrieve
    torch.testing.assert_close(flat(dec.decode(z, spec, only)), alone[0], atol=1e-4, rtol=1e-4)
    zoo = Zoo(meta["zoo"])
    task = load_task(zoo.manifest.loc[next(m for m in zoo.manifest.index if head_spec(zoo.spec(m)) == spec), "task"])
    sampled = [sample_models(dec, z, spec, task, SampleConfig(n=3, seed=1), f)[0] for f in (fit, only)]
    torch.testing.assert_close(flat(sampled[0]), flat(sampled[1]))  # sampling never starts from a zoo model
    # a decoder saved before it kept its training models (or chose refinement) still loads, and refines from the
    # decoded start alone
    old = tmp_path / "old"
    shutil.copytree(run, old)
    state = {k: v for k, v in load_file(str(old / "decoder.safetensors")).items() if not k.startswith("memory_")}
    save_file(state, str(old / "decoder.safetensors"))
    meta.pop("memory"), meta.pop("refines")
    (old / "decoder.json").write_text(json.dumps({**meta, "weights_sha256": sha256_file(old / "decoder.safetensors")}))
    legacy, _ = load_decoder(old)
    assert legacy.retrieve(z, i) is None
    torch.testing.assert_close(flat(legacy.decode(z, spec, fit)), alone[0], atol=1e-4, rtol=1e-4)


def test_refinement_is_chosen_per_architecture_on_validation_and_saved(decoded_run):
    run, dec, _ = decoded_run
    meta = json.loads((run / "decoder.json").read_text())
    assert meta["refines"] == dec.refines == load_decoder(run)[0].refines and len(dec.refines) == len(dec.specs)
    zoo, groups, _ = decoder_groups(run, QUICK)
    encoder = RunDir(run).load_encoder()
    wrecking = sketch_fit(encoder, RefineConfig(steps=30, lr=5.0))  # steps of 5 spreads: what the models computed is lost
    read = [g for g in groups["val"] if g.ids and wrecking.reads(g.spec)]
    chosen = _refining(dec)
    choose_refinement(chosen, zoo, groups["val"], wrecking)
    assert read and not any(chosen.refines[chosen.index(g.spec)] for g in read)
    assert all(chosen.refines[i] for i, s in enumerate(chosen.specs) if not wrecking.reads(s))
    g = read[0]
    for a, b in zip(chosen.decode(g.z, g.spec, wrecking), dec.decode(g.z, g.spec)):
        assert all(a[k].equal(b[k]) for k in a)  # left as decoded, not refined
    choose_refinement(chosen, zoo, groups["val"], None)  # nothing to refine towards: the default, all
    assert all(chosen.refines)


def test_a_decoder_for_another_encoder_is_refused(decoded_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(decoded_run[0], run)
    meta = json.loads((run / "decoder.json").read_text())
    (run / "decoder.json").write_text(json.dumps({**meta, "encoder_sha256": "0" * 64}))
    with pytest.raises(PeaceError, match="another encoder.*peace decoder --run"):
        run_decoder(run)
    (run / "decoder.json").write_text(json.dumps({**meta, "memory": [10 ** 12] * len(meta["memory"])}))
    with pytest.raises(PeaceError, match="corrupted .*outside 0..max_models.*peace decoder --run"):
        load_decoder(run)  # refused before allocating
    (run / "decoder.json").write_text(json.dumps({**meta, "memory": [n + 1 for n in meta["memory"]]}))
    with pytest.raises(PeaceError, match="does not fit the description.*peace decoder --run"):
        load_decoder(run)
    (run / "decoder.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PeaceError, match="checksum"):
        load_decoder(run)
    shutil.rmtree(run)
    with pytest.raises(PeaceError, match="has no decoder"):
        run_decoder(tmp_path)


def test_prompts_select_one_architecture_and_task(decoded_run):
    zoo = Zoo(json.loads((decoded_run[0] / "decoder.json").read_text())["zoo"])
    with pytest.raises(PeaceError, match="archs .*add --arch"):
        resolve_prompt(zoo, "task == 'synth-1'")
    with pytest.raises(PeaceError, match="neither model ids .*columns: model_id"):
        resolve_prompt(zoo, "task ==")
    with pytest.raises(PeaceError, match="selects no usable model"):
        resolve_prompt(zoo, "test_acc > 2")
    ids = list(zoo.manifest.index[zoo.manifest["arch"] == "mlp 16-4-4 relu"][:3])
    p = resolve_prompt(zoo, " ".join(ids))
    assert p.ids == ids and p.spec.describe() == "mlp 16-4-4 relu"


def _set_refines(run, value: bool) -> None:
    """The saved decoder's per-architecture refinement choice, set for every head."""
    meta = json.loads((run / "decoder.json").read_text())
    (run / "decoder.json").write_text(json.dumps({**meta, "refines": [value] * len(meta["refines"])}))


def test_sample_writes_a_zoo_that_every_command_reads(decoded_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(decoded_run[0], run)
    _set_refines(run, True)
    out = tmp_path / "sampled"
    p = run_peace("sample", "--run", run, "--prompt", "task == 'synth-1' and arch == 'mlp 16-4-4 relu'", "--n", 4,
                  "--candidates", 3, "--rounds", 2, "--refine-steps", 5, "--out", out)
    assert "sampled 4 mlp 16-4-4 relu models for task 'synth-1'" in p.stdout
    assert "note: the decoder learned from no" not in p.stdout  # its training split holds such models
    zoo = Zoo(out)
    m = zoo.manifest
    assert len(m) == 4 and set(m["status"]) == {"sampled"} and set(m["task"]) == {"synth-1"}
    prov = json.loads(m["provenance"].iloc[0])
    assert prov["prompt"].startswith("task == 'synth-1'") and prov["sampling"]["candidates"] == 3
    assert prov["sampling"]["rounds"] == 2 and prov["refinement"]["steps"] == 5
    assert prov["refinement"]["retrieve"] is False  # a sample is refined from its own draw, not a zoo model
    assert m["test_acc"].between(0, 1).all() and not zoo.verify(weights=True)
    again = run_peace("sample", "--run", run, "--prompt", "task == 'synth-1' and arch == 'mlp 16-4-4 relu'",
                      "--out", out, check=False)
    assert again.returncode == 2 and "not empty" in again.stderr and len(Zoo(out)) == 4  # nothing overwritten
    _set_refines(run, False)  # validation left the architecture as decoded: the provenance says so
    plain = run_peace("sample", "--run", run, "--prompt", "task == 'synth-1' and arch == 'mlp 16-4-4 relu'", "--n", 2,
                      "--refine-steps", 5, "--out", tmp_path / "plain")
    assert json.loads(Zoo(tmp_path / "plain").manifest["provenance"].iloc[0])["refinement"] is None, plain.stdout
    info = run_peace("zoo", "info", out, "--verify")
    assert "status: {'sampled': 4}" in info.stdout
    run_peace("embed", "--run", run, "--zoo", out, "--out", tmp_path / "emb", "--no-umap", "--trees", 5, "--quiet")
    table = pd.read_parquet(tmp_path / "emb" / "embeddings.parquet")
    assert len(table) == 4 and set(table["status"]) == {"sampled"}
    q = run_peace("query", m.index[0], "--embeddings", tmp_path / "emb", "-k", 3)
    assert m.index[1] in q.stdout or m.index[2] in q.stdout


def test_sampling_says_when_the_decoder_never_saw_the_prompts_architecture_on_its_task(decoded_run, tmp_path):
    """A prompt of an (architecture, task) pair absent from the run's training split decodes to about chance
    (docs/generation.md): `peace sample` says so, from what the decoder learned from, not from the result."""
    from peace.intake.model import ImportedModel
    from peace.learn.generation import decoder_training_models
    from peace.zoo.imported import add_models

    run, zoo = decoded_run[0], Zoo(json.loads((decoded_run[0] / "decoder.json").read_text())["zoo"])
    rows = zoo.manifest.query("task == 'synth-1' and arch == 'mlp 16-4-4 relu' and status == 'ok'")
    spec = zoo.spec(rows.index[0])
    assert decoder_training_models(run, spec, "synth-1") > 0 and decoder_training_models(run, spec, "teacher-7") == 0
    mine = tmp_path / "mine"  # the same weights, said to solve a task the zoo never trained for
    add_models(mine, [ImportedModel(spec, zoo.weights(m), m) for m in rows.index[:3]], task="teacher-7", new=True)
    p = run_peace("sample", "--run", run, "--zoo", mine, "--prompt", "task == 'teacher-7'", "--n", 2,
                  "--out", tmp_path / "sampled")
    assert "note: the decoder learned from no mlp 16-4-4 relu model of 'teacher-7'" in p.stdout
    from peace.learn.generation import SampleConfig
    from peace.serve.explore import Explorer
    from peace.serve.export import export_embeddings

    export_embeddings(run, tmp_path / "emb", zoo=mine, trees=5, progress=False, baselines=False)
    ex = Explorer(tmp_path / "emb")  # the Generate page warns from the same count
    assert ex.sample(list(ex.table["model_id"][:2]), SampleConfig(n=2)).learned_from == 0


def test_resnets_are_decoded_with_batchnorm_folded_and_written_in_their_own_architecture(decoded_run, tmp_path):
    run, dec, _ = decoded_run
    zoo = Zoo(json.loads((run / "decoder.json").read_text())["zoo"])
    ids = [i for i in zoo.manifest.index if zoo.spec(i).family == "resnet"]
    spec = zoo.spec(ids[0])
    assert spec.norm == "batch" and head_spec(spec) in dec.specs and head_spec(spec).norm == "none"
    z = RunDir(run).load_encoder().embed([spec] * len(ids), zoo.load_many(ids))
    made = dec.decode(z, spec)
    assert all(set(m) == set(spec.param_shapes()) for m in made)  # BatchNorms (statistics included) and all
    x = torch.from_numpy(load_task("digits").split("test")[0][:64]).reshape(-1, *spec.input_shape)
    own = forward(spec, stack_params(made), x)  # eval mode: the neutral BatchNorms compute the folded layers
    torch.testing.assert_close(own, forward(head_spec(spec), stack_params([head_form(spec, m) for m in made]), x),
                               atol=1e-5, rtol=1e-4)
    out = tmp_path / "resnets"
    sample_zoo(run, f"arch == {spec.describe()!r}", out, SampleConfig(n=3))
    sampled = Zoo(out)
    assert len(sampled) == 3 and all(sampled.spec(i) == spec for i in sampled.manifest.index)
    assert not sampled.verify(weights=True) and sampled.manifest["test_acc"].between(0, 1).all()


def test_bootstrapping_keeps_the_best_draws_so_far_and_samples_around_them(decoded_run):
    from peace.zoo.tasks import load_task

    run, dec, _ = decoded_run
    zoo = Zoo(json.loads((run / "decoder.json").read_text())["zoo"])
    p = resolve_prompt(zoo, "task == 'synth-1' and arch == 'mlp 16-4-4 relu'")
    z = RunDir(run).load_encoder().embed([p.spec] * len(p.ids), zoo.load_many(p.ids))
    task = load_task(p.task)
    plain, plain_acc = sample_models(dec, z, p.spec, task, SampleConfig(n=4, seed=3))
    one, one_acc = sample_models(dec, z, p.spec, task, SampleConfig(n=4, candidates=5, seed=3))
    boot, boot_acc = sample_models(dec, z, p.spec, task, SampleConfig(n=4, candidates=5, rounds=3, seed=3))
    assert list(one_acc) == sorted(one_acc, reverse=True) and one_acc.min() >= np.sort(plain_acc)[0]
    # its first round is the one-round draw, and it keeps the best so far: never worse, model by model
    assert (boot_acc >= one_acc).all() and np.allclose(accuracy(p.spec, boot, task, "train"), boot_acc)
    from_first = [any(all(m[k].equal(o[k]) for k in m) for o in one) for m in boot]
    assert not all(from_first) or boot_acc.max() == 1.0, "later rounds never beat the first: no climbing happened"
    for bad, message in ((dict(rounds=3), "pass candidates >= 2"), (dict(n=10, candidates=100, rounds=200), "100,000"),
                         (dict(rounds=0, candidates=2), "rounds >= 1")):
        with pytest.raises(PeaceError, match=message):
            SampleConfig(**bad)


@pytest.mark.slow
def test_a_killed_sample_run_leaves_nothing_that_opens_as_a_zoo(decoded_run, tmp_path):
    prompt = "task == 'synth-1' and arch == 'mlp 16-4-4 relu'"
    for seed in range(3):  # SIGKILLed at random points while the new zoo is being written beside --out
        out = tmp_path / f"sampled-{seed}"
        cmd = ["sample", "--run", decoded_run[0], "--prompt", prompt, "--n", 5000, "--candidates", 1, "--out", out]
        staged = lambda: any(tmp_path.glob(f".{out.name}.new-*"))  # noqa: E731
        killed = kill_when(cmd, staged, random.Random(seed).uniform(0, 0.05), may_finish=True)  # writing: ~0.5 s
        if out.exists():  # it finished before the kill: the whole zoo, checksums and all
            assert not Zoo(out).verify(weights=True) and len(Zoo(out)) == 5000
            continue
        assert killed
        with pytest.raises(PeaceError):
            Zoo(out)
        sample_zoo(decoded_run[0], prompt, out, SampleConfig(n=3))  # the next run clears the dead writer's stage
        assert len(Zoo(out)) == 3 and not list(tmp_path.glob(f".{out.name}.new-*"))


def test_generative_study_compares_every_starting_point(decoded_run):
    cfg = GenerativeConfig(n=2, candidates=2, rounds=2, epochs=1, seeds=2,
                           prompt="task == 'synth-1' and arch == 'mlp 16-4-4 relu'")
    study = generative_study(decoded_run[0], cfg, progress=False)
    s = pd.DataFrame(study["summary"])
    assert study["new_task"] not in (None, "synth-1")
    assert set(s["setting"]) == {"same task", "new task"} and set(s["epoch"]) == {0, 1}
    assert set(s["method"]) == {"sampled", "sampled + subsampling", "sampled + bootstrapping", "random init (torch default)",
                                "random init (zoo's)", "prompt models", "retrieved by PEACE"}
    assert s["mean"].between(0, 1).all() and s["std"].notna().all()
    assert len(pd.DataFrame(study["per_seed"])) == 2 * len(s)
    text = generative_markdown(study)
    assert "| sampled + subsampling |" in text and "**new task**" in text
    fresh = generative_study(decoded_run[0], dataclasses.replace(cfg, new_head=True, seeds=1), progress=False)
    f = pd.DataFrame(fresh["summary"]).set_index(["setting", "method", "epoch"])["mean"]
    same = pd.DataFrame(study["per_seed"]).query("seed == 0").set_index(["setting", "method", "epoch"])["test_acc"]
    for key in f.index:  # the same task, and random inits on the new one, do not change; the transferred do
        if key[0] == "same task" or key[1].startswith("random init"):
            assert f[key] == pytest.approx(same[key]), key
    moved = [k for k in f.index if k[0] == "new task" and not k[1].startswith("random init")]
    assert moved and any(f[k] != pytest.approx(same[k]) for k in moved)
    assert "fresh output layer" in generative_markdown(fresh)


def test_a_new_head_replaces_only_the_output_layer_with_torchs_init():
    from peace.learn.generation import default_inits
    from peace.orchestrate.generation import _with_new_head

    for kw in ({"hidden": (7, 6)}, {"hidden": (5,), "bias": False}):
        spec = ArchSpec("mlp", (16,), 4, activation="relu", **kw)
        trained = [{k: torch.full(v, float(j)) for k, v in spec.param_shapes().items()} for j in range(3)]
        fresh = default_inits(spec, 3, seed=5)
        new = _with_new_head(spec, trained, fresh)
        out = f"layers.{len(kw['hidden'])}."
        for j in range(3):
            assert new[j].keys() == trained[j].keys() and any(k.startswith(out) for k in new[j])
            for k in new[j]:
                assert torch.equal(new[j][k], fresh[j][k] if k.startswith(out) else trained[j][k]), k


def test_the_explorer_decodes_the_interpolation_line(decoded_run, tmp_path, monkeypatch):
    from conftest import ROOT
    from streamlit.testing.v1 import AppTest

    from peace.serve.explore import Explorer
    from peace.serve.export import export_embeddings

    export_embeddings(decoded_run[0], tmp_path / "embeddings" / "tiny", trees=5, umap=False, progress=False)
    ex = Explorer(tmp_path / "embeddings" / "tiny")
    t = ex.table
    a, b = t.loc[t["arch"] == "mlp 16-4-4 relu", "model_id"].iloc[[0, -1]]
    head = ex.decoder.index(ex.zoo.spec(a))
    ex.decoder.refines[head] = False  # validation chose to leave the architecture as decoded: one line per task
    assert list(ex.decoded_path(a, b, steps=3).columns[1:]) == [f"accuracy on {ex.zoo.task(m).name}"
                                                                 for m in dict.fromkeys((a, b))]
    ex.decoder.refines[head] = True
    path = ex.decoded_path(a, b, steps=5)
    assert list(path["t"]) == [0, 0.25, 0.5, 0.75, 1]
    assert sketch_fit(ex.encoder).reads(ex.zoo.spec(a))  # so the same line refined is there too
    assert list(path.columns[1:]) == [f"accuracy on {ex.zoo.task(m).name}{s}" for m in dict.fromkeys((a, b))
                                      for s in ("", ", refined")]
    assert path.iloc[:, 1:].stack().between(0, 1).all() and path.shape[1] >= 3
    vit = t.loc[(t["family"] == "vit") & (t["task"] == "digits"), "model_id"].iloc[0]
    assert list(ex.decoded_path(vit, a).columns[1:2]) == ["accuracy on digits"]  # ViTs are decoded too
    one = t.loc[t["arch"] == "cnn1d c2/k3/avg tanh", "model_id"].iloc[0]
    assert ex.decoded_path(one, a) is None  # too few training models for a head: the page says so instead

    monkeypatch.setenv("PEACE_ARTIFACTS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=180).run()
    at.switch_page("views/interpolation.py").run()
    at.selectbox(key="interp_a").set_value(a).run()
    assert not at.exception, [e.message for e in at.exception]
    charts = [el.proto.spec for el in at.get("plotly_chart")]
    assert any("Models decoded along the line" in c for c in charts)


def test_bad_sampling_requests_get_one_line_and_leave_no_zoo(decoded_run, tiny_run, tmp_path, capsys, monkeypatch):
    from peace.cli import main
    from peace.zoo import generated

    run, out = decoded_run[0], tmp_path / "out"
    ok_prompt = "task == 'synth-1' and arch == 'mlp 16-4-4 relu'"
    cases = [
        (["--run", run, "--prompt", ok_prompt, "--n", "0"], "1 <= n <= 100,000"),
        (["--run", run, "--prompt", ok_prompt, "--n", "200000"], "1 <= n <= 100,000"),
        (["--run", run, "--prompt", ok_prompt, "--bandwidth", "inf"], "bandwidth"),
        (["--run", run, "--prompt", ok_prompt, "--refine-steps", "-1"], "refinement needs steps >= 0"),
        (["--run", run, "--prompt", "test_acc > 2"], "selects no usable model"),
        (["--run", run, "--prompt", "family == 'vit' and task == 'mnist1d'"], "not trained on vit d8/h2/b1/m16/p8/avg"),
        (["--run", tiny_run.path, "--prompt", ok_prompt], "has no decoder.*peace decoder --run"),
    ]
    for args, message in cases:
        assert main(["sample", *map(str, args), "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("peace: error: ") and err.count("\n") == 1 and re.search(message, err), err
        assert not out.exists()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generated, "save_shard", full_disk)
    assert main(["sample", "--run", str(run), "--prompt", ok_prompt, "--out", str(out)]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.new-*"))  # nothing half-written that opens as a zoo


def test_generated_weights_that_do_not_fit_are_refused_by_name_and_write_nothing(tmp_path):
    from peace.zoo.generated import write_generated_zoo
    from peace.zoo.tasks import load_task

    spec = ArchSpec("mlp", (16,), 4, hidden=(4,), activation="relu")
    good = {k: torch.randn(v) for k, v in spec.param_shapes().items()}
    cases = [({**good, "layers.0.weight": torch.randn(3, 16)}, r"layers.0.weight has shape \(3, 16\)"),
             ({k: v for k, v in good.items() if k != "layers.0.weight"}, r"missing \['layers.0.weight'\]"),
             ({**good, "extra": torch.zeros(1)}, r"unexpected \['extra'\]"),
             ({**good, "layers.0.bias": torch.full((4,), float("nan"))}, "layers.0.bias contains NaN")]
    for bad, message in cases:
        with pytest.raises(PeaceError, match=message):
            write_generated_zoo(tmp_path / "z", "z", spec, load_task("synth-1"), [good, bad], {})
        assert not (tmp_path / "z").exists()


def test_the_decoder_command_trains_saves_and_reports_by_function(tiny_run, tiny_zoo, tmp_path, capsys):
    from peace.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)
    assert main(["decoder", "--run", str(run), "--epochs", "3", "--min-models", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"saved in {run}" in out and (run / "decoder.safetensors").exists()
    header = next(line for line in out.splitlines() if line.lstrip().startswith("family"))
    assert {"decoded_kept", "refined_kept", "refined_agreement", "nearest_kept"} <= set(header.split())
    assert "left as decoded where probes x classes exceed 4 x the block" in out
    assert "from the decoded weights and from the retrieved training model, the closer sketch kept" in out
    assert main(["decoder", "--run", str(run), "--epochs", "3", "--min-models", "2", "--quiet",
                 "--refine-from", "decoded"]) == 0
    out = capsys.readouterr().out
    assert "from the decoded weights (left as decoded" in out and "retrieved" not in out
    skipped = json.loads((run / "decoder.json").read_text())["skipped"]  # ViTs are opt-in, and it says how
    assert skipped["vit d8/h2/b1/m16/p4/cls gelu ln"] == ("vit models are not decoded by default "
                                                          "(--families mlp cnn1d cnn2d resnet vit adds them)")
    assert main(["decoder", "--run", str(run), "--epochs", "3", "--min-models", "2", "--quiet", "--refine-steps", "0",
                 "--families", "vit", "mlp"]) == 0
    assert {s.family for s in load_decoder(run)[0].specs} == {"vit", "mlp"}
    capsys.readouterr()
    assert main(["decoder", "--run", str(run), "--families", "transformer"]) == 2
    assert "families must be some of mlp, cnn1d, cnn2d, resnet, vit" in capsys.readouterr().err
    assert main(["decoder", "--run", str(run), "--judge", str(tiny_zoo.path), "--max-models", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "models (at most 3 per architecture), judged by function" in out and "saved in" not in out
    assert re.search(r"left out: \S*vit.*: the decoder does not write this architecture", out)
    done = run_peace("decoder", "--run", str(run), "--judge", str(tmp_path / "nowhere"), check=False)
    assert done.returncode != 0 and done.stderr.strip().startswith("peace: error:") and "nowhere" in done.stderr


def test_the_decoder_command_says_why_nothing_is_refined_when_the_encoder_has_no_function_block(tiny_run, tmp_path,
                                                                                                  capsys):
    from peace.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)
    meta = json.loads((run / "encoder.json").read_text())
    meta["config"]["encoder"]["function_block"] = 0  # the block is fixed, not trained: the same encoder without it
    (run / "encoder.json").write_text(json.dumps(meta))
    assert main(["decoder", "--run", str(run), "--epochs", "2", "--min-models", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("family"))
    assert "decoded_kept" in header.split() and not any(c.startswith("refined") for c in header.split())
    assert "not refined: the run's encoder has no function block" in out and "encoder.function_block=256" in out
    assert "refined: refined towards" not in out


def test_the_generate_page_samples_compares_and_downloads_model_folders(artifacts, tmp_path, monkeypatch):
    import io
    import zipfile

    from conftest import ROOT
    from streamlit.testing.v1 import AppTest

    from peace.intake.importers import load_model
    from peace.serve.explore import Explorer

    monkeypatch.setenv("PEACE_ARTIFACTS", str(artifacts))
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=180).run()
    at.switch_page("views/generate.py").run()
    assert not at.exception and not at.error, [e.message for e in at.exception]
    shown = at.dataframe[0].value
    assert list(shown["models"]) == ["sampled", "random init (torch default)", "prompt models"]
    assert shown.loc[0, "n"] == 10 and shown["mean"].between(0, 1).all()
    at.radio(key="pref_gen_how").set_value("a model and its neighbours").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.dataframe[0].value.loc[2, "n"] >= 1
    left = next(c.value for c in at.caption if c.value.startswith("Not written by this run's decoder"))
    assert "vit d8/h2/b1/m16/p4/cls" in left and "--families mlp cnn1d cnn2d resnet vit" in left  # and how to add them

    ex = Explorer(artifacts / "embeddings" / "tiny")
    arch = ex.decodable_archs()[0]
    prompt = list(ex.table.loc[ex.table["arch"] == arch, "model_id"][:3])
    s = ex.sample(prompt, SampleConfig(n=3, candidates=2, seed=1))
    assert len(s.models) == 3 and s.map_xy.shape == (3, 2) and s.task == ex.table.set_index("model_id").at[prompt[0], "task"]
    with zipfile.ZipFile(io.BytesIO(s.archive())) as z:
        z.extractall(tmp_path)
    back = load_model(tmp_path / "sampled-001")  # the way users bring it back: peace query DIR, peace zoo add
    assert back.spec.param_shapes() == s.spec.param_shapes() and back.metadata["task"] == s.task
    for k, v in s.models[1].items():
        torch.testing.assert_close(back.params[k], v)


def test_a_vit_model_folder_as_the_explorer_writes_it_reads_back(tmp_path):
    """A sampled ViT downloaded from the Generate page (model.safetensors + config.json) opens again: the
    config carries the heads, which the weights do not say."""
    from safetensors.torch import save_file

    from peace.intake.importers import load_model
    from peace.serve.samples import folder_config

    for task, kw in [(t, kw) for t, kw in MODELS if kw["family"] == "vit"]:
        _, spec, params = random_model(task, kw)
        folder = tmp_path / spec.describe().replace("/", "_").replace(" ", "_")
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in params.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(folder_config(spec)))
        back = load_model(folder)
        assert back.spec.describe() == spec.describe() and back.spec.heads == spec.heads
        assert all(torch.equal(back.params[k], v) for k, v in params.items())


@pytest.mark.slow
def test_peace_evaluate_reports_the_generative_study(decoded_run, tmp_path):
    from peace.orchestrate.evaluation import evaluate

    with pytest.raises(PeaceError, match="pass candidates >= 2"):
        GenerativeConfig(candidates=1)  # bootstrapping (5 rounds by default) picks the best of several draws
    cfg = GenerativeConfig(n=2, candidates=1, rounds=1, epochs=1, seeds=1)
    metrics = evaluate(decoded_run[0], tmp_path / "eval", transfer=None, accuracy=None, generative=cfg, probegen=0,
                       progress=False)
    methods = {r["method"] for r in metrics["generative"]["summary"]}
    assert methods >= {"sampled", "prompt models"} and "sampled + bootstrapping" not in methods  # rounds=1: no such row
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Generation: sampled models (SANE's protocol)" in report and "| random init (zoo's) |" in report


def test_the_reconstruction_term_targets_aligned_weights_and_skips_families_it_cannot_write(monkeypatch):
    """E.D's term: a symmetric copy has the same target (a BatchNorm ResNet's too), a decoder on it learns
    (with no target kept between steps: the cache's limit at 0), ViTs add nothing."""
    from peace.learn import autoencoder
    from peace.learn.autoencoder import Reconstruction

    monkeypatch.setattr(autoencoder, "CACHE_BYTES", 0)

    task, kw = next((t, kw) for t, kw in MODELS if kw["family"] == "mlp" and kw.get("norm", "none") == "none")
    models = {f"m{i}": random_model(task, kw, seed=i)[1:] for i in range(12)}
    models["copy"] = (models["m0"][0], random_symmetry(models["m0"][0], models["m0"][1], 5))
    rtask, rkw = next((t, kw) for t, kw in MODELS if kw["family"] == "resnet" and kw.get("norm") == "batch")
    models["res"] = random_model(rtask, rkw)[1:]
    models["res-copy"] = (models["res"][0], random_symmetry(models["res"][0], models["res"][1], 3))
    vtask, vkw = next((t, kw) for t, kw in MODELS if kw["family"] == "vit")
    models["vit"] = random_model(vtask, vkw)[1:]
    specs, weights = {m: s for m, (s, _) in models.items()}, {m: p for m, (_, p) in models.items()}
    rec = Reconstruction(list(models), specs, weights, in_dim=6)
    torch.testing.assert_close(rec.target("copy"), rec.target("m0"), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rec.target("res-copy"), rec.target("res"), atol=1e-5, rtol=1e-4)  # BatchNorm folded
    ids = [f"m{i}" for i in range(12)]
    z = torch.randn(len(ids), 6, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(rec.decoder.parameters(), lr=1e-2)
    first = rec.loss(z, ids).item()
    for _ in range(200):
        opt.zero_grad()
        rec.loss(z, ids).backward()
        opt.step()
    assert rec.loss(z, ids).item() < 0.1 * first  # 12 distinct inputs are memorized
    assert not rec._cache
    assert rec.loss(z[:1], ["vit"]).item() == 0.0  # a ViT adds nothing
    with pytest.raises(PeaceError, match="train.reconstruction=0"):
        Reconstruction(["vit"], specs, weights, in_dim=6)
    from peace.learn.runconfig import load_config
    from peace.learn.trainer import _reconstruction

    with pytest.raises(PeaceError, match="one process only"):  # its decoder is not data-parallel
        _reconstruction(load_config("tiny", ["train.reconstruction=1"]), None, processes=2)
    with pytest.raises(PeaceError, match="reconstruction >= 0"):
        load_config("tiny", ["train.reconstruction=-1"])


@pytest.mark.slow
def test_joint_training_moves_the_encoder_and_resumes_with_its_decoder(tiny_zoo, tmp_path, monkeypatch):
    """``train.reconstruction`` trains the encoder with a decoder (the E.D recipe): the encoder differs from
    the contrastive-only one, the error falls, and an interrupted run resumes to the uninterrupted one."""
    from conftest import QUICK as QUICK_RUN
    from safetensors.torch import load_file

    from peace.learn import trainer
    from peace.learn.runconfig import load_config

    cfg = QUICK_RUN + ["train.reconstruction=10"]
    plain = trainer.fit(tiny_zoo, load_config("tiny", QUICK_RUN), tmp_path / "plain", progress=False)
    joint = trainer.fit(tiny_zoo, load_config("tiny", cfg), tmp_path / "joint", progress=False)
    rec = joint.history["train_reconstruction"].to_numpy()
    assert np.isfinite(rec).all() and rec[1:].min() < rec[0]  # it falls, not steadily: 0.96 / 0.89 / 0.95 here
    a, b = load_file(str(plain.path / "encoder.safetensors")), load_file(str(joint.path / "encoder.safetensors"))
    assert not all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert "decoder" in RunDir(joint.path).read_checkpoint()
    real, calls = trainer._validate, {"n": 0}

    def crash_at_third_epoch(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(trainer, "_validate", crash_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(tiny_zoo, load_config("tiny", cfg), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(trainer, "_validate", real)
    resumed = trainer.fit(tiny_zoo, load_config("tiny", cfg), tmp_path / "resumed", resume=True, progress=False)
    np.testing.assert_allclose(resumed.history["train_reconstruction"], rec, rtol=1e-4, atol=1e-4)
