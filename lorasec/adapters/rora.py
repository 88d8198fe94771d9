"""RoRA (Luong & Chen 2026): the trigger-insensitive regulariser (Tr) and the post-training rescale (Pt).

The clean-strengthened part (Cl) is dropout on the frozen path, inside :class:`lorasec.adapters.lora.LoRALinear`.
Layouts: peft's ``W_pre = U Σ Vᵀ`` is (out, in), B (out, r), A (r, in); lorasec stores ``kernel = Wᵀ``,
``lora_a = Aᵀ``, ``lora_b = Bᵀ``, so ``U_kᵀ B = (lora_b U_k)ᵀ`` and ``A V_k = (V_kᵀ lora_a)ᵀ``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.core.errors import ConfigError


def check_settings(model: nnx.Module, tr_k: int, pt_layers: int) -> None:
    """RoRA's settings against the adapted model: Tr's k must not exceed any adapted matrix's smaller side (past it
    the top-k bases are the whole space and Tr is plain L2 on the factors), and Pt's top layers must exist.

    Raises:
        ConfigError: naming ``adapter.rora_tr_k`` or ``adapter.rora_pt_layers`` and the model's sizes.
    """
    layers = lora.lora_layers(model)
    if tr_k:
        narrowest = min(layers.items(), key=lambda kv: min(kv[1].base.in_features, kv[1].base.out_features))
        width = min(narrowest[1].base.in_features, narrowest[1].base.out_features)
        if tr_k > width:
            raise ConfigError(f"adapter.rora_tr_k = {tr_k}: above min(in, out) = {width} of layer {narrowest[0]}, "
                              f"where Tr's top-k bases would be the whole space (plain L2); use k <= {width}")
    if pt_layers:
        indices = {i for i in map(_layer_index, layers) if i is not None}
        if pt_layers > len(indices):
            raise ConfigError(f"adapter.rora_pt_layers = {pt_layers}: the model has {len(indices)} adapted encoder "
                              f"layer(s); use at most {len(indices)}")


def top_singular_bases(layer: lora.LoRALinear, k: int) -> tuple[jax.Array, jax.Array]:
    """``(U_k, V_k)`` of the frozen ``W_pre`` (out, in): its top-k left and right singular vectors, from the full
    SVD, so that k ≥ max(out, in) gives complete orthogonal bases (then Ω is plain L2 on the factors)."""
    w = layer.base.kernel[...].T
    u, _, vt = jnp.linalg.svd(w, full_matrices=True)
    return u[:, :k], vt[:k].T


def trigger_penalty(layer: lora.LoRALinear, bases: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Tr's ``Ω(A, B) = ‖U_kᵀ B‖²_F + ‖A V_k‖²_F`` for one adapted matrix."""
    u_k, v_k = bases
    return jnp.sum((layer.lora_b[...] @ u_k) ** 2) + jnp.sum((v_k.T @ layer.lora_a[...]) ** 2)


def penalty_terms(model: nnx.Module, weight: float, k: int) -> dict:
    """Tr's per-run inputs to :func:`penalised_loss`: the weight λ and the bases of every adapted matrix, taken from
    the frozen weights once, before training (a pytree, so an ensemble stacks one per member)."""
    bases = {name: top_singular_bases(layer, k) for name, layer in lora.lora_layers(model).items()}
    return {"weight": jnp.asarray(weight, jnp.float32), "bases": bases}


def penalised_loss(base_loss):
    """``loss + λ Σ_layers Ω``, with λ and the bases passed as the loss's ``terms`` (:func:`penalty_terms`)."""

    def loss(model, batch, key, terms):
        layers = lora.lora_layers(model)
        penalty = sum(trigger_penalty(layers[name], basis) for name, basis in terms["bases"].items())
        return base_loss(model, batch, key, None) + terms["weight"] * penalty

    return loss


def _layer_index(name: str) -> int | None:
    found = re.search(r"layers\.(\d+)\.", name + ".")
    return int(found.group(1)) if found else None


def post_training_rescale(model: nnx.Module, top_layers: int) -> dict[str, float]:
    """Pt: for every adapted matrix in the top ``top_layers`` encoder layers, set the scale so that
    ``σ_max(s·B A) = σ_max(W_pre)``, i.e. ``s = σ_max(W_pre) / σ_max(B A)``. Returns the new scales."""
    layers = lora.lora_layers(model)
    indices = sorted({i for i in map(_layer_index, layers) if i is not None})
    chosen = set(indices[-top_layers:]) if top_layers else set()
    scales = {}
    for name, layer in layers.items():
        if _layer_index(name) not in chosen:
            continue
        update = np.asarray(layer.lora_a[...] @ layer.lora_b[...], np.float64)
        top = np.linalg.norm(update, 2)
        if top == 0:
            continue  # an untouched adapter (B = 0) has no direction to rescale
        scales[name] = float(np.linalg.norm(np.asarray(layer.base.kernel[...], np.float64), 2) / top)
    lora.set_scales(model, scales)
    return scales
