"""Names taken from user data never reach outside the command's output root, and no recursive delete
leaves the directory its caller owns (issue 29: ``peace ablate`` and the pipeline wrote and deleted
outside ``--out`` / ``--root``)."""
import pytest
from conftest import run_peace

from peace.core.errors import PeaceError
from peace.core.paths import replacing, safe_name
from peace.orchestrate.ablation import Configuration, load_grid, run_one
from peace.orchestrate.pipeline import pipeline_steps

HOSTILE = ["..", "../x", "a/../../b", "/etc", "a/b", "a\\b", ".hidden", "", "a\x1b[31m", "a\u202eb", "x" * 101,
           "a..b", " a", "-rf"]


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_name_refuses_anything_but_one_plain_component(name):
    with pytest.raises(PeaceError, match="cannot be used as a file name"):
        safe_name(name, "configuration name")


def test_safe_name_keeps_ordinary_names():
    for name in ["full", "no-permutations", "rounds_1", "v1.2", "A" * 100, "0"]:
        assert safe_name(name, "name") == name
    with pytest.raises(PeaceError, match="cannot be used as a file name"):
        safe_name(3, "name")  # not a string at all


def _grid(tmp_path, text):
    (tmp_path / "grid.yaml").write_text("zoo: z\nbase: tiny\n" + text)
    return tmp_path / "grid.yaml"


@pytest.mark.parametrize("text, match", [
    ("configurations:\n  - {name: ../../escape}\n", "configuration name '../../escape' cannot be used"),
    ("configurations:\n  - {name: a/b}\n", "configuration name 'a/b' cannot be used"),
    ("seeds: ['../x']\nconfigurations:\n  - {name: a}\n", r"seeds must be .*integers.*'\.\./x'"),
    ("seeds: [1.5]\nconfigurations:\n  - {name: a}\n", r"seeds must be .*integers"),
    ("seeds: [true]\nconfigurations:\n  - {name: a}\n", r"seeds must be .*integers"),
    ("seeds: [-1]\nconfigurations:\n  - {name: a}\n", r"seeds must be .*integers"),
    ("seeds: [99999999999999999999]\nconfigurations:\n  - {name: a}\n", r"seeds must be .*integers"),
])
def test_grids_whose_names_or_seeds_would_leave_out_are_refused(tmp_path, text, match):
    with pytest.raises(PeaceError, match=match):
        load_grid(_grid(tmp_path, text))


def test_run_one_refuses_a_hand_built_bad_name_before_touching_disk(tmp_path):
    grid = load_grid("tiny")
    outside = tmp_path / "outside"
    with pytest.raises(PeaceError, match="cannot be used as a file name"):
        run_one(grid, Configuration(name="../../outside"), 0, tmp_path / "out" / "a")
    with pytest.raises(PeaceError, match="seed"):
        run_one(grid, grid.configurations[0], "../../outside", tmp_path / "out" / "a")
    assert not outside.exists() and not (tmp_path / "out").exists()


def test_the_cli_refuses_such_a_grid_with_one_line(tmp_path):
    r = run_peace("ablate", "--grid", _grid(tmp_path, "configurations:\n  - {name: ../evil}\n"), "--out",
                  tmp_path / "o", check=False)
    assert r.returncode == 2 and "cannot be used as a file name" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "evil-s0").exists()


def test_pipeline_name_must_be_one_component(tmp_path):
    for name in ["../other", "a/b", ".."]:
        with pytest.raises(PeaceError, match="--name"):
            pipeline_steps("tiny", "tiny", root=tmp_path, name=name)
    steps = pipeline_steps("tiny", "tiny", root=tmp_path, name="mine")
    assert all(p.resolve().is_relative_to(tmp_path.resolve()) for s in steps for p in s.outputs)


def test_replacing_only_inside_its_owner(tmp_path):
    owner, neighbour = tmp_path / "root", tmp_path / "neighbour"
    (owner / "runs" / "a").mkdir(parents=True)
    (owner / "runs" / "a" / "old.txt").write_text("old step")
    neighbour.mkdir()
    (neighbour / "keep.txt").write_text("user data")
    (owner / "runs" / "link").symlink_to(neighbour, target_is_directory=True)
    for bad in [neighbour, owner, owner / "runs" / ".." / ".." / "neighbour", owner / "runs" / "link"]:
        with pytest.raises(PeaceError, match="refusing to replace"):
            with replacing(bad, owner):
                pass
    assert (neighbour / "keep.txt").read_text() == "user data"
    with pytest.raises(RuntimeError):  # a failed rebuild brings the old directory back
        with replacing(owner / "runs" / "a", owner):
            (owner / "runs" / "a").mkdir()
            (owner / "runs" / "a" / "half.txt").write_text("half")
            raise RuntimeError("rebuild failed")
    assert [p.name for p in (owner / "runs" / "a").iterdir()] == ["old.txt"]
    with replacing(owner / "runs" / "a", owner):
        (owner / "runs" / "a").mkdir()
        (owner / "runs" / "a" / "new.txt").write_text("new")
    assert [p.name for p in (owner / "runs" / "a").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in (owner / "runs").iterdir()) == ["a", "link"]  # nothing left aside
