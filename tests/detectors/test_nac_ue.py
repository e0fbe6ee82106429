"""NAC-UE (Liu et al., ICLR 2024): per-image coverage scores against plain loops over neurons and
the authors' bin edges, and the penultimate layer's states against autograd."""

from __future__ import annotations

import bisect

import numpy as np
import pytest
import torch

from detectors import registry
from detectors.base import score_features
from detectors.nac_ue import NACUE, balanced_subset, thresholds
from util.layer_taps import LayerArrays, LayerTaps, TapSpec

C, D = 3, 5
WIDTHS = (4, 6)  # neurons of the two tapped layers


def random_layers(n: int, seed: int) -> LayerArrays:
    rng = np.random.default_rng(seed)
    return LayerArrays(
        ("a", "b"), {"nac": tuple((rng.normal(size=(n, w)) * 0.02).astype(np.float32) for w in WIDTHS)}
    )


def kl_grad_states(fc, h: np.ndarray) -> np.ndarray:
    """h * dKL(u || softmax(fc(h)))/dh by autograd, float64."""
    x = torch.from_numpy(h).double().requires_grad_(True)
    logits = torch.nn.functional.linear(x, fc.weight.double(), fc.bias.double())
    loss = (-torch.log_softmax(logits, dim=1).mean(dim=1)).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return (x * grad).detach().numpy()


def sigmoid(v) -> float:
    return 1.0 / (1.0 + np.exp(-float(v)))


def reference_scores(train_states, test_states, alphas, ms, o_stars):
    """Mean over layers of the mean over neurons of min(count / O*, 1) of each state's bin."""
    total = np.zeros(len(test_states[0]))
    for tr, te, alpha, m, o_star in zip(train_states, test_states, alphas, ms, o_stars):
        edges = list(thresholds(m))
        for i in range(len(te)):
            covered = 0.0
            for n in range(te.shape[1]):
                k = bisect.bisect_right(edges, sigmoid(alpha * te[i, n])) - 1
                count = sum(bisect.bisect_right(edges, sigmoid(alpha * v)) - 1 == k for v in tr[:, n])
                covered += min(count / o_star, 1.0)
            total[i] += covered / te.shape[1]
    return total / len(train_states)


def test_the_bin_edges_are_the_authors_logspace():
    edges = thresholds(50)
    assert len(edges) == 50 and np.all(np.diff(edges) > 0)
    assert edges[0] == 0 and edges[24] == 0.5 and edges[-2] == 1.01 and edges[-1] == 1.2
    np.testing.assert_allclose(edges[1], np.log10(1 + (np.sqrt(1e3) - 1) / 24) / 3)
    np.testing.assert_allclose(edges[1:24] + edges[25:48][::-1], 1.0)  # mirrored about 0.5


@pytest.mark.parametrize(
    "params, alphas, ms, o_stars",
    [
        ({}, (100.0,) * 3, (50,) * 3, (50.0,) * 3),
        (
            {"alpha": (30.0, 300.0, 5.0), "bins": (4, 10, 50), "o_star": (2.0, 3.0, 1.0)},
            (30.0, 300.0, 5.0),
            (4, 10, 50),
            (2.0, 3.0, 1.0),
        ),
    ],
)
def test_scores_match_the_plain_reference_per_image(params, alphas, ms, o_stars):
    fc = torch.nn.Linear(D, C)
    labels = np.arange(45) % C
    train, test = random_layers(45, 0), random_layers(8, 1)
    h_train = np.abs(np.random.default_rng(2).normal(size=(45, D))).astype(np.float32)
    h_test = np.abs(np.random.default_rng(3).normal(size=(8, D))).astype(np.float32)
    detector = NACUE(**params).fit(fc, train, labels, h_train)  # 1000 images: all 45 (15 per class)
    with torch.no_grad():
        scores, logits = detector.score_layers(torch.from_numpy(h_test), test.block(0, 8))
    train_states = [*train.arrays["nac"], kl_grad_states(fc, h_train)]
    test_states = [*test.arrays["nac"], kl_grad_states(fc, h_test)]
    expected = reference_scores(train_states, test_states, alphas, ms, o_stars)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-12)
    assert len(set(expected.round(6))) > 1
    chunked, _ = score_features(detector, h_test, chunk=3, layers=test)
    np.testing.assert_allclose(chunked, expected, rtol=1e-12)


def test_without_the_penultimate_layer_only_the_tapped_layers_count():
    fc = torch.nn.Linear(D, C)
    labels = np.arange(30) % C
    train, test = random_layers(30, 0), random_layers(6, 1)
    detector = NACUE(penultimate=False, o_star=3.0).fit(fc, train, labels, np.ones((30, D), np.float32))
    scores, _ = detector.score_layers(torch.ones(6, D), test.block(0, 6))
    expected = reference_scores(train.arrays["nac"], test.arrays["nac"], (100.0,) * 2, (50,) * 2, (3.0,) * 2)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-12)


def test_penultimate_states_equal_the_cached_nac_tap_of_the_penultimate_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, D, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(D, C)
    )
    x = torch.randn(4, 3, 8, 8)
    with LayerTaps(net, TapSpec(("2",), ("nac",))) as taps:
        logits = net(x)
        tapped = taps.reduce(logits)
    h = net[:3](x).detach()
    detector = NACUE().fit(net[3], random_layers(30, 0), np.arange(30) % C, np.ones((30, D), np.float32))
    np.testing.assert_allclose(
        detector.penultimate_values(h).detach().numpy(), tapped.numpy(), rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(tapped.numpy(), kl_grad_states(net[3], h.numpy()), rtol=1e-4, atol=1e-8)


def test_the_histograms_are_counted_on_a_seeded_class_balanced_subset():
    labels = np.repeat(np.arange(C), [50, 40, 60])
    rows = balanced_subset(labels, C, 30, seed=0)
    assert np.bincount(labels[rows]).tolist() == [10, 10, 10]
    assert np.array_equal(rows, balanced_subset(labels, C, 30, seed=0))
    assert not np.array_equal(rows, balanced_subset(labels, C, 30, seed=1))
    assert np.bincount(labels[balanced_subset(labels, C, 1000, 0)]).tolist() == [40, 40, 40]  # smallest class
    detector = NACUE(train_images=30).fit(
        torch.nn.Linear(D, C), random_layers(150, 0), labels, np.ones((150, D), np.float32)
    )
    assert detector.fit_images_ == 30 and float(detector.counts_[0].sum(1)[0]) == 30


def test_per_layer_values_must_match_the_layers():
    detector = NACUE(alpha=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"--nac-ue-alpha gives 2 values for 3 layers"):
        detector.fit(
            torch.nn.Linear(D, C), random_layers(30, 0), np.arange(30) % C, np.ones((30, D), np.float32)
        )


def test_changing_o_star_reuses_the_fitted_histograms():
    detector = NACUE().fit(
        torch.nn.Linear(D, C), random_layers(30, 0), np.arange(30) % C, np.ones((30, D), np.float32)
    )
    assert detector.with_params(o_star=5.0).counts_ is detector.counts_
    assert detector.with_params(alpha=5.0).is_fitted is False


@pytest.mark.parametrize(
    "given, match", [({"bins": 51}, "even"), ({"bins": 2}, "even"), ({"alpha": 0.0}, "alpha")]
)
def test_invalid_values_are_refused(given, match):
    with pytest.raises(ValueError, match=match):
        registry.build("nac_ue", "CIFAR-10", given)


def test_too_few_training_images_for_the_classes_is_a_size_problem_naming_the_flag():
    assert NACUE().check_sizes(342, 10, 50000) == []
    assert NACUE().check_sizes(2048, 1000, 1_281_167) == []  # one image a class on ImageNet
    (problem,) = NACUE(train_images=500).check_sizes(2048, 1000, 1_281_167)
    assert "--nac-ue-train-images 500" in problem


def test_defaults_are_the_authors_per_layer_settings_for_layer1_to_3_and_avgpool_per_preset():
    cifar10 = registry.build("nac_ue", "CIFAR-10")
    assert (cifar10.alpha, cifar10.bins, cifar10.o_star) == (
        (0.001, 0.001, 1000.0, 100.0),
        (500, 50, 500, 50),
        (100.0, 5.0, 100.0, 50.0),
    )
    assert registry.build("nac_ue", "CIFAR-100").alpha == (0.005, 1.0, 10.0, 50.0)
    imagenet = registry.build("nac_ue", "imagenet")
    assert (imagenet.alpha[-1], imagenet.o_star[-1]) == (3000.0, 10.0)
    assert (cifar10.train_images, cifar10.penultimate) == (1000, True)


def test_per_layer_defaults_for_another_number_of_layers_are_refused_naming_the_flags():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    layers = LayerArrays(("a",), {"nac": (rng.normal(size=(40, 3)),)})
    fc = torch.nn.Linear(5, 4)
    with pytest.raises(ValueError, match="--nac-ue-alpha gives 4 values for 2 layers.*--feature-layers"):
        registry.build("nac_ue", "CIFAR-10").fit(fc, layers, labels, rng.normal(size=(40, 5)))


@pytest.mark.parametrize("penultimate", [True, False])
def test_scoring_before_fit_is_a_not_fitted_error(penultimate):
    from detectors import NotFittedError

    with pytest.raises(
        NotFittedError, match=r"nac_ue is not fitted: call fit\(fc, train_layers, train_labels, train_"
    ):
        NACUE(penultimate=penultimate).score_layers(torch.ones(2, D), random_layers(2, 0).block(0, 2))


def test_per_layer_values_that_do_not_fit_the_tapped_layers_are_a_problem_before_any_forward_pass():
    detector = registry.build("nac_ue", "CIFAR-10")
    assert detector.check_layers(("block1", "block2", "block3")) == []
    problems = detector.check_layers(("layer1", "layer2", "layer3", "layer4"))
    assert problems == [
        "--nac-ue-alpha (4 values), --nac-ue-bins (4 values), --nac-ue-o-star (4 values) for 5 layers "
        "(4 tapped, then the penultimate; the defaults are the authors' for 3 tapped layers): give one "
        "value or one per layer, or tap 3 layers with --feature-layers"
    ]
