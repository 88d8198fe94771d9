"""Paper 1, Theorem 2.2: the Fisher information and the NTK share their non-zero spectrum.

Predicted: the eigenvalues of ``(1/N) H^{1/2} K H^{1/2}`` (true Fisher) or ``(1/N) Rᵀ K R`` (empirical Fisher)
from the full NTK K (:mod:`lorasec.diagnostics.fisher`). Measured: the eigenvalues of the explicit P × P Fisher
built from Jacobians of a small network, for the full-parameter and the LoRA-factor subsets.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig
from lorasec.core import keys
from lorasec.core.claims import Check, claim, verdict
from lorasec.diagnostics import fisher, information, kernel
from lorasec.models import Architecture, build_classifier

N, C = 10, 3


def spectra(subset: str, kind: str, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(dual spectrum, explicit spectrum, P) on an MLP classifier with random inputs and labels."""
    arch = Architecture.from_config(ModelConfig(kind="mlp", d_model=8, mlp_hidden=(12,), dropout=0.0), 40, 6)
    model = build_classifier(arch, C, rngs=nnx.Rngs(params=keys.key(seed, "params")))
    if subset == "lora":
        lora.apply_lora(model, AdapterConfig(rank=2, alpha=4), rngs=nnx.Rngs(params=keys.key(seed, "adapters")))
        for i, layer in enumerate(lora.lora_layers(model).values()):  # a different B per layer
            layer.lora_b[...] = 0.5 * jax.random.normal(keys.key(seed, "factors", i), layer.lora_b[...].shape)
    tokens = jax.random.randint(keys.key(seed, "inputs"), (N, 6), 0, 40)
    labels = np.asarray(jax.random.randint(keys.key(seed, "labels"), (N,), 0, C))
    mask = np.ones(tokens.shape, bool)
    f, params = kernel.model_function(model, subset)
    x = kernel.pack_inputs(tokens, mask)
    logits = f(params, x)
    dual = fisher.fisher_spectrum(kernel.empirical_ntk(model, tokens, mask, subset=subset, trace_axes=()),
                                  logits, kind=kind, labels=labels)
    jac = jax.jacrev(f)(params, x)
    j = np.concatenate([np.asarray(leaf, np.float64).reshape(N, C, -1) for leaf in jax.tree_util.tree_leaves(jac)],
                       axis=-1)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    if kind == "true":
        explicit = sum(j[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ j[i] for i in range(N)) / N
    else:
        grads = [j[i].T @ (p[i] - np.eye(C)[labels[i]]) for i in range(N)]
        explicit = sum(np.outer(g, g) for g in grads) / N
    return dual, np.sort(np.linalg.eigvalsh(explicit))[::-1], j.shape[-1]


@claim("theorem_2_2", "Liang et al. 2025",
       "non-zero spectrum of the Fisher = spectrum of (1/N) H^½ K H^½ (NTK dual), for any parameter count")
def duality() -> list[Check]:
    tolerance = 1e-9 if jax.config.jax_enable_x64 else 2e-4
    checks = []
    for subset in ("full", "lora"):
        for kind in fisher.FISHER_KINDS:
            dual, explicit, dim = spectra(subset, kind)
            rank = information.nonzero(dual).size
            error = float(np.abs(dual[:rank] - explicit[:rank]).max() / explicit[0])
            checks.append(Check("theorem_2_2", f"MLP {subset} params (P={dim}), {kind} Fisher, N={N} C={C}",
                                f"{rank} non-zero eigenvalues of the dual", f"max rel. difference {error:.2e}",
                                f"{tolerance:g} × λ_max", verdict(error <= tolerance)))
    return checks
