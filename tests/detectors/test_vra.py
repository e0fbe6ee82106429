"""VRA (detectors/vra.py) against a per-activation loop reference written here.

Synthetic features: non-negative like post-ReLU penultimate features, continuous (no ties).
"""

import numpy as np
import pytest
import torch
from reference import logsumexp, synthetic_problem

from detectors.base import score_features
from detectors.vra import VRA, column_percentiles, vra

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return synthetic_problem(num_classes=C, dim=D)


def rectified(x, alpha, beta, gamma):
    """The VRA piecewise function, one activation at a time."""
    out = []
    for j, v in enumerate(x.astype(np.float64)):
        a, b = np.broadcast_to(alpha, x.shape)[j], np.broadcast_to(beta, x.shape)[j]
        out.append(0.0 if v < a else (b if v > b else v + gamma))
    return np.array(out)


@pytest.mark.parametrize("p_alpha,p_beta,gamma", [(60, 95, 0.6), (50, 80, 0.2), (0, 100, 0.0)])
def test_vra_is_the_energy_of_features_zeroed_below_alpha_shifted_by_gamma_and_cut_at_beta(
    setup, p_alpha, p_beta, gamma
):
    s = setup
    det = VRA(p_alpha, p_beta, gamma).fit(s["fc"], train_features=s["train"])
    scores, preds = score_features(det, s["test"], chunk=17)
    train = s["train"].astype(np.float64)
    alpha = [np.percentile(train[:, j], p_alpha) for j in range(D)]
    beta = [np.percentile(train[:, j], p_beta) for j in range(D)]
    shaped = [rectified(x, alpha, beta, gamma) for x in s["test"]]
    expected = [logsumexp([s["W"][c] @ x + s["b"][c] for c in range(C)]) for x in shaped]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_array_equal(preds, [np.argmax(s["W"] @ x + s["b"]) for x in shaped])


def test_vra_thresholds_are_exact_numpy_percentiles_of_each_training_dimension(setup):
    s = setup
    det = VRA(60, 95, 0.6).fit(s["fc"], train_features=s["train"])
    train = s["train"].astype(np.float64)
    np.testing.assert_array_equal(det.alpha_.numpy(), np.percentile(train, 60, axis=0))
    np.testing.assert_array_equal(det.beta_.numpy(), np.percentile(train, 95, axis=0))
    assert det.alpha is None and det.alpha_percentile == 60  # fit sets only fitted state


def test_vra_global_uses_one_percentile_of_all_training_activations_like_react(setup):
    s = setup
    det = VRA(65, 90, 0.4, per_unit=False).fit(s["fc"], train_features=s["train"])
    train = s["train"].astype(np.float64)
    alpha, beta = np.percentile(train, 65), np.percentile(train, 90)
    assert (det.alpha_, det.beta_) == (alpha, beta)
    scores, _ = score_features(det, s["test"], chunk=17)
    expected = [
        logsumexp([s["W"][c] @ rectified(x, alpha, beta, 0.4) + s["b"][c] for c in range(C)])
        for x in s["test"]
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_vra_keeps_alpha_and_beta_themselves_in_the_shifted_middle_piece():
    h = torch.tensor([[0.25, 0.5, 0.75, 1.0, 1.5]])
    out = vra(h, 0.5, 1.0, 0.25)
    assert out.tolist() == [[0.0, 0.75, 1.0, 1.25, 1.0]]  # above beta: beta, not beta + gamma


def test_vra_given_thresholds_need_no_training_features_and_make_percentiles_inert(setup):
    s = setup
    det = VRA(alpha=0.6, beta=0.7, gamma=0.3)
    assert det.needs() == ()
    assert det.inert_params() == {"alpha_percentile", "beta_percentile", "per_unit"}
    det.fit(s["fc"])
    scores, _ = score_features(det, s["test"], chunk=17)
    expected = [
        logsumexp([s["W"][c] @ rectified(x, 0.6, 0.7, 0.3) + s["b"][c] for c in range(C)]) for x in s["test"]
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert VRA(alpha=0.1).needs() == ("train_features",)


def test_vra_mixes_a_given_alpha_with_a_percentile_beta(setup):
    s = setup
    det = VRA(beta_percentile=90, alpha=0.05).fit(s["fc"], train_features=s["train"])
    assert det.alpha_ == 0.05
    np.testing.assert_array_equal(det.beta_.numpy(), np.percentile(s["train"].astype(np.float64), 90, axis=0))


def test_vra_rejects_alpha_above_beta(setup):
    with pytest.raises(ValueError, match="alpha <= beta"):
        VRA(alpha=1.0, beta=0.5).fit(setup["fc"])


def test_vra_defaults_are_the_authors_settings():
    assert VRA.defaults_for("CIFAR-10") == {"alpha_percentile": 60.0, "beta_percentile": 95.0, "gamma": 0.6}
    assert VRA.defaults_for("CIFAR-100") == {"alpha_percentile": 60.0, "beta_percentile": 95.0, "gamma": 0.6}
    assert VRA.defaults_for("imagenet") == {"alpha": 0.6, "beta": 0.7, "gamma": 0.3}
    det = VRA()
    assert (det.alpha_percentile, det.beta_percentile, det.gamma, det.per_unit) == (60, 95, 0.6, True)


def test_vra_gamma_changes_no_fitted_state(setup):
    s = setup
    det = VRA().fit(s["fc"], train_features=s["train"])
    other = det.with_params(gamma=0.2)
    assert other.alpha_ is det.alpha_ and other.gamma == 0.2


def test_column_percentiles_read_memory_mapped_features_in_column_blocks(setup, tmp_path):
    s = setup
    path = tmp_path / "train.npy"
    np.save(path, s["train"])
    features = np.load(path, mmap_mode="r")
    ps = [0, 0.1, 33.3, 60, 99.9, 100]
    got = column_percentiles(features, ps, block_bytes=5 * 400 * 4)  # 5 columns at a time
    np.testing.assert_array_equal(got, np.percentile(s["train"].astype(np.float64), ps, axis=0))


def test_vra_scores_an_empty_batch(setup):
    s = setup
    det = VRA().fit(s["fc"], train_features=s["train"])
    scores, preds = score_features(det, np.zeros((0, D), np.float32), chunk=17)
    assert scores.shape == (0,) and preds.shape == (0,)
