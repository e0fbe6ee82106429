"""detectors/openmax.py: libMR's Weibull tail fit against the textbook maximum-likelihood fit, and
OpenMax's per-image score against a plain loop over images and classes (numpy, float64)."""

import numpy as np
import pytest
import scipy.optimize
import torch
from reference import problem_with_statistics

from detectors import OpenMax
from detectors.base import score_features
from detectors.openmax import fit_high, w_scores

C, D = 5, 24


def weibull_mle_reference(x):
    """(scale, shape) maximising sum log f(x) of the Weibull density: the shape k solves
    sum x^k ln x / sum x^k - 1 / k - mean(ln x) = 0, scale = (mean x^k)^(1/k) (x scaled by its
    maximum so that x^k stays finite)."""
    m = x.max()
    u = x / m

    def equation(k):
        return (u**k * np.log(x)).sum() / (u**k).sum() - 1 / k - np.log(x).mean()

    k = scipy.optimize.brentq(equation, 1e-3, 1e6, xtol=1e-12, rtol=1e-14)
    return m * (u**k).mean() ** (1 / k), k


def weibull_fit_reference(distances, tailsize, translate):
    """libMR's FitHigh: the tailsize largest distances, shifted so their smallest is at translate."""
    tail = sorted(distances)[-tailsize:]
    scale, shape = weibull_mle_reference(np.array(tail) + translate - tail[0])
    return scale, shape, tail[0]


def w_score_reference(d, scale, shape, small, translate):
    x = d + translate - small
    return 0.0 if x < 0 else 1 - np.exp(-((x / scale) ** shape))


@pytest.mark.parametrize("translate", [1.0, 10000.0])
def test_the_weibull_tail_fit_is_the_maximum_likelihood_fit_of_the_translated_tail(translate):
    rng = np.random.default_rng(0)
    for _ in range(20):
        distances = rng.gamma(rng.uniform(0.5, 5), rng.uniform(0.1, 10), size=int(rng.integers(5, 200)))
        tailsize = int(rng.integers(2, 40))
        scale, shape, small = fit_high(distances, tailsize, translate)
        ref_scale, ref_shape, ref_small = weibull_fit_reference(distances, tailsize, translate)
        assert small == ref_small
        np.testing.assert_allclose([scale, shape], [ref_scale, ref_shape], rtol=1e-7)


def test_the_w_score_is_the_weibull_cdf_of_the_translated_distance_and_zero_below_the_shift():
    d = np.array([0.0, 0.5, 2.0, 2.9, 3.0, 3.5, 10.0])
    got = w_scores(torch.from_numpy(d), 3.2, 2.5, 3.0, 1.0).numpy()
    np.testing.assert_allclose(got, [w_score_reference(x, 3.2, 2.5, 3.0, 1.0) for x in d], rtol=1e-12)
    assert got[0] == got[1] == 0.0  # d + 1 - 3 < 0


def openmax_reference(s, labels, tailsize, alpha, euclid_weight, translate, correct_only):
    """-P(unknown) of each test row by the paper's procedure, one image and one class at a time."""
    W, b = s["W"], s["b"]
    Z = s["train"].astype(np.float64) @ W.T + b

    def dist(z, mav):
        cos = 1 - z @ mav / (np.linalg.norm(z) * np.linalg.norm(mav))
        return euclid_weight * np.linalg.norm(z - mav) + (1 - euclid_weight) * cos

    mavs, fits = [], []
    for c in range(C):
        rows = [z for z, y in zip(Z, labels) if y == c and (not correct_only or np.argmax(z) == c)]
        mavs.append(np.mean(rows, axis=0))
        fits.append(weibull_fit_reference([dist(z, mavs[c]) for z in rows], tailsize, translate))
    a = min(alpha, C)
    out = []
    for h in s["test"].astype(np.float64):
        z = W @ h + b
        revised, unknown = z.copy(), 0.0
        for rank, c in enumerate(np.argsort(-z)[:a]):
            w = w_score_reference(dist(z, mavs[c]), *fits[c], translate) * (a - rank) / a
            revised[c] = z[c] * (1 - w)
            unknown += z[c] * w
        v = np.concatenate([[unknown], revised])
        out.append(-np.exp(v[0] - v.max()) / np.exp(v - v.max()).sum())
    return np.array(out)


@pytest.fixture(scope="module")
def setup():
    s = problem_with_statistics(seed=1, num_classes=C, dim=D)
    s["labels"] = (s["train"] @ s["W"].T + s["b"]).argmax(1)  # mostly right, as a trained classifier
    wrong = np.arange(0, 400, 4)
    s["labels"][wrong] = (s["labels"][wrong] + 1) % C
    return s


@pytest.mark.parametrize(
    "params",
    [
        dict(tailsize=20, alpha=10, euclid_weight=1.0, translate=10000.0, correct_only=True),
        dict(tailsize=10, alpha=3, euclid_weight=1.0, translate=1.0, correct_only=True),
        dict(tailsize=25, alpha=2, euclid_weight=0.5, translate=1.0, correct_only=False),
    ],
    ids=["paper", "openood", "cosine-all-images"],
)
def test_openmax_score_is_minus_the_unknown_probability_of_the_recalibrated_logits(setup, params):
    s = setup
    detector = OpenMax(**params).fit(s["fc"], s["train"], s["labels"])
    scores, preds = score_features(detector, s["test"], chunk=17)
    np.testing.assert_allclose(scores, openmax_reference(s, s["labels"], **params), rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))
    assert detector.classes_fitted_on_all_images_ == 0


def test_openmax_fits_a_class_with_fewer_than_two_correct_images_on_all_of_its_images(setup):
    s = setup
    labels = s["labels"].copy()
    predicted = (s["train"] @ s["W"].T + s["b"]).argmax(1)
    labels[(labels == 2) & (predicted == 2)] = 3
    labels[np.flatnonzero(predicted == 2)[0]] = 2  # one correct image of class 2 left
    labels[np.flatnonzero(predicted == 4)[:30]] = 2  # and thirty wrong ones
    detector = OpenMax().fit(s["fc"], s["train"], labels)
    assert detector.classes_fitted_on_all_images_ == 1
    Z = s["train"].astype(np.float64) @ s["W"].T + s["b"]
    np.testing.assert_allclose(detector.mavs_[2].numpy(), Z[labels == 2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        detector.mavs_[0].numpy(), Z[(labels == 0) & (predicted == 0)].mean(0), rtol=1e-5
    )


def test_openmax_refuses_a_one_value_tail_and_a_missing_class(setup):
    s = setup
    with pytest.raises(ValueError, match="tailsize must be >= 2"):
        OpenMax(tailsize=1).fit(s["fc"], s["train"], s["labels"])
    with pytest.raises(
        ValueError, match=r"openmax needs training features of all 5 classes; none of class \[4\]"
    ):
        OpenMax().fit(s["fc"], s["train"], np.minimum(s["labels"], 3))
    labels = np.r_[s["labels"][:-1] % 4, 4]  # class 4: a single image
    with pytest.raises(ValueError, match="Weibull fit of class 4 needs two different distances, got 1"):
        OpenMax().fit(s["fc"], s["train"], labels)
