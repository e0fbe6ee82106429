"""detectors/rmds.py: Relative Mahalanobis against per-class loops with scikit-learn's covariances."""

import numpy as np
import pytest
from reference import fitted_scores as scores_of
from reference import synthetic_problem
from sklearn.covariance import EmpiricalCovariance

from detectors.rmds import RelativeMahalanobis

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


def test_relative_mahalanobis_is_the_background_distance_minus_the_smallest_class_distance(s):
    x, y = s["train"].astype(np.float64), s["labels"]
    means = [x[y == c].mean(0) for c in range(C)]
    tied = EmpiricalCovariance().fit(np.concatenate([x[y == c] - means[c] for c in range(C)]))
    whole = EmpiricalCovariance().fit(x)
    expected = []
    for h in s["test"].astype(np.float64):
        md0 = (h - whole.location_) @ whole.precision_ @ (h - whole.location_)
        expected.append(max(-(h - m) @ tied.precision_ @ (h - m) + md0 for m in means))
    np.testing.assert_allclose(scores_of(RelativeMahalanobis(), s), expected, rtol=1e-6)
