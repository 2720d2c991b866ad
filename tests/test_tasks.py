import numpy as np
import pytest

from peace.core.errors import PeaceError
from peace.zoo.tasks import load_task, task_names

IMAGES = ["shapes", "gratings", "bands", "textures"]
FIXED = ["tetris", "digits", "digits-rot90", "digits-flip", "digits-labelperm", "wine", "breast-cancer",
         "synth-1", "synth-7", "teacher-1", "moons-2", *IMAGES]


@pytest.mark.parametrize("name", FIXED)
def test_task_splits_are_complete_and_fixed(name):
    t = load_task(name)
    sizes = [len(t.X_train), len(t.X_val), len(t.X_test)]
    assert min(sizes) > 0 and t.X_train.shape[1:] == t.input_shape
    assert set(np.unique(t.y_train)) == set(range(t.n_classes))
    assert np.isfinite(t.X_train).all()
    load_task.cache_clear()
    again = load_task(name)  # rebuilt from scratch: identical arrays
    assert np.array_equal(again.X_test, t.X_test) and np.array_equal(again.y_train, t.y_train)


def test_mnist1d_is_generated_locally():
    t = load_task("mnist1d")
    assert t.input_shape == (1, 40) and t.n_classes == 10 and len(t.X_train) == 3000


def test_same_shape_families_compute_different_functions():
    d, r, p = load_task("digits"), load_task("digits-rot90"), load_task("digits-labelperm")
    assert d.input_shape == r.input_shape == p.input_shape and d.n_classes == r.n_classes == p.n_classes
    assert not np.allclose(d.X_train, r.X_train)
    assert np.array_equal(d.X_train, p.X_train) and not np.array_equal(d.y_train, p.y_train)
    mapping = {a: b for a, b in zip(d.y_train, p.y_train)}  # a consistent relabelling
    assert len(mapping) == 10 and sorted(mapping.values()) == list(range(10))
    s1, s2, tet = load_task("synth-1"), load_task("synth-2"), load_task("tetris")
    assert s1.n_features == s2.n_features == tet.n_features == 16 and s1.n_classes == tet.n_classes == 4
    assert not np.allclose(s1.X_train, s2.X_train)


def test_unknown_task_lists_valid_names():
    with pytest.raises(PeaceError, match="unknown task 'cifar10'.*digits.*synth-K"):
        load_task("cifar10")
    assert "tetris" in task_names()


@pytest.mark.slow
def test_image_tasks_are_learnable_by_a_small_resnet_and_not_by_a_linear_reading():
    """The 16x16 tasks ResNets and ViTs learn (issue 26): a small ResNet reaches high test accuracy on
    each in 4 epochs, while a linear classifier of the pixels stays far below it on the ones made
    of translated or phase-shifted patterns (what a convolution, not a pixel template, reads)."""
    from sklearn.linear_model import LogisticRegression

    from peace.nets.architectures import ArchSpec
    from peace.zoo.population import HParams, Schedule, train_population

    for name in IMAGES:
        task = load_task(name)
        assert task.input_shape == (1, 16, 16) and task.n_classes == 4 and task.family == "images"
        assert np.bincount(task.y_test).min() >= 100  # balanced
        spec = ArchSpec("resnet", task.input_shape, 4, hidden=(4, 8), blocks=(1, 1), norm="batch", bias=False)
        res = train_population(task, spec, [HParams(seed=0, lr=0.01)], Schedule(4, batch_size=64))
        acc = next(r["test_acc"] for r in res.metrics if r["epoch"] == 4)  # 0.95-1.0 (seeds 0 and 1)
        linear = LogisticRegression(max_iter=200).fit(task.X_train.reshape(len(task.X_train), -1), task.y_train)
        linear_acc = linear.score(task.X_test.reshape(len(task.X_test), -1), task.y_test)
        assert acc >= 0.9, (name, acc)
        if name in ("shapes", "gratings"):
            assert linear_acc < 0.5, (name, linear_acc)


@pytest.mark.slow
def test_mnist1d_is_generated_once_per_machine_and_a_damaged_cache_is_made_again(tmp_path, monkeypatch):
    """Its generator takes ~6 s per process; the arrays are kept in PEACE_CACHE and read back equal."""
    import mnist1d.data

    monkeypatch.setenv("PEACE_CACHE", str(tmp_path))
    load_task.cache_clear()
    try:
        fresh = load_task("mnist1d")
        (cached,) = tmp_path.glob("mnist1d-*.npz")
        generate = mnist1d.data.make_dataset
        monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a: pytest.fail("generated again"))
        load_task.cache_clear()
        again = load_task("mnist1d")  # read back, not generated
        for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
            assert np.array_equal(getattr(again, name), getattr(fresh, name)), name
        monkeypatch.setattr(mnist1d.data, "make_dataset", generate)
        for damage in (lambda: cached.write_bytes(b"cut short"), lambda: np.savez(cached, X=np.zeros((3, 3)))):
            damage()
            load_task.cache_clear()
            assert np.array_equal(load_task("mnist1d").X_test, fresh.X_test)  # made again ...
            with np.load(cached) as f:
                assert sorted(f.files) == ["X", "y"]  # ... and written again
    finally:
        load_task.cache_clear()
