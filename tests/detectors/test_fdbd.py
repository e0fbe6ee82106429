"""detectors/fdbd.py: fDBD against per-class boundary distances computed in float64."""

import numpy as np
import pytest
from reference import fitted_scores as scores_of
from reference import logits, synthetic_problem

from detectors.fdbd import FDBD

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


@pytest.mark.parametrize("normalizer", ["distance", "norm"])
def test_fdbd_is_the_mean_boundary_distance_over_the_other_classes_over_the_feature_distance(s, normalizer):
    mu = s["train"].astype(np.float64).mean(0)
    W = s["W"]
    expected = []
    for h in s["test"].astype(np.float64):
        z = logits(h, s)
        y = int(np.argmax(z))
        dist = [abs(z[y] - z[c]) / np.linalg.norm(W[y] - W[c]) for c in range(C) if c != y]
        expected.append(np.mean(dist) / np.linalg.norm(h - mu if normalizer == "distance" else h))
    np.testing.assert_allclose(scores_of(FDBD(normalizer), s), expected, rtol=1e-6)
