"""``lorasec ntk``: kernels of LoRA and full fine-tuning side by side, from a run directory or a config."""

import json

import numpy as np
import pytest
from conftest import tiny_run

from lorasec import cli, config
from lorasec.config import AdapterConfig, TrainConfig
from lorasec.pipelines.run import train_run

pytestmark = pytest.mark.slow  # more than ~20 s, or the network


def test_ntk_from_run_directory_and_from_config(tmp_path, capsys):
    cfg = tiny_run(adapter=AdapterConfig(method="full", rank=2, alpha=2), train=TrainConfig(steps=4, batch_size=16))
    run = tmp_path / "run"
    train_run(cfg, run, progress=False)
    assert cli.main(["ntk", str(run), "--n", "8"]) == 0
    summary = json.loads((run / "ntk" / "summary.json").read_text())
    arrays = np.load(run / "ntk" / "kernels.npz")
    assert arrays["full"].shape == (8, 8, 2, 2) and arrays["lora"].shape == (8, 8, 2, 2)
    for name in ("full", "lora"):
        assert summary[name]["kernel"]["trace"] > 0 and -1 <= summary[name]["centred_alignment"] <= 1
        assert summary[name]["fisher"]["rank"] <= 8  # N(C − 1) for C = 2
    assert summary["lora"]["parameters"] < summary["full"]["parameters"]
    assert (run / "ntk" / "spectrum.png").stat().st_size > 5_000
    np.testing.assert_allclose(arrays["full"], np.transpose(arrays["full"], (1, 0, 3, 2)), rtol=1e-4, atol=1e-6)

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config.to_dict(cfg)))
    assert cli.main(["ntk", str(path), "--n", "4", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "summary.json").is_file()
    capsys.readouterr()
    assert cli.main(["ntk", str(path), "--n", "100000", "--out", str(tmp_path / "k2")]) == 2
    assert "--n 100000: must lie in [2, 128]" in capsys.readouterr().err
