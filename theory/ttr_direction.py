"""Paper 1's robustness direction through its TTR metric ``M' = ‖E K(x_c, x̃_c)‖`` (lorasec.ttr).

Paper 1 predicts ``M'_LoRA < M'_FF`` (LoRA's kernel is "smaller"), and that raising the rank r or the A-init
variance moves LoRA toward full fine-tuning. Measured at init on a small transformer (all linear layers adapted,
α = r so s = 1 as in the authors' rank sweep) with BadNets pairs from lorasec's poisoner on the synthetic task;
FF is the kernel of every non-LoRA parameter of the same network.

Read with care: at init ``K_LoRA`` is linear in ``s²·r·σ_a²`` in expectation (corollary_3_5), so the monotone
directions are nearly forced there, and LoRA's kernel involves far fewer parameters than FF's. The paper's
opposite prediction for label flipping (LoRA LESS robust) does not follow from M' (for label flipping x̃ = x);
its argument was not recoverable, so it is tested by training (``lorasec study``), not here.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from lorasec import lora, synthetic
from lorasec.claims import Check, claim, verdict
from lorasec.config import AdapterConfig, AttackConfig, DataConfig, ModelConfig
from lorasec.models import Architecture, build_classifier
from lorasec.tokenizer import word_level
from lorasec.ttr import poisoned_pairs, ttr_metric

DATA = DataConfig(num_train=400, num_test=10, seq_len=26)
MODEL = ModelConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0)
RANKS = (2, 8, 32)
VARIANCES = (1.0 / 3.0, 1.0)


def measure(rank: int, c: float, *, seed: int = 0, pairs: int = 24) -> tuple[float, float]:
    """(M'_LoRA, M'_FF) for BadNets pairs on a transformer at init."""
    train, _ = synthetic.train_test(DATA)
    clean, poisoned = poisoned_pairs(train, AttackConfig(kind="badnets", poison_rate=pairs / len(train)), seed)
    encoder = word_level(synthetic.vocabulary(DATA), DATA.seq_len)
    arch = Architecture.from_config(MODEL, encoder.vocab_size, DATA.seq_len)
    model = build_classifier(arch, DATA.num_classes, rngs=nnx.Rngs(seed))
    lora.apply_lora(model, AdapterConfig(rank=rank, alpha=float(rank), init="gaussian", init_scale=c,
                                         modules_to_save=("head",)), rngs=nnx.Rngs(seed + 1))
    return ttr_metric(model, encoder, clean, poisoned, subset="lora"), \
        ttr_metric(model, encoder, clean, poisoned, subset="full")


@claim("ttr_direction", "Liang et al. 2025",
       "M'_LoRA < M'_FF (LoRA more robust to backdoors in the NTK regime); M'_LoRA grows with r and σ_a²")
def direction(ranks=RANKS, variances=VARIANCES) -> list[Check]:
    checks = []
    grid = {(r, c): measure(r, c) for r in ranks for c in variances}
    for (r, c), (m_lora, m_ff) in grid.items():
        checks.append(Check("ttr_direction", f"transformer d32, BadNets pairs, r={r} σ²={c:.3g}/n s=1",
                            "M'_LoRA < M'_FF", f"{m_lora:.4g} vs {m_ff:.4g} (ratio {m_lora / m_ff:.3g})",
                            "exact", verdict(m_lora < m_ff)))
    for c in variances:
        values = [grid[r, c][0] for r in ranks]
        checks.append(Check("ttr_direction", f"σ²={c:.3g}/n, r = {'→'.join(map(str, ranks))}",
                             "M'_LoRA increases with r", " → ".join(f"{v:.3g}" for v in values), "exact",
                             verdict(bool(np.all(np.diff(values) > 0)))))
    for r in ranks:
        values = [grid[r, c][0] for c in variances]
        checks.append(Check("ttr_direction", f"r={r}, σ² = {' → '.join(f'{c:.3g}' for c in variances)} /n",
                             "M'_LoRA increases with σ_a²", " → ".join(f"{v:.3g}" for v in values), "exact",
                             verdict(bool(np.all(np.diff(values) > 0)))))
    return checks
