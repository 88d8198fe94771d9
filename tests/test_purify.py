"""Weight poisoning then clean fine-tuning (paper 2's pipeline), PiSSA, alignment and the scale sweep."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import TINY_DATA, TINY_MODEL, tiny_run
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import (
    AdapterConfig,
    AttackConfig,
    BackdoorConfig,
    ConfigError,
    ModelConfig,
    PurifyConfig,
    RoRAConfig,
    TrainConfig,
    load,
)
from lorasec.config import check_environment
from lorasec.config import to_dict as config_dict
from lorasec.diagnostics import alignment
from lorasec.pipelines import purify


def tiny_purify(**changes) -> PurifyConfig:
    fields = dict(
        seeds=(0, 1), defences=("full", "lora", "rora", "rora_pt"), data=TINY_DATA, model=TINY_MODEL,
        pretrain_steps=200,
        backdoor=BackdoorConfig(num_train=256, attack=AttackConfig(kind="badnets", poison_rate=0.2), min_asr=0.9,
                                train=TrainConfig(steps=300, batch_size=16, lr=3e-3, checkpoint_every=300)),
        adapter=AdapterConfig(rank=4, alpha=8), rora=RoRAConfig(tr_k=8, pt_layers=1),
        train=TrainConfig(steps=60, batch_size=16, lr=3e-3, checkpoint_every=60))
    fields.update(changes)
    return PurifyConfig(**fields).validate()


@pytest.fixture(scope="module")
def purified(tmp_path_factory):
    """The tiny pipeline once (about a minute): its work directory and summary."""
    work = tmp_path_factory.mktemp("purify")
    cfg = tiny_purify()
    return work, cfg, purify.run_purify(cfg, work / "purify", progress=False)


@pytest.mark.slow
def test_pipeline_plants_then_fine_tunes_every_defence(purified):
    work, cfg, summary = purified
    assert summary["backdoored"]["proxy"]["attack_success_rate"] >= 0.9
    assert summary["backdoored"]["downstream"]["attack_success_rate"] >= 0.8  # the backdoor carries over
    cells = {c["defence"]: c for c in summary["defences"]}
    assert set(cells) == {"full", "lora", "rora", "rora_pt"}
    for cell in cells.values():
        assert cell["clean_accuracy"]["n"] == 2 and cell["clean_accuracy"]["mean"] > 0.7
        assert all(r["crossing_within_s_star"] for r in cell["runs"])  # the corrected proposition, exactly
    rora = json.loads((work / "purify" / "runs" / "rora-seed0" / "results.json").read_text())
    assert rora["rora_pt_scales"]  # Pt rescaled the top layer's adapters
    assert {"lora", "rora"} <= set(summary["sweeps"])
    for name in ("summary.json", "report.md", "purify.png", "scale_sweep.png"):
        assert (work / "purify" / name).is_file()


@pytest.mark.slow
def test_pt_is_applied_to_the_lora_runs_and_diagnosed_after_the_rescale(purified):
    """Regression: Pt retrained plain LoRA and was diagnosed before its rescale while its ASR came after."""
    from lorasec.adapters import lora
    from lorasec.pipelines.run import load_run
    from lorasec.training.evaluation import evaluate

    work, cfg, summary = purified
    runs = work / "purify" / "runs"
    assert not any(runs.glob("rora_pt-seed*"))  # nothing trained for Pt
    record = json.loads((runs / "lora-seed0" / "rora_pt.json").read_text())
    scales = record["results"]["rora_pt_scales"]
    assert scales and all(s != cfg.adapter.scaling for s in scales.values())
    run = load_run(runs / "lora-seed0")
    lora.set_scales(run.tuned, scales)
    again = evaluate(run.tuned, run.cfg, run.test, run.encoder)
    assert again.attack_success_rate == record["results"]["attack_success_rate"]
    # Pt sets σ_max(s·BA) = σ_max(W_pre): after the rescale those matrices have spectral strength exactly 1.
    plain = json.loads((runs / "lora-seed0" / "diagnosis.json").read_text())["spectral"]
    for name in scales:
        assert record["diagnosis"]["spectral"][name]["spectral_strength"] == pytest.approx(1.0, rel=1e-5)
        assert plain[name]["spectral_strength"] != pytest.approx(1.0, rel=1e-3)


@pytest.mark.slow
def test_sweep_at_the_trained_scale_reproduces_the_run(purified):
    """An independent evaluation path: the sweep point s = α/r equals the run's own ASR and CACC."""
    work, cfg, _ = purified
    run_dir = work / "purify" / "runs" / "lora-seed1"
    results = json.loads((run_dir / "results.json").read_text())
    sweep = json.loads((run_dir / "diagnosis.json").read_text())["sweep"]
    at = sweep["scales"].index(cfg.adapter.scaling)
    assert sweep["attack_success_rate"][at] == pytest.approx(results["attack_success_rate"])
    assert sweep["clean_accuracy"][at] == pytest.approx(results["clean_accuracy"])
    assert sweep["scales"][0] == 0.0  # s = 0 is the backdoored model itself
    assert sweep["attack_success_rate"][0] >= 0.8


@pytest.mark.slow
def test_rerun_reuses_every_run(purified):
    work, cfg, summary = purified
    again = purify.run_purify(cfg, work / "purify", progress=False)
    assert again["defences"] == summary["defences"]


@pytest.mark.slow
def test_a_moved_pipeline_reuses_every_run(purified, tmp_path):
    work, cfg, summary = purified
    moved = tmp_path / "moved"
    shutil.copytree(work / "purify", moved)  # a copy: the other tests keep reading the original
    stamps = sorted((p, p.stat().st_mtime_ns) for p in moved.glob("**/params"))
    again = purify.run_purify(cfg, moved, progress=False)
    assert again["defences"] == summary["defences"]
    assert sorted((p, p.stat().st_mtime_ns) for p in moved.glob("**/params")) == stamps  # nothing trained again
    aside = tmp_path / "aside"
    (work / "purify" / "pretrained").rename(aside)  # the original's encoder is gone, and not needed
    try:
        assert purify.run_purify(cfg, moved, progress=False)["defences"] == summary["defences"]
    finally:  # the module's other tests read the original
        aside.rename(work / "purify" / "pretrained")


@pytest.mark.slow
def test_paper_two_claims_report_measured_numbers(purified):
    from lorasec.core.claims import VERDICTS
    from theory import forgetting

    work, cfg, _ = purified
    out = work / "purify"
    checks = (forgetting.spectrally_weak(out, cfg) + forgetting.spectrally_weaker(out, cfg)
              + forgetting.forgets_better(out, cfg) + forgetting.critical_scale(out, cfg))
    assert {c.claim for c in checks} == {"lora_spectrally_weak", "lora_spectrally_weaker", "full_ft_forgets_better",
                                         "critical_scale_trained"}
    decided = [c for c in checks if c.claim in ("lora_spectrally_weak", "full_ft_forgets_better")]
    assert all("95% t-interval" in c.tolerance and "sign-flip p" in c.measured for c in decided)
    assert all(c.verdict in VERDICTS and c.measured for c in checks)
    bound = [c for c in checks if c.predicted.startswith("every layer crossing")]
    assert bound and all((c.kind, c.verdict) == ("identity", "consistent") for c in bound)


@pytest.mark.slow
def test_verify_reads_a_purify_directory(purified, capsys):
    from lorasec import cli

    work, _, _ = purified
    assert cli.main(["verify", "full_ft_forgets_better", "--purify", str(work / "purify")]) == 0
    assert "ASR LoRA − ASR full FT > 0" in capsys.readouterr().out


@pytest.mark.slow
def _own_pipeline(tmp_path):
    """A pipeline of this test's own (one seed, two defences), so that no test changes what the others read."""
    cfg = tiny_purify(seeds=(0,), defences=("full", "lora"))
    purify.run_purify(cfg, tmp_path / "purify", progress=False)
    return tmp_path / "purify", cfg


@pytest.mark.slow
def test_purify_cli_reuses_the_pipeline_and_prints_the_report(tmp_path, capsys):
    from lorasec import cli
    from lorasec.config import to_dict
    from lorasec.core import files

    out, cfg = _own_pipeline(tmp_path)
    spec = tmp_path / "tiny-purify.json"
    files.write_json(spec, to_dict(cfg))
    assert cli.main(["purify", str(spec), "--defences", "lora", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| lora |" in printed and "| full |" not in printed
    assert cli.main(["purify", str(spec), "--defences", "lora,nope"]) == 2
    assert "defences = 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_purify_refuses_a_directory_with_other_settings(tmp_path):
    out, cfg = _own_pipeline(tmp_path)
    changed = PurifyConfig(**{**cfg.__dict__, "train": TrainConfig(steps=61, batch_size=16)}).validate()
    with pytest.raises(ConfigError, match="other settings"):
        purify.run_purify(changed, out, progress=False)
    fewer = PurifyConfig(**{**cfg.__dict__, "defences": ("lora",), "seeds": (0,)}).validate()
    assert [c["defence"] for c in purify.run_purify(fewer, out, progress=False)["defences"]] == ["lora"]


@pytest.mark.slow
def test_too_weak_backdoor_is_refused_and_kept(tmp_path):
    cfg = tiny_purify(backdoor=BackdoorConfig(num_train=256, attack=AttackConfig(kind="badnets", poison_rate=0.1,
                                                                                label_consistent=True),
                                              train=TrainConfig(steps=20, batch_size=16, checkpoint_every=20)),
                      pretrain_steps=20)
    with pytest.raises(purify.BackdoorTooWeak, match=r"backdoor.min_asr = 0.95.*label_consistent = false"):
        purify.make_backdoored(cfg, tmp_path, progress=False)
    assert (tmp_path / "backdoored" / "results.json").is_file()  # the work is kept


@pytest.mark.parametrize("overrides, field", [
    (["defences=['lora', 'nope']"], "defences"),
    (["adapter.method='full'"], "adapter"),
    (["adapter.rora_cl=0.1"], "adapter"),
    (["backdoor.attack.kind='label_flip'"], "backdoor.attack.kind"),
    (["backdoor.min_asr=1.5"], "backdoor.min_asr"),
    (["seeds=[]"], "seeds"),
    (["data.source='file'", "data.train_file='x.csv'", "data.test_file='y.csv'", "model.pretrained='minilm-l6'"],
     "data.train_file"),
    (["data.source='sms-spam'", "data.train_part='held-out'", "model.pretrained='minilm-l6'"], "data.train_part"),
])
def test_bad_purify_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"^{field}"):
        check_environment(load(PurifyConfig, None, overrides))


def test_pissa_keeps_the_weight_and_moves_its_principal_part(x64):
    import jax.numpy as jnp

    model = nnx.Linear(12, 7, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    original = np.asarray(model.kernel[...]).copy()
    layer = lora.LoRALinear(model, rank=3, scale=2.0, init="pissa", rngs=nnx.Rngs(1))
    np.testing.assert_allclose(np.asarray(layer.effective_kernel()), original, atol=1e-12)
    s = np.linalg.svd(original, compute_uv=False)
    residual = np.linalg.svd(np.asarray(layer.base.kernel[...]), compute_uv=False)
    np.testing.assert_allclose(residual[:4], s[3:], atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(layer.delta()), compute_uv=False)[:3], s[:3], atol=1e-12)


def test_pissa_conflicts_are_rejected():
    with pytest.raises(ConfigError, match=r"^adapter.init"):
        AdapterConfig(init="pissa", dora=True).validate()


def test_alignment_on_the_theory_example():
    """The counter-example's instance: W_pre = (−1/√2, 1/√2)ᵀ, ΔW = −W_pre, x = 1, c = e_0 − e_1: the margin crosses at s = 1;
    with exact ρ's on one example s* equals the crossing."""
    w_pre = np.array([[-1.0], [1.0]]) / np.sqrt(2)
    x, c = np.ones((1, 1, 1)), np.array([[[1.0, -1.0]]])
    row = alignment.layer_alignment(w_pre, -w_pre, x, c, np.zeros((1, 1), bool), s_train=0.5)
    assert row["rho_bd"] == pytest.approx(1.0) and row["rho_eff"] == pytest.approx(1.0)
    assert row["crossing"] == pytest.approx(1.0) and row["s_star"] == pytest.approx(1.0)
    assert row["positive_at_train"] == 0.0


def test_alignment_splits_clean_and_trigger_tokens():
    rng = np.random.default_rng(0)
    w_pre, delta = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    x, c = rng.normal(size=(5, 6, 3)), rng.normal(size=(5, 6, 4))
    trigger = np.zeros((5, 6), bool)
    trigger[:, 2] = True
    row = alignment.layer_alignment(w_pre, delta, x, c, trigger, s_train=1.0)
    m = row["mean"]
    # An independent reference: per example, token by token, the clean tokens' push toward y and the trigger
    # tokens' push toward bd, each normalised by σ_max(ΔW)·Σ_t ‖c_t‖‖x_t‖.
    sigma = np.linalg.svd(delta, compute_uv=False)[0]
    rho_cl, rho_tr = [], []
    for i in range(5):
        scale = sigma * sum(np.linalg.norm(c[i, t]) * np.linalg.norm(x[i, t]) for t in range(6))
        rho_cl.append(sum(c[i, t] @ delta @ x[i, t] for t in range(6) if not trigger[i, t]) / scale)
        rho_tr.append(-sum(c[i, t] @ delta @ x[i, t] for t in range(6) if trigger[i, t]) / scale)
    assert m["rho_cl"] == pytest.approx(np.mean(rho_cl)) and m["rho_tr"] == pytest.approx(np.mean(rho_tr))
    assert row["rho_eff"] == pytest.approx(min(a - b for a, b in zip(rho_cl, rho_tr)))
    norm = (np.linalg.norm(c, axis=-1) * np.linalg.norm(x, axis=-1)).sum(1)
    a0 = np.einsum("ntj,ji,nti->n", c, w_pre, x)
    a1 = np.einsum("ntj,ji,nti->n", c, delta, x)
    assert row["rho_bd"] == pytest.approx((-a0 / (np.linalg.norm(w_pre, 2) * norm)).max())
    assert np.all(np.abs(-a0 / (np.linalg.norm(w_pre, 2) * norm)) <= 1 + 1e-12)  # Cauchy–Schwarz normalisation
    expected = alignment.crossing(a0, a1)
    assert row["crossing"] == (None if np.isinf(expected.max()) else pytest.approx(expected.max()))


def test_crossing_cases():
    got = alignment.crossing(np.array([-2.0, 1.0, 1.0, -1.0, 1.0]), np.array([1.0, 1.0, -1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(got, [2.0, 0.0, np.inf, np.inf, 0.0])



def test_a_crossing_reached_by_some_seeds_says_how_many():
    """The mean crossing is over the seeds that cross: with one of three it once read '6.82 ± 0', like a tight
    crossing of every seed."""
    from lorasec.pipelines.figures import crossing_text

    grid = {"scales": [0.0, 1.0, 2.0], "s_train": 2.0, "clean_accuracy": [1.0] * 3}
    curves = [dict(grid, attack_success_rate=asr, asr_crossing=cross)
              for asr, cross in (([0.9, 0.4, 0.1], 1.0), ([0.9, 0.8, 0.7], None), ([0.9, 0.6, 0.2], 1.5))]
    assert crossing_text(purify.mean_curve(curves)) == \
        "below 50% from s = 1.25 ± 0.35 in 2 of 3 seeds (never on the grid in the others)"
    assert crossing_text(purify.mean_curve([curves[0], curves[2]])) == "below 50% from s = 1.25 ± 0.35"
    assert crossing_text(purify.mean_curve(curves[1:2])) == "never below 50% on the grid"

def test_margin_signals_are_the_margin_gradient(x64):
    """c from the tapped backward pass equals a finite difference of the logit margin in a layer's output."""
    from lorasec.pipelines.run import build_model

    cfg = tiny_run(adapter=AdapterConfig(method="full"))
    model = build_model(cfg)
    tokens = np.array([[2, 5, 7, 9, 0, 0]] * 2)
    tokens[1, 2] = 11
    mask = tokens > 0
    labels = np.array([0, 0])
    signals = alignment.margin_signals(model, tokens, mask, labels, backdoor_label=1)
    name = "encoder.layers.0.intermediate"
    x, c = signals[name]
    layer = lora.linear_layers(model)[name]
    bias = np.asarray(layer.bias[...]).copy()
    eps = 1e-6
    unit = np.zeros_like(bias)
    unit[3] = 1.0

    def margin(shift):
        layer.bias[...] = bias + shift * unit
        z = np.asarray(model(tokens, mask))
        return z[:, 0] - z[:, 1]

    numeric = (margin(eps) - margin(-eps)) / (2 * eps)
    layer.bias[...] = bias
    np.testing.assert_allclose(c[:, :, 3].sum(1), numeric, rtol=1e-5, atol=1e-8)
    assert x.shape[:2] == tokens.shape


@pytest.mark.slow
def test_init_from_starts_from_the_runs_whole_classifier(tmp_path):
    from lorasec.pipelines.run import build_model, prepare_data, train_run

    start = tiny_run(adapter=AdapterConfig(method="full"), train=TrainConfig(steps=5, batch_size=16))
    train_run(start, tmp_path / "start", progress=False)
    cfg = tiny_run(model=ModelConfig(init_from=str(tmp_path / "start"), dropout=0.0))
    _, _, encoder = prepare_data(cfg)
    model = build_model(cfg)
    plain = build_model(load(type(cfg), tmp_path / "start"))
    from lorasec.core import files

    nnx.update(plain, files.load_state(tmp_path / "start" / "params", nnx.state(plain)))
    tokens, mask = encoder.encode(["w1 w2 t0c1", "w3 t1c0"])
    np.testing.assert_allclose(np.asarray(model(tokens, mask)), np.asarray(plain(tokens, mask)), atol=1e-6)
    with pytest.raises(ConfigError, match=r"^model.init_from"):
        check_environment(tiny_run(model=ModelConfig(init_from=str(tmp_path / "nothing"))))
    lora_run = tiny_run(train=TrainConfig(steps=3, batch_size=16))
    train_run(lora_run, tmp_path / "lora", progress=False)
    with pytest.raises(ConfigError, match="start from a full fine-tuning run"):
        prepare_data(tiny_run(model=ModelConfig(init_from=str(tmp_path / "lora"))))


def test_on_a_real_set_the_backdoor_is_planted_through_the_held_out_part():
    """Paper 2's proxy set is disjoint from the downstream data: on a real set the backdoor trains on what the
    downstream split holds out (same split seed); the synthetic task redraws its corpus from backdoor.data_seed."""
    real = load(PurifyConfig, None, ["data.source='rotten-tomatoes'", "data.max_train=2000",
                                     "model.pretrained='minilm-l6'", "backdoor.data_seed=7"])
    proxy = purify.backdoor_config(real, "minilm-l6").data
    assert proxy == dataclasses.replace(real.data, train_part="held-out")
    synthetic = load(PurifyConfig, None, ["backdoor.data_seed=7", "backdoor.num_train=300"])
    proxy = purify.backdoor_config(synthetic, "minilm-l6").data
    assert (proxy.seed, proxy.num_train, proxy.train_part) == (7, 300, "train")


# --- Table 4: RoRA's parts in pairs and at points of its grids ------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("rora_cl[tr=5]", "rora_cl reads cl of \\[rora\\]"),
    ("lora[cl=0.3]", "only the rora\\* defences take"),
    ("rora_cl[cl=0.3", "write NAME\\[field=value, ...\\]"),
    ("rora_cl[]", "write NAME\\[field=value, ...\\]"),
    ("rora_tr[tr=lots]", "tr = 'lots' must be a number"),
    ("rora_tr[tr=inf]", "must be a finite number"),
    ("rora_tr[tr_k=2.5]", "tr_k = '2.5' must be an integer"),
    ("rora_cl[cl=0.2, cl=0.3]", "'cl' is given twice"),
    ("rora_cl[cl=1.5]", "defences 'rora_cl\\[cl=1.5\\]': rora.cl = 1.5: must lie in \\[0, 1\\)"),
    ("rora_tr[tr=-1]", "rora.tr = -1.0: must be >= 0"),
    ("rora_pairs", "must be one of"),
])
def test_a_bad_defence_names_the_entry_and_the_fix(text, message):
    with pytest.raises(ConfigError, match=message):
        tiny_purify(defences=("lora", text))


def test_grid_points_override_rora_and_one_setting_spelt_two_ways_is_one_run():
    cfg = tiny_purify(rora=RoRAConfig(cl=0.1, tr=1.0, tr_k=8, pt_layers=1))
    name, r = cfg.defence("rora_tr[tr=20, tr_k=4]")
    assert (name, r) == ("rora_tr", RoRAConfig(cl=0.1, tr=20.0, tr_k=4, pt_layers=1))
    assert purify.run_name(cfg, name, r) == "rora_tr-tr20-tr_k4"
    assert purify.run_name(cfg, *cfg.defence("rora_cl[cl=0.1]")) == "rora_cl"  # [rora]'s own p
    assert purify.run_name(cfg, *cfg.defence("rora_cl_pt[pt_layers=2]")) == "rora_cl_pt-pt_layers2"
    assert purify.settings_row(cfg, "lora") == {"rora.cl": 0.0, "rora.tr": 0.0, "rora.tr_k": None,
                                                "rora.pt_layers": None}
    assert purify.settings_row(cfg, "rora_tr_pt[tr=5]") == {"rora.cl": 0.0, "rora.tr": 5.0, "rora.tr_k": 8,
                                                            "rora.pt_layers": 1}
    # a pair switches on exactly its two parts; a post-hoc pair trains as its source and rescales after
    both = purify.defence_adapter(cfg, "rora_cl_tr")
    assert (both.rora_cl, both.rora_tr, both.rora_tr_k, both.rora_pt_layers) == (0.1, 1.0, 8, 0)
    assert purify.defence_adapter(cfg, "rora_cl_pt") == purify.defence_adapter(cfg, "rora_cl")
    assert purify.POST_HOC["rora_cl_pt"] == "rora_cl" and purify.POST_HOC["rora_tr_pt"] == "rora_tr"
    full = purify.defence_adapter(cfg, "rora")
    assert (full.rora_cl, full.rora_tr, full.rora_pt_layers) == (0.1, 1.0, 1)


def test_the_cli_splits_defences_outside_brackets():
    from lorasec.cli import _defence_list

    assert _defence_list("full, lora,rora_tr[tr=20,tr_k=8],,rora_cl[cl=0.3]") == [
        "full", "lora", "rora_tr[tr=20,tr_k=8]", "rora_cl[cl=0.3]"]


def test_a_changed_synthetic_default_leaves_a_real_data_pipeline_its_directory(tmp_path, monkeypatch):
    """Regression: moving data.cue_strength's default to 0.9 made every real-data purify directory refuse its own
    config, though the synthetic generator's knobs decide nothing on real text."""

    class Reached(Exception):
        pass

    def made(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(purify, "make_backdoored", made)
    cfg = tiny_purify(data=dataclasses.replace(TINY_DATA, source="rotten-tomatoes", num_classes=2),
                      model=dataclasses.replace(TINY_MODEL, pretrained="minilm-l6"))
    out = tmp_path / "pipeline"
    out.mkdir()
    stored = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cue_strength=0.5))
    (out / "purify_config.json").write_text(json.dumps(config_dict(stored)))
    with pytest.raises(Reached):  # past the settings check
        purify.run_purify(cfg, out, progress=False)
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=61))
    with pytest.raises(ConfigError, match="other settings"):
        purify.run_purify(other, out, progress=False)
    synthetic = tiny_purify()
    (out / "purify_config.json").write_text(json.dumps(config_dict(
        dataclasses.replace(synthetic, data=dataclasses.replace(synthetic.data, cue_strength=0.5)))))
    with pytest.raises(ConfigError, match="other settings"):  # on the synthetic task the knob decides
        purify.run_purify(synthetic, out, progress=False)


@pytest.mark.slow
def test_pairs_and_grid_points_reuse_the_runs_they_share(purified):
    """Cl + Pt is Pt on the Cl runs (nothing trained for it); a grid point spelt at [rora]'s value is the default
    run; grid points and pairs are diagnosed without the scale sweep."""
    from lorasec.pipelines.run import load_run
    from lorasec.training.evaluation import evaluate

    work, cfg, _ = purified
    grid = dataclasses.replace(cfg, seeds=(0,), defences=(
        "lora", "rora_cl[cl=0.3]", "rora_cl_pt[cl=0.3]", "rora_tr[tr=20, tr_k=4]", "rora_cl_tr",
        f"rora_tr[tr={cfg.rora.tr}]"))
    summary = purify.run_purify(grid, work / "purify", progress=False)
    runs = work / "purify" / "runs"
    cells = {c["defence"]: c for c in summary["defences"]}
    assert cells["rora_cl_pt[cl=0.3]"]["runs"][0]["run"] == "rora_cl-cl0.3-seed0"
    assert cells[f"rora_tr[tr={cfg.rora.tr}]"]["runs"][0]["run"] == "rora_tr-seed0"
    assert not any(runs.glob("rora_cl_pt*")) and not any(runs.glob("rora_tr-tr1*"))
    trained = json.loads((runs / "rora_tr-tr20-tr_k4-seed0" / "config.json").read_text())["adapter"]
    assert (trained["rora_tr"], trained["rora_tr_k"], trained["rora_cl"]) == (20.0, 4, 0.0)
    assert json.loads((runs / "rora_cl-cl0.3-seed0" / "config.json").read_text())["adapter"]["rora_cl"] == 0.3
    record = json.loads((runs / "rora_cl-cl0.3-seed0" / "rora_cl_pt-cl0.3.json").read_text())
    run = load_run(runs / "rora_cl-cl0.3-seed0")
    lora.set_scales(run.tuned, record["results"]["rora_pt_scales"])
    again = evaluate(run.tuned, run.cfg, run.test, run.encoder)
    assert again.attack_success_rate == record["results"]["attack_success_rate"]
    assert set(summary["sweeps"]) == {"lora", f"rora_tr[tr={cfg.rora.tr}]"}  # [rora]'s own settings only
    assert cells["rora_cl[cl=0.3]"]["runs"][0]["rora.cl"] == 0.3
