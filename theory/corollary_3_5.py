"""Paper 1, Corollary 3.5 and the LoRA kernel law at init (issue #3, item 3).

At init (B = 0) the LoRA layer kernel is ``s²⟨δ,δ'⟩ xᵀAᵀAx'`` and ``E[AᵀA] = r σ_a² I`` (derived), so

    E[K_LoRA^(l)] = s² · r · σ_a² · K_FF^(l),

and full-rank LoRA (r = n) with σ_a² = 1/n and s = 1 has ``E[K_LoRA] = K_FF`` (Corollary 3.5). Measured by Monte
Carlo over draws of A on a real network layer (an MLP's first hidden layer, kernels from neural-tangents), as
neural-tangents tests its kernels: relative Frobenius error of the mean, against its standard error.

Both checks are identities: the law follows from ``E[AᵀA] = r σ_a² I``, which holds by the way A is drawn, for any
network and inputs, so agreement tests lorasec's kernels and sampling, not the paper. They are reported apart from
the claims, as ``consistent`` or ``inconsistent``.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig
from lorasec.core import keys
from lorasec.core.claims import Check, claim, consistent
from lorasec.diagnostics import kernel
from lorasec.models import Architecture, build_classifier

LAYER = "layers.0"
SETTINGS = (  # n (layer input width), r, c (σ_a² = c/n), alpha (s = alpha/r), draws
    (16, 16, 1.0, 16.0, 200),        # Corollary 3.5: r = n, σ² = 1/n, s = 1
    (16, 4, 1.0 / 3.0, 8.0, 200),     # peft default variance, s = 2
    (16, 2, 1.0, 2.0, 200),           # low rank: large fluctuations
)


def monte_carlo(n: int, r: int, c: float, alpha: float, draws: int, *, num_examples: int = 6, seed: int = 0):
    """(mean LoRA kernel, standard error of its Frobenius norm, K_FF, law factor s²rσ²) for one layer."""
    arch = Architecture.from_config(ModelConfig(kind="mlp", d_model=n, mlp_hidden=(24,), dropout=0.0), 30, 5)
    tokens = jax.random.randint(keys.key(seed, "inputs"), (num_examples, 5), 0, 30)
    mask = np.ones(tokens.shape, bool)
    cfg = AdapterConfig(rank=r, alpha=alpha, init="gaussian", init_scale=c, targets=(LAYER,))
    samples, k_ff = [], None
    for draw in range(draws):
        model = build_classifier(arch, 2, rngs=nnx.Rngs(params=keys.key(seed, "params")))  # same W0 every draw
        lora.apply_lora(model, cfg, rngs=nnx.Rngs(params=keys.key(seed, "init_draws", draw)))  # fresh A
        if k_ff is None:  # K_FF^(l) depends on W0 only: build it once
            full, factors = kernel.layer_kernels(model, LAYER, tokens, mask, trace_axes=())
            k_ff = np.asarray(full, np.float64)
        else:
            factors = kernel.empirical_ntk(model, tokens, mask, subset=kernel.path_under(f"{LAYER}.lora_"),
                                           trace_axes=())
        samples.append(np.asarray(factors, np.float64))
    samples = np.stack(samples)
    mean = samples.mean(0)
    squared = ((samples - mean) ** 2).sum(axis=tuple(range(1, samples.ndim)))
    spread = np.sqrt(squared.sum() / (draws - 1))  # per-draw Frobenius standard deviation
    standard_error = spread / np.sqrt(draws)        # expected Frobenius error of the mean
    return mean, standard_error, k_ff, cfg.scaling**2 * r * c / n


def relative_spread(n: int, r: int, draws: int = 80) -> float:
    """Per-draw Frobenius standard deviation of K_LoRA relative to its mean's norm (σ_a² = 1/n, s = 1)."""
    mean, standard_error, _, _ = monte_carlo(n, r, 1.0, float(r), draws)
    return float(standard_error * np.sqrt(draws) / np.linalg.norm(mean))


@claim("lora_kernel_fluctuation", "derived from the law of A",
       "K_LoRA fluctuates around its mean with relative spread ∝ 1/√r (Gaussian A: Var ∝ r σ⁴, mean ∝ r σ²)")
def fluctuation(n: int = 16, ranks=(2, 8)) -> list[Check]:
    low, high = ranks
    spreads = {r: relative_spread(n, r) for r in ranks}
    predicted = np.sqrt(high / low)
    measured = spreads[low] / spreads[high]
    ok = abs(measured / predicted - 1.0) <= 0.25
    return [Check("lora_kernel_fluctuation", f"n={n}, r={low} vs r={high}, σ²=1/n s=1, 80 draws each",
                  f"spread ratio √({high}/{low}) = {predicted:.3g}", f"{measured:.3g} "
                  f"({spreads[low]:.3g} vs {spreads[high]:.3g})", "±25% (sampling error of 80 draws)",
                  consistent(ok), kind="identity")]


@claim("corollary_3_5", "Liang et al. 2025",
       "E[K_LoRA^(l)] = s²·r·σ_a²·K_FF^(l) at init; = K_FF^(l) for r = n, σ_a² = 1/n, s = 1")
def kernel_law(settings=SETTINGS) -> list[Check]:
    checks = []
    for n, r, c, alpha, draws in settings:
        mean, standard_error, k_ff, factor = monte_carlo(n, r, c, alpha, draws)
        predicted = factor * k_ff
        error = np.linalg.norm(mean - predicted)
        scale = np.linalg.norm(predicted)
        ok = error <= 3.0 * standard_error
        checks.append(Check(
            "corollary_3_5", f"n={n} r={r} σ²={c:.3g}/n s={alpha / r:g}, {draws} draws of A",
            f"E[K_LoRA] = {factor:.4g}·K_FF", f"rel. Frobenius error {error / scale:.4f}",
            f"≤ 3 standard errors ({3 * standard_error / scale:.4f})", consistent(ok),
            "an identity: E[AᵀA] = rσ²I by the draw of A" if ok else
            "the Monte-Carlo mean misses the law by more than its sampling error", kind="identity"))
    return checks
