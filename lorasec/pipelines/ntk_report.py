"""``lorasec ntk``: the NTKs of LoRA and of full fine-tuning on one model, side by side, with their spectra.

For a config, the model is the one that config would start training from (pretrained or at init); for a run
directory, the trained model. A full-fine-tuning model gets LoRA adapters (B = 0) from the config's adapter
section, so both kernels are taken at the same point. Both are structured (every weight for K_FF:
:mod:`lorasec.diagnostics.full_kernel`), so a real model's full kernel fits in memory. Writes ``kernels.npz``
(the (N, N, C, C) kernels; K_FF's parts per adapted weight and per kind of weight, K_LoRA's per adapted layer;
labels, logits), ``summary.json`` (spectrum summaries of the traced kernels and of the true Fisher, kernel-target
alignment, per adapted layer the Loewner order and Theorem 3.6's inequalities, each kind of weight's share of
K_FF's trace, and the TTR metric M' under BadNets and InSent triggers) and ``spectrum.png``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.attacks import poison
from lorasec.config import AttackConfig, ConfigError, RunConfig, check_environment
from lorasec.core import files, keys, machine
from lorasec.core.stats import finite as _finite
from lorasec.diagnostics import fisher, full_kernel, information, kernel
from lorasec.pipelines import figures
from lorasec.pipelines.diagnose import apply_pt
from lorasec.pipelines.run import load_run, prepare_model


def with_probe_adapters(model: nnx.Module, cfg: RunConfig) -> nnx.Module:
    """A full fine-tuning model gets the config's LoRA adapters (B = 0), from the ``probe_adapters`` key."""
    if cfg.adapter.method == "full":
        lora_cfg = dataclasses.replace(cfg.adapter, method="lora")
        lora.apply_lora(model, lora_cfg, rngs=nnx.Rngs(params=keys.key(cfg.seed, "probe_adapters")))
    return model


def full_kernel_with_parts(model: nnx.Module, tokens, mask, tokens2=None, mask2=None, *, block_size: int = 0,
                           parts: bool = True):
    """K_FF (N1, N2, C, C) as float64, its per-parameter parts (with ``parts``; empty from neural-tangents) and the
    path taken: the structured kernel whenever every parameter is in a recording layer, else neural-tangents
    implementation 1."""
    reason = full_kernel.unsupported(model)
    if not reason:
        result = full_kernel.structured_full_ntk(model, tokens, mask, tokens2, mask2, trace_axes=(),
                                                 block_size=block_size or None, per_parameter=parts)
        total, per = result if parts else (result, {})
        return total, per, "structured"
    k = kernel.empirical_ntk(model, tokens, mask, tokens2, mask2, subset="full", trace_axes=(),
                             block_size=block_size)
    return np.asarray(k, np.float64), {}, f"neural-tangents implementation 1 ({reason})"


def traced_spectrum(k4: np.ndarray) -> np.ndarray:
    traced = np.einsum("ijcc->ij", k4) / k4.shape[-1]
    return np.sort(np.linalg.eigvalsh(traced))[::-1]


def _flat(k4: np.ndarray) -> np.ndarray:
    """(N, N, C, C) → the (N·C) × (N·C) matrix whose Loewner order is the kernel's."""
    n, c = k4.shape[0], k4.shape[-1]
    return k4.transpose(0, 2, 1, 3).reshape(n * c, n * c)


THEOREM_3_6 = ("information_bits", "log_power_sum_2", "renyi_2")  # measured for both entropy forms


def relative_order(k_ff: np.ndarray, k_lora: np.ndarray, tol: float = 1e-9) -> float:
    """The least λ with K_LoRA ⪯ λ·K_FF (both (N, N, C, C)): the largest generalised eigenvalue, on K_FF's range
    (eigenvalues above ``tol`` of its largest); infinite when K_LoRA reaches outside that range."""
    w, v = np.linalg.eigh(_flat(k_ff))
    keep = w > tol * w.max()
    lora = _flat(k_lora)
    inside = v[:, keep].T @ lora @ v[:, keep]
    outside = lora - v[:, keep] @ inside @ v[:, keep].T
    if np.linalg.norm(outside) > 1e-6 * np.linalg.norm(lora):
        return float("inf")
    scaled = inside / np.sqrt(w[keep])[:, None] / np.sqrt(w[keep])[None, :]
    return float(np.linalg.eigvalsh(scaled).max())


def per_layer_comparison(full_parts: dict, lora_parts: dict, bounds: dict | None = None) -> dict:
    """Per adapted layer l (paper 1, Lemma 3.1 and Theorem 3.6): K_FF^(l) w.r.t. its frozen weight matrix beside
    K_LoRA^(l) w.r.t. its factors; the Loewner gap ``λ_max(K_LoRA^(l) − K_FF^(l)) / λ_max(K_FF^(l))`` (≤ 0 up to
    rounding: K_LoRA ⪯ K_FF), which of Theorem 3.6's inequalities hold on the traced kernels' spectra, and the
    least λ with K_LoRA^(l) ⪯ λ·K_FF^(l) (:func:`relative_order`) beside ``bounds[l]``, Lemma 3.1's bound from the
    factors alone (at B = 0 it is s²·λ_max(AᵀA): K_LoRA^(l) ⪯ s²λ_max(AᵀA)·K_FF^(l) always, with equality when the
    layer's inputs reach A's top direction)."""
    out = {}
    for layer, k_lora in sorted(lora_parts.items()):
        k_ff = full_parts[f"{layer}.base.kernel"]
        top = float(np.linalg.eigvalsh(_flat(k_ff)).max())
        gap = float(np.linalg.eigvalsh(_flat(k_lora - k_ff)).max()) / top if top > 0 else float("inf")
        ff, lo = information.spectrum_summary(traced_spectrum(k_ff)), information.spectrum_summary(traced_spectrum(k_lora))
        out[layer] = {"loewner_gap": _finite(gap), "lora_below_ff": bool(gap <= 1e-6),
                      "relative_order": _finite(relative_order(k_ff, k_lora)),
                      "bound_from_factors": _finite(bounds[layer]) if bounds else None,
                      "trace_ratio": _finite(lo["trace"] / ff["trace"]) if ff["trace"] > 0 else None,
                      "theorem_3_6": {name: bool(lo[name] <= ff[name]) for name in THEOREM_3_6},
                      "full": ff, "lora": lo}
    return out


def factor_bounds(model: nnx.Module) -> dict[str, float]:
    """Per adapted layer, ``s²·λ_max(AᵀA)`` with A as drawn (paper 1, Lemma 3.1's M_Δ = s²AᵀA − I ⪯ 0 exactly
    when this is ≤ 1; the paper's condition σ_a² < 1/n leaves out s and the Marchenko–Pastur edge). Meaningful at
    B = 0, where the B-gradient term is K_LoRA's whole."""
    out = {}
    for name, layer in lora.lora_layers(model).items():
        a = np.asarray(layer.lora_a[...], np.float64)  # (in, r) = Aᵀ
        out[name] = float(layer.scale[...]) ** 2 * float(np.linalg.eigvalsh(a.T @ a).max())
    return out


PAPER_INIT_SCALES = (1e-4, 1e-3, 0.1, 1 / 3, 2 / 3, 1.0, 1.5, 2.0)  # paper 1's Fig. 5: Var(A) = c / n


def at_init(model: nnx.Module) -> bool:
    """Whether every adapter's B is zero (the kernels are Lemma 3.1's, linear in A's variance)."""
    return all(not np.any(np.asarray(layer.lora_b[...])) for layer in lora.lora_layers(model).values())


def variance_sweep(layers: dict, init_scale: float) -> dict:
    """Paper 1's A-init variance sweep for the Loewner order, exactly: at B = 0, drawing A with variance c/n instead
    of c₀/n (the same draw scaled) multiplies K_LoRA^(l) by c/c₀, so K_LoRA^(l) ⪯ K_FF^(l) holds exactly for
    c ≤ c₀ / relative_order. Per layer that critical c, measured and from the factors alone, and per c of the
    paper's grid the layers where the order holds (the paper's condition: every c < 1)."""
    critical = {name: init_scale / v["relative_order"] if v["relative_order"] else None for name, v in layers.items()}
    from_factors = {name: init_scale / v["bound_from_factors"] if v["bound_from_factors"] else None
                    for name, v in layers.items()}
    return {"init_scale": init_scale, "critical_init_scale": critical,
            "critical_init_scale_from_factors": from_factors,
            "layers_ordered_at": {f"{c:.4g}": sum(1 for v in critical.values() if v is not None and c <= v)
                                  for c in PAPER_INIT_SCALES}}


def ttr_metrics(model: nnx.Module, encoder, texts, *, pairs: int, seed: int, block_size: int = 0) -> dict:
    """Paper 1's ``M' = ‖mean_i K(x_i, x̃_i)‖_F`` for both kernels, x̃ the sentence with BadNets' and InSent's
    triggers inserted (lorasec's poisoners, kept within the tokenizer's room), on the first ``pairs`` sentences."""
    room = poison.Room(encoder)
    clean = list(texts[:pairs])
    tokens, mask = encoder.encode(clean)
    out = {}
    for name, kind in (("badnets", "badnets"), ("insent", "sentence")):
        trigger = poison.triggers_for(AttackConfig(kind=kind))[0]
        tokens_p, mask_p = encoder.encode(list(poison.apply_trigger(clean, trigger, seed=seed, room=room)))
        full, _, full_path = full_kernel_with_parts(model, tokens, mask, tokens_p, mask_p, block_size=block_size,
                                                    parts=False)
        lora_k, lora_path = kernel.lora_ntk(model, tokens, mask, tokens_p, mask_p, trace_axes=())
        lora_k = np.asarray(lora_k, np.float64)
        rows = np.arange(len(clean))
        out[name] = {"pairs": len(clean), "trigger": " / ".join(trigger.phrases[:3]),
                     "full": float(np.linalg.norm(full[rows, rows].mean(axis=0))),
                     "lora": float(np.linalg.norm(lora_k[rows, rows].mean(axis=0))),
                     "paths": {"full": full_path, "lora": lora_path}}
    return out


def normalised_ttr(ttr: dict, kernels: dict) -> None:
    """Add ``M' / ‖mean_i K(x_i, x_i)‖_F`` per kernel (lorasec's, not the paper's): M' grows with the kernel's
    scale, and K_FF's trace is far larger than K_LoRA's, so the raw values compare scales more than directions."""
    for values in ttr.values():
        rows = np.arange(values["pairs"])
        values["normalised"] = {name: values[name] / float(np.linalg.norm(k[rows, rows].mean(axis=0)))
                                for name, k in kernels.items()}


def kernel_report(cfg: RunConfig, out_dir: str | Path, *, run_dir: str | Path | None = None,
                  num_examples: int = 64, block_size: int = 0, ttr_pairs: int = 32) -> dict:
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
        model, test, encoder = prepare_model(check_environment(cfg))
    if num_examples < 2 or num_examples > len(test):
        raise ConfigError(f"--n {num_examples}: must lie in [2, {len(test)}] (the test set's size)")
    model = with_probe_adapters(model, cfg)
    subset = test.subset(np.arange(num_examples))
    tokens, mask = encoder.encode(subset.texts)
    f, params = kernel.model_function(model, "full")
    logits = np.asarray(f(params, kernel.pack_inputs(tokens, mask)), np.float64)
    full, full_parts, full_path = full_kernel_with_parts(model, tokens, mask, block_size=block_size)
    lora_total, lora_parts = kernel.structured_lora_ntk(model, tokens, mask, trace_axes=(), per_layer=True,
                                                        block_size=block_size or None)
    kernels = {"full": full, "lora": np.asarray(lora_total, np.float64)}
    summary = {"num_examples": num_examples, "source": str(run_dir) if run_dir else "config",
               "adapted_layers": sorted(lora.lora_layers(model)),
               "kernel_paths": {"full": full_path, "lora": "structured"}}
    spectra = {}
    for name, k4 in kernels.items():
        spectra[name] = traced_spectrum(k4)
        traced = np.einsum("ijcc->ij", k4) / k4.shape[-1]
        fisher_spectrum = fisher.fisher_spectrum(k4, logits)
        summary[name] = {
            "kernel": information.spectrum_summary(spectra[name]),
            "fisher": information.spectrum_summary(np.clip(fisher_spectrum, 0.0, None)),
            "kernel_target_alignment": _finite(information.kernel_target_alignment(traced, subset.labels)),
            "centred_alignment": _finite(information.kernel_target_alignment(traced, subset.labels, centred=True)),
            "parameters": lora.count_params(nnx.state(model, kernel.subset_filter(name))),
        }
    if full_parts:
        layers = per_layer_comparison(full_parts, lora_parts, factor_bounds(model))
        summary["per_layer"] = layers
        summary["per_layer_order"] = {
            "layers": len(layers), "lora_below_ff": sum(v["lora_below_ff"] for v in layers.values()),
            "theorem_3_6": {name: sum(v["theorem_3_6"][name] for v in layers.values()) for name in THEOREM_3_6}}
        if at_init(model):
            summary["variance_sweep"] = variance_sweep(layers, cfg.adapter.init_scale)
        summary["parameter_groups"] = _group_traces(full_parts)
    if ttr_pairs:
        summary["ttr"] = ttr_metrics(model, encoder, subset.texts, pairs=min(ttr_pairs, num_examples),
                                     seed=cfg.seed, block_size=block_size)
        normalised_ttr(summary["ttr"], kernels)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapted = {f"{layer}.base.kernel" for layer in lora_parts}
    np.savez(out_dir / "kernels.npz", full=kernels["full"], lora=kernels["lora"], labels=subset.labels,
             logits=logits, **{f"full/{k}": v for k, v in full_parts.items() if k in adapted},
             **{f"full_group/{k}": v for k, v in _group_sums(full_parts).items()},
             **{f"lora/{k}": v for k, v in lora_parts.items()})
    summary["made"] = machine.record()
    files.write_json(out_dir / "summary.json", summary)
    figures.ntk_spectrum_figure(spectra, out_dir / "spectrum.png")
    return summary


def _group(path: str) -> str:
    """The kind of weight a parameter path names."""
    if "embeddings" in path:
        return "embeddings"
    if "norm" in path:
        return "layer_norms"
    if ".attention." in path:
        return "attention"
    if ".intermediate." in path or ".output." in path:
        return "feed_forward"
    return "classifier_and_other"


def _group_sums(parts: dict) -> dict[str, np.ndarray]:
    """K_FF split by kind of weight (embeddings, attention, feed-forward, LayerNorms, classifier); they sum to it."""
    sums: dict[str, np.ndarray] = {}
    for path, k4 in parts.items():
        sums[_group(path)] = sums.get(_group(path), 0.0) + k4
    return dict(sorted(sums.items()))


def _group_traces(parts: dict) -> dict:
    """The share of K_FF's trace each kind of weight carries, so a reader sees which weights dominate it."""
    traces = {name: float(np.einsum("iicc->", k4)) for name, k4 in _group_sums(parts).items()}
    total = sum(traces.values())
    return {name: value / total for name, value in traces.items()} if total > 0 else traces
