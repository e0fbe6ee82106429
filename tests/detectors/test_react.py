"""detectors/react.py: ReAct against numpy.percentile and a plain energy reference."""

import numpy as np
import pytest
import torch
from reference import energy_ref, problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import ReAct

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


def test_react_clips_at_the_percentile_of_all_training_activations(setup):
    s = setup
    tau = np.percentile(s["train"].astype(np.float64), 85)
    det = ReAct(percentile=85)
    scores, _ = scores_of(det, s)
    assert det.threshold_ == tau and det.clip_threshold is None  # fit sets only fitted state
    expected = energy_ref([np.minimum(x.astype(np.float64), tau) for x in s["test"]], s["W"], s["b"])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


@pytest.mark.parametrize("p", [0, 37.5, 90, 99.9, 100])
def test_react_percentile_over_a_memory_mapped_file_equals_numpy_percentile_of_the_float64_copy(tmp_path, p):
    rng = np.random.default_rng(3)
    train = np.maximum(rng.normal(0, 1, (5003, 17)), 0).astype(np.float32)  # half exact zeros: ties
    train[::7, 3] = np.round(train[::7, 3], 1)
    np.save(tmp_path / "features.npy", train)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    det = ReAct(percentile=p).fit(torch.nn.Linear(17, 3), train_features=mapped)
    assert det.threshold_ == np.percentile(train.astype(np.float64), p)
