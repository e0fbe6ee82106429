"""Settings are checked against the sizes known before any forward pass (features D, classes C,
training images N), with messages naming the flag to change (Detector.check_sizes)."""

from __future__ import annotations

import pytest
import torch
from reference import pets_folder

import ood_eval
from detectors import registry
from detectors.knn import KNN
from detectors.mahalanobis import Mahalanobis
from detectors.neco import NECO
from detectors.nnguide import NNGuide
from detectors.rmds import RelativeMahalanobis
from detectors.she import SHE
from detectors.vim import ViM
from util.errors import UserError


def test_knn_k_above_the_bank_kept_by_the_fraction_names_both_flags():
    assert KNN(k=1000, fraction=0.01).check_sizes(512, 3, 100) == [
        "--knn-k 1000 exceeds the 1 training features kept by --knn-fraction 0.01 of 100 training images; "
        "lower --knn-k or raise --knn-fraction"
    ]


def test_knn_k_above_all_training_images_names_the_k_flag():
    assert KNN(k=50).check_sizes(342, 10, 30) == ["--knn-k 50 exceeds the 30 training images; lower --knn-k"]


def test_knn_k_within_the_bank_passes():
    assert KNN(k=1000, fraction=0.01).check_sizes(2048, 1000, 1_281_167) == []
    assert KNN(k=50).check_sizes(342, 10, 50) == []


def test_nnguide_k_is_checked_against_its_own_bank():
    (problem,) = NNGuide(k=10, fraction=0.01).check_sizes(512, 3, 100)
    assert "--nnguide-k 10 exceeds the 1 training features kept by --nnguide-fraction 0.01" in problem


def test_vim_and_neco_dimensions_are_checked_against_d():
    assert "--vim-dim 600 must be below the D = 512" in ViM(dim=600).check_sizes(512, 3, None)[0]
    assert ViM(dim=None).check_sizes(512, 3, None) == []
    assert "--neco-dim 513 exceeds the D = 512" in NECO(dim=513).check_sizes(512, 3, None)[0]
    assert NECO(dim=None).check_sizes(4, 1000, None) == []  # C - 1 is capped at D


@pytest.mark.parametrize("cls", [Mahalanobis, RelativeMahalanobis, SHE])
def test_class_statistics_need_a_training_image_per_class(cls):
    (problem,) = cls().check_sizes(342, 100, 50)
    assert "each of the 100 classes" in problem and "use more training images" in problem
    assert "--" not in problem  # a detector names no command-line flag of the pipeline
    assert cls().check_sizes(342, 100, 100) == []


@pytest.mark.parametrize(
    "preset, d, c, n", [("CIFAR-10", 342, 10, 50_000), ("imagenet", 2048, 1000, 1_281_167)]
)
def test_every_detector_with_the_papers_settings_fits_the_papers_sizes(preset, d, c, n):
    for name in registry.method_names():
        assert registry.build(name, preset).check_sizes(d, c, n) == [], name


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """pets/{train,test}/{a,b,c} (4 and 2 images per class) and a random 3-class resnet18."""
    root = tmp_path_factory.mktemp("size_checks")
    pets_folder(root, 4, 2)
    return root


def test_a_lone_method_whose_k_exceeds_the_bank_stops_before_any_forward_pass(folder):
    cache = folder / "cache"
    flags = ["--in-dataset", str(folder / "pets"), "--model-arch", "torchvision:resnet18"]
    flags += ["--checkpoint", str(folder / "r18.pth"), "--image-size", "32", "--cache-dir", str(cache)]
    flags += [
        "--base-dir",
        str(folder / "out"),
        "--workers",
        "0",
        "--no-progress",
        "--out-datasets",
        "gaussian",
    ]
    with pytest.raises(
        UserError, match="knn: --knn-k 1000 exceeds the 1 training features kept by --knn-fraction"
    ):
        ood_eval.main([*flags, "--method", "knn"])
    features = cache / "features"
    assert not features.exists() or not any(features.iterdir())  # nothing was forwarded


def test_a_sweep_leaves_out_the_grid_settings_the_training_images_cannot_take(capsys):
    from types import SimpleNamespace

    from pipeline.sweep import _settings_the_sizes_take

    session = SimpleNamespace(fc=torch.nn.Linear(8, 3), train_dataset=lambda: list(range(30)))
    config = SimpleNamespace(method="knn")
    grid = [{"k": 1}, {"k": 20}, {"k": 50}]
    assert _settings_the_sizes_take(config, KNN(fraction=1.0), grid, session) == [{"k": 1}, {"k": 20}]
    assert "knn {'k': 50} left out of the sweep: --knn-k 50 exceeds the 30" in capsys.readouterr().out
    with pytest.raises(UserError, match="no setting of the grid can run here"):
        _settings_the_sizes_take(config, KNN(fraction=1.0), [{"k": 50}], session)


def test_the_pipeline_names_max_samples_when_it_limits_the_training_images():
    from types import SimpleNamespace

    from pipeline.config import DetectorRun
    from pipeline.evaluate import _size_problems

    session = SimpleNamespace(fc=torch.nn.Linear(342, 100), train_dataset=lambda: list(range(50)))
    config = SimpleNamespace(detectors=[DetectorRun("mahalanobis", Mahalanobis())], max_samples=50)
    (problem,) = _size_problems(config, session).values()
    assert problem.startswith("mahalanobis: mahalanobis needs a training image of each of the 100 classes")
    assert problem.endswith("(--max-samples 50 limits the training images)")
