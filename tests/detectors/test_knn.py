"""detectors/knn.py: KNN against a per-sample sort of the distances to the normalised bank."""

import numpy as np
import pytest
import torch
from reference import fitted, problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import KNN, score_features

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_is_minus_the_distance_to_the_kth_normalised_training_neighbour(setup, k):
    s = setup
    det = KNN(k=k, block=13)
    scores, _ = scores_of(det, s)
    bank = [t / (np.linalg.norm(t) + 1e-10) for t in s["train"].astype(np.float64)]
    expected = []
    for x in s["test"].astype(np.float64):
        z = x / (np.linalg.norm(x) + 1e-10)
        expected.append(-sorted(np.linalg.norm(z - t) for t in bank)[k - 1])
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_streams_a_bank_too_large_for_memory_from_its_file_with_the_same_scores(
    setup, k, tmp_path, monkeypatch
):
    import detectors.knn as knn_module

    s = setup
    path = tmp_path / "train.npy"
    np.save(path, s["train"])
    bank = np.load(path, mmap_mode="r")  # as the feature cache returns it
    in_memory = KNN(k=k).fit(fitted(KNN(k=k), s).fc_, train_features=bank)
    monkeypatch.setattr(knn_module, "MAX_BANK_BYTES", 1000)  # force streaming
    monkeypatch.setattr(knn_module, "BANK_ROWS", 37)  # several blocks, the last one partial
    streamed = KNN(k=k).fit(in_memory.fc_, train_features=bank)
    assert streamed.bank_ is bank and streamed.bank_norm_.shape == (len(bank),)
    expected, _ = score_features(in_memory, s["test"])
    got, _ = score_features(streamed, s["test"])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_knn_fraction_uses_that_share_of_the_training_set(setup):
    det = fitted(KNN(k=3, fraction=0.25), setup)
    assert det.bank_.shape == (100, D)


def test_knn_fraction_of_a_memory_mapped_bank_keeps_the_same_rows_as_of_an_array(setup, tmp_path):
    s = setup
    np.save(tmp_path / "train.npy", s["train"])
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    from_array = fitted(KNN(k=3, fraction=0.25), s)
    from_file = KNN(k=3, fraction=0.25).fit(s["fc"], train_features=mapped)
    torch.testing.assert_close(from_file.bank_, from_array.bank_, rtol=0, atol=0)
