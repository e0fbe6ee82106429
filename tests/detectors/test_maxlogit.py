"""detectors/maxlogit.py: MaxLogit against the largest logit computed in float64."""

import numpy as np
import pytest
from reference import fitted_scores as scores_of
from reference import logits, synthetic_problem

from detectors.maxlogit import MaxLogit

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


def test_maxlogit_is_the_largest_logit(s):
    expected = [max(logits(x, s)) for x in s["test"]]
    np.testing.assert_allclose(scores_of(MaxLogit(), s), expected, rtol=1e-6, atol=1e-6)  # float32 head
