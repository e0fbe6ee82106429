"""detectors/mds_ensemble.py: Mahalanobis on several layers, each with its own input
pre-processing, summed with weights, against a per-image, per-layer reference on a tiny conv net."""

import numpy as np
import pytest
import torch
from tiny_convnet import LAYERS, STD, TinyConvNet, gaussian, images, pooled_layer, preprocessed_score

from detectors import MahalanobisODIN, MDSEnsemble, MultiMahalanobis, registry
from util.errors import UserError
from util.layer_taps import LayerArrays

C = 3


def pooled_arrays(net, x, layers=LAYERS) -> LayerArrays:
    with torch.no_grad():
        arrays = tuple(pooled_layer(net, x, LAYERS.index(name)).numpy() for name in layers)
    return LayerArrays(tuple(layers), {"pooled": arrays})


@pytest.fixture(scope="module")
def setup():
    net = TinyConvNet(C)
    train = images(60, seed=1)
    labels = np.arange(60) % C
    return dict(net=net, train_layers=pooled_arrays(net, train), labels=labels, test=images(8, seed=2))


def test_score_is_the_weighted_sum_of_each_layers_score_after_its_own_preprocessing(setup):
    s, weights, eps = setup, (1.0, 0.5, 2.0), 0.01
    detector = MDSEnsemble(noise=eps, weights=weights).fit(s["net"], STD, s["train_layers"], s["labels"])
    scores, logits = detector.score_images(s["test"])
    expected = np.zeros(len(s["test"]))
    for layer, w in enumerate(weights):
        fit = gaussian(s["train_layers"].arrays["pooled"][layer], s["labels"], C)
        features = lambda x, layer=layer: pooled_layer(s["net"], x, layer)  # noqa: E731
        expected += [w * preprocessed_score(features, s["test"][i : i + 1], *fit, eps) for i in range(8)]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)
    with torch.no_grad():
        np.testing.assert_array_equal(logits.argmax(1).numpy(), s["net"](s["test"]).argmax(1).numpy())


def test_noise_zero_is_multi_mahalanobis_on_the_same_layers(setup):
    s = setup
    ours, _ = (
        MDSEnsemble(noise=0.0).fit(s["net"], STD, s["train_layers"], s["labels"]).score_images(s["test"])
    )
    multi = MultiMahalanobis().fit(s["net"].fc, s["train_layers"], s["labels"])
    test = pooled_arrays(s["net"], s["test"])
    with torch.no_grad():
        h = s["net"].forward_features(s["test"])
    np.testing.assert_allclose(ours.numpy(), multi.score_layers(h, test.block(0, 8))[0].numpy(), rtol=1e-6)


def test_on_the_penultimate_layer_alone_it_is_mahalanobis_odin(setup):
    s = setup
    last = pooled_arrays(s["net"], images(60, seed=1), ("block2",))  # block2 pooled = h
    ours, _ = MDSEnsemble(noise=0.005).fit(s["net"], STD, last, s["labels"]).score_images(s["test"])
    odin = MahalanobisODIN(noise=0.005).fit(s["net"], STD, last.arrays["pooled"][0], s["labels"])
    np.testing.assert_allclose(ours.numpy(), odin.score_images(s["test"])[0].numpy(), rtol=1e-6)


def test_a_layer_name_the_model_lacks_is_refused_at_fit(setup):
    s = setup
    wrong = LayerArrays(("conv1", "stage9"), {"pooled": s["train_layers"].arrays["pooled"][:2]})
    with pytest.raises(UserError, match="no module 'stage9'"):
        MDSEnsemble().fit(s["net"], STD, wrong, s["labels"])


def test_fit_reads_the_cached_pooled_layers_and_defaults_are_openoods():
    assert MDSEnsemble().needs() == ("train_layers", "train_labels")
    assert MDSEnsemble().check_sizes(342, 10, 9)
    detector = registry.build("mds_ensemble", "CIFAR-10")
    assert (detector.noise, detector.weights) == (0.0014, None)
    assert MDSEnsemble.search_space(342)["noise"] == (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)
