"""Paper claims as code: each module registers claims in :mod:`lorasec.core.claims`; ``lorasec verify`` runs them.

Paper 1 (Liang et al., ICML 2025): ``lemma_3_1`` (kernel order and its finite-n edge), ``corollary_3_5`` (the
LoRA kernel law at init and its fluctuation with r), ``theorem_2_2`` (Fisher–NTK duality), ``theorem_3_6``
(information bits and Rényi entropies), ``ttr_direction`` (the TTR metric over poisoned pairs).
"""
