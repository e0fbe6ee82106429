"""Gram (Sastry & Oore, ICML 2020): per-image scores against a plain float64 reference that builds
the full Gram matrices of random feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import registry
from detectors.base import score_features
from detectors.gram import HELD_OUT, Gram, class_permutations, held_out_rows
from util.layer_taps import GRAM_POWERS, LayerArrays, gram_rows

C, D = 3, 6
SHAPES = ((4, 3, 3), (5, 2, 2))  # two layers: (channels, height, width)


def maps(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, *s)) * rng.uniform(0.5, 1.5, size=(n, 1, 1, 1)) for s in SHAPES]


def full_gram_rows(f: np.ndarray, p: int) -> np.ndarray:
    """(N, C_l): sign(r) |r|^(1/p), r the row sums of the full matrix F^p (F^p)^T, by loops."""
    out = np.zeros(f.shape[:2])
    for i, fm in enumerate(f.reshape(len(f), f.shape[1], -1) ** p):
        gram = fm @ fm.T
        r = gram.sum(axis=1)
        out[i] = np.sign(r) * np.abs(r) ** (1.0 / p)
    return out


def layer_arrays(feature_maps) -> LayerArrays:
    grams = tuple(gram_rows(torch.from_numpy(f)).numpy() for f in feature_maps)
    return LayerArrays(("a", "b"), {"gram": grams})


def delta(g, lo, hi) -> float:
    """sum over powers p and entries i of relu(lo - g) / |lo + 1e-6| + relu(g - hi) / |hi + 1e-6|."""
    dev = 0.0
    for p in range(g.shape[0]):
        for i in range(g.shape[1]):
            m, x = lo[p, i], hi[p, i]
            dev += max(m - g[p, i], 0) / abs(m + 1e-6) + max(g[p, i] - x, 0) / abs(x + 1e-6)
    return dev


def reference_scores(fc, train_maps, labels, held, test_maps, test_h, powers):
    """-(sum_l delta_l / E[delta_l]) / MSP with every statistic from the full Gram matrices."""
    w, b = fc.weight.detach().double().numpy(), fc.bias.detach().double().numpy()
    logits = test_h.astype(np.float64) @ w.T + b
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    pred, conf = prob.argmax(1), prob.max(1)
    total = np.zeros(len(test_h))
    for train_f, test_f in zip(train_maps, test_maps):
        train_g = np.stack([full_gram_rows(train_f, p) for p in range(1, powers + 1)], axis=1)
        test_g = np.stack([full_gram_rows(test_f, p) for p in range(1, powers + 1)], axis=1)
        lo = np.stack([train_g[(labels == c) & ~held].min(0) for c in range(C)])
        hi = np.stack([train_g[(labels == c) & ~held].max(0) for c in range(C)])
        expected = np.mean([delta(train_g[i], lo[labels[i]], hi[labels[i]]) for i in np.flatnonzero(held)])
        total += np.array([delta(g, lo[c], hi[c]) for g, c in zip(test_g, pred)]) / expected
    return -total / conf


def setup(powers: int = GRAM_POWERS, n: int = 60):
    torch.manual_seed(0)
    fc = torch.nn.Linear(D, C)
    labels = np.arange(n) % C
    train_maps, test_maps = maps(n, 1), maps(12, 2)
    test_maps[0][:3] *= 3.0  # some images far outside the bounds
    detector = Gram(powers=powers).fit(fc, layer_arrays(train_maps), labels)
    return fc, labels, train_maps, test_maps, detector


def test_cached_gram_rows_are_the_row_sums_of_the_full_gram_matrices():
    f = maps(4, 3)[0]
    rows = gram_rows(torch.from_numpy(f)).numpy()
    for p in range(1, GRAM_POWERS + 1):
        np.testing.assert_allclose(rows[:, p - 1], full_gram_rows(f, p), rtol=1e-5)


@pytest.mark.parametrize("powers", [10, 5, 1])
def test_scores_match_the_plain_reference_per_image(powers):
    fc, labels, train_maps, test_maps, detector = setup(powers)
    held = held_out_rows(labels, class_permutations(labels, C, 0))
    h = np.abs(np.random.default_rng(4).normal(size=(12, D))).astype(np.float32)
    with torch.no_grad():
        scores, logits = detector.score_layers(torch.from_numpy(h), layer_arrays(test_maps).block(0, 12))
    expected = reference_scores(fc, train_maps, labels, held, test_maps, h, powers)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4)
    assert torch.equal(logits, fc(torch.from_numpy(h)))
    assert (expected[:3] < expected[3:].max()).all() and (expected < 0).any()


def test_chunked_scoring_of_cached_arrays_gives_the_same_scores():
    _, _, _, test_maps, detector = setup()
    h = np.abs(np.random.default_rng(4).normal(size=(12, D))).astype(np.float32)
    layers = layer_arrays(test_maps)
    with torch.no_grad():
        whole, _ = detector.score_layers(torch.from_numpy(h), layers.block(0, 12))
    chunked, preds = score_features(detector, h, chunk=5, layers=layers)
    np.testing.assert_allclose(chunked, whole.numpy(), rtol=1e-12)
    assert np.array_equal(preds, detector.logits(torch.from_numpy(h)).argmax(1).numpy())


def test_the_held_out_split_is_a_seeded_tenth_of_each_class():
    labels = np.repeat(np.arange(C), [30, 41, 9])
    held = held_out_rows(labels, class_permutations(labels, C, 0))
    assert [held[labels == c].sum() for c in range(C)] == [3, 4, 0]  # floor(0.1 * n_c)
    assert HELD_OUT == 0.1
    again = held_out_rows(labels, class_permutations(labels, C, 0))
    other = held_out_rows(labels, class_permutations(labels, C, 1))
    assert np.array_equal(held, again) and not np.array_equal(held, other)


def test_only_the_first_powers_of_the_cached_rows_are_read():
    _, _, _, test_maps, detector = setup(powers=3)
    h = torch.ones(12, D)
    layers = layer_arrays(test_maps).block(0, 12)
    changed = {"gram": [g.clone() for g in layers["gram"]]}
    for g in changed["gram"]:
        g[:, 3:] = 1e6
    assert torch.equal(detector.score_layers(h, layers)[0], detector.score_layers(h, changed)[0])


def test_a_held_out_deviation_of_zero_normalises_by_one():
    fc = torch.nn.Linear(D, C)
    labels = np.arange(40) % C
    same = np.ones((40, GRAM_POWERS, 4), np.float32)  # every held-out image on the bounds
    detector = Gram().fit(fc, LayerArrays(("a",), {"gram": (same,)}), labels)
    assert detector.expected_deviation_.tolist() == [1.0]


def test_a_class_without_training_images_is_refused():
    labels = np.zeros(30, dtype=np.int64)
    with pytest.raises(ValueError, match="all 3 classes"):
        Gram().fit(torch.nn.Linear(D, C), layer_arrays(maps(30, 0)), labels)


def test_powers_beyond_the_cached_orders_are_refused():
    with pytest.raises(ValueError, match="1..10"):
        registry.build("gram", "CIFAR-10", {"powers": 11})
    assert registry.build("gram", "CIFAR-10").powers == 10 and Gram.taps == ("gram",)


def test_scoring_before_fit_is_a_not_fitted_error():
    from detectors import NotFittedError

    with pytest.raises(
        NotFittedError, match=r"gram is not fitted: call fit\(fc, train_layers, train_labels\)"
    ):
        Gram().score_layers(torch.ones(2, D), layer_arrays(maps(2, 0)).block(0, 2))
