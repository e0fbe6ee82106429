"""The detector flags: generated from each detector's ``__init__``, ``param_help`` and ``defaults``
as ``--<method>-<param>``, with the original code's spellings kept (``pipeline.flags.FLAG_ALIASES``)."""

from __future__ import annotations

import pytest
from reference import eval_config

import ood_eval
from detectors import registry
from detectors.base import init_params, shown_value
from pipeline.flags import FLAG_ALIASES, detector_flags, flags_of
from util.errors import UserError

# Every detector flag spelling accepted before the flags were generated: flag -> (a method taking
# it, parameter, a value to pass (None: a switch), the value the parameter gets).
OLD_FLAGS = {
    "--gen-gamma": ("gen", "gamma", "0.5", 0.5),
    "--gen-m": ("gen", "m", "7", 7),
    "--clip_threshold": ("react", "clip_threshold", "1.5", 1.5),
    "--clip-threshold": ("line", "clip_threshold", "0.7", 0.7),
    "--react-percentile": ("react", "percentile", "80", 80.0),
    "--bats-lambda": ("bats", "lam", "2", 2.0),
    "--bats-statistics": ("bats", "statistics", "features", "features"),
    "--p": ("dice", "p", "50", 50.0),
    "--ash-percentile": ("ash_b", "percentile", "65", 65.0),
    "--scale-percentile": ("scale", "percentile", "70", 70.0),
    "--lts-percentile": ("lts", "percentile", "75", 75.0),
    "--vra-alpha-percentile": ("vra", "alpha_percentile", "55", 55.0),
    "--vra-beta-percentile": ("vra", "beta_percentile", "90", 90.0),
    "--vra-gamma": ("vra", "gamma", "-0.2", -0.2),
    "--vra-alpha": ("vra", "alpha", "0.1", 0.1),
    "--vra-beta": ("vra", "beta", "0.9", 0.9),
    "--vra-global": ("vra", "per_unit", None, False),
    "--optfs-intervals": ("optfs", "intervals", "30", 30),
    "--optfs-score": ("optfs", "score", "energy", "energy"),
    "--gradnorm-temperature": ("gradnorm", "temperature", "2", 2.0),
    "--knn-k": ("knn", "k", "5", 5),
    "--knn-fraction": ("knn", "fraction", "0.5", 0.5),
    "--nnguide-k": ("nnguide", "k", "4", 4),
    "--nnguide-fraction": ("nnguide", "fraction", "0.2", 0.2),
    "--vim-dim": ("vim", "dim", "8", 8),
    "--neco-dim": ("neco", "dim", "3", 3),
    "--neco-maxlogit": ("neco", "maxlogit", None, True),
    "--fdbd-normalizer": ("fdbd", "normalizer", "norm", "norm"),
    "--nci-alpha": ("nci", "alpha", "0.01", 0.01),
    "--cadref-logit-score": ("cadref", "logit_score", "msp", "msp"),
    "--weiper-r": ("weiper", "r", "3", 3),
    "--weiper-delta": ("weiper", "delta", "2", 2.0),
    "--weiper-bins": ("weiper", "n_bins", "20", 20),
    "--weiper-lambda1": ("weiper", "lambda_1", "1.5", 1.5),
    "--weiper-lambda2": ("weiper", "lambda_2", "0.5", 0.5),
    "--weiper-s1": ("weiper", "s1", "2", 2),
    "--weiper-s2": ("weiper", "s2", "3", 3),
    "--weiper-seed": ("weiper", "seed", "4", 4),
    "--weiper-fraction": ("weiper", "fraction", "0.5", 0.5),
    "--p-w": ("line", "p_w", "20", 20.0),
    "--p-a": ("line", "p_a", "30", 30.0),
    "--no-clip": ("line", "activation_clipping", None, False),
    "--no-ap": ("line", "activation_pruning", None, False),
    "--no-wp": ("line", "weight_pruning", None, False),
    "--temperature": ("odin", "temperature", "10", 10.0),
    "--noise": ("odin", "noise", "0.001", 0.001),
    "--rankfeat-fuse": ("rankfeat", "fuse", None, True),
    "--rankfeat-power-iterations": ("rankfeat", "power_iterations", "20", 20),
}


def detector_of(argv: list[str], index: int = 0):
    return eval_config(argv).detectors[index].detector


@pytest.mark.parametrize("flag", OLD_FLAGS)
def test_every_earlier_flag_spelling_still_sets_the_same_parameter(flag):
    method, name, text, value = OLD_FLAGS[flag]
    detector = detector_of(["--method", method, flag] + ([text] if text is not None else []))
    assert detector.get_params()[name] == value and type(detector.get_params()[name]) is type(value)


@pytest.mark.parametrize("cls", registry.DETECTORS, ids=lambda c: c.name)
def test_each_described_parameter_has_a_generated_flag_whose_help_shows_the_description_and_defaults(cls):
    help_text = " ".join(ood_eval.build_parser().format_help().split())
    assert [p.name for p in cls.params] == [n for n in init_params(cls) if n in cls.param_help]
    for param in cls.params:
        generated = f"--{cls.name}-{param.name}".replace("_", "-")
        prefix = f"--{cls.name}-".replace("_", "-")
        assert param.flags[0] in (generated, generated.replace(prefix, f"{prefix}no-"))
        assert " ".join(cls.param_help[param.name].split()) in help_text
        for preset, values in cls.defaults.items():
            if param.name in values and values[param.name] != cls().get_params()[param.name]:
                assert f"{preset}: {shown_value(values[param.name])}" in param.help


@pytest.mark.parametrize("cls", registry.DETECTORS, ids=lambda c: c.name)
def test_each_generated_flag_reaches_its_detector(cls):
    method = next(iter(cls.variants()))
    for param in cls.params:
        if param.is_switch:
            detector = detector_of(["--method", method, param.flags[0]])
            assert detector.get_params()[param.name] == param.const
            continue
        value = next(iter(cls.search_space(342).get(param.name, ())), None)
        if value is None:
            continue
        detector = detector_of(["--method", method, param.flags[0], str(value)])
        assert detector.get_params()[param.name] == value


def test_the_help_of_a_flag_lists_the_init_default_and_each_preset_that_differs():
    line = {p.name: p.help for p in registry.lookup("line")[0].params}
    assert line["p_a"] == "activation-pruning (AP) percentile p_a (default: 90; CIFAR-100: 10; imagenet: 10)"
    assert line["activation_clipping"] == "switch off: activation clipping (AC) (default: on)"
    knn = {p.name: p.help for p in registry.lookup("knn")[0].params}
    assert knn["k"].endswith("(default: 50; imagenet: 1000)")
    ash = {p.name: p.help for p in registry.lookup("ash_s")[0].params}
    assert ash["percentile"] == "pruning percentile p (default: 90 (ash_p), 90 (ash_b), 95 (ash_s))"


def test_every_alias_names_a_parameter_of_its_methods_and_no_option_is_spelled_twice():
    for flag, (name, methods) in FLAG_ALIASES.items():
        for method in methods:
            assert name in {p.name for p in registry.lookup(method)[0].params}, flag
    options = [o for flag in detector_flags() for o in flag.param.flags]
    assert len(options) == len(set(options))
    prefixes = tuple(f"--{c.name}-".replace("_", "-") for c in registry.DETECTORS)
    assert {o for o in options if not o.startswith(prefixes)} <= set(FLAG_ALIASES)


def test_a_shared_spelling_sets_the_parameter_of_each_chosen_method_and_a_method_flag_wins():
    config = eval_config(["--methods", "react,dice,line", "--clip-threshold", "0.5"])
    assert [r.detector.clip_threshold for r in config.detectors] == [0.5, 0.5, 0.5]
    argv = ["--methods", "react,line", "--clip_threshold", "0.5", "--line-clip-threshold", "2"]
    assert [r.detector.clip_threshold for r in eval_config(argv).detectors] == [0.5, 2.0]
    assert detector_of(["--method", "dice", "--dice-clip-threshold", "1"]).run_name() == "dice_react"


def test_only_the_original_spellings_make_energy_dice_or_react():
    assert eval_config(["--clip-threshold", "1"]).detectors[0].method == "react"
    with pytest.raises(UserError, match="--dice-p applies to none of the chosen method.s. energy"):
        eval_config(["--dice-p", "80"])


def test_a_generated_flag_wins_over_its_alias_and_each_is_named_alone_in_argparse_errors(capsys):
    assert detector_of(["--method", "dice", "--p", "50", "--dice-p", "60"]).p == 60.0
    with pytest.raises(SystemExit):
        ood_eval.build_parser().parse_args(["--dice-p", "101"])
    assert "argument --dice-p: 101 is outside the valid range" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "dice", "--line-clip-threshold", "1"], "--line-clip-threshold applies to none"),
        (["--method", "knn", "--clip_threshold", "1"], "--clip_threshold applies to none"),
        (["--method", "line", "--no-clip", "--clip-threshold", "1"], "--clip_threshold applies to none"),
        (["--method", "odin", "--gradnorm-temperature", "2"], "--gradnorm-temperature applies to none"),
        (["--method", "weiper_msp", "--weiper-lambda-1", "2"], "--weiper-lambda-1 applies to none"),
        (["--method", "weiper_msp", "--weiper-lambda1", "2"], "--weiper-lambda1 applies to none"),
    ],
)
def test_a_generated_or_shared_flag_of_no_chosen_method_is_an_error(argv, message):
    with pytest.raises(UserError, match=message):
        eval_config(argv)


@pytest.mark.parametrize("name", registry.method_names())
@pytest.mark.parametrize("preset", ["CIFAR-10", "CIFAR-100", "imagenet"])
def test_flags_of_reproduce_the_configured_detector(name, preset):
    detector = registry.build(name, preset)
    rebuilt = detector_of(["--in-dataset", preset, "--method", name, *flags_of(detector)])
    assert rebuilt.get_params() == detector.get_params()
    cls = type(detector)
    swept = {k: v[-1] for k, v in cls.search_space(342).items() if k not in detector.inert_params()}
    detector = registry.build(name, preset, swept)
    rebuilt = detector_of(["--in-dataset", preset, "--method", name, *flags_of(detector)])
    assert rebuilt.get_params() == detector.get_params()


def test_flags_of_keep_the_original_spellings():
    line = " ".join(flags_of(registry.build("taylor", "CIFAR-100")))
    assert line == "--p-w 90 --p-a 10 --clip_threshold 1"
    assert flags_of(registry.build("dice", "imagenet")) == ["--p", "70"]
    assert flags_of(registry.build("odin", "CIFAR-10")) == ["--temperature", "1000", "--noise", "0.0014"]
    assert flags_of(registry.build("line_ap_wp", "CIFAR-10")) == ["--p-w", "90", "--p-a", "90", "--no-clip"]
