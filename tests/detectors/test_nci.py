"""NCI (detectors/nci.py) against a per-sample loop reference written here.

Synthetic features: non-negative like post-ReLU penultimate features, continuous (no ties).
"""

import numpy as np
import pytest
import torch
from reference import synthetic_problem

from detectors.base import score_features
from detectors.nci import NCI

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    s = synthetic_problem(num_classes=C, dim=D)
    return {**s, "mean": s["train"].astype(np.float64).mean(0)}


def nci_reference(x, W, b, mean, alpha):
    """w_c . (x - mean) / ||x - mean||_2 + alpha ||x||_1, c the predicted class."""
    x = x.astype(np.float64)
    logits = [W[c] @ x + b[c] for c in range(len(b))]
    c = int(np.argmax(logits))
    centred = x - mean
    proximity = sum(W[c, j] * centred[j] for j in range(len(x))) / np.sqrt(sum(v * v for v in centred))
    return proximity + alpha * sum(abs(v) for v in x)


@pytest.mark.parametrize("alpha", [0.0, 1e-4, 1e-2, 0.5])
def test_nci_is_the_predicted_weights_projection_of_the_centred_unit_feature_plus_alpha_l1_norm(setup, alpha):
    s = setup
    det = NCI(alpha).fit(s["fc"], train_features=s["train"])
    scores, preds = score_features(det, s["test"], chunk=17)
    expected = [nci_reference(x, s["W"], s["b"], s["mean"], alpha) for x in s["test"]]
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))


def test_nci_fits_on_the_training_features_and_defaults_to_the_authors_alpha(setup):
    det = NCI()
    assert det.alpha == 1e-4 and det.needs() == ("train_features",) and det.defaults == {}
    assert det.run_name() == "nci" and [p.flags for p in det.params] == [("--nci-alpha",)]
    with pytest.raises(ValueError, match="alpha"):
        NCI(-1.0).fit(setup["fc"], train_features=setup["train"])


def test_nci_does_not_normalise_the_weight_vector(setup):
    s = setup
    doubled = torch.nn.Linear(D, C)
    with torch.no_grad():
        doubled.weight.copy_(2 * s["fc"].weight)
        doubled.bias.copy_(2 * s["fc"].bias)  # same predictions, twice the weight norm
    base, _ = score_features(NCI(0.0).fit(s["fc"], train_features=s["train"]), s["test"])
    scaled, _ = score_features(NCI(0.0).fit(doubled, train_features=s["train"]), s["test"])
    np.testing.assert_allclose(scaled, 2 * base, rtol=1e-6)


def test_nci_changing_alpha_keeps_the_fit(setup):
    s = setup
    det = NCI(1e-4).fit(s["fc"], train_features=s["train"])
    other = det.with_params(alpha=0.1)
    assert other.mean_ is det.mean_ and other.alpha == 0.1 and det.alpha == 1e-4


def test_nci_gives_a_feature_at_the_training_mean_zero_proximity(setup):
    s = setup
    h = s["mean"].astype(np.float32)[None]
    det = NCI(0.1).fit(s["fc"], train_features=h)
    scores, _ = score_features(det, h)
    np.testing.assert_allclose(scores, [0.1 * np.abs(h[0].astype(np.float64)).sum()], rtol=1e-12)


def test_nci_rejects_training_features_of_the_wrong_size(setup):
    with pytest.raises(ValueError, match="25 dimensions but the classifier expects 24"):
        NCI().fit(setup["fc"], train_features=np.zeros((3, D + 1), np.float32))


def test_nci_scores_do_not_depend_on_the_batch_and_an_empty_batch_gives_no_scores(setup):
    s = setup
    det = NCI(1e-2).fit(s["fc"], train_features=s["train"])
    one_by_one, _ = score_features(det, s["test"], chunk=1)
    at_once, _ = score_features(det, s["test"])
    np.testing.assert_array_equal(one_by_one, at_once)
    scores, logits = det.score_batch(torch.zeros(0, D))
    assert scores.shape == (0,) and logits.shape == (0, C)
