"""Fisher information of softmax classifiers: exact spectra through the NTK, and stochastic estimates at scale.

For logits ``f(x; θ)`` with Jacobian ``J_i = ∂f(x_i)/∂θ`` (C × P) and ``p_i = softmax(f(x_i))``:

- true Fisher (= Gauss-Newton for cross-entropy): ``F = (1/N) Σ J_iᵀ H_i J_i``, ``H_i = diag(p_i) − p_i p_iᵀ``;
- empirical Fisher: ``F_emp = (1/N) Σ g_i g_iᵀ``, ``g_i = J_iᵀ (p_i − e_{y_i})`` (the per-example gradient).

Paper 1, Theorem 2.2 (NTK duality): writing ``F = (1/N) Jᵀ H J`` with J stacked (NC × P) and H block diagonal,
the non-zero eigenvalues of F are those of ``(1/N) H^{1/2} K H^{1/2}``, K = J Jᵀ the full (NC × NC) NTK, and
those of F_emp are the eigenvalues of ``(1/N) Rᵀ K R`` (N × N), ``R`` holding ``p_i − e_{y_i}``. Exact, whatever
the number of parameters. For models whose kernel is too large, :func:`hutchinson_trace` and
:func:`slq_logdet` estimate ``tr F`` and ``log det(F + δI)`` from Fisher-vector products alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from lorasec.core import keys

FISHER_KINDS = ("true", "empirical")


def kernel_matrix(kernel4: np.ndarray) -> np.ndarray:
    """(N, N, C, C) kernel -> (N·C, N·C) matrix, example-major."""
    k = np.asarray(kernel4)
    n, _, c, _ = k.shape
    return k.transpose(0, 2, 1, 3).reshape(n * c, n * c)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def fisher_spectrum(kernel4, logits, *, kind: str = "true", labels=None) -> np.ndarray:
    """Eigenvalues (descending) of the dual matrix whose non-zero spectrum is the Fisher's (Theorem 2.2).

    Paper 1's duality (module docstring): ``(1/N) H^{1/2} K H^{1/2}`` for the true Fisher, ``(1/N) Rᵀ K R`` for the
    empirical one.

    Args:
        kernel4: float (N, N, C, C) full NTK at the inputs, untraced (``trace_axes=()``); computed in float64.
        logits: float (N, C) logits at the same inputs.
        kind: ``"true"`` (the Fisher = Gauss-Newton) or ``"empirical"``.
        labels: int (N,) labels; needed for ``kind="empirical"`` only.
    Returns:
        float64 (N·C,) for ``"true"`` or (N,) for ``"empirical"``, descending; the zero eigenvalues included (the
        true dual has rank ≤ N(C−1)), with round-off that may be slightly negative.
    """
    if kind not in FISHER_KINDS:
        raise ValueError(f"kind = {kind!r}: must be one of {', '.join(FISHER_KINDS)}")
    k = kernel_matrix(np.asarray(kernel4, np.float64))
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    n, c = probs.shape
    if kind == "true":
        blocks = [_sqrt_psd(np.diag(p) - np.outer(p, p)) for p in probs]
        h_half = np.zeros((n * c, n * c))
        for i, block in enumerate(blocks):
            h_half[i * c:(i + 1) * c, i * c:(i + 1) * c] = block
        dual = h_half @ k @ h_half / n
    else:
        if labels is None:
            raise ValueError("the empirical Fisher needs labels")
        residual = probs - np.eye(c)[np.asarray(labels)]
        r = np.zeros((n * c, n))
        for i in range(n):
            r[i * c:(i + 1) * c, i] = residual[i]
        dual = r.T @ k @ r / n
    return np.sort(np.linalg.eigvalsh((dual + dual.T) / 2))[::-1]


def fisher_vector_product(f, params, inputs):
    """``v ↦ F v = (1/N) Jᵀ H (J v)`` for ``f(params, inputs) -> logits``, without forming J or F (jitted).

    Args:
        f: ``f(params, inputs) -> logits``, float (N, C).
        params: the pytree F is taken with respect to (P entries in all); also where H's probabilities are taken.
        inputs: the N inputs ``f`` takes (e.g. :func:`lorasec.diagnostics.kernel.pack_inputs`' int32 (N, 2, L)).
    Returns:
        The true Fisher's product ``fvp(v) -> F v``, from a pytree ``v`` shaped like ``params`` to a pytree of the
        same structure, shapes and dtypes.
    """
    logits = f(params, inputs)
    probs = jax.nn.softmax(logits, axis=-1)
    n = logits.shape[0]

    @jax.jit
    def fvp(v):
        _, jv = jax.jvp(lambda p: f(p, inputs), (params,), (v,))
        hjv = probs * jv - probs * (probs * jv).sum(-1, keepdims=True)
        _, pullback = jax.vjp(lambda p: f(p, inputs), params)
        return jax.tree.map(lambda x: x / n, pullback(hjv)[0])

    return fvp


def _rademacher_like(params, key):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo estimate with its standard error over probes."""

    value: float
    standard_error: float
    probes: int


def hutchinson_trace(fvp, params, *, probes: int = 64, seed: int = 0) -> Estimate:
    """``tr F ≈ mean_v vᵀ F v`` over Rademacher ``v`` (Hutchinson 1989).

    Args:
        fvp: ``v ↦ F v`` on pytrees shaped like ``params`` (:func:`fisher_vector_product`).
        params: the pytree whose leaves' shapes and dtypes the probes take (its values are not read).
        probes: number of probes (at least 2 for a standard error).
        seed: the probes' seed.
    Returns:
        :class:`Estimate`: the mean over probes, its standard error (sample sd / √probes) and ``probes``.
    """
    samples = []
    for k in range(probes):
        v = _rademacher_like(params, keys.key(seed, "hutchinson", k))
        samples.append(float(_dot(v, fvp(v))))
    samples = np.asarray(samples)
    return Estimate(float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(probes)), probes)


def _lanczos(matvec, q0: jax.Array, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos tridiagonalisation (α, β) from unit ``q0``, with full reorthogonalisation."""
    basis = [q0]
    alphas, betas = [], []
    q_prev, beta = jnp.zeros_like(q0), 0.0
    q = q0
    for _ in range(steps):
        w = matvec(q) - beta * q_prev
        alpha = float(jnp.vdot(q, w))
        w = w - alpha * q
        stacked = jnp.stack(basis)
        w = w - stacked.T @ (stacked @ w)  # full reorthogonalisation (twice is enough)
        w = w - stacked.T @ (stacked @ w)
        alphas.append(alpha)
        beta = float(jnp.linalg.norm(w))
        if beta < 1e-10 * max(abs(alpha), 1.0) or len(alphas) == steps:
            break
        betas.append(beta)
        q_prev, q = q, w / beta
        basis.append(q)
    return np.asarray(alphas), np.asarray(betas)


def slq_logdet(fvp, params, *, shift: float, probes: int = 16, steps: int = 40, seed: int = 0) -> Estimate:
    """``log det(F + shift·I)`` by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017).

    F is rank-deficient (rank ≤ N(C−1) ≪ P), so the shift keeps the log-determinant finite; the zero
    eigenvalues contribute ``(P − rank)·log(shift)``.

    Args:
        fvp: ``v ↦ F v`` on pytrees shaped like ``params`` (:func:`fisher_vector_product`).
        params: the pytree F acts on, flattened to P entries (its values are not read).
        shift: δ > 0 added to F's diagonal.
        probes: number of Rademacher probes.
        steps: Lanczos steps per probe (fewer once the Krylov space is exhausted).
        seed: the probes' seed.
    Returns:
        :class:`Estimate` of ``log det(F + shift·I)`` in nats: the mean over probes, its standard error, ``probes``.
    """
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dim = flat.size

    def matvec(x):
        return jax.flatten_util.ravel_pytree(fvp(unravel(x)))[0] + shift * x

    samples = []
    for k in range(probes):
        v = jax.random.rademacher(keys.key(seed, "lanczos", k), (dim,), flat.dtype)
        alphas, betas = _lanczos(matvec, v / jnp.sqrt(dim), steps)
        tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, vectors = np.linalg.eigh(tri)
        samples.append(dim * float((vectors[0] ** 2 * np.log(np.clip(theta, 1e-300, None))).sum()))
    samples = np.asarray(samples)
    return Estimate(float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(probes)), probes)


def exact_logdet(nonzero_eigenvalues, dim: int, shift: float) -> float:
    """``log det(F + shift·I)`` from F's non-zero spectrum (e.g. the NTK dual's) and its dimension P.

    Args:
        nonzero_eigenvalues: float (k,) eigenvalues of F, k ≤ P, e.g. :func:`fisher_spectrum`'s (zeros among them
            change nothing: each counts as one of the P − k).
        dim: P, the number of parameters (F is P × P).
        shift: δ > 0.
    Returns:
        ``Σ log(λ + δ) + (P − k)·log δ`` in nats, a float.
    """
    lam = np.asarray(nonzero_eigenvalues, np.float64)
    return float(np.log(lam + shift).sum() + (dim - lam.size) * np.log(shift))

