"""detectors/base.py: what every detector's fit does with the head it is given."""

import numpy as np
import pytest
import torch
from reference import fitted, problem_with_statistics

from detectors import KNN, Detector, LINe, ReAct, ViM, score_features

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


def test_layer_statistics_beside_the_features_leave_other_detectors_scoring_as_without_them():
    """LINe scores whole arrays its own way (score_array); a run whose cache also holds layer
    statistics for a multi-layer detector must not send it down the chunked path."""
    from util.layer_taps import LayerArrays

    class WholeArray(Detector):
        name = "whole_array"

        def score_array(self, features):
            return np.full(len(features), 7.0), np.zeros(len(features), dtype=np.int64)

    h = np.ones((5, 3), dtype=np.float32)
    layers = LayerArrays(("a",), {"pooled": (np.zeros((5, 2)),)})
    detector = WholeArray().fit(torch.nn.Linear(3, 2))
    assert score_features(detector, h, layers=layers)[0].tolist() == [7.0] * 5
