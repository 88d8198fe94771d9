"""``lorasec infinite``: how fast finite transformer encoders approach their infinite-width kernels.

For each width, ``draws`` encoders of :func:`lorasec.diagnostics.infinite.stax_encoder` are drawn at init on the same
random sentences; their NTK's relative Frobenius distance to the analytic limit is recorded per draw, and the
fitted log-log slope against width is compared with the ``-1/2`` of the law of large numbers (one network's kernel
is an average over ``width`` random units). Writes ``infinite.json`` and ``encoder_convergence.png`` / ``.pdf``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from lorasec.config import ConfigError
from lorasec.core import files, keys, machine, memory
from lorasec.diagnostics import infinite
from lorasec.pipelines import figures


def check_arguments(widths, draws: int, num_layers: int, examples: int, length: int, vocab: int) -> None:
    if len(widths) < 2 or any(w < 1 for w in widths) or sorted(set(widths)) != list(widths):
        raise ConfigError(f"infinite --widths {' '.join(map(str, widths))}: give at least two increasing widths >= 1")
    for name, value, low in (("draws", draws, 2), ("layers", num_layers, 1), ("n", examples, 2),
                             ("length", length, 1), ("vocab", vocab, 2)):
        if value < low:
            raise ConfigError(f"infinite --{name} {value}: must be at least {low}")
    if max(widths) > 4096:
        raise ConfigError(f"infinite --widths: {max(widths)} is above 4096: parameters and Jacobians grow "
                          f"with width² (width 1024 already takes ~10 s per set of draws on 2 CPU cores)")


def convergence(widths, *, draws: int = 4, num_layers: int = 1, examples: int = 8, length: int = 8,
                vocab: int = 16, parameterization: str = "ntk", seed: int = 0) -> dict:
    """``{"widths", "errors" (per width, per draw), "mean", "slope", ...}`` for the stax encoder's NTK."""
    widths = [int(w) for w in widths]
    check_arguments(widths, draws, num_layers, examples, length, vocab)
    memory.check(infinite.encoder_memory_bytes(num_layers, max(widths), examples, length, vocab),
                 f"the encoder kernels at width {max(widths)}, {examples} examples of {length} tokens",
                 "lower --n, --length or the largest --widths")
    tokens = jax.random.randint(keys.key(seed, "inputs"), (examples, length), 0, vocab)
    x = infinite.stax_inputs(tokens, vocab)
    errors = []
    for width in widths:
        network = infinite.stax_encoder(num_layers, width, 2, parameterization=parameterization)
        limit = infinite.infinite_kernels(network, x)["ntk"]
        finite = infinite.finite_kernels(network, x, draws=draws, seed=seed)["ntk"]
        errors.append(np.asarray(infinite.relative_error(finite, limit), float).tolist())
    mean = np.mean(errors, axis=1)
    slope = float(np.polyfit(np.log(widths), np.log(mean), 1)[0])
    return {"widths": widths, "errors": errors, "mean": mean.tolist(), "slope": slope, "predicted_slope": -0.5,
            "draws": draws, "num_layers": num_layers, "examples": examples, "length": length, "vocab": vocab,
            "parameterization": parameterization, "seed": seed}


def run(out: str | Path, widths, **kwargs) -> dict:
    """:func:`convergence` written to ``out``."""
    report = convergence(widths, **kwargs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "made": machine.record()}
    files.write_json(out / "infinite.json", report)
    figures.convergence_figure(report, out / "encoder_convergence")
    return report
