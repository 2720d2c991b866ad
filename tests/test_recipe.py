import pytest
import yaml

from peace.core.errors import PeaceError
from peace.zoo.recipe import expand, load_recipe, populations, preset_names, recipe_from_dict


def test_presets_expand():
    assert {"tiny", "demo", "tetris-seed", "tetris-hyp", "digits-seed"} <= set(preset_names())
    demo = expand(load_recipe("demo"))
    assert sum(len(r.schedule.checkpoints) for r in demo) >= 5000
    assert len({r.task for r in demo}) >= 6 and {r.spec.family for r in demo} == {"mlp", "cnn1d", "cnn2d"}
    assert any(r.parent_run for r in demo)


def test_populations_group_same_shape_runs_in_chunks():
    runs = expand(load_recipe("tetris-seed"))
    pops = populations(runs, chunk_size=300)
    assert [len(p) for p in pops] == [300, 300, 300, 100]


BASE = {"name": "mine", "groups": [{"name": "g", "tasks": ["tetris"], "architecture": {"hidden": [4]}}]}


@pytest.mark.parametrize("patch, msg", [
    ({"colour": 1}, "unknown key in recipe 'colour'; valid: chunk_size, description, encoder_config, encoder_set, finetune, groups, name"),
    ({"groups": [{"name": "g", "tasks": ["tetris"], "architecture": {}, "learning_rate": 1}]},
     "unknown key in groups\\[0\\] 'learning_rate'; valid: .*lr"),
    ({"groups": [{"name": "g", "tasks": ["imagenet"], "architecture": {}}]}, "unknown task 'imagenet'"),
    ({"groups": [{"name": "g", "tasks": ["tetris"], "architecture": {"activation": "swish"}}]}, "unknown activation 'swish'"),
    ({"groups": [{"name": "g", "tasks": ["wine"], "architecture": {"family": "cnn2d"}}]}, "task 'wine': cnn2d needs inputs"),
    ({"groups": [{"name": "g", "tasks": ["tetris"]}]}, "missing required key\\(s\\) \\['architecture'\\]"),
    ({"groups": []}, "at least one entry under 'groups'"),
    ({"finetune": [{"name": "f", "parent_group": "nope", "tasks": ["synth-1"]}]}, "unknown parent_group 'nope'"),
    ({"finetune": [{"name": "f", "parent_group": "g", "tasks": ["digits"]}]}, "does not fit parent task 'tetris'"),
    ({"groups": [{"name": "g", "tasks": ["tetris"], "architecture": {}, "lr": [0.1, 0.1]}]}, "same run twice"),
])
def test_bad_recipes_are_named(patch, msg):
    with pytest.raises(PeaceError, match=msg):
        recipe_from_dict({**BASE, **patch})


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(PeaceError, match="unknown preset 'huge'; valid: .*demo.*tiny"):
        load_recipe("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(PeaceError, match="not valid YAML"):
        load_recipe(path=bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert len(expand(load_recipe(path=good))) == 1
