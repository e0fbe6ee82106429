"""detectors/mahalanobis.py: Mahalanobis against a per-class loop with scikit-learn's covariance."""

import numpy as np
import pytest
from reference import problem_with_statistics
from reference import scores_and_predictions as scores_of
from sklearn.covariance import EmpiricalCovariance

from detectors import Mahalanobis

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


def test_mahalanobis_is_minus_the_smallest_class_distance_with_tied_covariance(setup):
    s = setup
    scores, preds = scores_of(Mahalanobis(), s)
    X, y = s["train"].astype(np.float64), s["labels"]
    means = np.array([X[y == c].mean(0) for c in range(C)])
    precision = EmpiricalCovariance(assume_centered=False).fit(X - means[y]).precision_
    expected = [
        -min((x - means[c]) @ precision @ (x - means[c]) for c in range(C))
        for x in s["test"].astype(np.float64)
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))
