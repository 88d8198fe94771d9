"""Paper 1's claims as code: each check compares a computed prediction with a computed measurement, and the
checks find what THEORY.md says they must (the Lemma 3.1 edge) while confirming what is exact."""

import json

import numpy as np
import pytest

from lorasec import claims, cli
from theory import corollary_3_5, lemma_3_1, theorem_2_2, theorem_3_6


def _by_setting(checks):
    return {c.setting: c for c in checks}


def test_lemma_3_1_finds_the_finite_n_edge():
    checks = _by_setting(lemma_3_1.kernel_order())
    assert checks["n=64 r=8 σ²=0.5/n s=1"].verdict == "holds"
    edge = checks["n=1024 r=8 σ²=0.9/n s=1"]  # THEORY.md's example: λ_max ≈ 1.06 > 1 inside the paper's condition
    assert edge.verdict == "violated" and "asymptotic" in edge.note
    assert checks["n=768 r=8 σ²=0.333/n s=2"].verdict == "no claim"
    # Marchenko–Pastur predicts the measured edge: within 5% at n = 1024.
    measured = lemma_3_1.lambda_max(1024, 8, 0.9, 1.0)
    assert abs(measured - lemma_3_1.marchenko_pastur_edge(1024, 8, 0.9, 1.0)) < 0.05 * measured
    boundary = _by_setting(lemma_3_1.boundary(shapes=((1024, 8),)))["n=1024 r=8 s=1"]
    assert boundary.verdict == "violated" and 0.8 < lemma_3_1.measured_boundary(1024, 8) < 0.95


def test_lora_kernel_law_holds_and_a_wrong_law_is_rejected():
    settings = ((8, 8, 1.0, 8.0, 60), (8, 2, 1.0 / 3.0, 4.0, 60))
    for check in corollary_3_5.kernel_law(settings):
        assert check.verdict == "holds", check
    mean, standard_error, k_ff, factor = corollary_3_5.monte_carlo(8, 8, 1.0, 8.0, 60)
    assert factor == pytest.approx(1.0)  # Corollary 3.5's setting
    wrong = np.linalg.norm(mean - 1.5 * factor * k_ff)
    assert wrong > 3 * standard_error


def test_fisher_ntk_duality_claim_holds():
    checks = theorem_2_2.duality()
    assert len(checks) == 4 and all(c.verdict == "holds" for c in checks)


def test_theorem_3_6_order_and_its_failure_when_inputs_span_the_space():
    checks = theorem_3_6.entropy_order(settings=((32, 4, 0.3, 4.0, 10), (16, 8, 1.0 / 3.0, 16.0, 48)))
    inside = [c for c in checks if c.setting.startswith("n=32")]
    assert all(c.verdict == "holds" for c in inside)
    loewner = next(c for c in checks if c.setting.startswith("n=16") and c.predicted == "K_LoRA ⪯ K_FF")
    assert loewner.verdict == "no claim" and "fails" in loewner.note


def test_verify_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "checks.json"
    assert cli.main(["verify", "lemma_3_1", "lemma_3_1_edge", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "claim" in printed.splitlines()[0] and "verdict" in printed.splitlines()[0]
    records = json.loads(out.read_text())
    assert {r["claim"] for r in records} == {"lemma_3_1", "lemma_3_1_edge"}
    assert set(records[0]) == {"claim", "setting", "predicted", "measured", "tolerance", "verdict", "note"}
    assert cli.main(["verify", "lemma_9_9"]) == 2
    assert "no such claim" in capsys.readouterr().err


def test_registry_lists_every_paper_1_claim():
    names = set(claims.discover())
    assert {"lemma_3_1", "lemma_3_1_edge", "corollary_3_5", "lora_kernel_fluctuation", "theorem_2_2",
            "theorem_3_6", "ttr_direction"} <= names


def test_ttr_metric_on_poisoned_pairs():
    from theory import ttr_direction

    m_lora, m_ff = ttr_direction.measure(4, 1.0, pairs=8)
    assert 0 < m_lora < m_ff
    # At init K_LoRA is proportional to σ_a² for the same draws of A (the kernel law): tripling c triples M'.
    assert ttr_direction.measure(4, 1.0 / 3.0, pairs=8)[0] == pytest.approx(m_lora / 3, rel=1e-4)
    checks = ttr_direction.direction(ranks=(2, 8), variances=(1.0,))
    assert all(c.verdict == "holds" for c in checks) and len(checks) == 2 + 1 + 2


def test_lora_kernel_fluctuation_scales_as_inverse_sqrt_rank():
    (check,) = corollary_3_5.fluctuation()
    assert check.verdict == "holds"
    assert corollary_3_5.relative_spread(16, 2) > 1.5 * corollary_3_5.relative_spread(16, 8)
