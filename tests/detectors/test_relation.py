"""detectors/relation.py: the Neural Relation Graph score against a loop over training images."""

import numpy as np
import pytest
import torch
from reference import fitted, logits, problem_with_statistics, softmax
from reference import scores_and_predictions as scores_of

from detectors import Relation, score_features

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=4, num_classes=C, dim=D)


def unit(x):
    x = np.asarray(x, np.float64)
    return x / (np.linalg.norm(x) + 1e-10)


def kernel_reference(test, train, s):
    """k[t, i] = max(0, z_t . z_i) (p_t . p_i) for unit features z and probabilities p = softmax(W h + b)."""
    bank = [(unit(t), softmax(logits(t, s))) for t in train]
    rows = []
    for x in test:
        z, p = unit(x), softmax(logits(x, s))
        rows.append([max(0.0, float(z @ z_i)) * float(p @ p_i) for z_i, p_i in bank])
    return rows


def relation_reference(kernel, power, threshold):
    """sum over training images i of k_i^power over the edges with k_i > threshold."""
    return np.array([sum(k**power for k in row if k > threshold) for row in kernel])


@pytest.fixture(scope="module")
def kernel(setup):
    return kernel_reference(setup["test"], setup["train"], setup)


@pytest.mark.parametrize("power, threshold", [(1, 0.03), (4, 0.03), (2, 0.0), (1, 0.3)])
def test_relation_is_the_sum_of_the_kernel_edges_above_the_threshold_over_the_training_set(
    setup, kernel, power, threshold
):
    s = setup
    scores, preds = scores_of(Relation(power=power, threshold=threshold, block=7), s)
    expected = relation_reference(kernel, power, threshold)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_array_equal(preds, [np.argmax(logits(x, s)) for x in s["test"]])


def test_relation_threshold_cuts_edges_so_a_higher_one_never_raises_the_score(setup):
    low, _ = scores_of(Relation(threshold=0.0), setup)
    high, _ = scores_of(Relation(threshold=0.5), setup)
    assert np.all(high <= low) and np.any(high < low)


def test_relation_streams_a_bank_too_large_for_memory_from_its_file_with_the_same_scores(
    setup, tmp_path, monkeypatch
):
    import detectors.relation as relation_module

    s = setup
    np.save(tmp_path / "train.npy", s["train"])
    bank = np.load(tmp_path / "train.npy", mmap_mode="r")  # as the feature cache returns it
    in_memory = Relation().fit(s["fc"], train_features=bank)
    monkeypatch.setattr(relation_module, "MAX_BANK_BYTES", 1000)  # force streaming
    monkeypatch.setattr(relation_module, "BANK_ROWS", 37)  # several blocks, the last one partial
    streamed = Relation().fit(s["fc"], train_features=bank)
    assert streamed.bank_ is bank and streamed.bank_norm_.shape == (len(bank),)
    expected, _ = score_features(in_memory, s["test"])
    got, _ = score_features(streamed, s["test"], chunk=17)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_relation_fraction_keeps_a_seeded_share_of_the_training_set_as_the_bank(setup, kernel):
    s = setup
    det = fitted(Relation(fraction=0.25, seed=3), s)
    keep = np.sort(np.random.default_rng(3).choice(len(s["train"]), 100, replace=False))
    assert det.bank_.shape == (100, D)
    scores, _ = score_features(det, s["test"])
    np.testing.assert_allclose(
        scores, relation_reference([np.array(row)[keep] for row in kernel], 1, 0.03), rtol=1e-5
    )


def test_relation_a_sweep_over_power_and_threshold_reuses_the_fitted_bank(setup):
    det = fitted(Relation(), setup)
    swept = det.with_params(power=4, threshold=0.1)
    assert swept.bank_ is det.bank_


def test_relation_defaults_are_openoods_power_and_threshold_with_the_whole_training_set():
    det = Relation()
    assert (det.power, det.threshold, det.fraction) == (1, 0.03, 1.0)
    assert Relation.search_space(342) == {"power": (1, 2, 4, 6, 8)}


@pytest.mark.parametrize("given", [{"power": 0}, {"threshold": -0.1}, {"fraction": 0}, {"fraction": 1.5}])
def test_relation_refuses_a_parameter_out_of_range(given):
    with pytest.raises(ValueError, match="Relation"):
        Relation(**given).check_params()


def test_relation_zero_features_have_no_edges(setup):
    det = fitted(Relation(), setup)
    scores, _ = det.score_batch(torch.zeros(3, D))
    assert torch.equal(scores, torch.zeros(3, dtype=torch.float64))
