"""detectors/vim.py: ViM against numpy's eigendecomposition and a per-sample residual norm."""

import numpy as np
import pytest
from reference import logsumexp, problem_with_statistics
from reference import scores_and_predictions as scores_of
from sklearn.covariance import EmpiricalCovariance

from detectors import ViM
from detectors.vim import default_principal_dim

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


def test_vim_is_energy_minus_alpha_times_the_residual_norm(setup):
    s = setup
    dim = 10
    scores, _ = scores_of(ViM(dim=dim), s)
    W, b, X = s["W"], s["b"], s["train"].astype(np.float64)
    u = -np.linalg.pinv(W) @ b
    cov = EmpiricalCovariance(assume_centered=True).fit(X - u).covariance_
    vals, vecs = np.linalg.eig(cov)
    residual_basis = vecs.real[:, np.argsort(-vals.real)[dim:]]
    alpha = np.mean([max(W @ x + b) for x in X]) / np.mean(
        [np.linalg.norm((x - u) @ residual_basis) for x in X]
    )
    expected = [
        logsumexp(W @ x + b) - alpha * np.linalg.norm((x - u) @ residual_basis)
        for x in s["test"].astype(np.float64)
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)


def test_vim_default_principal_dim_follows_the_feature_size():
    assert [default_principal_dim(d) for d in (2048, 1024, 768, 342)] == [1000, 512, 512, 171]
