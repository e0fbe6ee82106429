"""Synthetic OOD sets (gaussian, uniform) are sized to the run: as many images as the ID test set
(at most 10,000), or --noise-samples; image i is the same in any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import eval_config, pets_folder

import ood_eval
from pipeline import setup
from util.datasets import NOISE_SIZE, id_transform, ood_dataset
from util.features import FeatureCache


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """pets/{train,test}/{a,b,c} (2 and 3 images per class: 9 test images), a random resnet18."""
    root = tmp_path_factory.mktemp("noise_size")
    pets_folder(root, 2, 3)
    flags = ["--in-dataset", str(root / "pets"), "--model-arch", "torchvision:resnet18"]
    flags += ["--checkpoint", str(root / "r18.pth"), "--image-size", "32", "--cache-dir", str(root / "cache")]
    flags += ["--base-dir", str(root / "out"), "--workers", "0", "--no-progress"]
    flags += ["--out-datasets", "gaussian", "--method", "energy"]
    return root, flags


def _gaussian_scores(root):
    return np.load(root / "out" / "pets" / "energy" / "torchvision-resnet18" / "scores" / "gaussian.npy")


def test_a_noise_set_has_as_many_images_as_the_id_test_set_and_says_so(folder, capsys):
    root, flags = folder
    ood_eval.main(flags)
    out = capsys.readouterr().out
    assert "noise sets gaussian: 9 images each (as many as the ID test set, at most 10,000;" in out
    assert "forward pass over 18 images" in out  # 9 ID test + 9 noise (no training features needed)
    assert len(_gaussian_scores(root)) == 9


def test_noise_samples_asks_for_another_size_whose_first_images_score_the_same(folder, capsys):
    root, flags = folder
    ood_eval.main(flags)
    nine = _gaussian_scores(root)
    ood_eval.main([*flags, "--noise-samples", "20"])
    out = capsys.readouterr().out
    assert "noise sets gaussian: 20 images each (--noise-samples 20)" in out
    twenty = _gaussian_scores(root)
    assert len(twenty) == 20
    np.testing.assert_array_equal(twenty[:9], nine)


def test_noise_sets_of_other_sizes_are_cached_apart():
    cache = FeatureCache("/nonexistent", {"arch": "x"})
    tf = id_transform("CIFAR-10")
    small, large = ood_dataset("gaussian", ".", tf, 9), ood_dataset("gaussian", ".", tf)
    assert (len(small), len(large)) == (9, NOISE_SIZE)
    assert cache.entry(small, "t_gaussian") != cache.entry(large, "t_gaussian")
    for i in (0, 8):
        assert torch.equal(small[i][0], large[i][0])


def test_the_noise_size_is_the_id_test_size_capped_at_10000_unless_asked():
    config = eval_config([])
    assert setup.noise_size(config, 30) == 30
    assert setup.noise_size(config, 50_000) == NOISE_SIZE
    assert setup.noise_size(eval_config(["--noise-samples", "7"]), 30) == 7
