"""detectors/graduncertainty.py: the squared norm of the head's gradient of the confounding-label loss."""

import numpy as np
import torch
from reference import fitted_scores as scores_of
from reference import synthetic_problem

from detectors import registry
from detectors.base import score_features
from detectors.graduncertainty import GradUncertainty

C, D = 5, 24


def head_gradient_norms(s):
    """Per image, by autograd on a float64 copy of the head: sum over W and b of the squared norms
    of d/dparam of -sum_c log softmax(W x + b)_c (BCE of the softmax against all ones)."""
    out = []
    for x in s["test"].astype(np.float64):
        W = torch.tensor(s["W"], requires_grad=True)
        b = torch.tensor(s["b"], requires_grad=True)
        loss = -torch.log_softmax(W @ torch.from_numpy(x) + b, dim=0).sum()
        gw, gb = torch.autograd.grad(loss, [W, b])
        out.append(float((gw**2).sum() + (gb**2).sum()))
    return np.array(out)


def test_score_is_the_squared_norm_of_the_head_gradient_of_the_confounding_label_loss():
    s = synthetic_problem(seed=6, num_classes=C, dim=D, labels=True)
    # The head's float32 weights are read in float64 both ways: equal to float64 rounding.
    np.testing.assert_allclose(scores_of(GradUncertainty(), s), head_gradient_norms(s), rtol=1e-12)


def test_a_uniform_posterior_has_no_gradient_and_the_lowest_score_zero():
    fc = torch.nn.Linear(D, C)
    torch.nn.init.zeros_(fc.weight), torch.nn.init.constant_(fc.bias, 2.0)
    scores, _ = score_features(GradUncertainty().fit(fc), np.ones((3, D), np.float32))
    np.testing.assert_allclose(scores, 0.0, atol=1e-24)


def test_a_head_without_bias_leaves_out_the_bias_gradient():
    fc = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    h = np.array([[np.log(3.0), 1.0]], np.float32)  # p = (3/4, 1/4): C p - 1 = (1/2, -1/2)
    scores, _ = score_features(GradUncertainty().fit(fc), h)
    np.testing.assert_allclose(scores, 0.5 * (np.log(3.0) ** 2 + 1.0), rtol=1e-6)


def test_graduncertainty_is_a_feature_detector_without_parameters_or_statistics():
    detector = registry.build("graduncertainty", "CIFAR-10")
    assert detector.get_params() == {} and detector.needs() == () and GradUncertainty.family == "feature"
