"""detectors/nnguide.py: NNGuide against a per-sample sort of similarities to the scaled bank."""

import numpy as np
import pytest
import scipy.special
from reference import fitted_scores as scores_of
from reference import logits, synthetic_problem

from detectors.base import score_features
from detectors.nnguide import NNGuide

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


@pytest.mark.parametrize("k, fraction", [(5, 1.0), (3, 0.25)])
def test_nnguide_is_energy_times_the_mean_top_k_similarity_to_the_confidence_scaled_bank(s, k, fraction):
    detector = NNGuide(k=k, fraction=fraction, seed=4)
    scores = scores_of(detector, s)
    n = len(s["train"])
    count = round(fraction * n)
    rows = np.sort(np.random.default_rng(4).choice(n, count, False)) if count < n else np.arange(n)
    energy = lambda h: scipy.special.logsumexp(logits(h, s))  # noqa: E731
    bank = [h / np.linalg.norm(h) * energy(h) for h in s["train"][rows].astype(np.float64)]
    expected = []
    for h in s["test"].astype(np.float64):
        sims = sorted((h / np.linalg.norm(h) @ g for g in bank), reverse=True)
        expected.append(energy(h) * np.mean(sims[:k]))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_nnguide_refuses_k_above_the_bank(s):
    detector = NNGuide(k=50, fraction=0.1).fit(s["fc"], s["train"])
    with pytest.raises(ValueError, match="k = 50 exceeds the bank of 40"):
        score_features(detector, s["test"])
