"""detectors/gradnorm.py: GradNorm against the autograd gradient of the head's weight."""

import numpy as np
import pytest
import torch
from reference import problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import GradNorm, score_features
from detectors.gradnorm import gradnorm_network_scores

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


def test_gradnorm_from_features_equals_the_autograd_weight_gradient_l1_norm(setup):
    s = setup
    for temperature in (1.0, 3.0):
        scores, _ = scores_of(GradNorm(temperature), s)
        expected = []
        for x in s["test"]:
            fc = torch.nn.Linear(D, C).double()
            fc.load_state_dict({k: v.double() for k, v in s["fc"].state_dict().items()})
            z = fc(torch.from_numpy(x.astype(np.float64))[None])
            target = torch.full((1, C), 1.0 / C, dtype=torch.float64)
            loss = torch.sum(-target * torch.log_softmax(z / temperature, dim=1))
            loss.backward()
            expected.append(fc.weight.grad.abs().sum().item())
        np.testing.assert_allclose(scores, expected, rtol=1e-5)


class _TinyNet(torch.nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, D), torch.nn.ReLU())
        self.fc = fc

    def forward_features(self, x):
        return self.body(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.forward_features(x))


def test_gradnorm_network_scores_equal_the_feature_formula(setup):
    torch.manual_seed(0)
    net = _TinyNet(torch.nn.Linear(D, C)).eval()
    images = torch.randn(9, 3, 2, 2)
    network = gradnorm_network_scores(net, images).numpy()
    with torch.no_grad():
        h = net.forward_features(images).numpy()
    det = GradNorm().fit(net.get_classifier())
    from_features, _ = score_features(det, h)
    np.testing.assert_allclose(network, from_features, rtol=1e-5)
