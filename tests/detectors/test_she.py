"""detectors/she.py: SHE against per-class means of the correctly classified training features."""

import numpy as np
import pytest
import torch
from reference import fitted_scores as scores_of
from reference import logits, synthetic_problem

from detectors.she import SHE

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


def test_she_is_the_inner_product_with_the_mean_of_correctly_classified_training_features(s):
    x, y = s["train"].astype(np.float64), s["labels"]
    pred = np.array([np.argmax(logits(h, s)) for h in x])
    right = [(y == c) & (pred == c) for c in range(C)]
    assert sum(r.any() for r in right) >= 3  # most classes have correctly classified images
    patterns = [x[r].mean(0) if r.any() else x[y == c].mean(0) for c, r in enumerate(right)]
    expected = [h @ patterns[int(np.argmax(logits(h, s)))] for h in s["test"].astype(np.float64)]
    np.testing.assert_allclose(scores_of(SHE(), s), expected, rtol=1e-6)


def test_she_falls_back_to_the_class_mean_for_a_class_never_classified_correctly(s):
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(s["W"]))
        fc.bias.copy_(torch.tensor([0, 0, 0, 0, -1e4]))
    detector = SHE().fit(fc, s["train"], s["labels"])
    assert detector.classes_without_correct_images_ == 1
    np.testing.assert_allclose(
        detector.patterns_[4].numpy(), s["train"][s["labels"] == 4].astype(np.float64).mean(0)
    )
