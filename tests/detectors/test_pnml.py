"""detectors/pnml.py: the pNML regret against the paper's formula, with numpy's pseudo-inverse of X."""

import numpy as np
import pytest
import torch
from reference import logits, problem_with_statistics, softmax
from reference import scores_and_predictions as scores_of

from detectors import PNML, registry

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=5, num_classes=C, dim=D)


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x)


def pnml_reference(test, train, s, rcond=1e-15):
    """-log(sum_c p_c / (p_c + (1 - p_c) p_c^g)) / log C, g = x^T X^+ X^+T x / (1 + x^T X^+ X^+T x),
    X the unit training rows (singular values at or below rcond x the largest left out of X^+),
    x the unit test feature, p = softmax(W x + b)."""
    X = np.array([unit(t) for t in train])
    pinv = np.linalg.pinv(X, rcond=rcond)  # (D, N): X^+ X^+T = (X^T X)^+
    out = []
    for h in test:
        x = unit(h)
        spread = float(x @ pinv @ pinv.T @ x)
        g = spread / (1 + spread)
        p = softmax(logits(x, s))
        nf = sum(q / (q + (1 - q) * q**g) for q in p)
        out.append(-np.log(nf) / np.log(len(p)))
    return np.array(out)


def test_pnml_is_minus_the_regret_of_the_normalised_feature_against_the_training_correlation(setup):
    s = setup
    scores, preds = scores_of(PNML(), s)
    np.testing.assert_allclose(scores, pnml_reference(s["test"], s["train"], s), rtol=1e-9, atol=1e-12)
    assert np.all((scores <= 0) & (scores >= -1))


def test_pnml_predictions_are_the_heads_argmax_on_the_raw_features(setup):
    s = setup
    _, preds = scores_of(PNML(), s)
    np.testing.assert_array_equal(preds, [np.argmax(logits(x, s)) for x in s["test"]])


def test_pnml_with_fewer_training_images_than_dimensions_uses_the_pseudo_inverse(setup):
    s = setup
    few = s["train"][:10]  # X^T X has rank 10 < D
    det = PNML().fit(s["fc"], train_features=few)
    assert det.rank_ == 10
    scores, _ = det.score_batch(torch.from_numpy(s["test"]))
    np.testing.assert_allclose(scores.numpy(), pnml_reference(s["test"], few, s), rtol=1e-8, atol=1e-12)


def test_pnml_a_class_whose_probability_underflows_adds_nothing_instead_of_nan(setup):
    s = setup
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.zero_()
        fc.weight[0] = 5000.0  # unit features: logit 0 leads by thousands, exp underflows
        fc.bias.zero_()
    det = PNML().fit(fc, train_features=s["train"])
    scores, _ = det.score_batch(torch.from_numpy(s["test"]))
    assert torch.equal(scores, torch.zeros(len(s["test"]), dtype=torch.float64))  # K = 1: no regret


def test_pnml_a_zero_feature_has_no_component_in_the_training_span(setup):
    s = setup
    det = PNML().fit(s["fc"], train_features=s["train"])
    scores, _ = det.score_batch(torch.zeros(1, D))
    # x = 0: g = 0, each term is p_c, K = 1, regret 0
    assert scores.tolist() == [0.0]


def test_pnml_refuses_a_single_class_head_naming_why():
    problems = registry.build("pnml", "CIFAR-10").check_sizes(D, 1, 100)
    assert problems and "at least 2 classes" in problems[0]
    assert registry.build("pnml", "CIFAR-10").check_sizes(D, 10, 5) == []


def test_pnml_rtol_leaves_out_the_training_directions_of_eigenvalues_at_or_below_rtol_times_the_largest(
    setup,
):
    s = setup
    det = PNML(rtol=0.05).fit(s["fc"], train_features=s["train"])
    singular = np.linalg.svd(np.array([unit(t) for t in s["train"]]), compute_uv=False)
    kept = int((singular**2 > 0.05 * singular[0] ** 2).sum())
    assert det.rank_ == kept and 1 < kept < D
    scores, _ = det.score_batch(torch.from_numpy(s["test"]))
    # eigenvalues of X^T X are the squared singular values of X: rtol on them is sqrt(rtol) on X's
    expected = pnml_reference(s["test"], s["train"], s, rcond=np.sqrt(0.05))
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rtol", [-1e-3, 1.0])
def test_pnml_refuses_an_rtol_outside_zero_to_one(rtol):
    with pytest.raises(ValueError, match="pnml rtol"):
        PNML(rtol=rtol).check_params()
