"""detectors/kl_matching.py: KL-Matching against scipy's KL divergence to per-class templates."""

import numpy as np
import pytest
import scipy.stats
import torch
from reference import fitted_scores as scores_of
from reference import logits, softmax, synthetic_problem

from detectors.base import score_features
from detectors.kl_matching import KLMatching

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


def test_kl_matching_is_minus_the_smallest_kl_to_the_mean_softmax_of_each_predicted_class(s):
    probs = np.array([softmax(logits(x, s)) for x in s["train"]])
    preds = probs.argmax(1)
    templates = [probs[preds == c].mean(0) if (preds == c).any() else np.eye(C)[c] for c in range(C)]
    expected = []
    for x in s["test"]:
        p = softmax(logits(x, s))
        expected.append(-min(scipy.stats.entropy(p, d) for d in templates))
    np.testing.assert_allclose(scores_of(KLMatching(), s), expected, rtol=1e-6)


def test_kl_matching_gives_a_never_predicted_class_the_one_hot_template(s):
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(s["W"]))
        fc.bias.copy_(torch.tensor([0, 0, 0, 0, -1e4]))  # class 4 is never predicted
    detector = KLMatching().fit(fc, s["train"])
    assert detector.classes_never_predicted_ == 1
    np.testing.assert_array_equal(detector.templates_[4].numpy(), np.eye(C)[4])
    assert np.isfinite(score_features(detector, s["test"])[0]).all()
