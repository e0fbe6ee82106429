"""LTS (detectors/lts.py) against a per-sample sort-and-sum reference written here.

Synthetic features: non-negative like post-ReLU penultimate features, continuous (no ties); one
signed set for the ReLU the authors apply before computing the factor.
"""

import numpy as np
import pytest
import torch
from reference import logsumexp, synthetic_problem

from detectors.base import score_features
from detectors.lts import LTS

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    s = synthetic_problem(num_classes=C, dim=D, train=False)
    rng = np.random.default_rng(1)
    return {**s, "signed": rng.normal(0.1, 1.0, (40, D)).astype(np.float32)}


def lts_reference(x, W, b, p):
    """logsumexp(S * (W x + b)), S = (sum of x+ / sum of its k largest entries) ** 2."""
    x = x.astype(np.float64)
    positive = [max(v, 0.0) for v in x]
    k = len(x) - int(np.round(len(x) * p / 100))
    s1 = sum(positive)
    s2 = sum(sorted(positive, reverse=True)[:k])
    factor = (s1 / s2) ** 2
    return logsumexp([factor * (W[c] @ x + b[c]) for c in range(len(b))])


@pytest.mark.parametrize("p", [95, 85, 60, 33])
def test_lts_is_the_energy_of_logits_times_the_squared_ratio_of_all_to_top_activations(setup, p):
    s = setup
    scores, preds = score_features(LTS(p).fit(s["fc"]), s["test"], chunk=17)
    expected = [lts_reference(x, s["W"], s["b"], p) for x in s["test"]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))


def test_lts_factor_ignores_negative_activations_but_the_logits_use_them(setup):
    s = setup
    scores, _ = score_features(LTS(95).fit(s["fc"]), s["signed"], chunk=17)
    expected = [lts_reference(x, s["W"], s["b"], 95) for x in s["signed"]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_lts_default_percentile_is_the_papers_95_and_it_needs_no_statistics():
    det = LTS()
    assert det.percentile == 95 and det.needs() == () and det.defaults == {}
    assert det.run_name() == "lts" and [p.flags for p in det.params] == [("--lts-percentile",)]


def test_lts_gives_a_feature_without_positive_activations_its_plain_energy(setup):
    s = setup
    h = np.zeros((2, D), np.float32)
    h[1] = -1.0
    scores, _ = score_features(LTS().fit(s["fc"]), h, chunk=17)
    expected = [logsumexp(s["W"] @ x + s["b"]) for x in h.astype(np.float64)]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_lts_scores_do_not_depend_on_the_batch_and_an_empty_batch_gives_no_scores(setup):
    s = setup
    det = LTS().fit(s["fc"])
    one_by_one, _ = score_features(det, s["test"], chunk=1)
    at_once, _ = score_features(det, s["test"])
    np.testing.assert_allclose(one_by_one, at_once, rtol=1e-12)  # float64 matmul rounding only
    scores, logits = det.score_batch(torch.zeros(0, D))
    assert scores.shape == (0,) and logits.shape == (0, C)
