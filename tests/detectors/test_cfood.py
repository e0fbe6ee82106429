"""detectors/cfood.py: CF-OOD against a plain loop over the reverse-neighbour counts of CFOF."""

import numpy as np
import pytest
import torch
from reference import fitted, problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import registry
from detectors.cfood import CFOOD, least_count

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=3, num_classes=C, dim=D)


def reverse_neighbour_shares(train, test):
    """(OpenOOD's grid of shares kappa, per test row the share of reference points it is a reverse
    neighbour of at each kappa), from the definition: the reference point r's radius at kappa is
    its squared distance to the int(kappa n - 1) + 1-th entry of its sorted distances (entry 0:
    itself); x counts for r when ||x - r||^2 <= that radius."""
    ref = [t / (np.linalg.norm(t) + 1e-10) for t in train.astype(np.float64)]
    n = len(ref)
    grid = list(np.linspace(0.001, 0.1, 100)) + list(np.linspace(0.105, 0.5, 81))
    grid += list(np.linspace(0.51, 0.99, 49))
    kappas, positions = [], []
    for kappa in grid:
        pos = int(kappa * n - 1) + 1
        if not positions or pos > positions[-1]:
            kappas.append(kappa)
            positions.append(pos)
    radii = [np.sort([np.sum((r - s) ** 2) for s in ref]) for r in ref]
    shares = []
    for x in test.astype(np.float64):
        z = x / (np.linalg.norm(x) + 1e-10)
        dist = [np.sum((z - r) ** 2) for r in ref]
        shares.append([sum(radii[i][pos] >= dist[i] for i in range(n)) / n for pos in positions])
    return kappas, shares


@pytest.fixture(scope="module")
def reference(setup):
    return reverse_neighbour_shares(setup["train"], setup["test"])


def minus_cfof(kappas, shares, rho):
    """-(the first kappa whose share reaches rho), -1 where none does."""
    return np.array([-next((k for k, c in zip(kappas, row) if c >= rho), 1.0) for row in shares])


@pytest.mark.parametrize("rho", [0.01, 0.05, 0.3])
def test_cfood_is_minus_the_least_share_at_which_x_is_a_reverse_neighbour_of_rho_of_the_references(
    setup, reference, rho
):
    scores, preds = scores_of(CFOOD(fraction=1.0, rho=rho), setup)
    np.testing.assert_array_equal(scores, minus_cfof(*reference, rho))
    np.testing.assert_array_equal(preds, np.argmax(setup["test"] @ setup["W"].T + setup["b"], axis=1))


def test_a_point_far_from_every_reference_scores_minus_one(setup):
    det = fitted(CFOOD(fraction=1.0), setup)
    far = -np.ones((1, D), np.float32)  # normalised, opposite to the non-negative features
    scores, _ = det.score_batch(torch.from_numpy(far))
    assert scores.tolist() == [-1.0]


def test_cfood_fraction_keeps_that_seeded_share_of_the_training_features(setup):
    det = fitted(CFOOD(fraction=0.25, seed=1), setup)
    assert det.bank_.shape == (100, D) and det.radii_.shape[0] == 100
    again = fitted(CFOOD(fraction=0.25, seed=1), setup)
    assert (det.bank_ == again.bank_).all()


def test_rho_of_exactly_m_of_n_needs_m_reverse_neighbours_not_one_more():
    assert least_count(0.07, 100) == 7  # 0.07 * 100 = 7.000000000000001 in float64
    assert least_count(0.01, 5000) == 50 and least_count(0.011, 100) == 2 and least_count(1e-9, 10) == 1


def test_fewer_than_two_references_is_a_size_problem_naming_the_fraction_flag():
    problems = registry.build("cfood", "CIFAR-10", {"fraction": 0.1}).check_sizes(D, C, 10)
    assert len(problems) == 1 and "--cfood-fraction" in problems[0]
    assert registry.build("cfood", "CIFAR-10").check_sizes(D, C, 50000) == []


def test_rho_is_swept_without_refitting(setup):
    det = fitted(CFOOD(fraction=1.0, rho=0.01), setup)
    other = det.with_params(rho=0.05)
    assert other.radii_ is det.radii_
