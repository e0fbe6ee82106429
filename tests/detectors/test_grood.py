"""detectors/grood.py: GrOOD against a plain per-image loop (prototypes, the gradient of the
prototype classifier's cross-entropy with respect to the OOD prototype, exact nearest neighbour)."""

import numpy as np
import pytest
import torch
from reference import fitted, problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import registry
from detectors.grood import GrOOD, noise_gradients

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=4, num_classes=C, dim=D)


def noise_gradient(x, prototypes, noise):
    """d CE(s, y) / d noise for s_j = -||x - p_j|| over the C prototypes then the noise one, with y
    any class prototype: (softmax(s)_noise - 0) * d s_noise / d noise = p_noise (x - noise)/||x - noise||."""
    s = [-np.linalg.norm(x - p) for p in prototypes] + [-np.linalg.norm(x - noise)]
    e = np.exp(np.array(s) - max(s))
    return e[-1] / e.sum() * (x - noise) / np.linalg.norm(x - noise)


def grood_reference(train, labels, test, W, b, keep=None):
    """-(squared distance of g(x) to the nearest g of a correctly classified kept training image)."""
    train = train.astype(np.float64)
    prototypes = [train[labels == c].mean(axis=0) for c in range(C)]
    noise = sum(prototypes) / C
    rows = range(len(train)) if keep is None else keep
    bank = []
    for i in rows:
        if np.argmax(W @ train[i] + b) == labels[i]:
            bank.append(noise_gradient(train[i], prototypes, noise))
    out = []
    for x in test.astype(np.float64):
        g = noise_gradient(x, prototypes, noise)
        out.append(-min(np.sum((g - t) ** 2) for t in bank))
    return np.array(out)


def test_grood_is_minus_the_squared_distance_to_the_nearest_training_gradient(setup):
    scores, preds = scores_of(GrOOD(), setup)
    expected = grood_reference(setup["train"], setup["labels"], setup["test"], setup["W"], setup["b"])
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(preds, np.argmax(setup["test"] @ setup["W"].T + setup["b"], axis=1))


def test_the_bank_keeps_only_correctly_classified_training_images(setup):
    det = fitted(GrOOD(), setup)
    right = np.argmax(setup["train"] @ setup["W"].T + setup["b"], axis=1) == setup["labels"]
    assert 0 < right.sum() < len(right) and len(det.bank_) == right.sum()


def test_a_training_image_in_the_bank_scores_zero(setup):
    det = fitted(GrOOD(), setup)
    right = np.argmax(setup["train"] @ setup["W"].T + setup["b"], axis=1) == setup["labels"]
    scores, _ = det.score_batch(torch.from_numpy(setup["train"][right][:3]))
    np.testing.assert_allclose(scores.numpy(), 0.0, atol=1e-15)


def test_fraction_keeps_a_seeded_share_of_the_training_images_for_the_bank_only(setup):
    from detectors.statistics import seeded_rows

    det = fitted(GrOOD(fraction=0.25, seed=2), setup)
    keep = seeded_rows(len(setup["labels"]), 0.25, 2)
    expected = grood_reference(setup["train"], setup["labels"], setup["test"], setup["W"], setup["b"], keep)
    scores, _ = det.score_batch(torch.from_numpy(setup["test"]))
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-14)
    full = fitted(GrOOD(), setup)
    assert torch.equal(det.prototypes_, full.prototypes_) and len(det.bank_) < len(full.bank_)


def test_a_feature_at_the_noise_prototype_has_a_zero_gradient(setup):
    det = fitted(GrOOD(), setup)
    g = noise_gradients(det.noise_[None, :], det.prototypes_, det.noise_)  # h - p_0 exactly 0
    assert torch.equal(g, torch.zeros_like(g))


def test_a_class_without_training_images_is_an_error_and_a_size_problem(setup):
    labels = setup["labels"].copy()
    labels[labels == 3] = 0
    with pytest.raises(ValueError, match="all 5 classes"):
        GrOOD().fit(setup["fc"], setup["train"], labels)
    assert GrOOD().check_sizes(D, C, 3) and GrOOD().check_sizes(D, C, 400) == []


def test_an_unknown_prototype_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="mean"):
        registry.build("grood", "CIFAR-10", {"prototype": "uniform"})


def test_imagenet_default_bank_share_and_cifar_uses_every_training_image():
    assert registry.build("grood", "imagenet").fraction == 0.05
    assert registry.build("grood", "CIFAR-10").fraction == 1.0
