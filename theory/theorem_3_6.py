"""Paper 1, Theorem 3.6: under Lemma 3.1's conditions LoRA has fewer information bits and a lower Rényi entropy
than full fine-tuning, ``IB_LoRA ≤ IB_FF`` and ``H_α,LoRA ≤ H_α,FF``.

Measured on the per-layer kernels of a real network at init (one adapted layer of an MLP, full (NC × NC)
kernels from neural-tangents): the Loewner order itself (``λ_min(K_FF − K_LoRA)``), information bits, the
authors' unnormalised ``H'_α = log Σ λ^α`` and the normalised Rényi entropy. Loewner order implies the first two
inequalities (Weyl); the normalised entropy has no such guarantee, so it is reported, not assumed.

The kernel order lives on the data: ``K_FF − K_LoRA = ⟨δ,δ'⟩ ∘ xᵀ(I − s²AᵀA)x'``, so with fewer examples than
input dimensions it can hold although ``M_Δ ⋠ 0``; the last setting lets the inputs span the space.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig
from lorasec.core import keys
from lorasec.core.claims import Check, claim
from lorasec.diagnostics import information, kernel
from lorasec.diagnostics.fisher import kernel_matrix
from lorasec.models import Architecture, build_classifier

LAYER = "layers.0"
SETTINGS = (  # n (layer input width), r, c (σ_a² = c/n), alpha (s = alpha/r), examples N
    (64, 8, 0.3, 8.0, 12),         # Lemma 3.1 holds (λ_max(s²AᵀA) < 1)
    (64, 8, 0.9, 8.0, 12),         # paper's condition holds, M_Δ does not (finite-n edge); N < n
    (64, 8, 1.0 / 3.0, 16.0, 12),  # peft defaults: s = 2; N < n
    (16, 8, 1.0 / 3.0, 16.0, 48),  # peft defaults with inputs spanning the layer's input space (N > n)
)


DRAWS = 20


def layer_spectra(n: int, r: int, c: float, alpha: float, num_examples: int, *, seed: int = 0, draw: int = 0):
    """(K_FF, K_LoRA, λ_max(s²AᵀA)) of the adapted layer for one network (``seed``) and one draw of A."""
    arch = Architecture.from_config(ModelConfig(kind="mlp", d_model=n, mlp_hidden=(32,), dropout=0.0), 50, 6)
    model = build_classifier(arch, 2, rngs=nnx.Rngs(params=keys.key(seed, "init_draws")))
    cfg = AdapterConfig(rank=r, alpha=alpha, init="gaussian", init_scale=c, targets=(LAYER,))
    lora.apply_lora(model, cfg, rngs=nnx.Rngs(params=keys.key(seed, "factors", draw)))
    tokens = jax.random.randint(keys.key(seed, "inputs"), (num_examples, 6), 0, 50)
    full, factors = kernel.layer_kernels(model, LAYER, tokens, np.ones(tokens.shape, bool), trace_axes=())
    k_ff, k_lora = kernel_matrix(np.asarray(full, np.float64)), kernel_matrix(np.asarray(factors, np.float64))
    a = np.asarray(model.layers[0].lora_a[...], np.float64)
    order = float(np.linalg.eigvalsh(cfg.scaling**2 * a.T @ a)[-1])
    return k_ff, k_lora, order


MEASURES = (("IB", information.information_bits),
            ("H'_2 = log Σλ²", lambda e: information.log_power_sum(e, 2.0)),
            ("H'_0.5", lambda e: information.log_power_sum(e, 0.5)),
            ("normalised H_2", lambda e: information.renyi_entropy(e, 2.0)))


@claim("theorem_3_6", "Liang et al. 2025",
       "IB_LoRA ≤ IB_FF and H_α,LoRA ≤ H_α,FF under Lemma 3.1's conditions (per-layer kernels at init)")
def entropy_order(settings=SETTINGS, draws: int = DRAWS) -> list[Check]:
    """Each order over ``draws`` independent draws of A: the theorem claims it for every draw under its conditions,
    so one failing draw is a counter-example; how often each order holds is reported either way."""
    checks = []
    for n, r, c, alpha, num_examples in settings:
        applies = r <= n and c < 1.0 and alpha == r  # the paper's stated conditions (s = 1)
        setting = f"n={n} r={r} σ²={c:.3g}/n s={alpha / r:g} N={num_examples}, {draws} draws of A"
        loewner, lemma, held = [], [], {label: [] for label, _ in MEASURES}
        for draw in range(draws):
            k_ff, k_lora, lam = layer_spectra(n, r, c, alpha, num_examples, draw=draw)
            tol = 1e-5 * float(np.abs(k_ff).max())
            loewner.append(float(np.linalg.eigvalsh(k_ff - k_lora)[0]) >= -tol)
            lemma.append(lam <= 1.0)
            ev_ff, ev_lora = np.linalg.eigvalsh(k_ff), np.linalg.eigvalsh(k_lora)
            for label, fn in MEASURES:
                held[label].append(fn(ev_lora) <= fn(ev_ff))
        context = f"M_Δ ⪯ 0 in {sum(lemma)}/{draws} draws"

        def judge(results: list[bool]) -> str:
            return ("agrees" if all(results) else "disagrees") if applies else "no claim"

        checks.append(Check("theorem_3_6", setting, "K_LoRA ⪯ K_FF",
                            f"holds in {sum(loewner)}/{draws} draws ({context})", "every draw (λ_min ≥ −1e-5·max)",
                            judge(loewner), "" if applies else
                            f"outside the paper's conditions: the order holds in {sum(loewner)}/{draws} draws"))
        for label, _ in MEASURES:
            checks.append(Check("theorem_3_6", setting, f"{label}: LoRA ≤ FF",
                                f"holds in {sum(held[label])}/{draws} draws", "every draw", judge(held[label])))
    return checks
