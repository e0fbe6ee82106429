"""detectors/scale.py: SCALE against a per-sample sort-and-sum reference."""

import numpy as np
import pytest
from reference import logsumexp, problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import SCALE

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


def test_scale_keeps_every_activation_and_scales_by_exp_s1_over_s2(setup):
    s = setup
    p = 85
    scores, _ = scores_of(SCALE(p), s)
    expected = []
    for x in s["test"].astype(np.float64):
        k = D - int(round(D * p / 100))
        s2 = sum(sorted(x, reverse=True)[:k])
        expected.append(logsumexp(s["W"] @ (x * np.exp(x.sum() / s2)) + s["b"]))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
