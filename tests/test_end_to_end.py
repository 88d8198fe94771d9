"""The engine's acceptance check on the synthetic task, from a masked-LM pretrained encoder:
LoRA and full fine-tuning both exceed 90% clean accuracy, and a 5% dirty-label BadNets backdoor exceeds 90% ASR
under full fine-tuning."""

import pytest

from lorasec.config import AdapterConfig, AttackConfig, ModelConfig, RunConfig, TrainConfig
from lorasec.run import train_run


def _cfg(checkpoint, method, attack=AttackConfig()):
    return RunConfig(model=ModelConfig(pretrained=str(checkpoint)), adapter=AdapterConfig(method=method),
                     attack=attack, train=TrainConfig(steps=500, lr=1e-3)).validate()


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
