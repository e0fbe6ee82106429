"""The detector registry: every detector declares what the command line, the sweep and the results
table read from it, and follows the estimator conventions."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from reference import eval_config

import ood_eval
from detectors import registry
from detectors.base import LayerDetector, init_params, score_features
from util.errors import UserError
from util.layer_taps import LayerArrays

C, D = 4, 12
FEATURE_METHODS = [n for n in registry.method_names() if registry.lookup(n)[0].kind == "features"]
# Neighbour counts that fit the 80 training features of the problem below.
SMALL = {"knn": {"k": 3}, "nnguide": {"k": 3, "fraction": 0.5}, "temp_scaling": {"temperature": 1.5}}


def layer_arrays(rng, n: int) -> LayerArrays:
    """Statistics of three tapped layers of 5, 6 and 7 channels for n images (util.layer_taps kinds)."""
    widths = (5, 6, 7)
    return LayerArrays(
        ("a", "b", "c"),
        {
            "pooled": tuple(rng.normal(size=(n, w)) for w in widths),
            "gram": tuple(np.abs(rng.normal(size=(n, 10, w))) + 0.1 for w in widths),
            "nac": tuple(rng.normal(size=(n, w)) for w in widths),
        },
    )


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(rng.normal(0, 0.5, (C, D))))
    train = np.maximum(rng.normal(0.3, 1.0, (80, D)), 0).astype(np.float32)
    labels = np.arange(80) % C
    stats = {
        "train_features": train,
        "train_labels": labels,
        "mean_feature": train.mean(0).astype(np.float64),
        "contributions": np.array(
            [(train[labels == c] * fc.weight[c].detach().numpy()).mean(0) for c in range(C)]
        ),
        "batchnorm": (train.mean(0).astype(np.float64), train.std(0).astype(np.float64)),
        "train_layers": layer_arrays(rng, 80),
    }
    test = np.maximum(rng.normal(0.3, 1.2, (30, D)), 0).astype(np.float32)
    return fc, stats, test


@pytest.mark.parametrize("cls", registry.DETECTORS, ids=lambda c: c.name)
def test_each_detector_declares_name_paper_params_defaults_and_search_space_of_its_own_parameters(cls):
    params = set(init_params(cls))
    assert cls.name and cls.paper
    assert {p.name for p in cls.params} <= params
    for defaults in cls.defaults.values():
        assert set(defaults) <= params
    space = cls.search_space(342)
    assert set(space) <= params and all(len(v) >= 1 for v in space.values())
    for fixed in cls.variants().values():
        assert set(fixed) <= params
    fit_args = list(inspect.signature(cls.fit).parameters)[2:]
    statistics = (
        "train_features",
        "train_labels",
        "train_layers",
        "train_images",
        "mean_feature",
        "contributions",
        "batchnorm",
    )
    assert all(a in (*statistics, "input_std", "chunk") for a in fit_args)


@pytest.mark.parametrize("name", registry.method_names())
def test_every_method_name_builds_a_detector_whose_run_name_is_that_name(name):
    assert registry.build(name, "CIFAR-10").run_name() == name


def test_aliases_and_reordered_line_ablations_resolve_to_the_canonical_detector():
    assert registry.build("taylor", "CIFAR-100").run_name() == "line"
    assert registry.build("line_wp_ac", "CIFAR-10").run_name() == "line_ac_wp"
    with pytest.raises(UserError, match="did you mean 'knn'"):
        registry.lookup("knnn")


def test_the_papers_settings_are_the_per_dataset_defaults():
    line = registry.build("line", "CIFAR-100")
    assert (line.p_w, line.p_a, line.clip_threshold) == (90.0, 10.0, 1.0)
    assert registry.build("dice", "imagenet").p == 70.0 and registry.build("dice", "CIFAR-10").p == 90.0
    assert registry.build("knn", "imagenet").k == 1000 and registry.build("knn", "CIFAR-10").k == 50


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_fit_leaves_the_parameters_as_set_and_stores_fitted_state_with_a_trailing_underscore(problem, name):
    fc, stats, test = problem
    detector = registry.build(name, "CIFAR-10", SMALL.get(name, {}))
    before = detector.get_params()
    attributes = set(vars(detector))
    detector.fit(fc, **{k: stats[k] for k in detector.needs()})
    assert detector.get_params() == before
    assert all(a.endswith("_") for a in set(vars(detector)) - attributes)
    layers = (
        layer_arrays(np.random.default_rng(2), len(test)) if isinstance(detector, LayerDetector) else None
    )
    scores, preds = score_features(detector, test, layers=layers)
    assert scores.shape == (30,) and np.isfinite(scores).all() and preds.shape == (30,)


def test_with_params_shares_the_fit_only_when_the_fit_does_not_depend_on_the_change(problem):
    fc, stats, test = problem
    line = registry.build("line", "CIFAR-10").fit(fc, contributions=stats["contributions"])
    looser = line.with_params(clip_threshold=2.0)
    assert looser.route_ is line.route_ and line.clip_threshold == 1.0 and looser.clip_threshold == 2.0
    refit = line.with_params(p_w=50.0)
    assert not refit.is_fitted and "route_" not in vars(refit) and line.p_w == 90.0
    expected, _ = score_features(registry.build("line", "CIFAR-10", {"clip_threshold": 2.0}).fit(fc, **{
        "contributions": stats["contributions"]}), test)  # fmt: skip
    np.testing.assert_array_equal(score_features(looser, test)[0], expected)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method", "line", "--p", "90"], "--p applies to none of the chosen method"),
        (["--method", "dice", "--p-w", "50"], "--p-w applies to none of the chosen method"),
        (["--methods", "energy,knn", "--vim-dim", "8"], "--vim-dim applies to none of the chosen method"),
        (["--method", "line", "--methods", "knn"], "not both"),
        (
            ["--method", "line", "--no-ap", "--p-a", "50"],
            r"--p-a applies to none .* line_ac_wp \(or has no effect on them\)",
        ),
        (["--method", "react", "--clip_threshold", "1", "--react-percentile", "80"], "--react-percentile"),
    ],
)
def test_a_flag_of_no_chosen_method_is_an_error_naming_both(flags, message):
    with pytest.raises(UserError, match=message):
        eval_config(flags)


def test_the_original_energy_flags_mean_dice_and_react():
    assert eval_config(["--p", "90"]).detectors[0].method == "dice"
    assert eval_config(["--clip_threshold", "1.0"]).detectors[0].method == "react"
    assert eval_config(["--method", "dice", "--clip_threshold", "1"]).detectors[0].method == "dice_react"


def test_a_new_detector_is_one_class_and_one_registry_entry(monkeypatch, problem):
    """A detector defined elsewhere joins the command line (its flag and help generated from one
    description per parameter), the paper defaults and the sweep's search space through the
    registry alone."""
    from detectors.base import Detector
    from pipeline.sweep import grid_of
    from util.argtypes import positive_float

    class ScaledEnergy(Detector):
        name = "scaled_energy"
        paper = "a test"
        param_help = {"scale": "logit scale", "shift": "added to the score", "clamp": "clamp the logits"}
        param_types = {"scale": positive_float}
        defaults = {"CIFAR-100": {"scale": 3.0}}

        def __init__(self, scale: float = 1.0, shift: int = 1, clamp: bool = False):
            self.scale = scale
            self.shift = shift
            self.clamp = clamp

        @classmethod
        def search_space(cls, feature_dim):
            return {"scale": (0.5, 1.0)}

        def logits(self, h):
            return self.scale * self.fc_(h)

    monkeypatch.setattr(registry, "DETECTORS", (*registry.DETECTORS, ScaledEnergy))
    assert [p.flags for p in ScaledEnergy.params] == [
        ("--scaled-energy-scale",),
        ("--scaled-energy-shift",),
        ("--scaled-energy-clamp",),
    ]
    help_text = " ".join(ood_eval.build_parser().format_help().split())
    assert "--scaled-energy-scale SCALE logit scale (default: 1; CIFAR-100: 3) [scaled_energy]" in help_text
    assert "--scaled-energy-clamp clamp the logits (default: off) [scaled_energy]" in help_text
    flags = ["--methods", "energy,scaled_energy", "--scaled-energy-scale", "2", "--scaled-energy-clamp"]
    config = eval_config(flags)
    assert [run.method for run in config.detectors] == ["energy", "scaled_energy"]
    assert config.detectors[1].detector.get_params() == {"scale": 2.0, "shift": 1, "clamp": True}
    with pytest.raises(SystemExit):  # the int parameter's parser (positive_int) refuses 0
        eval_config(["--method", "scaled_energy", "--scaled-energy-shift", "0"])
    assert (
        eval_config(["--in-dataset", "CIFAR-100", "--method", "scaled_energy"]).detectors[0].detector.scale
        == 3.0
    )
    from pipeline.config import SweepConfig

    assert grid_of(SweepConfig(method="scaled_energy"), D) == {"scale": (0.5, 1.0)}
    fc, _, test = problem
    scores, _ = score_features(ScaledEnergy(2.0).fit(fc), test)
    logits = 2.0 * (
        test.astype(np.float64) @ fc.weight.detach().double().numpy().T + fc.bias.detach().double().numpy()
    )
    np.testing.assert_allclose(scores, np.log(np.exp(logits).sum(1)), rtol=1e-5)


def test_knn_with_k_above_the_training_set_is_refused_when_fitted(problem):
    fc, stats, _ = problem
    with pytest.raises(ValueError, match="k = 500 exceeds the 80 training features"):
        registry.build("knn", "CIFAR-10", {"k": 500}).fit(fc, train_features=stats["train_features"])


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_an_empty_feature_array_gives_empty_scores(problem, name):
    fc, stats, _ = problem
    detector = registry.build(name, "CIFAR-10", SMALL.get(name, {}))
    detector.fit(fc, **{k: stats[k] for k in detector.needs()})
    scores, preds = score_features(detector, np.zeros((0, D), dtype=np.float32))
    assert scores.shape == (0,) and preds.shape == (0,)


def test_every_registered_detector_is_exported_by_its_class_name():
    import detectors

    for cls in registry.DETECTORS:
        assert getattr(detectors, cls.__name__) is cls and cls.__name__ in detectors.__all__


@pytest.mark.parametrize("spelling, preset", [("ImageNet", "imagenet"), ("cifar100", "CIFAR-100")])
def test_build_takes_the_preset_of_any_spelling_of_a_dataset(spelling, preset):
    assert registry.build("line", spelling).get_params() == registry.build("line", preset).get_params()


def test_build_gives_an_image_folder_the_imagenet_preset(tmp_path):
    assert registry.build("knn", str(tmp_path)).get_params() == registry.build("knn", "imagenet").get_params()


def test_build_refuses_an_unknown_dataset_as_the_command_line_does():
    with pytest.raises(UserError, match="unknown dataset 'CIFAR10x'.*did you mean 'CIFAR-10'"):
        registry.build("line", "CIFAR10x")


def test_build_refuses_a_value_the_detector_cannot_take_before_any_data_is_read():
    with pytest.raises(ValueError, match="BATS statistics must be one of"):
        registry.build("bats", "CIFAR-10", {"statistics": "running"})
