"""detectors/gen.py: GEN against the generalized entropy of the sorted softmax probabilities."""

import numpy as np
import pytest
from reference import fitted_scores as scores_of
from reference import logits, softmax, synthetic_problem

from detectors.gen import GEN

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


@pytest.mark.parametrize("gamma, m", [(0.1, 100), (0.5, 3), (2.0, 1)])
def test_gen_is_minus_the_generalized_entropy_of_the_m_largest_probabilities(s, gamma, m):
    expected = []
    for x in s["test"]:
        p = sorted(softmax(logits(x, s)), reverse=True)[: min(m, C)]
        expected.append(-sum(q**gamma * (1 - q) ** gamma for q in p))
    # The head runs in float32: (1 - p) of a confident p carries its rounding, hence 1e-5.
    np.testing.assert_allclose(scores_of(GEN(gamma, m), s), expected, rtol=1e-5, atol=1e-10)


def test_gen_defaults_are_the_papers_gamma_and_m():
    assert (GEN().gamma, GEN().m) == (0.1, 100)
