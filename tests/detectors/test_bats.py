"""detectors/bats.py: BATS against a per-activation truncation loop and the energy of the result."""

import numpy as np
import pytest
import scipy.special
from reference import fitted_scores as scores_of
from reference import logits, synthetic_problem

from detectors import registry
from detectors.bats import BATS

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


@pytest.mark.parametrize("lam", [0.5, 1.05, 3.25])
def test_bats_is_energy_of_features_truncated_to_the_batchnorm_typical_set(s, lam):
    rng = np.random.default_rng(5)
    beta, gamma = rng.uniform(0.2, 0.8, D), rng.normal(0, 0.4, D)
    expected = []
    for h in s["test"].astype(np.float64):
        t = [
            min(max(v, beta[j] - lam * abs(gamma[j])), beta[j] + lam * abs(gamma[j])) for j, v in enumerate(h)
        ]
        expected.append(scipy.special.logsumexp(logits(t, s)))
    np.testing.assert_allclose(scores_of(BATS(lam), s, batchnorm=(beta, gamma)), expected, rtol=1e-6)


def test_bats_defaults_are_the_authors_lambda_per_dataset():
    assert registry.build("bats", "CIFAR-10").lam == 3.25 and registry.build("bats", "imagenet").lam == 1.05


def test_bats_with_feature_statistics_truncates_to_the_training_mean_plus_minus_lambda_std(s):
    x = s["train"].astype(np.float64)
    m, sd, lam = x.mean(0), x.std(0), 1.5
    expected = [
        scipy.special.logsumexp(logits(np.clip(h, m - lam * sd, m + lam * sd), s))
        for h in s["test"].astype(np.float64)
    ]
    detector = BATS(lam, statistics="features")
    assert detector.needs() == ("train_features",)
    np.testing.assert_allclose(scores_of(detector, s), expected, rtol=1e-6)
