"""detectors/base.py: what every detector's fit does with the head it is given."""

import pytest
import torch
from reference import fitted, problem_with_statistics

from detectors import KNN, LINe, ReAct, ViM

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


@pytest.mark.parametrize(
    "make", [lambda: LINe(p_w=10, p_a=10), lambda: ReAct(clip_threshold=1.0), lambda: ViM(), lambda: KNN()]
)
def test_fitting_a_detector_leaves_the_given_head_where_and_as_it_was(setup, make):
    """The model's head keeps extracting features (on the GPU) after detectors are fitted."""
    fc = torch.nn.Linear(D, C).double()
    with torch.no_grad():
        fc.weight.copy_(setup["fc"].weight)
        fc.bias.copy_(setup["fc"].bias)
    weight = fc.weight
    detector = fitted(make(), setup, fc)
    assert fc.weight is weight and fc.weight.dtype == torch.float64
    assert detector.fc_ is not fc and detector.fc_.weight.dtype == torch.float32
    torch.testing.assert_close(detector.fc_.weight, fc.weight.float())
