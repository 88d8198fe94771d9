"""The grid language (lorasec.config.grid): points as study, purify and reproduce write them, and the cells of a
grid of axes and zip groups."""

import pytest

from lorasec import config
from lorasec.config import ConfigError, grid


def test_points_in_every_spelling_mean_the_same():
    assert config.parse_attack("badnets@0.05", 1) == config.parse_attack("badnets[poison_rate=0.05]", 1)
    assert config.parse_attack("none", 1).poison_rate == 0.0
    assert config.parse_arm("lora@1e-3") == config.parse_arm("lora[lr=0.001]") == ("lora", 0.001)
    assert config.parse_defence("rora_tr[tr=20, tr_k=8]") == ("rora_tr", {"tr": 20.0, "tr_k": 8})
    assert config.parse_defence(" rora_cl ") == ("rora_cl", {})


@pytest.mark.parametrize("parse, text, message", [
    (config.parse_defence, "rora_tr[tr=20, tr=3]", "'tr' is given twice"),
    (config.parse_defence, "rora_tr[tr_k=2.5]", "tr_k = '2.5' must be an integer"),
    (config.parse_defence, "rora_cl[cl=inf]", "must be a finite number"),
    (config.parse_defence, "rora_cl[tr=1]", "'tr': rora_cl reads cl of [rora]"),
    (config.parse_defence, "full[cl=1]", "full has no settings to vary"),
    (config.parse_defence, "rora_cl@0.3", "rora_cl takes no @VALUE"),
    (config.parse_defence, "rora_cl[cl=0.3", "write NAME[field=value, ...]"),
    (config.parse_defence, "trojan", "'trojan' must be one of full, lora"),
    (lambda t: config.parse_attack(t, 1), "badnets", "needs a poison rate; write KIND@RATE"),
    (lambda t: config.parse_attack(t, 1), "badnets@x", "poison_rate = 'x' must be a number"),
    (lambda t: config.parse_attack(t, 1), "badnets@1.5", "attacks.poison_rate = 1.5: must lie in [0, 1]"),
    (config.parse_arm, "lora", "needs lr"),
    (config.parse_arm, "lora@-1", "lr = -1.0: must be > 0"),
])
def test_a_bad_point_is_one_line_naming_the_list_and_the_fix(parse, text, message):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cells_are_the_product_of_axes_and_zip_groups_in_order():
    axes = {"attack.poison_rate": (0.01, 0.1), "adapter.rank": (4, 8, 16)}
    zips = ({"adapter.method": ("full", "lora"), "train.lr": (1e-4, 1e-3)},)
    cells = grid.cells(axes, zips)
    assert len(cells) == grid.size(axes, zips) == 12
    assert cells[0] == {"attack.poison_rate": 0.01, "adapter.rank": 4, "adapter.method": "full", "train.lr": 1e-4}
    assert cells[1]["adapter.method"] == "lora" and cells[2]["adapter.rank"] == 8  # the last block varies fastest
    assert grid.cells({}, ()) == [{}] and grid.size({}, ()) == 1


def test_set_field_builds_sections_and_refuses_to_descend_into_a_value():
    raw = {"seed": 3}
    grid.set_field(raw, "train.lr", 1e-4)
    grid.set_field(raw, "train.steps", 7)
    assert raw == {"seed": 3, "train": {"lr": 1e-4, "steps": 7}}
    with pytest.raises(ConfigError, match="seed is a value, not a section"):
        grid.set_field(raw, "seed.x", 1)
