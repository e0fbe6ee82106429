"""detectors/statistics.py: Taylor contributions s = h * d logit_y / d h and their streaming class means."""

import numpy as np
import pytest
import torch
from reference import problem_with_statistics

from detectors.statistics import (
    ClassMeanAccumulator,
    class_mean_contributions,
    mean_feature,
    taylor_contributions,
)
from models.densenet import DenseNet3

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


def small_densenet(num_classes=5, seed=0):
    torch.manual_seed(seed)
    model = DenseNet3(depth=10, num_classes=num_classes, growth_rate=4).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_batched_autograd_contributions_equal_h_times_the_label_row_of_w():
    torch.manual_seed(0)
    fc = torch.nn.Linear(16, 4)
    h = torch.rand(32, 16)
    y = torch.randint(0, 4, (32,))
    got = taylor_contributions(fc, h, y)
    torch.testing.assert_close(got, h * fc.weight.detach()[y])


def test_batched_contributions_equal_per_image_backprop_through_the_whole_network():
    model = small_densenet()
    x = torch.randn(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        h = model.forward_features(x)
    batched = taylor_contributions(model.get_classifier(), h, y)
    for i in range(len(x)):  # the original method: one image at a time, backward through the network
        feats = model.forward_features(x[i : i + 1])
        feats.retain_grad()
        model.fc(feats)[0, y[i]].backward()
        torch.testing.assert_close(batched[i], (feats * feats.grad)[0].detach(), rtol=1e-5, atol=1e-6)


def test_streaming_class_means_equal_dense_means():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(500, 7))
    labels = rng.integers(0, 4, 500)
    acc = ClassMeanAccumulator(num_classes=5, dim=7)  # class 4 has no sample
    for start in range(0, 500, 37):
        acc.add(torch.from_numpy(values[start : start + 37]), torch.from_numpy(labels[start : start + 37]))
    dense = np.stack([values[labels == c].mean(0) for c in range(4)] + [np.zeros(7)])
    np.testing.assert_allclose(acc.mean().numpy(), dense, rtol=1e-12)
    assert acc.counts.tolist() == [int((labels == c).sum()) for c in range(5)]


def test_class_mean_contributions_do_not_depend_on_the_chunk_size():
    rng = np.random.default_rng(1)
    fc = torch.nn.Linear(12, 3)
    h = rng.random((250, 12)).astype(np.float32)
    y = rng.integers(0, 3, 250)
    W = fc.weight.detach().double().numpy()
    dense = np.stack([(h[y == c] * W[c]).mean(0) for c in range(3)])
    for chunk in (1, 16, 1000):
        got, counts = class_mean_contributions(fc, h, y, chunk=chunk)
        np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-7)
    assert counts.sum() == 250


def test_mean_feature_streams_to_the_dense_mean():
    h = np.random.default_rng(2).random((1000, 9)).astype(np.float32)
    np.testing.assert_allclose(mean_feature(h, chunk=77), h.astype(np.float64).mean(0), rtol=1e-12)


def test_class_mean_contributions_leave_the_given_head_as_it_was(setup):
    from detectors.statistics import class_mean_contributions

    fc = torch.nn.Linear(D, C).double()
    class_mean_contributions(fc, setup["train"], setup["labels"])
    assert fc.weight.dtype == torch.float64
