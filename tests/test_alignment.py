import numpy as np
import torch

from peace.nets.alignment import align, interpolation_path, loss_barrier
from peace.nets.architectures import ArchSpec
from peace.nets.symmetry import RandomSymmetry, random_symmetry
from peace.zoo.population import HParams, Schedule, train_population
from peace.zoo.tasks import load_task


def test_alignment_recovers_an_exact_permutation():
    task = load_task("digits")
    spec = ArchSpec("cnn2d", task.input_shape, 10, hidden=(4, 6), fc_hidden=(8,), activation="relu")
    res = train_population(task, spec, [HParams(seed=1, lr=3e-3)], Schedule(2, batch_size=64))
    a = {k: v[0] for k, v in res.checkpoints[2].items()}
    b = random_symmetry(spec, a, seed=5, kind=RandomSymmetry(scale=False))  # a pure permutation
    aligned, _ = align(spec, a, b)
    for k in a:
        torch.testing.assert_close(aligned[k], a[k])


def test_alignment_finds_a_transformers_permutations():
    """Stream, heads, query/key and value channels inside each head, MLP units: every permutation of a
    ViT's weights is undone, and the permutations returned are the ones applied."""
    from conftest import MODELS, random_model

    from peace.nets.symmetry import ViTSymmetry, vit_transform

    for task_name, kw in [(t, kw) for t, kw in MODELS if kw["family"] == "vit"]:
        _, spec, a = random_model(task_name, kw)
        d, m, heads, depth = spec.hidden[0], spec.fc_hidden[0], spec.heads, spec.blocks[0]
        g = torch.Generator().manual_seed(3)
        stream, mlp = torch.randperm(d, generator=g), [torch.randperm(m, generator=g) for _ in range(depth)]
        ph = [torch.randperm(heads, generator=g) for _ in range(depth)]
        qk = [torch.stack([torch.randperm(d // heads, generator=g) for _ in range(heads)]) for _ in range(depth)]
        b = vit_transform(spec, a, ViTSymmetry(stream=stream, mlp=mlp, heads=ph, qk=qk))
        aligned, found = align(spec, a, b)
        for k in a:
            torch.testing.assert_close(aligned[k], a[k], msg=f"{spec.describe()} {k}")
        assert torch.equal(stream[found[0]], torch.arange(d))  # B's channel found[i] is A's channel i
        for blk in range(depth):
            rows = (ph[blk].unsqueeze(1) * (d // heads) + qk[blk]).reshape(-1)
            assert torch.equal(rows[found[1 + 3 * blk]], torch.arange(d))
            values = ph[blk].unsqueeze(1) * (d // heads) + torch.arange(d // heads)  # whole heads moved, no v perm
            assert torch.equal(values.reshape(-1)[found[2 + 3 * blk]], torch.arange(d))
            assert torch.equal(mlp[blk][found[3 + 3 * blk]], torch.arange(m))


def test_loss_barrier_between_independent_models_drops_after_alignment():
    task = load_task("digits")
    spec = ArchSpec("mlp", task.input_shape, 10, hidden=(32, 32), activation="relu")
    res = train_population(task, spec, [HParams(seed=11, lr=3e-3), HParams(seed=12, lr=3e-3)],
                           Schedule(15, batch_size=32))
    a, b = ({k: v[i] for k, v in res.checkpoints[15].items()} for i in (0, 1))
    X, y = torch.from_numpy(task.X_test), torch.from_numpy(task.y_test)
    naive = interpolation_path(spec, a, b, X, y, n_points=21)
    b_aligned, _ = align(spec, a, b)
    aligned = interpolation_path(spec, a, b_aligned, X, y, n_points=21)
    np.testing.assert_allclose(aligned["loss"][-1], naive["loss"][-1], rtol=1e-4)  # same model B
    assert loss_barrier(naive) > 0.05
    assert loss_barrier(aligned) < 0.5 * loss_barrier(naive)
    assert aligned["acc"].min() > naive["acc"].min()
