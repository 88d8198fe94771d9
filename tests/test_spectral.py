"""Spectral diagnostics: intruder dimensions on a hand-computed case, strength, stable and effective ranks."""

import numpy as np
import pytest
from conftest import tiny_run

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, AttackConfig, ModelConfig
from lorasec.diagnostics import scale_sweep, spectral
from lorasec.pipelines import diagnose
from lorasec.pipelines.run import load_run, train_run
from lorasec.training import evaluation


def test_intruder_dimensions_hand_computed():
    # Pretrained (out=3, in=3): left singular vectors e1, e2, e3 (σ = 3, 2, 1).
    w_pre = np.diag([3.0, 2.0, 1.0])
    # Adding 10·vvᵀ with v = (1, 1, 1)/√3 makes a new top direction close to v.
    v = np.ones(3) / np.sqrt(3)
    w_tuned = w_pre + 10.0 * np.outer(v, v)
    out = spectral.intruder_dimensions(w_pre, w_tuned, k=1, epsilon=0.6)
    u = np.linalg.svd(w_tuned)[0][:, 0]
    assert out["max_cosine"][0] == pytest.approx(np.abs(u).max())
    assert out["count"] == int(np.abs(u).max() < 0.6)
    # A tuned matrix that only rescales the pretrained directions has no intruders at all.
    none = spectral.intruder_dimensions(w_pre, 2 * w_pre, k=3, epsilon=0.9)
    assert none["count"] == 0 and none["energy_share"] == 0.0 and none["max_cosine"] == pytest.approx([1, 1, 1])
    # (out=4, in=3): the pretrained column space is span(e1, e2, e3). Tuning adds 5 to entry (4, 1): the first
    # column becomes (3, 0, 0, 5), the top tuned direction (3, 0, 0, 5)/√34 with σ² = 34, whose best |cos|
    # with the pretrained directions is 3/√34 = 0.514: an intruder at ε = 0.6, not at ε = 0.5.
    tall_pre = np.vstack([np.diag([3.0, 2.0, 1.0]), np.zeros((1, 3))])
    tall_tuned = tall_pre.copy()
    tall_tuned[3, 0] = 5.0
    at_06 = spectral.intruder_dimensions(tall_pre, tall_tuned, k=1, epsilon=0.6)
    assert at_06["max_cosine"][0] == pytest.approx(3 / np.sqrt(34))
    assert at_06["count"] == 1 and at_06["energy_share"] == pytest.approx(34 / 39)
    assert spectral.intruder_dimensions(tall_pre, tall_tuned, k=1, epsilon=0.5)["count"] == 0
    assert at_06["epsilon_sweep"] == {"0.3": 0, "0.4": 0, "0.5": 0, "0.6": 1, "0.7": 1, "0.8": 1, "0.9": 1}


def test_strength_and_ranks():
    w_pre = np.diag([4.0, 1.0])
    delta = np.diag([0.5, 0.0])
    assert spectral.spectral_strength(w_pre, delta) == pytest.approx(8.0)
    assert spectral.spectral_strength(w_pre, np.zeros((2, 2))) == float("inf")
    assert spectral.stable_rank(w_pre) == pytest.approx(17 / 16)
    assert spectral.effective_rank(np.eye(4)) == pytest.approx(4.0)


def test_pair_report_converts_flax_layout():
    rng = np.random.default_rng(0)
    kernel_pre = rng.normal(size=(5, 3))            # lorasec (in=5, out=3)
    kernel_tuned = kernel_pre + 0.1 * rng.normal(size=(5, 3))
    report = spectral.spectral_pair_report(kernel_pre, kernel_tuned, k=3)
    assert report["shape_out_in"] == [3, 5]
    assert report["sigma_max_pre"] == pytest.approx(np.linalg.norm(kernel_pre, 2))


@pytest.mark.slow
def test_spectral_cli_on_runs(tmp_path, capsys):
    import json

    from conftest import tiny_run

    from lorasec import cli
    from lorasec.config import AdapterConfig, TrainConfig
    from lorasec.pipelines.run import train_run

    steps = TrainConfig(steps=6, batch_size=16, lr=1e-2)
    train_run(tiny_run(train=steps), tmp_path / "lora", progress=False)
    assert cli.main(["spectral", str(tmp_path / "lora")]) == 0
    report = json.loads((tmp_path / "lora" / "spectral" / "spectral.json").read_text())
    assert len(report) == 6 and all(np.isfinite(r["spectral_strength"]) for r in report.values())
    assert all(r["stable_rank_delta"] <= 4 + 1e-6 for r in report.values())  # rank-4 updates
    train_run(tiny_run(train=steps, adapter=AdapterConfig(method="full")), tmp_path / "full", progress=False)
    assert cli.main(["spectral", str(tmp_path / "full")]) == 0  # compared with its own (random) starting point
    full = json.loads((tmp_path / "full" / "spectral" / "spectral.json").read_text())
    assert set(full) == set(report)  # the same encoder matrices; the new head is left out
    numerical_rank = [sum(v > 1e-4 * r["singular_values_delta"][0] for v in r["singular_values_delta"])
                      for r in full.values()]
    assert min(numerical_rank) > 4  # not confined to rank 4 like the adapters
    capsys.readouterr()
    assert cli.main(["spectral", str(tmp_path / "lora"), "--base", str(tmp_path)]) == 2
    assert "only for full fine-tuning runs" in capsys.readouterr().err


def test_spectral_cli_alignment_and_sweep_on_a_backdoor_run(tmp_path, capsys):
    import json

    from conftest import tiny_run

    from lorasec import cli
    from lorasec.config import AttackConfig, TrainConfig
    from lorasec.pipelines.run import train_run

    cfg = tiny_run(train=TrainConfig(steps=10, batch_size=16, lr=1e-2), attack=AttackConfig(kind="badnets"))
    train_run(cfg, tmp_path / "run", progress=False)
    assert cli.main(["spectral", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "ρ_bd" in printed and "scale sweep" in printed
    out = tmp_path / "run" / "spectral"
    layers = json.loads((out / "alignment.json").read_text())
    assert len(layers) == 6 and all(-1 - 1e-6 <= r["rho_bd"] <= 1 + 1e-6 for r in layers.values())
    sweep = json.loads((out / "sweep.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sweep["attack_success_rate"][sweep["scales"].index(cfg.adapter.scaling)] == results["attack_success_rate"]
    assert (out / "sweep.png").is_file()


def test_spectral_diagnosis_of_a_full_fine_tuning_mlp_run(tmp_path):
    cfg = tiny_run(model=ModelConfig(kind="mlp", d_model=16, mlp_hidden=(12,), dropout=0.0),
                   adapter=AdapterConfig(method="full"), attack=AttackConfig(kind="badnets", poison_rate=0.1))
    train_run(cfg, tmp_path / "run", progress=False)
    report = diagnose.diagnose(load_run(tmp_path / "run"))
    assert set(report["spectral"]) == {"layers.0"}  # was empty: only encoder.* names were kept
    assert set(report["alignment"]) == {"layers.0"}


def test_scale_is_state_so_a_sweep_compiles_once(tmp_path):
    cfg = tiny_run(attack=AttackConfig(kind="badnets", poison_rate=0.1))
    train_run(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    evaluation.evaluate(run.tuned, cfg, run.test, run.encoder)
    before = evaluation._logits._cache_size()
    curve = scale_sweep.scale_sweep(run, scales=[0.0, 1.0, 2.0, 5.0])
    assert evaluation._logits._cache_size() == before
    assert lora.scales(run.tuned) == {name: cfg.adapter.scaling for name in lora.lora_layers(run.tuned)}
    assert curve["attack_success_rate"][2] == pytest.approx(run.results["attack_success_rate"])
