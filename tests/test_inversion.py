"""Probe inputs written by the training tasks' own models (``encoder.probe_source=inverted``)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from peace.core.errors import PeaceError
from peace.learn.inversion import GAUSSIAN_SHARE, inverted_probes
from peace.nets.architectures import ArchSpec, predict
from peace.nets.probes import probe_inputs
from peace.zoo.population import HParams, Schedule, train_population
from peace.zoo.tasks import load_task


@pytest.fixture(scope="module")
def digits_models():
    """Six small digits MLPs, trained for a few epochs (a real task's models, at 0.9 test accuracy or so)."""
    task = load_task("digits")
    spec = ArchSpec(input_shape=(64,), n_classes=10, family="mlp", hidden=(16,), activation="relu")
    pop = train_population(task, spec, [HParams(seed=s, lr=1e-2) for s in range(6)], Schedule(epochs=5)).checkpoints[5]
    return spec, [{k: v[i] for k, v in pop.items()} for i in range(6)]


def renaming_read(spec, writers, model, x, perm):
    """Share of classes whose new name a linear assignment reads from ``model`` with renamed classes, against
    the ``writers``' answers on ``x`` (what the function block lets refinement and retrieval see)."""
    ref = F.one_hot(predict(spec, writers, x).argmax(-1), 10).float().mean(0)  # (K, C): the writers' answers
    renamed = F.one_hot(perm[predict(spec, [model], x)[0].argmax(-1)], 10).float()
    return float((torch.as_tensor(linear_sum_assignment(-(ref.T @ renamed).numpy())[1]) == perm).float().mean())


def test_the_training_models_inputs_show_a_renaming_of_every_class(digits_models):
    """What the bank is for: on Gaussian noise a digits model answers some classes far more often than others,
    so a copy with renamed classes is readable for some classes only; on inputs written by the task's models
    the answers are spread over every class, and the renaming of each class shows."""
    spec, params = digits_models
    n = 64
    bank = inverted_probes([spec] * 4, params[:4], ["digits"] * 4, n)
    assert set(bank) == {"64->10"} and bank["64->10"].shape == (n, 64) and bank["64->10"].dtype == torch.float64
    n_gauss = round(n * GAUSSIAN_SHARE)
    torch.testing.assert_close(bank["64->10"][:n_gauss], probe_inputs((64,), n)[:n_gauss])  # Gaussian probes first
    written, gauss = bank["64->10"][n_gauss:].float(), probe_inputs((64,), n - n_gauss).float()
    perm = torch.as_tensor(np.random.default_rng(7).permutation(10))  # digits-labelperm's renaming
    for model in params[4:]:  # models that wrote nothing
        assert renaming_read(spec, params[:4], model, written, perm) == 1.0
    top = {name: predict(spec, params[4:], x).argmax(-1).flatten().bincount(minlength=10).max().item() / (2 * len(x))
           for name, x in (("written", written), ("gauss", gauss))}
    assert top["written"] < 0.2 < top["gauss"], top  # 0.1 where every class is answered equally often
    torch.testing.assert_close(inverted_probes([spec] * 4, params[:4], ["digits"] * 4, n)["64->10"],
                               bank["64->10"])  # deterministic


def test_each_task_of_a_space_writes_its_share_and_each_space_gets_its_own(digits_models):
    spec, params = digits_models
    task = load_task("tetris")
    other = ArchSpec(input_shape=task.input_shape, n_classes=task.n_classes, family="mlp", hidden=(8,))
    tetris = train_population(task, other, [HParams(seed=s, lr=1e-2) for s in range(2)], Schedule(epochs=2))
    tparams = [{k: v[i] for k, v in tetris.checkpoints[2].items()} for i in range(2)]
    specs, weights = [spec] * 4 + [other] * 2, [*params[:4], *tparams]
    bank = inverted_probes(specs, weights, ["digits", "digits", "renamed", "renamed", "tetris", "tetris"], 8)
    assert bank.keys() == {"64->10", "16->4"} and bank["16->4"].shape == (8, 16)
    # 2 Gaussian probes, then 3 inputs written by each task's models ("digits" first: sorted)
    alone = inverted_probes([spec] * 2, params[:2], ["digits"] * 2, 5)["64->10"]  # 1 Gaussian, 4 written by them
    torch.testing.assert_close(bank["64->10"][:2], probe_inputs((64,), 8)[:2])
    assert not torch.allclose(bank["64->10"][2:5], bank["64->10"][5:8])  # other writers, other inputs
    assert alone.shape == (5, 64)
    with pytest.raises(PeaceError, match="at least 2 probe inputs"):
        inverted_probes([spec], params[:1], ["digits"], 1)
    with pytest.raises(PeaceError, match="1 architectures, 1 parameter sets and 2 tasks"):
        inverted_probes([spec], params[:1], ["digits", "digits"], 8)
    assert np.isfinite(bank["64->10"].numpy()).all()
