"""OptFS (detectors/optfs.py) against per-sample, per-interval loop references written here.

Synthetic features: non-negative like post-ReLU penultimate features, continuous (no ties).
"""

import numpy as np
import pytest
import torch
from reference import logsumexp, synthetic_problem

from detectors.base import score_features
from detectors.optfs import OptFS

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return synthetic_problem(num_classes=C, dim=D)


class Reference:
    """The paper's ID-only closed form, computed with loops in float64."""

    def __init__(self, s, intervals):
        train = s["train"].astype(np.float64)
        self.W, self.b, self.K = s["W"], s["b"], intervals
        self.lo, self.hi = np.percentile(train, 0.1), np.percentile(train, 99.9)
        self.width = (self.hi - self.lo) / intervals
        total = np.zeros(intervals)
        for x in train:
            c = np.argmax(self.W @ x + self.b)  # the predicted class, not the label
            for j, v in enumerate(x):
                k = self.interval(v)
                if k is not None:
                    total[k] += self.W[c, j] * v
        mean = total / len(train)
        self.theta = 1000 * mean / np.sqrt(sum(t * t for t in mean))

    def interval(self, v):
        for k in range(self.K):
            right = self.hi if k == self.K - 1 else self.lo + (k + 1) * self.width
            if self.lo + k * self.width <= v < right:
                return k
        return None

    def shaped(self, x):
        return np.array([0.0 if self.interval(v) is None else self.theta[self.interval(v)] * v for v in x])

    def maxlogit(self, x):
        c = np.argmax(self.W @ x + self.b)  # predicted from the unshaped features
        return self.W[c] @ self.shaped(x)

    def energy(self, x):
        return logsumexp([self.W[c] @ self.shaped(x) + self.b[c] for c in range(len(self.b))])


@pytest.fixture(scope="module")
def reference(setup):
    return {k: Reference(setup, k) for k in (100, 7)}


@pytest.mark.parametrize("intervals", [100, 7])
def test_optfs_weights_are_the_normalised_mean_predicted_class_contribution_of_each_interval(
    setup, reference, intervals
):
    det = OptFS(intervals).fit(setup["fc"], train_features=setup["train"])
    ref = reference[intervals]
    assert (det.lower_, det.upper_) == (ref.lo, ref.hi)  # exact numpy percentiles
    np.testing.assert_allclose(det.theta_.numpy()[1:-1], ref.theta, rtol=1e-9)
    assert det.theta_[0] == 0 and det.theta_[-1] == 0 and len(det.theta_) == intervals + 2


@pytest.mark.parametrize("intervals", [100, 7])
def test_optfs_score_is_the_predicted_class_logit_of_the_shaped_features_without_bias(
    setup, reference, intervals
):
    s = setup
    det = OptFS(intervals).fit(s["fc"], train_features=s["train"])
    scores, preds = score_features(det, s["test"], chunk=17)
    ref = reference[intervals]
    expected = [ref.maxlogit(x) for x in s["test"].astype(np.float64)]
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))  # unshaped


def test_optfs_energy_variant_is_the_logsumexp_of_the_shaped_logits_with_bias(setup, reference):
    s = setup
    det = OptFS(100, score="energy").fit(s["fc"], train_features=s["train"])
    scores, preds = score_features(det, s["test"], chunk=17)
    expected = [reference[100].energy(x) for x in s["test"].astype(np.float64)]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))


def test_optfs_zeroes_activations_outside_the_fitted_range(setup):
    det = OptFS(7).fit(setup["fc"], train_features=setup["train"])
    lo, hi = det.lower_, det.upper_
    h = torch.tensor([[np.nextafter(lo, -np.inf), lo, hi, hi + 1.0]], dtype=torch.float64)
    shaped = det.shape(h)[0]
    assert shaped[0] == 0 and shaped[2] == 0 and shaped[3] == 0  # the right end hi is excluded
    assert shaped[1] == det.theta_[1] * lo


def test_optfs_score_choice_shares_the_fit_and_is_checked(setup):
    s = setup
    det = OptFS().fit(s["fc"], train_features=s["train"])
    energy = det.with_params(score="energy")
    assert energy.theta_ is det.theta_
    assert (OptFS().intervals, OptFS().score) == (100, "maxlogit")
    with pytest.raises(ValueError, match="score"):
        OptFS(score="msp").fit(s["fc"], train_features=s["train"])
    with pytest.raises(ValueError, match="score"):  # a shared fit is checked too
        det.with_params(score="msp")


def test_optfs_fits_memory_mapped_training_features_the_same(setup, tmp_path):
    s = setup
    path = tmp_path / "train.npy"
    np.save(path, s["train"])
    mapped = OptFS().fit(s["fc"], train_features=np.load(path, mmap_mode="r"))
    direct = OptFS().fit(s["fc"], train_features=s["train"])
    np.testing.assert_array_equal(mapped.theta_.numpy(), direct.theta_.numpy())


def test_optfs_scores_an_empty_batch(setup):
    det = OptFS().fit(setup["fc"], train_features=setup["train"])
    for score in ("maxlogit", "energy"):
        scores, preds = score_features(det.with_params(score=score), np.zeros((0, D), np.float32), chunk=17)
        assert scores.shape == (0,) and preds.shape == (0,)
