"""Paper 1's robustness direction through its TTR metric ``M' = ‖E K(x_c, x̃_c)‖`` (lorasec.diagnostics.ttr).

Paper 1 predicts ``M'_LoRA < M'_FF`` (LoRA's kernel is "smaller"), and that raising the rank r or the A-init
variance moves LoRA toward full fine-tuning. Measured at init on a small transformer (all linear layers adapted,
α = r so s = 1 as in the authors' rank sweep) with BadNets pairs from lorasec's poisoner on the synthetic task;
FF is the kernel of every non-LoRA parameter of the same network.

These are consistency checks, not tests of the paper: at init ``K_LoRA`` is linear in ``s²·r·σ_a²`` in
expectation (corollary_3_5), so the monotone directions are forced there, and LoRA's kernel involves far fewer
parameters than FF's, so ``M'_LoRA < M'_FF`` follows from the parameter count (the ``lorasec ntk`` report's M'
normalised by each kernel's scale, which removes it, reverses the order on MiniLM). The paper's
opposite prediction for label flipping (LoRA LESS robust) does not follow from M' (for label flipping x̃ = x);
its argument was not recoverable, so it is tested by training (``lorasec study``), not here.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, AttackConfig, DataConfig, ModelConfig
from lorasec.core import keys
from lorasec.core.claims import Check, claim
from lorasec.data import synthetic
from lorasec.data.tokenizer import word_level
from lorasec.diagnostics.ttr import poisoned_pairs, ttr_metric
from lorasec.models import Architecture, build_classifier

DATA = DataConfig(num_train=400, num_test=10, seq_len=26, cue_strength=1.0)  # BadNets pairs on on-topic cues
MODEL = ModelConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0)
RANKS = (2, 8, 32)
VARIANCES = (0.1, 1.0 / 3.0, 1.0)
SEEDS = 5
LEVEL = 0.95  # two-sided: a direction is decided when the mean difference exceeds Student's t quantile × SE


def measure(ranks=RANKS, variances=VARIANCES, *, seeds: int = SEEDS, pairs: int = 24) -> dict:
    """``{"ff": [M'_FF per seed], (r, c): [M'_LoRA per seed]}`` for BadNets pairs on a transformer at init.

    Every seed draws its own network; every (r, c, seed) draws its own A from an independent key, so no two
    settings share a draw (with one shared draw A ∝ √c and M'_LoRA ∝ c would hold by construction)."""
    train, _ = synthetic.train_test(DATA)
    clean, poisoned = poisoned_pairs(train, AttackConfig(kind="badnets", poison_rate=pairs / len(train)), 0)
    encoder = word_level(synthetic.vocabulary(DATA), DATA.seq_len)
    arch = Architecture.from_config(MODEL, encoder.vocab_size, DATA.seq_len)
    out: dict = {"ff": []}
    for seed in range(seeds):
        model = build_classifier(arch, DATA.num_classes, rngs=nnx.Rngs(params=keys.key(seed, "init_draws")))
        out["ff"].append(ttr_metric(model, encoder, clean, poisoned, subset="full"))
        graphdef, state = nnx.split(model)
        for i, (r, c) in enumerate((r, c) for r in ranks for c in variances):
            adapted = nnx.merge(graphdef, state)
            lora.apply_lora(adapted, AdapterConfig(rank=r, alpha=float(r), init="gaussian", init_scale=c,
                                                   modules_to_save=("head",)),
                            rngs=nnx.Rngs(params=keys.key(seed, "factors", i)))
            out.setdefault((r, c), []).append(ttr_metric(adapted, encoder, clean, poisoned, subset="lora"))
    return out


def _difference(high, low) -> tuple[float, float, float]:
    """Mean, standard error and the decision threshold (t quantile × SE) of ``high − low``, paired by seed."""
    from scipy.stats import t as student

    diff = np.subtract(high, low)
    if len(diff) < 2:
        raise ValueError("ttr_direction needs at least 2 seeds to estimate its standard errors")
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return float(diff.mean()), se, float(student.ppf(0.5 + LEVEL / 2, len(diff) - 1)) * se


def _decide(mean: float, se: float, threshold: float) -> str:
    return "consistent" if mean > threshold else ("inconsistent" if mean < -threshold else "inconclusive")


@claim("ttr_direction", "Liang et al. 2025",
       "M'_LoRA < M'_FF (LoRA more robust to backdoors in the NTK regime); M'_LoRA grows with r and σ_a² "
       "(at init forced by E K_LoRA ∝ s²rσ² and the parameter count: a consistency check)")
def direction(ranks=RANKS, variances=VARIANCES, seeds: int = SEEDS) -> list[Check]:
    grid = measure(ranks, variances, seeds=seeds)
    tolerance = f"paired t, {LEVEL:.0%} two-sided, {seeds} independent draws"
    checks = []
    for r in ranks:
        for c in variances:
            mean, se, threshold = _difference(grid["ff"], grid[r, c])
            checks.append(Check("ttr_direction", f"transformer d32, BadNets pairs, r={r} σ²={c:.3g}/n s=1",
                                "M'_LoRA < M'_FF", f"M'_FF − M'_LoRA = {mean:.3g} ± {se:.2g} (M'_LoRA "
                                f"{np.mean(grid[r, c]):.3g}, M'_FF {np.mean(grid['ff']):.3g})", tolerance,
                                _decide(mean, se, threshold), kind="consistency"))
    for label, axis in (("r", [[(r, c) for r in ranks] for c in variances]),
                        ("σ_a²", [[(r, c) for c in variances] for r in ranks])):
        for cells in axis:
            steps = [_decide(*_difference(grid[b], grid[a])) for a, b in zip(cells[:-1], cells[1:])]
            outcome = ("inconsistent" if "inconsistent" in steps else "consistent"
                       if all(s == "consistent" for s in steps) else "inconclusive")
            fixed = f"σ²={cells[0][1]:.3g}/n" if label == "r" else f"r={cells[0][0]}"
            moving = " → ".join(str(cell[0]) if label == "r" else f"{cell[1]:.3g}" for cell in cells)
            checks.append(Check("ttr_direction", f"{fixed}, {label} = {moving}", f"M'_LoRA increases with {label}",
                                " → ".join(f"{np.mean(grid[cell]):.3g}" for cell in cells), tolerance, outcome,
                                "steps: " + ", ".join(steps), kind="consistency"))
    return checks
