"""The ProbeGen peer: learned probes from a shared deep linear generator, read by an MLP head."""
import numpy as np
import pytest
import torch
from conftest import random_model
from torch import nn

from peace.core.errors import PeaceError
from peace.evaluate.prediction import PredictorConfig, fit_regressor, predict_regressor
from peace.evaluate.probegen import ProbeGenConfig, ProbeGenerator, ProbeGenRegressor
from peace.nets.architectures import ArchSpec, PeaceNet
from peace.nets.symmetry import random_symmetry

SMALL = ProbeGenConfig(n_probes=8, latent=8, width=4, head=32, head_layers=3, lr=3e-3)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7), (2, 12), (1, 9), (16,)])
@pytest.mark.parametrize("generator", ["deep-linear", "free"])
def test_probes_take_the_input_shape_and_the_generator_is_linear(shape, generator):
    torch.manual_seed(0)
    g = ProbeGenerator(shape, ProbeGenConfig(n_probes=5, generator=generator))
    probes = g()
    assert probes.shape == (5, *shape) and probes.requires_grad
    kinds = {type(m) for m in g.net.modules()} - {nn.Sequential}
    assert not kinds & {nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid}  # deep *linear*: no activation between layers
    if generator == "deep-linear" and len(shape) > 1:
        assert isinstance(g.net[-1], nn.Tanh) and len(g.net) == 5  # four transposed convolutions, then tanh


@pytest.mark.parametrize("kw", [dict(family="mlp", hidden=(7, 6), activation="relu"),
                                dict(family="cnn2d", hidden=(3, 4), activation="tanh")])
def test_a_symmetric_copy_reads_the_same(kw):
    """Responses are a function of the function: permutations, rescalings and sign flips change nothing."""
    _, spec, params = random_model("digits", kw, seed=2)
    torch.manual_seed(0)
    model = ProbeGenRegressor(spec, SMALL).eval()
    twin = random_symmetry(spec, params, seed=1)
    assert not torch.equal(twin[spec.layers[0].weight_name], params[spec.layers[0].weight_name])
    with torch.no_grad():
        y, y_twin = model([params, twin])
    assert abs(float(y - y_twin)) < 1e-4 * max(1.0, abs(float(y)))


def test_probegen_learns_a_property_of_the_function():
    """Target: a shift of class 0's logit, which the responses show on every probe; the weights hide it
    among the rest of the network's random output."""
    spec = ArchSpec("mlp", (6,), 3, hidden=(5,), activation="tanh")
    torch.manual_seed(0)
    models, y = [], []
    for _ in range(160):
        params = {k: v.detach().clone() for k, v in PeaceNet(spec).state_dict().items()}
        shift = float(torch.empty(()).uniform_(-2, 2))
        params["layers.1.bias"][0] += shift
        models.append(params)
        y.append(shift)
    y = np.array(y)
    model = fit_regressor(ProbeGenRegressor(spec, SMALL), models[:100], y[:100], models[100:130], y[100:130],
                          epochs=60, lr=SMALL.lr, config=PredictorConfig(epochs=60, patience=15))
    assert np.corrcoef(predict_regressor(model, models[130:]), y[130:])[0, 1] > 0.9  # measured 0.97


def test_bad_settings_are_refused():
    with pytest.raises(PeaceError, match="unknown ProbeGen generator 'gan'"):
        ProbeGenConfig(generator="gan")
    with pytest.raises(PeaceError, match="positive"):
        ProbeGenConfig(n_probes=0)
    from peace.learn.probegen import ProbeGenEmbedding

    with pytest.raises(PeaceError, match="steps >= 0"):
        ProbeGenEmbedding(steps=-1)


def test_contrastive_probegen_embeds_a_zoo_invariantly(tiny_zoo):
    from peace.evaluate.baselines import Models
    from peace.learn.probegen import ProbeGenEmbedding
    from peace.nets.probes import io_space

    m = tiny_zoo.manifest
    ok = m[m["status"] == "ok"]
    fit_on = Models.from_zoo(tiny_zoo, list(ok.index[ok["task"] != "mnist1d"]))
    pg = ProbeGenEmbedding(SMALL, dim=8, steps=5, batch_size=16).fit(fit_on)
    e = pg.transform(fit_on)
    assert e.shape == (len(fit_on), 8) and np.isfinite(e).all()
    i = next(j for j, s in enumerate(fit_on.specs) if s.family == "mlp")
    twin = Models(fit_on.rows.iloc[[i]], [fit_on.specs[i]], [random_symmetry(fit_on.specs[i], fit_on.params[i], seed=3)])
    np.testing.assert_allclose(pg.transform(twin)[0], e[i], rtol=1e-4, atol=1e-5)  # a function of the function
    fp = pg.fingerprints(fit_on)  # the function space on the learned probes: cosine = prediction agreement
    assert np.allclose(np.linalg.norm(fp, axis=1), 1) and np.array_equal(pg.fingerprints(twin)[0], fp[i])
    j = next(j for j, s in enumerate(fit_on.specs) if s == fit_on.specs[i] and j != i)
    agree = fp[i] @ fp[j] * SMALL.n_probes  # the number of probes on which the two predict the same class
    assert np.isclose(agree, round(agree), atol=1e-4) and 0 <= agree <= SMALL.n_probes
    other = next(j for j, s in enumerate(fit_on.specs) if io_space(s) != io_space(fit_on.specs[i]))
    assert fp[i] @ fp[other] == 0  # no shared inputs, no agreement
    other = Models.from_zoo(tiny_zoo, list(ok.index[ok["task"] == "mnist1d"][:2]))  # a space it never saw
    with pytest.raises(PeaceError, match="io-space .* was not among the spaces ProbeGen was fit on"):
        pg.transform(other)
    told = ProbeGenEmbedding(SMALL, dim=8, steps=5, batch_size=16, spaces=["40->10"]).fit(fit_on)  # told of it
    assert told.transform(other).shape == (2, 8) and np.allclose(told.transform(fit_on), e)  # the same seed, fit


@pytest.mark.parametrize("source", ["learned", "inverted"])
def test_peace_with_learned_probes_trains_reloads_and_stays_invariant(tiny_zoo, tmp_path, source):
    """Probes learned the ProbeGen way, or written by the training models (``peace.learn.inversion``)."""
    from conftest import QUICK

    from peace.learn.run import RunDir
    from peace.learn.runconfig import load_config
    from peace.learn.trainer import fit
    from peace.nets.probes import io_space, responses

    cfg = load_config("tiny", QUICK + [f"encoder.probe_source={source}", "train.probe_steps=10",
                                       "train.holdout_tasks=[mnist1d]"])
    res = fit(tiny_zoo, cfg, tmp_path / "run", progress=False)
    assert np.isfinite(res.history["val_map"]).all()
    enc = RunDir(tmp_path / "run").load_encoder()
    m = tiny_zoo.manifest
    ok = m[m["status"] == "ok"]
    ids = list(ok.index)
    specs, params = [tiny_zoo.spec(i) for i in ids], tiny_zoo.load_many(ids)
    trained = {io_space(s) for s, t in zip(specs, ok["task"]) if t != "mnist1d"}
    learned = enc.probe_bank.inputs()
    assert set(learned) == trained and "40->10" not in learned  # the held-out task's space keeps Gaussian probes
    assert all(x.shape == (cfg.encoder.probes, int(sp.split("->")[0])) for sp, x in learned.items())
    i = next(j for j, s in enumerate(specs) if s.family == "mlp")
    assert not torch.allclose(enc.responses([specs[i]], [params[i]])[0],
                              responses([specs[i]], [params[i]], cfg.encoder.probes)[0])  # the learned probes are read
    e = enc.embed(specs, params)
    twin = random_symmetry(specs[i], params[i], seed=5)
    np.testing.assert_allclose(enc.embed([specs[i]], [twin])[0], e[i], atol=1e-5)
    from peace.orchestrate.evaluation import EncoderMethod, _methods  # evaluate reads the run's probes beside
    compared = _methods(tmp_path / "run", EncoderMethod(tmp_path / "run", "peace", encoder=enc), None,
                        sorted({io_space(s) for s in specs}), 0, 0)
    own = next(m for m in compared if m.name == "function (run's probes)")
    assert own.inputs.keys() == learned.keys() and "function" in [m.name for m in compared]
    with pytest.raises(PeaceError, match="unknown probe source 'random'"):
        load_config("tiny", ["encoder.probe_source=random"])


@pytest.mark.parametrize("source", ["learned", "inverted"])
def test_a_resumed_run_takes_its_learned_probes_from_the_checkpoint(tiny_zoo, tmp_path, monkeypatch, source):
    from conftest import QUICK

    from peace.learn import trainer
    from peace.learn.run import RunDir
    from peace.learn.runconfig import load_config

    cfg = load_config("tiny", QUICK + [f"encoder.probe_source={source}", "train.probe_steps=5"])
    trainer.fit(tiny_zoo, cfg, tmp_path / "run", progress=False)
    before = RunDir(tmp_path / "run").load_encoder().probe_bank.inputs()

    def refuse(*a, **k):
        raise AssertionError("a resumed run learned its probes again")

    monkeypatch.setattr(trainer, "learn_probes", refuse)
    monkeypatch.setattr(trainer, "inverted_probes", refuse)
    trainer.fit(tiny_zoo, cfg, tmp_path / "run", resume=True, progress=False)
    after = RunDir(tmp_path / "run").load_encoder().probe_bank.inputs()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
