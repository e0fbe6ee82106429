"""detectors/mahalanobis_odin.py: Mahalanobis with Lee et al.'s input pre-processing on the
penultimate features, against a per-image reference on a tiny conv net (tests/tiny_convnet.py)."""

import numpy as np
import pytest
import torch
from tiny_convnet import STD, TinyConvNet, closest, gaussian, images, preprocessed_score

from detectors import Mahalanobis, MahalanobisODIN, registry
from detectors.base import score_features

C = 3


@pytest.fixture(scope="module")
def setup():
    net = TinyConvNet(C)
    train = images(60, seed=1)
    labels = np.arange(60) % C
    with torch.no_grad():
        feats = net.forward_features(train).numpy()
    return dict(net=net, feats=feats, labels=labels, test=images(10, seed=2))


def fitted(s, noise):
    return MahalanobisODIN(noise=noise).fit(s["net"], STD, s["feats"], s["labels"])


def test_score_is_minus_the_closest_class_distance_after_the_authors_preprocessing(setup):
    s = setup
    means, precision = gaussian(s["feats"], s["labels"], C)
    scores, _ = fitted(s, 0.01).score_images(s["test"])
    expected = [
        preprocessed_score(s["net"].forward_features, s["test"][i : i + 1], means, precision, 0.01)
        for i in range(len(s["test"]))
    ]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)


def test_the_step_moves_towards_the_closest_mean_so_the_scores_rise(setup):
    s = setup
    before, _ = fitted(s, 0.0).score_images(s["test"])
    after, _ = fitted(s, 0.002).score_images(s["test"])
    assert (after > before).all()


def test_noise_zero_is_mahalanobis_on_the_penultimate_features(setup):
    s = setup
    scores, logits = fitted(s, 0.0).score_images(s["test"])
    with torch.no_grad():
        h = s["net"].forward_features(s["test"]).numpy()
    plain = Mahalanobis().fit(s["net"].fc, s["feats"], s["labels"])
    np.testing.assert_allclose(scores.numpy(), score_features(plain, h)[0], rtol=1e-6)
    means, precision = gaussian(s["feats"], s["labels"], C)
    np.testing.assert_allclose(scores.numpy(), [-closest(f, means, precision)[0] for f in h], rtol=1e-6)


def test_an_image_scores_the_same_alone_and_in_its_batch(setup):
    s = setup
    detector = fitted(s, 0.005)
    batch, _ = detector.score_images(s["test"])
    alone = [detector.score_images(s["test"][i : i + 1])[0].item() for i in range(len(s["test"]))]
    np.testing.assert_allclose(batch.numpy(), alone, rtol=1e-5)  # float32 convs


def test_predictions_are_the_classifier_argmax_on_the_unperturbed_images(setup):
    s = setup
    _, logits = fitted(s, 0.01).score_images(s["test"])
    with torch.no_grad():
        np.testing.assert_array_equal(logits.argmax(1).numpy(), s["net"](s["test"]).argmax(1).numpy())


def test_fit_reads_the_cached_training_features_and_labels():
    assert MahalanobisODIN().needs() == ("train_features", "train_labels")
    assert MahalanobisODIN().fit_call() == "fit(model, input_std, train_features, train_labels)"


def test_a_training_image_per_class_is_required_before_any_forward_pass():
    assert MahalanobisODIN().check_sizes(342, 10, 9)
    assert MahalanobisODIN().check_sizes(342, 10, 10) == []


def test_defaults_and_search_space_are_pytorch_oods_eps_and_the_authors_list():
    assert registry.build("mahalanobis_odin", "CIFAR-10").noise == 0.002
    assert MahalanobisODIN.search_space(342) == {"noise": (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)}
    with pytest.raises(ValueError, match="--mahalanobis-odin-noise must be >= 0"):
        MahalanobisODIN(noise=-1.0).check_params()
