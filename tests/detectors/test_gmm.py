"""detectors/gmm.py: the class-conditional Gaussian mixture against a plain per-class, per-image
reference (numpy, float64)."""

import numpy as np
import pytest
import torch
from reference import problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import GMM, registry

C, D = 4, 6


def logsumexp(v):
    m = max(v)
    return m + np.log(sum(np.exp(x - m) for x in v))


def gmm_reference(train, labels, test, reg, basis=None):
    """log sum_c (N_c / N) N(x | mu_c, Sigma_c + reg I), Sigma_c the 1/N_c covariance of class c,
    after projecting every row on ``basis`` (columns) when given."""
    X, T = train.astype(np.float64), test.astype(np.float64)
    if basis is not None:
        X, T = X @ basis, T @ basis
    d = X.shape[1]
    classes = []
    for c in range(C):
        rows = X[labels == c]
        mu = rows.mean(0)
        cov = sum(np.outer(r - mu, r - mu) for r in rows) / len(rows) + reg * np.eye(d)
        classes.append((len(rows) / len(X), mu, cov))
    out = []
    for x in T:
        terms = []
        for weight, mu, cov in classes:
            _, logdet = np.linalg.slogdet(cov)
            maha = (x - mu) @ np.linalg.solve(cov, x - mu)
            terms.append(np.log(weight) - 0.5 * (maha + logdet + d * np.log(2 * np.pi)))
        out.append(logsumexp(terms))
    return np.array(out)


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=3, num_classes=C, dim=D)


def test_gmm_score_is_the_log_likelihood_under_the_class_gaussians_weighted_by_class_frequency(setup):
    s = setup
    scores, preds = scores_of(GMM(), s)
    np.testing.assert_allclose(scores, gmm_reference(s["train"], s["labels"], s["test"], 1e-6), rtol=1e-9)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))


def test_gmm_reg_is_added_to_the_diagonal_of_each_class_covariance(setup):
    s = setup
    scores, _ = scores_of(GMM(reg=0.5), s)
    np.testing.assert_allclose(scores, gmm_reference(s["train"], s["labels"], s["test"], 0.5), rtol=1e-9)


def test_gmm_with_fewer_images_of_a_class_than_dimensions_is_kept_invertible_by_reg():
    s = problem_with_statistics(seed=4, num_classes=C, dim=40)  # about 100 images a class, D = 40
    labels = s["labels"].copy()
    labels[labels == 0] = 1
    labels[:5] = 0  # class 0: five images in 40 dimensions, a singular covariance
    stats = dict(train_features=s["train"], train_labels=labels)
    detector = GMM(reg=1e-3).fit(s["fc"], **stats)
    expected = gmm_reference(s["train"], labels, s["test"], 1e-3)
    np.testing.assert_allclose(
        detector.score_batch(torch.from_numpy(s["test"]))[0].numpy(), expected, rtol=1e-8
    )
    with pytest.raises(ValueError, match="class 0 is not positive definite with reg = 0.*--gmm-reg"):
        GMM(reg=0.0).fit(s["fc"], **stats)


def test_gmm_pca_dim_models_the_projection_on_the_top_principal_directions(setup):
    s = setup
    X = s["train"].astype(np.float64)
    eigvals, eigvecs = np.linalg.eigh(np.cov(X.T, bias=True))
    basis = eigvecs[:, np.argsort(-eigvals)[:3]]
    scores, _ = scores_of(GMM(pca_dim=3), s)
    np.testing.assert_allclose(
        scores, gmm_reference(s["train"], s["labels"], s["test"], 1e-6, basis), rtol=1e-8
    )


def test_gmm_with_pca_dim_equal_to_d_gives_the_unprojected_scores(setup):
    """A projection on all D directions is a rotation (and a shift), which leaves densities alone."""
    s = setup
    np.testing.assert_allclose(scores_of(GMM(pca_dim=D), s)[0], scores_of(GMM(), s)[0], rtol=1e-9)


def test_gmm_needs_every_class_and_a_pca_dim_within_d(setup):
    s = setup
    with pytest.raises(
        ValueError, match=r"gmm needs training features of all 4 classes; none of class \[3\]"
    ):
        GMM().fit(s["fc"], s["train"], np.minimum(s["labels"], 2))
    with pytest.raises(ValueError, match="pca-dim 7 exceeds the D = 6"):
        GMM(pca_dim=7).fit(s["fc"], s["train"], s["labels"])
    assert GMM(pca_dim=7).check_sizes(D, C, 400) == [
        "--gmm-pca-dim 7 exceeds the D = 6 feature dimensions; lower --gmm-pca-dim"
    ]


def test_gmm_refuses_imagenet_sized_full_covariances_and_its_imagenet_preset_reduces_them():
    (problem,) = GMM().check_sizes(2048, 1000, 1_281_167)
    assert "1000 covariances of 2048 x 2048 need 31.2 GiB; give --gmm-pca-dim" in problem
    assert registry.build("gmm", "imagenet").pca_dim == 50
    assert registry.build("gmm", "imagenet").check_sizes(2048, 1000, 1_281_167) == []
    assert registry.build("gmm", "CIFAR-100").check_sizes(342, 100, 50_000) == []
