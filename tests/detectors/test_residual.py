"""detectors/residual.py: ViM's residual alone, against numpy's eigendecomposition and a per-sample norm."""

import numpy as np
import pytest
import torch
from reference import energy_scores, problem_with_statistics, synthetic_problem
from reference import scores_and_predictions as scores_of

from detectors import Residual, ViM
from detectors.base import score_features

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=3, num_classes=C, dim=D)


def reference_residual_scores(s, dim):
    """-||(x - u) R|| per test image, R the eigenvectors of the (1/N) second moment about u = -W^+ b
    beyond the ``dim`` largest eigenvalues (as OpenOOD's ResidualPostprocessor: np.linalg.eig)."""
    W, b, X = s["W"], s["b"], s["train"].astype(np.float64)
    u = -np.linalg.pinv(W) @ b
    moment = sum(np.outer(x - u, x - u) for x in X) / len(X)
    vals, vecs = np.linalg.eig(moment)
    basis = vecs.real[:, np.argsort(-vals.real)[dim:]]
    return np.array([-np.linalg.norm((x - u) @ basis) for x in s["test"].astype(np.float64)])


@pytest.mark.parametrize("dim", [0, 10, D - 1])
def test_residual_is_minus_the_norm_outside_the_principal_space_about_the_origin(setup, dim):
    scores, preds = scores_of(Residual(dim=dim), setup)
    np.testing.assert_allclose(scores, reference_residual_scores(setup, dim), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(preds, (setup["test"] @ setup["W"].T + setup["b"]).argmax(1))


def test_residual_default_dimension_is_vims_rule_half_of_a_small_feature_size(setup):
    scores, _ = scores_of(Residual(), setup)
    np.testing.assert_allclose(scores, reference_residual_scores(setup, D // 2), rtol=1e-6, atol=1e-9)


def test_residual_shares_vims_fit_and_vim_is_energy_plus_alpha_times_the_residual_score(setup):
    s = setup
    vim = ViM(dim=7).fit(s["fc"], s["train"])
    residual = Residual(dim=7).fit(s["fc"], s["train"])
    assert torch.equal(vim.origin_, residual.origin_)
    assert torch.equal(vim.residual_basis_, residual.residual_basis_)
    assert not hasattr(residual, "alpha_")
    r, _ = score_features(residual, s["test"])
    v, _ = score_features(vim, s["test"])
    energy = energy_scores(s["test"].astype(np.float64), s["W"], s["b"])
    np.testing.assert_allclose(v, energy + vim.alpha_ * r, atol=1e-5)  # ViM's logits are float32


def test_residual_fits_memory_mapped_training_features_the_same(setup, tmp_path):
    np.save(tmp_path / "train.npy", setup["train"])
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    a = Residual(dim=10).fit(setup["fc"], setup["train"])
    b = Residual(dim=10).fit(setup["fc"], mapped, chunk=37)
    np.testing.assert_allclose(b.residual_basis_.numpy(), a.residual_basis_.numpy(), rtol=1e-9, atol=1e-12)


def test_residual_with_fewer_training_features_than_dimensions_is_the_norm_off_the_top_singular_space():
    """N < D: the second moment is singular and its null space degenerate; the residual is still the
    norm of the orthogonal projection (OpenOOD's np.linalg.eig gives non-orthogonal vectors there)."""
    s = synthetic_problem(seed=5, num_classes=C, dim=40, n_train=15)
    scores = Residual(dim=6).fit(s["fc"], s["train"]).score_batch(torch.from_numpy(s["test"]))[0].numpy()
    u = -np.linalg.pinv(s["W"]) @ s["b"]
    top = np.linalg.svd(s["train"].astype(np.float64) - u)[2][:6]  # leading right singular vectors
    x = s["test"].astype(np.float64) - u
    expected = -np.sqrt(np.sum(x * x, 1) - np.sum((x @ top.T) ** 2, 1))
    np.testing.assert_allclose(scores, expected, rtol=1e-8)


def test_residual_dimension_at_or_above_the_feature_size_is_refused_naming_its_flag(setup):
    assert Residual(dim=D).check_sizes(D, C, None) == [
        f"--residual-dim {D} must be below the D = {D} feature dimensions (the residual space needs at "
        "least one); lower --residual-dim"
    ]
    with pytest.raises(ValueError, match=f"residual principal dimension must be in \\[0, {D - 1}\\]"):
        Residual(dim=D).fit(setup["fc"], setup["train"])
