"""detectors/ash.py: ASH-P, ASH-B and ASH-S against a per-sample sort reference."""

import numpy as np
import pytest
from reference import energy_ref, problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import ASH

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


def ash_ref(x, p, variant):
    x = x.astype(np.float64)
    k = len(x) - int(round(len(x) * p / 100))
    order = np.argsort(-x)
    kept = np.zeros_like(x)
    for j in order[:k]:
        kept[j] = x[j]
    if variant == "p":
        return kept
    if variant == "b":
        return np.array([x.sum() / k if j in order[:k] else 0.0 for j in range(len(x))])
    return kept * np.exp(x.sum() / kept.sum())


@pytest.mark.parametrize("variant,p", [("p", 90), ("b", 90), ("s", 95), ("s", 60), ("b", 33)])
def test_ash_variants_match_a_per_sample_sort_reference(setup, variant, p):
    s = setup
    scores, preds = scores_of(ASH(variant, p), s)
    shaped = [ash_ref(x, p, variant) for x in s["test"]]
    np.testing.assert_allclose(scores, energy_ref(shaped, s["W"], s["b"]), rtol=1e-5)
    np.testing.assert_array_equal(preds, [np.argmax(s["W"] @ x + s["b"]) for x in shaped])


def test_ash_defaults_are_90_for_p_and_b_and_95_for_s(setup):
    from detectors import registry

    built = [registry.build(f"ash_{v}", "CIFAR-10").percentile for v in "pbs"]
    assert built == [ASH(v).pruning_percentile for v in "pbs"] == [90, 90, 95]
    assert ASH("p").percentile is None and ASH("p", 80.0).pruning_percentile == 80.0
    with pytest.raises(ValueError, match="variant"):
        ASH("x").fit(setup["fc"])
