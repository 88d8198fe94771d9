"""``lorasec ntk``: kernels of LoRA and full fine-tuning side by side, from a run directory or a config."""

import json

import numpy as np
import pytest
from conftest import tiny_run

from lorasec import cli, config
from lorasec.config import AdapterConfig, TrainConfig
from lorasec.pipelines.run import train_run

pytestmark = pytest.mark.slow  # more than ~20 s, or the network


def _flat(k4):
    n, c = k4.shape[0], k4.shape[-1]
    return k4.transpose(0, 2, 1, 3).reshape(n * c, n * c)


def test_ntk_from_run_directory_and_from_config(tmp_path, capsys):
    cfg = tiny_run(adapter=AdapterConfig(method="full", rank=2, alpha=2), train=TrainConfig(steps=4, batch_size=16))
    run = tmp_path / "run"
    train_run(cfg, run, progress=False)
    assert cli.main(["ntk", str(run), "--n", "8"]) == 0
    summary = json.loads((run / "ntk" / "summary.json").read_text())
    assert "devices" in summary["made"]
    arrays = np.load(run / "ntk" / "kernels.npz")
    assert arrays["full"].shape == (8, 8, 2, 2) and arrays["lora"].shape == (8, 8, 2, 2)
    for name in ("full", "lora"):
        assert summary[name]["kernel"]["trace"] > 0 and -1 <= summary[name]["centred_alignment"] <= 1
        assert summary[name]["fisher"]["rank"] <= 8  # N(C − 1) for C = 2
    assert summary["lora"]["parameters"] < summary["full"]["parameters"]
    assert summary["kernel_paths"] == {"full": "structured", "lora": "structured"}
    # Per adapted layer, the parts: K_FF^(l) (its frozen weight) and K_LoRA^(l), which sum to the kernels.
    assert set(summary["per_layer"]) == set(summary["adapted_layers"])
    np.testing.assert_allclose(sum(arrays[f"lora/{name}"] for name in summary["adapted_layers"]), arrays["lora"],
                               rtol=1e-6)
    groups = [key for key in arrays.files if key.startswith("full_group/")]
    assert len(groups) == 5
    np.testing.assert_allclose(sum(arrays[key] for key in groups), arrays["full"], rtol=1e-6)
    for name, layer in summary["per_layer"].items():
        gap = np.linalg.eigvalsh(_flat(arrays[f"lora/{name}"] - arrays[f"full/{name}.base.kernel"])).max()
        assert layer["lora_below_ff"] == (gap <= 1e-6 * np.linalg.eigvalsh(
            _flat(arrays[f"full/{name}.base.kernel"])).max())
        # An identity at B = 0 (Lemma 3.1): K_LoRA^(l) ⪯ s²λ_max(AᵀA)·K_FF^(l), so the measured order is at most it.
        assert 0 < layer["relative_order"] <= layer["bound_from_factors"] * (1 + 1e-4)
    sweep = summary["variance_sweep"]
    for name, critical in sweep["critical_init_scale"].items():
        assert critical >= sweep["critical_init_scale_from_factors"][name] * (1 - 1e-4)
        assert (critical >= sweep["init_scale"]) == summary["per_layer"][name]["lora_below_ff"]
    assert abs(sum(summary["parameter_groups"].values()) - 1) < 1e-9
    for trigger in ("badnets", "insent"):
        ttr = summary["ttr"][trigger]
        assert ttr["pairs"] == 8 and ttr["full"] > 0 and ttr["lora"] > 0
        self_kernel = np.linalg.norm(arrays["lora"][np.arange(8), np.arange(8)].mean(axis=0))
        assert ttr["normalised"]["lora"] == pytest.approx(ttr["lora"] / self_kernel, rel=1e-6)
    assert (run / "ntk" / "spectrum.png").stat().st_size > 5_000
    np.testing.assert_allclose(arrays["full"], np.transpose(arrays["full"], (1, 0, 3, 2)), rtol=1e-4, atol=1e-6)

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config.to_dict(cfg)))
    assert cli.main(["ntk", str(path), "--n", "4", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "summary.json").is_file()
    capsys.readouterr()
    assert cli.main(["ntk", str(path), "--n", "100000", "--out", str(tmp_path / "k2")]) == 2
    assert "--n 100000: must lie in [2, 128]" in capsys.readouterr().err
