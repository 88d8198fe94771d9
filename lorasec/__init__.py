"""lorasec: theory and simulation of low-rank adaptation under training-time attacks, in JAX.

The public facade, so notebooks import from one place::

    import lorasec
    cfg = lorasec.load_config("experiments/synthetic_badnets_lora.toml", ["train.steps=100"])
    results = lorasec.train_run(cfg, "runs/demo")
    run = lorasec.load_run("runs/demo")
    K = lorasec.structured_lora_ntk(run.tuned, *run.encoder.encode(run.test.texts[:32]))
    checks = lorasec.verify(["lemma_3_1"])
    summary = lorasec.run_sweep(lorasec.load_spec("experiments/sweep_poison_rate.toml"), "runs/sweep")

The layers below it import one way (docs/architecture.md; enforced by tests/test_architecture.py):
core → config → sweep_spec → data → attacks → models → adapters → training → diagnostics → pipelines → cli. Names are
resolved on first use, so ``import lorasec`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_FACADE = {
    # configs
    "load_config": ("lorasec.config", "load_config"),
    "RunConfig": ("lorasec.config", "RunConfig"),
    "AdapterConfig": ("lorasec.config", "AdapterConfig"),
    "AttackConfig": ("lorasec.config", "AttackConfig"),
    "ModelConfig": ("lorasec.config", "ModelConfig"),
    "DataConfig": ("lorasec.config", "DataConfig"),
    "TrainConfig": ("lorasec.config", "TrainConfig"),
    "PurifyConfig": ("lorasec.config", "PurifyConfig"),
    "replace_config": ("lorasec.config", "replace_config"),
    "ConfigError": ("lorasec.core.errors", "ConfigError"),
    # runs
    "prepare_data": ("lorasec.pipelines.run", "prepare_data"),
    "build_model": ("lorasec.pipelines.run", "build_model"),
    "train_run": ("lorasec.pipelines.run", "train_run"),
    "load_run": ("lorasec.pipelines.run", "load_run"),
    "evaluate": ("lorasec.training.evaluation", "evaluate"),
    "pretrain": ("lorasec.pipelines.pretrain", "pretrain"),
    "run_purify": ("lorasec.pipelines.purify", "run_purify"),
    # sweeps
    "load_spec": ("lorasec.sweep_spec", "load_spec"),
    "run_sweep": ("lorasec.pipelines.sweep", "run_sweep"),
    "read_table": ("lorasec.pipelines.sweep", "read_table"),
    "fit_ensemble": ("lorasec.training.trainer", "fit_ensemble"),
    "prepare_run": ("lorasec.pipelines.run", "prepare_run"),
    "prepare_step": ("lorasec.pipelines.run", "prepare_step"),
    "TrainStep": ("lorasec.training.step", "TrainStep"),
    # models and adapters
    "Architecture": ("lorasec.models", "Architecture"),
    "build_classifier": ("lorasec.models", "build_classifier"),
    "apply_lora": ("lorasec.adapters.lora", "apply_lora"),
    "lora_layers": ("lorasec.adapters.lora", "lora_layers"),
    "set_scales": ("lorasec.adapters.lora", "set_scales"),
    # kernels, Fisher, information
    "empirical_ntk": ("lorasec.diagnostics.kernel", "empirical_ntk"),
    "structured_lora_ntk": ("lorasec.diagnostics.kernel", "structured_lora_ntk"),
    "layer_kernels": ("lorasec.diagnostics.kernel", "layer_kernels"),
    "layer_signals": ("lorasec.diagnostics.signals", "layer_signals"),
    "fisher_spectrum": ("lorasec.diagnostics.fisher", "fisher_spectrum"),
    "fisher_vector_product": ("lorasec.diagnostics.fisher", "fisher_vector_product"),
    "hutchinson_trace": ("lorasec.diagnostics.fisher", "hutchinson_trace"),
    "slq_logdet": ("lorasec.diagnostics.fisher", "slq_logdet"),
    "exact_logdet": ("lorasec.diagnostics.fisher", "exact_logdet"),
    "spectrum_summary": ("lorasec.diagnostics.information", "spectrum_summary"),
    "renyi_entropy": ("lorasec.diagnostics.information", "renyi_entropy"),
    "log_power_sum": ("lorasec.diagnostics.information", "log_power_sum"),
    "information_bits": ("lorasec.diagnostics.information", "information_bits"),
    # infinite width
    "stax_mlp": ("lorasec.diagnostics.infinite", "stax_mlp"),
    "stax_encoder": ("lorasec.diagnostics.infinite", "stax_encoder"),
    "stax_inputs": ("lorasec.diagnostics.infinite", "stax_inputs"),
    "finite_kernels": ("lorasec.diagnostics.infinite", "finite_kernels"),
    "relative_error": ("lorasec.diagnostics.infinite", "relative_error"),
    "infinite_kernels": ("lorasec.diagnostics.infinite", "infinite_kernels"),
    "monte_carlo_kernels": ("lorasec.diagnostics.infinite", "monte_carlo_kernels"),
    # paper 2's measures
    "spectral_pair_report": ("lorasec.diagnostics.spectral", "spectral_pair_report"),
    "diagnose": ("lorasec.pipelines.diagnose", "diagnose"),
    "scale_sweep": ("lorasec.diagnostics.scale_sweep", "scale_sweep"),
    "spectral_strength": ("lorasec.diagnostics.spectral", "spectral_strength"),
    "stable_rank": ("lorasec.diagnostics.spectral", "stable_rank"),
    "intruder_dimensions": ("lorasec.diagnostics.spectral", "intruder_dimensions"),
    "threshold_counterexample": ("lorasec.diagnostics.threshold", "threshold_counterexample"),
    "ThresholdInstance": ("lorasec.diagnostics.threshold", "ThresholdInstance"),
    "search_counterexamples": ("lorasec.diagnostics.threshold", "search_counterexamples"),
    "update_pairs": ("lorasec.pipelines.diagnose", "update_pairs"),
    # does the theory predict training?
    "Linearised": ("lorasec.diagnostics.linearised", "Linearised"),
    "linearised_run": ("lorasec.diagnostics.linearised", "linearised_run"),
    "drift_of_run": ("lorasec.pipelines.drift", "drift_of_run"),
    "run_predict": ("lorasec.pipelines.predict", "run_predict"),
    "rank_score": ("lorasec.core.ranking", "score"),
    "rank_correlations": ("lorasec.core.ranking", "rank_correlations"),
    # claims
    "verify": ("theory", "verify"),
    "claims_table": ("lorasec.core.claims", "claims_table"),
    # teaching
    "check_answer": ("lorasec.core.exercise", "check_answer"),
}

__all__ = sorted(_FACADE)


def __getattr__(name: str):
    if name not in _FACADE:
        raise AttributeError(f"module 'lorasec' has no attribute {name!r}")
    module, attribute = _FACADE[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACADE))
