"""The engine's acceptance check on the synthetic task with every cue on topic, from a masked-LM pretrained encoder:
LoRA and full fine-tuning both exceed 90% clean accuracy, and a 5% dirty-label BadNets backdoor exceeds 90% ASR
under full fine-tuning."""

import pytest

from lorasec.config import (
    AdapterConfig,
    AttackConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from lorasec.pipelines.run import train_run

pytestmark = pytest.mark.slow  # more than ~20 s, or the network


def _cfg(checkpoint, method, attack=AttackConfig()):
    """Every cue on topic (cue_strength 1): the default task's ceiling is about 90%, these check training works."""
    return RunConfig(data=DataConfig(cue_strength=1.0), model=ModelConfig(pretrained=str(checkpoint)),
                     adapter=AdapterConfig(method=method), attack=attack,
                     train=TrainConfig(steps=500, lr=1e-3)).validate()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_clean_accuracy_above_90_from_pretrained(small_pretrained, method):
    results = train_run(_cfg(small_pretrained, method), progress=False)
    assert results["clean_accuracy"] > 0.9
    assert results["attack_success_rate"] is None
    if method == "lora":
        assert results["trainable_parameters"] < results["total_parameters"] / 4


def test_dirty_label_backdoor_succeeds_under_full_fine_tuning(small_pretrained):
    attack = AttackConfig(kind="badnets", poison_rate=0.05, target_label=1)
    results = train_run(_cfg(small_pretrained, "full", attack), progress=False)
    assert results["num_poisoned"] == 100
    assert results["clean_accuracy"] > 0.9
    assert results["attack_success_rate"] > 0.9


def test_fine_tuning_on_another_synthetic_language_is_refused(small_pretrained):
    import dataclasses

    from lorasec.config import ConfigError

    cfg = dataclasses.replace(_cfg(small_pretrained, "lora"), data=DataConfig(vocab_size=500))
    with pytest.raises(ConfigError, match="synthetic language differs"):
        train_run(cfg, progress=False)


def test_csv_task_trains_end_to_end(tmp_path):
    """data.source = 'file': CSV in, word-level vocabulary from the training texts, BadNets poisoning."""
    import csv

    from conftest import tiny_run

    from lorasec import config
    from lorasec.config import ConfigError
    from lorasec.data import synthetic

    train, test = synthetic.train_test(DataConfig(num_train=200, num_test=60))
    for name, data in (("train.csv", train), ("test.csv", test)):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(zip(data.texts, ["neg" if y == 0 else "pos" for y in data.labels]))
    cfg = tiny_run(data=DataConfig(source="file", train_file=str(tmp_path / "train.csv"),
                                   test_file=str(tmp_path / "test.csv"), seq_len=32),
                   attack=AttackConfig(kind="badnets", poison_rate=0.05, target_label=1))
    results = train_run(cfg, tmp_path / "run", progress=False)
    assert results["num_train"] == 200 and results["num_test"] == 60 and results["num_poisoned"] == 10
    assert 0.0 <= results["attack_success_rate"] <= 1.0
    # The diagnostics rebuild the run's vocabulary (from the POISONED training texts) and load its weights.
    from lorasec.pipelines import diagnose
    from lorasec.pipelines.ntk_report import kernel_report
    from lorasec.pipelines.run import load_run

    assert kernel_report(cfg, tmp_path / "ntk", run_dir=tmp_path / "run", num_examples=4)["lora"]["parameters"] > 0
    assert len(diagnose.diagnose(load_run(tmp_path / "run"))["spectral"]) == 6
    too_big = config.replace_config(cfg, train={"batch_size": 300})
    with pytest.raises(ConfigError, match="train.batch_size = 300: must be <= the 200 training examples"):
        train_run(too_big, progress=False)
