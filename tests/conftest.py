import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DGLBACKEND", "pytorch")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny preset, built once per test session (per xdist worker)."""
    from peace.recipe import load_recipe
    from peace.zoo import build_zoo

    return build_zoo(load_recipe("tiny"), tmp_path_factory.mktemp("zoo") / "tiny", progress=False)


def run_peace(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run the real ``python -m peace`` command line."""
    p = subprocess.run([sys.executable, "-m", "peace", *map(str, args)], capture_output=True, text=True, cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"peace {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p
