"""scikit-learn's estimator conventions, for every detector of the registry: ``__init__`` stores its
arguments unchanged (a clone from ``get_params`` has the very same parameter objects), scoring
before ``fit`` is a NotFittedError, and ``repr`` shows the parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import NotFittedError, registry
from detectors.base import LayerDetector, init_params, score_features

PRESETS = ("CIFAR-10", "CIFAR-100", "imagenet")
D = 12


def numpy_typed(params: dict) -> dict:
    """The same values as numpy scalars, which ``float()``/``int()`` in ``__init__`` would replace."""
    kinds = {bool: lambda v: v, int: np.int64, float: np.float64}
    return {k: kinds.get(type(v), lambda v: v)(v) for k, v in params.items()}


def settings(cls) -> list[dict]:
    """Parameter sets of ``cls``: none (the defaults), each variant's with each preset's defaults,
    the last value of each search-space axis, and those values as numpy scalars."""
    out = [{}]
    for variant, fixed in cls.variants().items():
        out += [{**cls.defaults_for(preset, variant), **fixed} for preset in PRESETS]
    swept = {k: v[-1] for k, v in cls.search_space(342).items()}
    return out + [swept, numpy_typed(swept)]


@pytest.mark.parametrize("cls", registry.DETECTORS, ids=lambda c: c.name)
def test_init_stores_each_argument_unchanged_and_a_clone_has_the_same_parameter_objects(cls):
    for given in settings(cls):
        detector = cls(**given)
        assert set(vars(detector)) == set(init_params(cls)), "__init__ sets only its arguments"
        params = detector.get_params()
        assert all(params[k] is v for k, v in given.items()), f"{cls.name} {given}: converted in __init__"
        clone = type(detector)(**params)
        assert clone.get_params() == params
        assert all(clone.get_params()[k] is v for k, v in params.items())


@pytest.mark.parametrize("cls", registry.DETECTORS, ids=lambda c: c.name)
def test_scoring_before_fit_is_a_not_fitted_error_naming_the_fit(cls):
    detector = cls()
    message = f"{cls.name} is not fitted: call {detector.fit_call()} first"
    assert detector.fit_call().startswith("fit(model" if cls.kind == "network" else "fit(fc")
    if cls.kind == "network":
        calls = [lambda: detector.score_images(torch.zeros(2, 3, 32, 32))]
    elif isinstance(detector, LayerDetector):
        layers = {kind: [torch.zeros(2, 4, 10)] for kind in detector.taps}
        calls = [lambda: detector.score_layers(torch.zeros(2, D), layers)]
    else:
        h = np.abs(np.random.default_rng(0).normal(size=(5, D))).astype(np.float32)
        calls = [
            lambda: detector.score_batch(torch.from_numpy(h)),
            lambda: score_features(detector, h),
            lambda: score_features(detector, h, chunk=2),
        ]
    calls.append(lambda: detector.logits(torch.zeros(2, D)))
    for call in calls:
        with pytest.raises(NotFittedError) as caught:
            call()
        assert str(caught.value) == message and not isinstance(caught.value, AttributeError)


def test_the_not_fitted_message_names_the_statistics_fit_needs():
    assert str(registry.build("line", "CIFAR-10").fit_call()) == "fit(fc, contributions)"
    assert registry.build("react", "CIFAR-10").fit_call() == "fit(fc, train_features)"
    assert registry.build("react", "CIFAR-10", {"clip_threshold": 1.0}).fit_call() == "fit(fc)"
    with pytest.raises(NotFittedError, match="mahalanobis is not fitted: call fit"):
        registry.build("mahalanobis", "CIFAR-10").score_batch(torch.zeros(1, D))


def test_a_missing_attribute_of_a_fitted_detector_or_a_private_one_stays_an_attribute_error():
    detector = registry.build("energy", "CIFAR-10").fit(torch.nn.Linear(D, 3))
    with pytest.raises(AttributeError, match="route_"):
        _ = detector.route_
    with pytest.raises(AttributeError):
        _ = registry.build("energy", "CIFAR-10")._private_


@pytest.mark.parametrize("cls", registry.DETECTORS, ids=lambda c: c.name)
def test_repr_shows_the_class_and_every_parameter(cls):
    for given in settings(cls)[:2]:
        detector = cls(**given)
        text = repr(detector)
        assert text.startswith(f"{cls.__name__}(") and text.endswith(")")
        assert all(f"{k}={v!r}" in text for k, v in detector.get_params().items())


def test_repr_of_line_lists_its_parameters_in_init_order():
    assert repr(registry.build("line", "imagenet")) == (
        "LINe(p_w=10.0, p_a=10.0, clip_threshold=0.8, activation_clipping=True, activation_pruning=True, "
        "weight_pruning=True)"
    )


@pytest.mark.parametrize(
    "name, given, match",
    [
        ("knn", {"k": 0}, "k must be >= 1"),
        ("knn", {"fraction": 0.0}, "fraction of training data"),
        ("weiper", {"s1": 0}, "s1 must be an integer"),
        ("nci", {"alpha": -1.0}, "alpha must be >= 0"),
        ("fdbd", {"normalizer": "max"}, "normalizer must be one of"),
        ("bats", {"statistics": "running"}, "statistics must be one of"),
    ],
)
def test_invalid_parameters_are_accepted_by_init_and_refused_by_fit(name, given, match):
    detector = registry.lookup(name)[0](**given)  # __init__ only stores them (registry.build checks)
    assert all(detector.get_params()[k] is v for k, v in given.items())
    train = np.ones((20, D), np.float32)
    with pytest.raises(ValueError, match=match):
        detector.fit(torch.nn.Linear(D, 3), train_features=train)


def test_a_shared_fit_checks_the_changed_parameters():
    fc = torch.nn.Linear(D, 3)
    knn = registry.build("knn", "CIFAR-10", {"k": 2}).fit(fc, train_features=np.eye(D, dtype=np.float32))
    assert knn.with_params(k=3).bank_ is knn.bank_
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn.with_params(k=0)
