"""detectors/adascale.py: AdaSCALE-A and -L against a per-image float64 reference (loops, numpy)."""

import copy

import numpy as np
import pytest
import torch
from reference import logsumexp
from tiny_convnet import PooledConvNet
from torch.utils.data import DataLoader, Dataset

from detectors import SCALE, AdaSCALE, NotFittedError, registry
from detectors.base import score_features
from util.data import BAD_IMAGE_LABEL

D, C = 120, 7  # D >= 100, so that k2 = 1% is one entry as in OpenOOD's int(D * 1 / 100)
STD = (0.2, 0.25, 0.3)


class Images(Dataset):
    """Image i drawn from a generator seeded with seed + i; label i % C (or ``labels``)."""

    def __init__(self, n, seed, labels=None):
        self.n, self.seed, self.labels = n, seed, labels

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(self.seed + i)
        label = self.labels[i] if self.labels is not None else i % C
        return torch.randn(3, 6, 6, generator=gen, dtype=torch.float64), label


@pytest.fixture(scope="module")
def net():
    return PooledConvNet(D, C)


@pytest.fixture(scope="module")
def test_images():
    return torch.stack([Images(10, 1000)[i][0] for i in range(10)])


def reference_pair(net, image, o):
    """(h, logits, h') of one image: 0.5 sign(g) added to the floor(o * size) entries of smallest
    |g|, g the gradient of the largest logit."""
    x = image[None].clone().requires_grad_(True)
    h = net.forward_features(x)
    z = net.fc(h)
    (g,) = torch.autograd.grad(z[0, int(z.argmax())], x)
    g = g[0].numpy().ravel()
    perturbed = image.numpy().ravel().copy()
    for j in np.argsort(np.abs(g), kind="stable")[: int(g.size * o)]:
        perturbed[j] += 0.5 * np.sign(g[j])
    with torch.no_grad():
        h_pert = net.forward_features(torch.from_numpy(perturbed.reshape(image.shape))[None])
    return h[0].detach().numpy(), z[0].detach().numpy(), h_pert[0].numpy()


def reference_q(h, h_pert, k1, k2, lam):
    order = sorted(range(len(h)), key=lambda j: -h[j])
    n1, n2 = max(1, int(len(h) * k1 / 100)), max(1, int(len(h) * k2 / 100))
    return sum(max(h_pert[j], 0.0) for j in order[:n1]) + lam * sum(abs(h[j] - h_pert[j]) for j in order[:n2])


def reference_scores(net, fit_images, images, variant, lo=75.0, hi=85.0, k1=5.0, k2=1.0, lam=10.0, o=0.05):
    fit_q = []
    for image in fit_images:
        h, _, h_pert = reference_pair(net, image, o)
        fit_q.append(reference_q(h, h_pert, k1, k2, lam))
    W, b = net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy()
    out = []
    for image in images:
        h, z, h_pert = reference_pair(net, image, o)
        below = sum(v <= reference_q(h, h_pert, k1, k2, lam) for v in fit_q) / len(fit_q)
        p = lo + (1 - below) * (hi - lo)
        x = np.maximum(h, 0.0)
        k = max(1, len(h) - round(len(h) * p / 100))
        r = x.sum() / sum(sorted(x, reverse=True)[:k])
        logits = W @ (h * np.exp(r)) + b if variant == "a" else z * r**2
        out.append(logsumexp(logits))
    return np.array(out)


@pytest.mark.parametrize("variant", ["a", "l"])
def test_adascale_scores_equal_the_reference_per_image(net, test_images, variant):
    train = Images(30, 0)
    detector = AdaSCALE(variant, num_samples=30).fit(net, STD, train)
    scores, _ = detector.score_images(test_images)
    fit = [train[i][0] for i in range(30)]
    np.testing.assert_allclose(scores.numpy(), reference_scores(net, fit, test_images, variant), rtol=1e-10)


def test_other_parameters_equal_the_reference_too(net, test_images):
    train = Images(20, 0)
    settings = {"min_percentile": 60.0, "max_percentile": 95.0, "k1": 20.0, "k2": 5.0, "lmbda": 2.0}
    detector = AdaSCALE("a", **settings, perturb_fraction=0.2, num_samples=20).fit(net, STD, train)
    scores, _ = detector.score_images(test_images)
    fit = [train[i][0] for i in range(20)]
    expected = reference_scores(net, fit, test_images, "a", 60.0, 95.0, 20.0, 5.0, 2.0, 0.2)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-10)


def test_equal_percentiles_make_adascale_a_scale_at_that_percentile(net, test_images):
    detector = AdaSCALE("a", 80.0, 80.0, num_samples=10).fit(net, STD, Images(10, 0))
    scores, _ = detector.score_images(test_images)
    with torch.no_grad():
        h = net.forward_features(test_images).float().numpy()
    expected, _ = score_features(SCALE(80.0).fit(copy.deepcopy(net.fc).float()), h)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)


def test_adascale_l_keeps_the_networks_predictions(net, test_images):
    _, logits = AdaSCALE("l", num_samples=10).fit(net, STD, Images(10, 0)).score_images(test_images)
    with torch.no_grad():
        assert torch.equal(logits.argmax(dim=1), net(test_images).argmax(dim=1))


def test_a_dataset_gives_a_seeded_random_subset_and_a_loader_its_first_images(net, capsys):
    train = Images(40, 0)
    from_set = AdaSCALE(num_samples=12).fit(net, STD, train)
    again = AdaSCALE(num_samples=12).fit(net, STD, train)
    assert torch.equal(from_set.fit_features_, again.fit_features_) and len(from_set.fit_features_) == 12
    assert "12 images, a random subset (seed 0) of the 40 ID training images" in capsys.readouterr().out
    loader = DataLoader(train, batch_size=5)
    from_loader = AdaSCALE(num_samples=12).fit(net, STD, loader)
    first = torch.stack([train[i][0] for i in range(12)])
    with torch.no_grad():
        np.testing.assert_allclose(from_loader.fit_features_, net.forward_features(first).float(), rtol=1e-6)
    assert "12 images, the first images of the training loader" in capsys.readouterr().out


def test_unreadable_training_images_are_left_out_of_the_fit(net):
    labels = [BAD_IMAGE_LABEL if i in (1, 4) else 0 for i in range(8)]
    detector = AdaSCALE(num_samples=100).fit(net, STD, DataLoader(Images(8, 0, labels), batch_size=3))
    kept = torch.stack([Images(8, 0)[i][0] for i in range(8) if i not in (1, 4)])
    with torch.no_grad():
        np.testing.assert_allclose(detector.fit_features_, net.forward_features(kept).float(), rtol=1e-6)


def test_a_sweep_over_k_lambda_or_percentiles_reuses_the_fit_and_one_over_o_does_not(net):
    detector = AdaSCALE(num_samples=6).fit(net, STD, Images(6, 0))
    for change in ({"k1": 10.0}, {"k2": 2.0}, {"lmbda": 1.0}, {"min_percentile": 60.0}, {"variant": "l"}):
        assert detector.with_params(**change).fit_features_ is detector.fit_features_
    with pytest.raises(NotFittedError):
        _ = detector.with_params(perturb_fraction=0.1).fit_features_


def test_fit_needs_the_training_images():
    detector = registry.build("adascale_a", "CIFAR-10")
    assert detector.needs() == ("train_images",)
    assert detector.fit_call() == "fit(model, input_std, train_images)"


@pytest.mark.parametrize(
    "given, match",
    [
        ({"min_percentile": 90.0, "max_percentile": 85.0}, "min_percentile <= max_percentile"),
        ({"max_percentile": 100.0}, "< 100"),
        ({"k2": 0.0}, "--adascale-k2 must be a percent"),
        ({"perturb_fraction": 0.0}, "--adascale-perturb-fraction"),
        ({"variant": "s"}, "variant must be 'a' or 'l'"),
    ],
)
def test_invalid_settings_are_refused_naming_the_flag(given, match):
    with pytest.raises(ValueError, match=match):
        AdaSCALE(**given).check_params()


def test_defaults_are_openoods_and_the_names_are_its_two_variants():
    cifar = registry.build("adascale_a", "CIFAR-10")
    assert (cifar.min_percentile, cifar.max_percentile, cifar.k1, cifar.k2, cifar.lmbda) == (75, 85, 5, 1, 10)
    assert (cifar.perturb_fraction, cifar.num_samples) == (0.05, 5000)
    imagenet = registry.build("adascale_l", "imagenet")
    assert (imagenet.variant, imagenet.min_percentile, imagenet.max_percentile) == ("l", 80.0, 85.0)
    assert [registry.build(n, None).run_name() for n in ("adascale_a", "adascale_l")] == [
        "adascale_a",
        "adascale_l",
    ]
    space = AdaSCALE.search_space(D)
    assert all(lo < hi for lo in space["min_percentile"] for hi in space["max_percentile"])


def test_evaluate_from_python_fits_on_the_training_loaders_images_as_fit_loader_does():
    from pipeline.api import evaluate

    net = PooledConvNet(D, C)
    train = DataLoader(Images(24, 0), batch_size=8)
    test, ood = DataLoader(Images(6, 50), batch_size=3), DataLoader(Images(6, 90), batch_size=3)
    result = evaluate(net, [AdaSCALE(num_samples=20)], train, test, {"ood": ood}, input_std=STD)
    alone = AdaSCALE(num_samples=20).fit_loader(net, train, input_std=STD)
    want = torch.cat([alone.score(net, x) for x, _ in test])
    np.testing.assert_allclose(result.scores["adascale_a"]["in"], want.numpy(), rtol=1e-12)
