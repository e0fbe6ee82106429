"""One place decides defaults (issue 25, finding 2): for every detector and every way of naming the
ID data, the command line (ood_eval.py's parser and config_of) and Python (detectors.registry.build)
resolve the same preset, and an unknown name is refused by both with the same message."""

from __future__ import annotations

import numpy as np
import pytest

import ood_eval
from detectors import registry
from tests.reference import random_images
from util.errors import UserError

# Every dataset kind, in the spellings users type (util.datasets lists them; see the last test).
SPELLINGS = [
    "CIFAR-10",
    "cifar10",
    "CIFAR-100",
    "cifar100",
    "imagenet",
    "ImageNet",
    "imagenet-1k",
    "ImageNet-1k",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image-folder dataset: train/<class>/ and test/<class>/ with a few random images."""
    root = tmp_path_factory.mktemp("presets") / "animals"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog", "owl"):
            random_images(root / split / cls, 2, rng)
    return root


def cli_params(in_dataset: str, method: str) -> dict:
    argv = ["--in-dataset", in_dataset, "--method", method]
    if "/" in in_dataset:  # an image folder has no default network
        argv += ["--model-arch", "torchvision:resnet18"]
    config = ood_eval.config_of(ood_eval.build_parser().parse_args(argv))
    return config.detectors[0].detector.get_params()


def differences(in_dataset: str) -> list[str]:
    out = []
    for method in registry.method_names():
        python = registry.build(method, in_dataset).get_params()
        cli = cli_params(in_dataset, method)
        if python != cli:
            out.append(f"{method} on {in_dataset}: Python {python}, command line {cli}")
    return out


@pytest.mark.parametrize("in_dataset", SPELLINGS)
def test_command_line_and_python_give_every_detector_the_same_settings(in_dataset):
    assert differences(in_dataset) == []


def test_an_image_folder_gets_the_same_settings_on_the_command_line_and_in_python(folder):
    assert differences(str(folder)) == []


@pytest.mark.parametrize("spelling", ["cifar-10x", "imagenet1000"])
def test_an_unknown_dataset_name_is_refused_in_python_as_on_the_command_line(spelling, capsys):
    with pytest.raises(UserError) as python:
        registry.build("line", spelling)
    with pytest.raises(SystemExit) as cli:
        ood_eval.build_parser().parse_args(["--in-dataset", spelling, "--method", "line"])
    assert cli.value.code == 2
    assert str(python.value) in capsys.readouterr().err


def test_the_spellings_above_are_every_one_the_dataset_specs_accept():
    from util.datasets import id_names

    assert sorted(id_names()) == sorted(SPELLINGS)
