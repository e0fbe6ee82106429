"""detectors/neco.py: NECO against scikit-learn's StandardScaler and PCA."""

import numpy as np
import pytest
from reference import fitted_scores as scores_of
from reference import logits, synthetic_problem
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from detectors.neco import NECO

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


@pytest.mark.parametrize("dim, maxlogit", [(None, False), (7, False), (3, True)])
def test_neco_is_the_norm_ratio_of_the_leading_principal_projection_of_standardised_features(
    s, dim, maxlogit
):
    scaler = StandardScaler().fit(s["train"].astype(np.float64))
    pca = PCA(D).fit(scaler.transform(s["train"].astype(np.float64)))
    d = C - 1 if dim is None else dim
    expected = []
    for h in s["test"].astype(np.float64):
        x = scaler.transform(h[None])[0]
        score = np.linalg.norm(pca.transform(x[None])[0, :d]) / np.linalg.norm(x)
        expected.append(score * max(logits(h, s)) if maxlogit else score)
    np.testing.assert_allclose(scores_of(NECO(dim, maxlogit), s), expected, rtol=1e-6, atol=1e-6)
