"""``lorasec ntk``: the NTKs of LoRA and of full fine-tuning on one model, side by side, with their spectra.

For a config, the model is the one that config would start training from (pretrained or at init); for a run
directory, the trained model. A full-fine-tuning model gets LoRA adapters (B = 0) from the config's adapter
section, so both kernels are taken at the same point. Writes ``kernels.npz`` (the (N, N, C, C) kernels, labels,
logits), ``summary.json`` (spectrum summaries of the traced kernels and of the true Fisher, kernel-target
alignment) and ``spectrum.png``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import ConfigError, RunConfig
from lorasec.core import files, keys
from lorasec.core.stats import finite as _finite
from lorasec.diagnostics import fisher, information, kernel
from lorasec.pipelines import figures
from lorasec.pipelines.diagnose import apply_pt
from lorasec.pipelines.run import build_model, load_run, prepare_data


def _with_probe_adapters(model: nnx.Module, cfg: RunConfig) -> nnx.Module:
    """A full fine-tuning model gets the config's LoRA adapters (B = 0), from the ``probe_adapters`` key."""
    if cfg.adapter.method == "full":
        lora_cfg = dataclasses.replace(cfg.adapter, method="lora")
        lora.apply_lora(model, lora_cfg, rngs=nnx.Rngs(params=keys.key(cfg.seed, "probe_adapters")))
    return model


def kernel_report(cfg: RunConfig, out_dir: str | Path, *, run_dir: str | Path | None = None,
                  num_examples: int = 64, block_size: int = 0) -> dict:
    """Compute, save and return the side-by-side kernel summary (module docstring)."""
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run = load_run(run_dir)
        if run.cfg.adapter.method != cfg.adapter.method:
            raise ConfigError(f"ntk --set adapter.method = {cfg.adapter.method!r}: the run in {str(run_dir)!r} "
                              f"was trained with {run.cfg.adapter.method!r}; a finished run's method is fixed")
        apply_pt(run)  # the kernels of the model as the run was evaluated
        test, encoder, model = run.test, run.encoder, run.tuned
    else:
        _, test, encoder = prepare_data(cfg)
        model = build_model(cfg, encoder.vocab_size)
    if num_examples < 2 or num_examples > len(test):
        raise ConfigError(f"--n {num_examples}: must lie in [2, {len(test)}] (the test set's size)")
    model = _with_probe_adapters(model, cfg)
    subset = test.subset(np.arange(num_examples))
    tokens, mask = encoder.encode(subset.texts)
    f, params = kernel.model_function(model, "full")
    logits = np.asarray(f(params, kernel.pack_inputs(tokens, mask)), np.float64)
    kernels = {
        "full": np.asarray(kernel.empirical_ntk(model, tokens, mask, subset="full", trace_axes=(),
                                                block_size=block_size), np.float64),
        "lora": np.asarray(kernel.structured_lora_ntk(model, tokens, mask, trace_axes=()), np.float64),
    }
    summary = {"num_examples": num_examples, "source": str(run_dir) if run_dir else "config",
               "adapted_layers": sorted(lora.lora_layers(model))}
    spectra = {}
    for name, k4 in kernels.items():
        traced = np.einsum("ijcc->ij", k4) / k4.shape[-1]
        spectra[name] = np.sort(np.linalg.eigvalsh(traced))[::-1]
        fisher_spectrum = fisher.fisher_spectrum(k4, logits)
        summary[name] = {
            "kernel": information.summary(spectra[name]),
            "fisher": information.summary(np.clip(fisher_spectrum, 0.0, None)),
            "kernel_target_alignment": _finite(information.kernel_target_alignment(traced, subset.labels)),
            "centred_alignment": _finite(information.kernel_target_alignment(traced, subset.labels, centred=True)),
            "parameters": lora.count_params(nnx.state(model, kernel.subset_filter(name))),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "kernels.npz", full=kernels["full"], lora=kernels["lora"], labels=subset.labels,
             logits=logits)
    files.write_json(out_dir / "summary.json", summary)
    figures.ntk_spectrum_figure(spectra, out_dir / "spectrum.png")
    return summary
