import os

# xdist workers share the cores: one intra-op thread each, set before torch (and its OpenMP runtime)
# loads so that every thread and subprocess gets it, since OpenMP threads that outnumber the cores
# spin against each other and slow small tensor ops severalfold; numba (UMAP) too, whose OpenMP layer
# runs on torch's libgomp
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from peace.nets.architectures import ArchSpec, build_module
from peace.zoo.tasks import load_task

os.environ.setdefault("DGLBACKEND", "pytorch")
ROOT = Path(__file__).resolve().parents[1]

MODELS = [  # (task, spec kwargs)
    ("tetris", dict(family="mlp", hidden=(5,), activation="tanh", bias=False)),
    ("synth-1", dict(family="mlp", hidden=(7, 6), activation="relu")),
    ("synth-1", dict(family="mlp", hidden=(7, 6), activation="identity", bias=False)),
    ("digits", dict(family="cnn2d", hidden=(3, 4), fc_hidden=(6,), activation="leaky_relu", pool="max")),
    ("digits", dict(family="cnn2d", hidden=(3,), activation="tanh", pool="avg", bias=False)),
    ("mnist1d", dict(family="cnn1d", hidden=(3, 4), activation="relu", pool="avg")),
    ("mnist1d", dict(family="cnn1d", hidden=(4,), fc_hidden=(5,), activation="identity", pool="none")),
    ("digits", dict(family="mlp", hidden=(9,), activation="gelu")),
    ("digits", dict(family="mlp", hidden=(9,), activation="sigmoid")),
    ("digits", dict(family="resnet", hidden=(3, 4), blocks=(2, 1), norm="batch", bias=False, activation="relu")),
    ("digits", dict(family="resnet", hidden=(3,), blocks=(2,), norm="none", activation="tanh")),
    ("digits", dict(family="resnet", hidden=(2, 3), blocks=(1, 1), norm="batch", activation="leaky_relu",
                    stem_pool="max")),
    ("digits", dict(family="cnn2d", hidden=(3, 4), norm="batch", bias=False, activation="relu", pool="max")),
    ("synth-1", dict(family="mlp", hidden=(7, 6), norm="batch", activation="tanh")),
    ("synth-1", dict(family="mlp", hidden=(7, 6), norm="layer", activation="relu")),
    ("mnist1d", dict(family="cnn1d", hidden=(3, 4), norm="layer", activation="tanh", pool="avg")),
    ("digits", dict(family="vit", hidden=(8,), fc_hidden=(12,), blocks=(2,), heads=2, kernel_size=4, pool="cls",
                    norm="layer", activation="gelu")),
    ("mnist1d", dict(family="vit", hidden=(6,), fc_hidden=(8,), blocks=(1,), heads=3, kernel_size=8, pool="avg",
                     norm="layer", activation="relu", bias=False)),
]


def random_model(task_name, kw, seed=0):
    """(task, spec, params) with non-trivial biases (and BatchNorm statistics) and one dead unit."""
    task = load_task(task_name)
    spec = ArchSpec(input_shape=task.input_shape, n_classes=task.n_classes, **kw)
    torch.manual_seed(seed)
    net = build_module(spec)
    for p in net.parameters():  # non-trivial biases and a dead unit
        torch.nn.init.normal_(p, std=0.5)
    params = {k: v.detach().clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k in params:
        if k.endswith("running_mean"):
            params[k] = 0.5 * torch.randn(params[k].shape)
        elif k.endswith("running_var"):
            params[k] = 0.5 + torch.rand(params[k].shape)
    dead = spec.layers[1 if spec.residuals else 3 if spec.family == "vit" else 0]  # no residual input: a ResNet's
    # block-inner unit, a Transformer's MLP unit
    params[dead.weight_name][0] = 0.0
    if dead.bias:
        params[dead.bias_name][0] = 0.0
    return task, spec, params


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny preset, built once per test session (per xdist worker)."""
    from peace.zoo.recipe import load_recipe
    from peace.zoo.store import build_zoo

    return build_zoo(load_recipe("tiny"), tmp_path_factory.mktemp("zoo") / "tiny", progress=False)


QUICK = ["augment.distill_epochs=1", "train.epochs=3", "train.patience=5"]


@pytest.fixture(scope="session")
def tiny_run(tiny_zoo, tmp_path_factory):
    """A 3-epoch encoder run on the tiny zoo, trained once per test session (per xdist worker)."""
    from peace.learn.runconfig import load_config
    from peace.learn.trainer import fit

    return fit(tiny_zoo, load_config("tiny", QUICK), tmp_path_factory.mktemp("run") / "tiny", progress=False)


def run_peace(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run the real ``python -m peace`` command line."""
    p = subprocess.run([sys.executable, "-m", "peace", *map(str, args)], capture_output=True, text=True, cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"peace {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def kill_when(cmd, ready, extra_delay, timeout=300, may_finish=False):
    """Start ``cmd``; once ``ready()`` holds, wait ``extra_delay`` s more and SIGKILL it (if still running).
    ``may_finish``: the kill point is a short window that the command may pass between two looks."""
    proc = subprocess.Popen([sys.executable, "-m", "peace", *map(str, cmd)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            assert may_finish and proc.returncode == 0, proc.stderr.read().decode()
            return False
        assert time.time() < deadline, "the command never reached the kill point"
        time.sleep(0.005)
    time.sleep(extra_delay)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


@pytest.fixture(scope="session")
def artifacts(tiny_run, tmp_path_factory):
    """An artifacts root as the pipeline writes it: a run with a decoder, one embedding set, one ablation summary."""
    import shutil

    import pandas as pd

    from peace.learn.decoder import DecoderConfig
    from peace.learn.generation import train_decoder
    from peace.serve.export import export_embeddings

    root = tmp_path_factory.mktemp("artifacts")
    shutil.copytree(tiny_run.path, root / "runs" / "tiny")
    train_decoder(root / "runs" / "tiny", DecoderConfig(min_models=2, epochs=20, hidden=32, patience=10))
    export_embeddings(root / "runs" / "tiny", root / "embeddings" / "tiny", trees=10, progress=False)
    rows = [{"configuration": c, "seed": s, "status": "ran", "error": "", "retrieval_task.map": m + 0.01 * s,
             "invariance.ratio": 0.0} for c, m in (("full", 0.5), ("no-permute", 0.4)) for s in (0, 1)]
    (root / "ablations" / "tiny").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "ablations" / "tiny" / "summary.parquet")
    return root
