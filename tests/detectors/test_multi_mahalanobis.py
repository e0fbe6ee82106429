"""detectors/multi_mahalanobis.py: per-layer Mahalanobis on pooled layer outputs, summed with
weights, against per-class loops in float64 on random layer statistics."""

import argparse

import numpy as np
import pytest
import torch
from tiny_convnet import closest, gaussian

from detectors import MultiMahalanobis, registry
from detectors.base import score_features
from detectors.multi_mahalanobis import weight_list
from util.layer_taps import LayerArrays

C, D, DIMS = 4, 9, (5, 8, 12)


def layer_arrays(rng, n: int) -> LayerArrays:
    pooled = tuple(np.maximum(rng.normal(0.3, 1.0, (n, d)), 0).astype(np.float32) + 1e-3 for d in DIMS)
    return LayerArrays(("stage1", "stage2", "stage3"), {"pooled": pooled})


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    fc = torch.nn.Linear(D, C)
    labels = np.arange(300) % C
    return dict(
        fc=fc, labels=labels, train=layer_arrays(rng, 300), test=layer_arrays(rng, 40),
        h=rng.normal(size=(40, D)).astype(np.float32),
    )  # fmt: skip


def reference(s, weights):
    """sum_l w_l max_c -(f_l - mu_lc)^T P_l (f_l - mu_lc), per image and layer by loops."""
    fits = [gaussian(a, s["labels"], C) for a in s["train"].arrays["pooled"]]
    out = []
    for i in range(len(s["h"])):
        per_layer = [
            -closest(a[i].astype(np.float64), *fit)[0] for a, fit in zip(s["test"].arrays["pooled"], fits)
        ]
        out.append(sum(w * m for w, m in zip(weights, per_layer)))
    return np.array(out)


@pytest.mark.parametrize("weights", [None, (1.0, 0.5, -0.25)])
def test_score_is_the_weighted_sum_of_each_layers_mahalanobis_score(setup, weights):
    s = setup
    detector = MultiMahalanobis(weights=weights).fit(s["fc"], s["train"], s["labels"])
    scores, preds = score_features(detector, s["h"], chunk=7, layers=s["test"])
    np.testing.assert_allclose(scores, reference(s, weights or (1.0, 1.0, 1.0)), rtol=1e-6)
    np.testing.assert_array_equal(preds, s["fc"](torch.from_numpy(s["h"])).argmax(1).numpy())


def test_one_layer_is_mahalanobis_on_that_layer(setup):
    s = setup
    one = LayerArrays(("stage3",), {"pooled": s["train"].arrays["pooled"][2:]})
    detector = MultiMahalanobis().fit(s["fc"], one, s["labels"])
    h = s["test"].arrays["pooled"][2]
    plain = registry.build("mahalanobis", None).fit(
        torch.nn.Linear(DIMS[2], C), s["train"].arrays["pooled"][2], s["labels"]
    )  # the layer's pooled outputs as its features
    layers = {"pooled": [torch.from_numpy(h)]}
    np.testing.assert_allclose(
        detector.score_layers(torch.from_numpy(s["h"]), layers)[0].numpy(),
        score_features(plain, h)[0],
        rtol=1e-12,
    )


def test_as_many_weights_as_layers_are_required(setup):
    s = setup
    with pytest.raises(ValueError, match="--multi-mahalanobis-weights gives 2 weights for 3 layers"):
        MultiMahalanobis(weights=(1.0, 2.0)).fit(s["fc"], s["train"], s["labels"])
    with pytest.raises(ValueError, match="weights must be finite"):
        MultiMahalanobis(weights=(1.0, float("nan"), 1.0)).check_params()


def test_the_weights_flag_takes_one_number_per_layer():
    assert weight_list("1,0.5 -2") == (1.0, 0.5, -2.0)
    with pytest.raises(argparse.ArgumentTypeError):
        weight_list("1,x")


def test_fit_reads_the_pooled_layer_statistics_and_a_training_image_per_class():
    assert MultiMahalanobis.taps == ("pooled",)
    assert MultiMahalanobis().needs() == ("train_layers", "train_labels")
    assert MultiMahalanobis().check_sizes(342, 10, 9)
