"""One error path: every mistake a user can make ends as one line `peace: error: ...` (or argparse's
usage error) with exit code 2 and no traceback; property tests over arguments, overrides and recipes."""
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from peace.cli import main
from peace.core.errors import PeaceError
from peace.learn.runconfig import load_config
from peace.zoo.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_zoo):
    d = tmp_path_factory.mktemp("cli")
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).state_dict(), d / "m.pt")
    (d / "afile").write_text("x")
    for name, meta in (("epoch-text", {"epoch": "abc"}), ("claims-identity", {"run_id": "x", "status": "ok"})):
        (d / name).mkdir()
        shutil.copy(d / "m.pt", d / name / "m.pt")
        (d / name / "config.json").write_text(json.dumps({"activation": "relu", "metadata": meta}))
    shutil.copytree(tiny_zoo.path, d / "list-zoo")
    (d / "list-zoo" / "zoo.json").write_text("[1, 2]")
    (d / "recipe-text-epochs.yaml").write_text("name: r\ngroups:\n  - {name: g, tasks: [synth-1], architecture: {}, "
                                               "epochs: ten}\n")
    (d / "recipe-binary.yaml").write_bytes(bytes(range(256)))
    (d / "recipe-long-int.yaml").write_text("name: r\ngroups:\n  - {name: g, tasks: [synth-1], epochs: " + "9" * 5000 + "}\n")
    (d / "recipe-deep.yaml").write_text("name: r\ngroups: " + "[" * 50_000 + "]" * 50_000 + "\n")
    (d / "grid-long-int.yaml").write_text("zoo: z\nseeds: [" + "9" * 5000 + "]\nconfigurations: [{name: a}]\n")
    return d


CASES = [  # argv (FILES = the fixture's folder, ZOO = the tiny zoo), what the message must say
    ("zoo add ZOO FILES/m.pt --activation relu --input-shape a,b", "--input-shape: 'a,b' must be positive integers"),
    ("zoo add ZOO FILES/m.pt --activation relu --max-size -3", "--max-size: '-3' must be a positive number"),
    ("zoo add ZOO FILES/m.pt --model-config FILES/missing.json", "missing.json: no such model config file"),
    ("zoo add ZOO FILES/epoch-text", "metadata 'epoch' = 'abc' must be an integer"),
    ("zoo add ZOO FILES/claims-identity", "metadata may not set 'run_id'"),
    ("zoo info FILES/list-zoo", "zoo.json is corrupted \\(it holds a list"),
    ("zoo build --config FILES/recipe-text-epochs.yaml --out FILES/new", "epochs must be an integer between 0 and 10,000"),
    ("zoo build --config FILES/recipe-binary.yaml --out FILES/new", "is not text"),
    ("zoo build --preset tiny --out FILES/afile", "afile is a file"),
    ("train --zoo ZOO --out FILES/afile --config tiny", "afile is a file"),
    ("train --zoo ZOO --out FILES/run --config tiny --set train.epochs=abc", "'epochs' must be an integer, got 'abc'"),
    ("train --zoo ZOO --out FILES/run --config tiny --set train.lr=[1]", "'lr' must be a number"),
    ("train --zoo ZOO --out FILES/run --config tiny --set train.epochs=[", "not valid YAML"),
    ("embed --run FILES --out FILES/afile", "afile is a file"),
    ("zoo build --config FILES/recipe-long-int.yaml --out FILES/new", "recipe-long-int.yaml holds a number too long"),
    ("zoo build --config FILES/recipe-deep.yaml --out FILES/new", "recipe-deep.yaml nests too deeply"),
    ("ablate --grid FILES/grid-long-int.yaml --out FILES/new", "grid-long-int.yaml holds a number too long"),
    ("train --zoo ZOO --out FILES/run --config tiny --set train.epochs=" + "9" * 5000,
     "override 'train.epochs': the value holds a number too long"),
    ("train --zoo ZOO --out FILES/run --config tiny --set train.holdout_tasks=" + "[" * 50_000 + "]" * 50_000,
     "override 'train.holdout_tasks': the value nests too deeply"),
    ("train --zoo ZOO --out FILES/run --config tiny --set".split() + [  # an alias bomb: 10^6 values, one argument
        "train.holdout_tasks=[&a [1,1,1,1,1,1,1,1,1,1]," + ",".join(
            f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(6)) + "]"],
     "override 'train.holdout_tasks': the value: more than 100,000 values once its aliases are expanded"),
    ("query m --embeddings FILES", "not a complete embedding set"),
]


@pytest.mark.parametrize("argv, msg", CASES, ids=[" ".join(c[0] if isinstance(c[0], list) else [c[0]])[:60] for c in CASES])
def test_bad_input_gets_one_line_and_exit_2(files, tiny_zoo, capsys, argv, msg):
    args = [a.replace("FILES", str(files)).replace("ZOO", str(tiny_zoo.path))
            for a in (argv if isinstance(argv, list) else argv.split())]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    import re
    assert re.search(msg, err), err
    assert not (files / "new").exists() and not (files / "run").exists()


yaml_values = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.booleans(), st.none(),
                        st.text("abc01.-[]{}:, e", max_size=8), st.lists(st.integers(-3, 3), max_size=3))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["train.epochs", "train.lr", "train.batch_size", "train.holdout_tasks", "train.amp",
                            "encoder.hidden", "encoder.pooling", "encoder.aux_targets", "augment.permute",
                            "augment.functional_k", "seed", "train.max_models_per_epoch"]),
       value=st.text("abc01.-[]{}:, e\"'", max_size=10))
def test_property_overrides_load_or_fail_clearly(key, value):
    try:
        load_config("tiny", [f"{key}={value}"])
    except PeaceError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(["seeds", "epochs", "lr", "batch_size", "dropout", "weight_decay", "init", "optimizer",
                              "checkpoints", "tasks", "architecture", "name"]),
       value=yaml_values, top=st.sampled_from(["description", "chunk_size", "name", None]), top_value=yaml_values)
def test_property_recipes_validate_or_fail_clearly(field, value, top, top_value):
    group = {"name": "g", "tasks": ["synth-1"], "architecture": {"hidden": [4]}, field: value}
    recipe = {"name": "r", "groups": [group]}
    if top:
        recipe[top] = top_value
    try:
        recipe_from_dict(recipe)
    except PeaceError:
        pass


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=st.lists(st.tuples(st.sampled_from(["--activation", "--input-shape", "--pool", "--max-size", "--task",
                                                "--group"]), st.text("abc01,.-x ", min_size=1, max_size=6)),
                     max_size=4))
def test_property_import_options_never_crash(files, capsys, opts):
    """Any values of the import options: the model is read or refused, then the (broken) zoo refuses."""
    argv = ["zoo", "add", str(files / "list-zoo"), str(files / "m.pt")] + [x for o in opts for x in o]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2 and "Traceback" not in capsys.readouterr().err


def test_zoo_info_checks_shards_and_verify_checks_weights(tiny_zoo, tmp_path, capsys):
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, zoo)
    assert main(["zoo", "info", str(zoo), "--verify"]) == 0
    assert "every model's weights match their checksums" in capsys.readouterr().out
    shard = sorted((zoo / "shards").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(8)  # flip the last weights: the file still opens
    shard.write_bytes(bytes(data))
    assert main(["zoo", "info", str(zoo)]) == 0 and "add --verify" in capsys.readouterr().out
    assert main(["zoo", "info", str(zoo), "--verify"]) == 2 and "do not match the manifest checksum" in capsys.readouterr().err
    shard.unlink()
    assert main(["zoo", "info", str(zoo)]) == 2 and "cannot be read" in capsys.readouterr().err


def test_a_scanned_weights_file_may_not_link_out_of_its_directory(files, tmp_path):
    from peace.intake.importers import load_model

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "model.pt").symlink_to(files / "m.pt")
    with pytest.raises(PeaceError, match="symbolic link out of the directory"):
        load_model(tmp_path / "repo", {"activation": "relu"})


HOSTILE_METADATA = [  # config.json metadata, what the one line must say
    ({"task": "synth\x1b[2J\u202eevil"}, "must be at most 200 printable characters"),
    ({"task": "../../etc"}, "must be a task name"),
    ({"task": 7}, "must be text"),
    ({"epoch": int("9" * 4000)}, "an integer of 4000 digits.* does not fit a 64-bit integer"),
    ({"test_acc": float("nan")}, "must be a finite number"),
    ({"test_acc": float("inf")}, "must be a finite number"),
    ({"group": "x" * 201}, "at most 200 printable characters"),
]


@pytest.mark.parametrize("meta, msg", HOSTILE_METADATA, ids=[m[1][:24] for m in HOSTILE_METADATA])
def test_hostile_metadata_is_refused_before_anything_is_written(files, tiny_zoo, tmp_path, capsys, meta, msg):
    import re

    zoo, model = tmp_path / "zoo", tmp_path / "model"
    shutil.copytree(tiny_zoo.path, zoo)
    model.mkdir()
    shutil.copy(files / "m.pt", model / "m.pt")
    (model / "config.json").write_text(json.dumps({"activation": "relu", "metadata": meta}))
    before = {p.relative_to(zoo): p.read_bytes() for p in zoo.rglob("*") if p.is_file()}
    assert main(["zoo", "add", str(zoo), str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(msg, err), err
    assert all(c.isprintable() or c == "\n" for c in err), "a raw control character reached the terminal"
    assert {p.relative_to(zoo): p.read_bytes() for p in zoo.rglob("*") if p.is_file()} == before


def test_config_json_nested_thousands_deep_is_one_line(files, tiny_zoo, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(files / "m.pt", model / "m.pt")
    (model / "config.json").write_text('{"metadata": ' + "[" * 50_000 + "]" * 50_000 + "}")
    assert main(["zoo", "add", str(tiny_zoo.path), str(model)]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_the_command_line_parses_model_files_in_an_isolated_child(files, tiny_zoo, tmp_path, monkeypatch, capsys):
    """Issue 29: `peace zoo add` and `peace query FILE` read untrusted files like the explorer's uploads, in a
    bounded child process: nothing in this process parses them."""
    from peace.intake import importers

    def parsed_here(*args, **kwargs):
        raise AssertionError("a model file was parsed in the command's own process")

    monkeypatch.setattr(importers, "load_model", parsed_here)
    monkeypatch.setattr(importers, "read_tensors", parsed_here)
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, zoo)
    assert main(["zoo", "add", str(zoo), str(files / "m.pt"), "--activation", "relu"]) == 0, capsys.readouterr().err
    assert "added 1 model(s)" in capsys.readouterr().out


def test_output_piped_to_a_reader_that_leaves_ends_quietly(tiny_zoo):
    """`peace zoo info Z | head -1`: once the reader has gone, the command stops without an error line (it
    printed "peace: error: Broken pipe: check the path ..." before), with the shell's SIGPIPE status."""
    import subprocess
    import sys

    from conftest import ROOT

    p = subprocess.Popen([sys.executable, "-m", "peace", "zoo", "info", str(tiny_zoo.path)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # the reader leaves before the first line
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141 and "error" not in err and "Traceback" not in err, err
