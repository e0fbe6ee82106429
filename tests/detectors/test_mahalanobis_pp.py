"""detectors/mahalanobis_pp.py: Mahalanobis++ against per-row normalisation and a per-class loop."""

import numpy as np
import pytest
from reference import problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import Mahalanobis, MahalanobisPP
from detectors.base import score_features

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=4, num_classes=C, dim=D)


def unit(x):
    return x / np.linalg.norm(x)


def reference_scores(s, test):
    """-min_c (z - mu_c)^T Sigma^+ (z - mu_c), z = x / ||x||, mu_c and the tied (1/N) covariance
    Sigma of the normalised training features, by loops in float64."""
    Z = np.array([unit(x) for x in s["train"].astype(np.float64)])
    y = s["labels"]
    means = np.array([Z[y == c].mean(0) for c in range(C)])
    sigma = sum(np.outer(z - means[c], z - means[c]) for z, c in zip(Z, y)) / len(Z)
    precision = np.linalg.pinv(sigma)
    return np.array(
        [-min((unit(x) - m) @ precision @ (unit(x) - m) for m in means) for x in test.astype(np.float64)]
    )


def test_mahalanobis_pp_is_mahalanobis_on_l2_normalised_training_and_test_features(setup):
    scores, preds = scores_of(MahalanobisPP(), setup)
    np.testing.assert_allclose(scores, reference_scores(setup, setup["test"]), rtol=1e-6)
    np.testing.assert_array_equal(preds, (setup["test"] @ setup["W"].T + setup["b"]).argmax(1))


def test_mahalanobis_pp_scores_do_not_depend_on_the_feature_norm_unlike_mahalanobis(setup):
    s = setup
    scale = np.linspace(0.1, 10, len(s["test"]), dtype=np.float32)[:, None]
    pp = MahalanobisPP().fit(s["fc"], s["train"], s["labels"])
    np.testing.assert_allclose(
        score_features(pp, s["test"] * scale)[0], score_features(pp, s["test"])[0], rtol=1e-5
    )
    plain = Mahalanobis().fit(s["fc"], s["train"], s["labels"])
    assert not np.allclose(score_features(plain, s["test"] * scale)[0], score_features(plain, s["test"])[0])


def test_mahalanobis_pp_fit_does_not_depend_on_the_training_feature_norms(setup):
    s = setup
    scale = np.linspace(0.5, 4, len(s["train"]), dtype=np.float32)[:, None]
    a = MahalanobisPP().fit(s["fc"], s["train"], s["labels"])
    b = MahalanobisPP().fit(s["fc"], s["train"] * scale, s["labels"])
    np.testing.assert_allclose(score_features(b, s["test"])[0], score_features(a, s["test"])[0], rtol=1e-5)


def test_mahalanobis_pp_fits_memory_mapped_training_features_the_same(setup, tmp_path):
    np.save(tmp_path / "train.npy", setup["train"])
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    a = MahalanobisPP().fit(setup["fc"], setup["train"], setup["labels"])
    b = MahalanobisPP().fit(setup["fc"], mapped, setup["labels"])
    np.testing.assert_array_equal(b.means_.numpy(), a.means_.numpy())
    np.testing.assert_array_equal(b.precision_.numpy(), a.precision_.numpy())


def test_mahalanobis_pp_scores_an_all_zero_feature_as_the_origin_not_nan(setup):
    pp = MahalanobisPP().fit(setup["fc"], setup["train"], setup["labels"])
    score = score_features(pp, np.zeros((1, D), np.float32))[0][0]
    means, precision = pp.means_.numpy(), pp.precision_.numpy()
    assert score == pytest.approx(-min(m @ precision @ m for m in means), rel=1e-9)


def test_mahalanobis_pp_needs_a_training_feature_of_every_class(setup):
    labels = np.where(setup["labels"] == C - 1, 0, setup["labels"])
    with pytest.raises(ValueError, match=f"training features of all {C} classes"):
        MahalanobisPP().fit(setup["fc"], setup["train"], labels)
