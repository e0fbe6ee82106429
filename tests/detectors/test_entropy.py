"""detectors/entropy.py: the score is minus the entropy of the softmax posterior of the head."""

import math

import numpy as np
import torch
from reference import fitted_scores as scores_of
from reference import logits, softmax, synthetic_problem

from detectors import registry
from detectors.base import score_features
from detectors.entropy import Entropy

C, D = 5, 24


def test_entropy_is_minus_sum_p_log_p_of_the_softmax_of_each_image():
    s = synthetic_problem(seed=4, num_classes=C, dim=D, labels=True)
    expected = []
    for x in s["test"]:
        p = softmax(logits(x, s))
        expected.append(sum(q * math.log(q) for q in p))
    # The head runs in float32, hence 1e-5.
    np.testing.assert_allclose(scores_of(Entropy(), s), expected, rtol=1e-5, atol=1e-7)


def test_equal_logits_give_the_lowest_score_minus_log_c():
    fc = torch.nn.Linear(D, C)
    torch.nn.init.zeros_(fc.weight), torch.nn.init.constant_(fc.bias, 3.0)
    scores, _ = score_features(Entropy().fit(fc), np.ones((4, D), np.float32))
    np.testing.assert_allclose(scores, -math.log(C), rtol=1e-15)


def test_a_class_far_ahead_gives_a_finite_score_of_zero_not_nan():
    # p of the other classes underflows to 0 in float64: 0 log 0 counts as 0.
    fc = torch.nn.Linear(2, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1000.0, 0.0], [0.0, 0.0], [0.0, 0.0]])), fc.bias.zero_()
    scores, _ = score_features(Entropy().fit(fc), np.array([[2.0, 0.0], [0.0, 0.0]], np.float32))
    assert np.isfinite(scores).all()
    assert scores[0] == 0.0 and abs(scores[1] + math.log(3)) < 1e-15


def test_scores_lie_between_minus_log_c_and_zero():
    s = synthetic_problem(seed=5, num_classes=C, dim=D, labels=True)
    scores = scores_of(Entropy(), s)
    assert ((scores >= -math.log(C) - 1e-12) & (scores <= 0)).all()


def test_entropy_is_a_logit_detector_without_parameters_or_statistics():
    detector = registry.build("entropy", "CIFAR-10")
    assert detector.get_params() == {} and detector.needs() == () and Entropy.family == "logit"
