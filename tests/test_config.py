"""Bad configuration is refused up front with one line naming the field, the value and what is allowed."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorasec import cli, config
from lorasec.config import ConfigError, RunConfig, schema

BAD = {
    "unknown section": ("[trainer]\nlr = 1e-3\n", [], "trainer: unknown field; did you mean 'train'?"),
    "unknown key": ("[train]\nlrr = 1e-3\n", [], "train.lrr: unknown field; did you mean 'lr'?"),
    "wrong type": ("[train]\nsteps = 'many'\n", [], "train.steps = 'many': must be an integer"),
    "non-integral int": ("", ["train.steps=10.5"], "train.steps = 10.5: must be an integer"),
    "bool for number": ("", ["train.lr=true"], "train.lr = True: must be a number"),
    "negative lr": ("", ["train.lr=-1e-3"], "train.lr = -0.001: must be > 0"),
    "poison rate above one": ("", ["attack.poison_rate=1.5"], "attack.poison_rate = 1.5: must lie in [0, 1]"),
    "unknown attack": ("", ["attack.kind=trojan"], "attack.kind = 'trojan': must be one of none, label_flip"),
    "unknown adapter": ("", ["adapter.method=prefix"], "adapter.method = 'prefix': must be one of full, lora"),
    "rank zero": ("", ["adapter.rank=0"], "adapter.rank = 0: must be >= 1"),
    "alpha zero": ("", ["adapter.alpha=0"], "adapter.alpha = 0.0: must be > 0"),
    "unknown init": ("", ["adapter.init=orthogonal"], "adapter.init = 'orthogonal': must be one of"),
    "unknown schedule": ("", ["train.schedule=cyclic"], "train.schedule = 'cyclic': must be one of"),
    "warmup beyond steps": ("", ["train.steps=10", "train.warmup_steps=20"],
                            "train.warmup_steps = 20: must be <= train.steps = 10"),
    "heads do not divide width": ("", ["model.num_heads=5"], "model.num_heads = 5: must divide model.d_model = 64"),
    "target label out of range": ("", ["attack.kind=badnets", "attack.target_label=2"],
                                  "attack.target_label = 2: must be < data.num_classes = 2"),
    "batch larger than data": ("", ["data.num_train=10"], "train.batch_size = 32: must be <= data.num_train = 10"),
    "missing data file": ("", ["data.source=file", "data.train_file=/no/such.csv", "data.test_file=/no/t.csv"],
                          "data.train_file = '/no/such.csv': file not found"),
    "missing pretrained checkpoint": ("", ["model.pretrained=/no/ckpt"],
                                      "model.pretrained = '/no/ckpt': not a lorasec checkpoint (model.json)"),
    "unknown real set": ("", ["data.source='imdb'"], "data.source = 'imdb': must be one of synthetic, file, "
                                                     "rotten-tomatoes, bbc-news, sms-spam"),
    "init_from and pretrained": ("", ["model.init_from=/no/run", "model.pretrained=minilm-l6"],
                                 "set either model.pretrained or model.init_from, not both"),
    "sequence too short": ("", ["data.seq_len=10"], "data.seq_len = 10: must be >= data.max_len + 1 = 25"),
    "label noise of one": ("", ["data.label_noise=1.0"], "data.label_noise = 1.0: must lie in [0, 1)"),
    "dropout out of range": ("", ["adapter.dropout=-0.1"], "adapter.dropout = -0.1: must lie in [0, 1)"),
    "override without equals": ("", ["train.lr"], "--set 'train.lr': expected KEY=VALUE"),
    "override into a value": ("seed = 3\n", ["seed.x=1"], "--set 'seed.x=1': seed is a value, not a section"),
    "clean-label flipping": ("", ["attack.kind=label_flip", "attack.label_consistent=true"],
                             "attack.label_consistent = True: only applies to trigger attacks"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_gives_one_line_error(tmp_path, case):
    toml, overrides, expected = BAD[case]
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        config.check_environment(config.load(RunConfig, path, overrides))
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


@pytest.mark.parametrize("overrides", [["data.source=file", "data.test_file=/no/b.csv", "data.train_file=/no/a.csv"],
                                       ["model.pretrained=/no/ckpt"], ["model.init_from=/no/run"],
                                       ["data.source=sms-spam", "data.data_dir=/no/dir"], ["data.num_train=10000000000"]])
def test_the_schema_reads_no_file_and_the_environment_check_does(overrides):
    """A config's values load anywhere (a run directory moved to another machine still loads); what it needs of
    this machine (files, memory) is the separate check every command takes before it works."""
    cfg = config.load(RunConfig, None, overrides)
    with pytest.raises(ConfigError, match=overrides[-1].split("=")[0]):
        config.check_environment(cfg)


def test_a_memory_refusal_names_the_field_that_dominates():
    with pytest.raises(ConfigError, match=r"^model\.d_model = 1000000: needs about"):
        config.check_environment(config.load(RunConfig, None, ["model.d_model=1000000", "model.num_heads=1"]))
    with pytest.raises(ConfigError, match=r"^data\.seq_len = 100000: needs about"):
        config.check_environment(config.load(RunConfig, None, ["data.seq_len=100000"]))


def test_seeds_beyond_32_bits_are_refused_as_repeats_of_smaller_ones():
    """JAX keys take a 32-bit seed: 2**32 would draw exactly what seed 0 draws."""
    assert config.load(RunConfig, None, [f"seed={2**32 - 1}"]).seed == 2**32 - 1
    with pytest.raises(ConfigError, match=r"seed = 4294967296: must lie in \[0, 2\*\*32\)"):
        config.load(RunConfig, None, [f"seed={2**32}"])


_NEAR_WRAPS = st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**33, 2**40, 2**64, -1, -(2**32)])
_SEEDS = st.one_of(st.integers(-(2**70), 2**70), _NEAR_WRAPS, st.integers(0, 2**32 - 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(_SEEDS, min_size=1, max_size=6))
def test_any_seeds_are_distinct_streams_or_one_line(values):
    """Every config kind that takes seeds: accepted exactly when each lies in [0, 2**32) and none repeats, so two
    accepted seeds never draw the same stream (congruent ones modulo 2**32 included); else one line naming them."""
    from lorasec.core import keys
    from lorasec.sweep_spec import spec_from_raw

    in_range = all(0 <= v < 2**32 for v in values)
    valid = in_range and len(set(values)) == len(values)
    for build, accepts in ((lambda: schema.StudyConfig(seeds=tuple(values)).validate(), valid),
                           (lambda: schema.PurifyConfig(seeds=tuple(values)).validate(), valid),
                           (lambda: spec_from_raw({"seeds": values, "axes": {}}, Path("spec.toml")), valid),
                           (lambda: [RunConfig(seed=v).validate() for v in values], in_range)):
        try:
            build()
        except ConfigError as err:
            assert not accepts and "\n" not in str(err) and "seed" in str(err)
            continue
        assert accepts, values
    if valid:
        drawn = {tuple(np.asarray(jax.random.key_data(keys.key(v, "params"))).ravel()) for v in values}
        assert len(drawn) == len(values)


def test_cli_reports_config_error_in_one_line_and_exit_code_2(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("[adapter]\nrank = -3\n")
    assert cli.main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lorasec: error: adapter.rank = -3: must be >= 1"
    assert not (tmp_path / "out").exists()


def test_cli_rank_above_layer_width_is_reported_without_traceback(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[model]\nd_model = 16\nnum_heads = 2\nd_ff = 32\n[adapter]\nrank = 20\n")
    proc = subprocess.run([sys.executable, "-m", "lorasec.cli", "train", str(path), "--out", str(tmp_path / "o"),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("lorasec: error: adapter.rank = 20: above min(in, out)")
    assert "Traceback" not in proc.stderr


def test_toml_syntax_error_and_missing_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(RunConfig, path)
    with pytest.raises(ConfigError, match="not found"):
        config.load(RunConfig, tmp_path / "absent.toml")


def test_overrides_parse_toml_values_and_defaults_validate():
    cfg = config.load(RunConfig, None, ["train.lr=3e-5", "adapter.targets=['query', 'value']",
                                        "attack.kind=badnets", "adapter.rslora=true"])
    assert cfg.train.lr == 3e-5 and cfg.adapter.targets == ("query", "value")
    assert cfg.attack.kind == "badnets" and cfg.adapter.rslora
    assert config.load(RunConfig, None, ["adapter.targets=query"]).adapter.targets == ("query",)
    assert config.load(config.PretrainConfig) == config.PretrainConfig()


def test_run_dir_config_round_trips(tmp_path):
    cfg = config.load(RunConfig, None, ["train.lr=2e-4", "attack.kind=sentence"])
    from lorasec.core import files

    files.write_json(tmp_path / "config.json", config.to_dict(cfg))
    assert config.load(RunConfig, tmp_path) == cfg
