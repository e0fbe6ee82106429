"""Statistics files are never silently replaced by ones from fewer images (issue 25, finding 10).

``precompute.py --max-samples N`` writes ``..._mean_class_nN.npy`` / ``..._feat_stat_nN.npy``
beside the whole training set's files; ``ood_eval.py`` reads the files of its own --max-samples
(pipeline/statistics.py). The lookup is checked on files made here (no network); one run of the
real DenseNet-101 on a tiny image-folder copy of the shared CIFAR-10 JPEGs checks what
precompute.py writes and what ood_eval.py then reads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ood_eval
import precompute
from pipeline.config import EvalConfig
from pipeline.statistics import TrainingStatistics, contributions_path, feat_stat_path
from util.errors import UserError

D, C = 342, 10  # DenseNet-101 on CIFAR-10


def statistics(cache, **flags) -> TrainingStatistics:
    config = EvalConfig(in_dataset="CIFAR-10", cache_dir=str(cache), **flags)
    return TrainingStatistics(config, {"arch": "densenet"}, C, D, extract_train=None)


def write(cache, max_samples=None, value=1.0):
    cache.mkdir(parents=True, exist_ok=True)
    np.save(feat_stat_path(cache, "CIFAR-10", "densenet", max_samples), np.full(D, value))
    np.save(
        contributions_path(cache, "CIFAR-10", "densenet", max_samples=max_samples), np.full((D, C), value)
    )


def used(stats: TrainingStatistics, name: str) -> str:
    stats.get(name)
    return stats.files[name]["path"]


@pytest.mark.parametrize("name", ["mean_feature", "contributions"])
def test_a_run_reads_the_files_of_its_own_max_samples(tmp_path, capsys, name):
    write(tmp_path, None, 1.0)
    write(tmp_path, 30, 2.0)
    assert used(statistics(tmp_path), name).endswith(("_feat_stat.npy", "_mean_class.npy"))
    assert used(statistics(tmp_path, max_samples=30), name).endswith(
        ("_feat_stat_n30.npy", "_mean_class_n30.npy")
    )
    assert "--max-samples" not in capsys.readouterr().out  # no note


@pytest.mark.parametrize("name", ["mean_feature", "contributions"])
def test_without_the_subsets_files_the_whole_sets_are_read_with_a_note_naming_the_command(
    tmp_path, capsys, name
):
    write(tmp_path, None)
    assert not used(statistics(tmp_path, max_samples=12), name).endswith("_n12.npy")
    out = capsys.readouterr().out
    assert "_n12.npy (--max-samples 12)" in out
    assert "`python precompute.py --in-dataset CIFAR-10 --max-samples 12` writes the matching one" in out


@pytest.mark.parametrize("name, flag", [("mean_feature", "--feat-stat"), ("contributions", "--contrib")])
def test_a_subsets_files_never_stand_in_for_the_whole_sets(tmp_path, name, flag):
    write(tmp_path, 30)
    with pytest.raises(UserError) as error:
        statistics(tmp_path).get(name)
    message = str(error.value)
    assert "run `python precompute.py --in-dataset CIFAR-10` with the same --cache-dir" in message
    assert f"or pass {flag}" in message and "_n30.npy" in message  # the subset's file is named
    with pytest.raises(UserError, match="--max-samples 20` with the same --cache-dir"):
        statistics(tmp_path, max_samples=20).get(name)  # nor another subset's


def test_a_file_given_with_its_flag_wins(tmp_path, capsys):
    write(tmp_path, None)
    write(tmp_path, 30)
    given = feat_stat_path(tmp_path, "CIFAR-10", "densenet")
    assert used(statistics(tmp_path, max_samples=30, feat_stat=str(given)), "mean_feature") == str(given)
    assert "--max-samples" not in capsys.readouterr().out  # no note


# precompute.py and ood_eval.py, end to end ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(shared, cifar10_checkpoint, tmp_path_factory):
    """Three training and two test images of each CIFAR-10 class (symlinks)."""
    root = tmp_path_factory.mktemp("subsets")
    for split, n in (("train", 3), ("test", 2)):
        for cls in sorted((shared / "data" / "CIFAR-10" / split).iterdir()):
            target = root / "data" / "CIFAR-10" / split / cls.name
            target.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (target / f.name).symlink_to(f)
    common = [
        "--in-dataset", "CIFAR-10", "--data-root", str(root / "data"), "--cache-dir", str(root / "cache"),
        "--checkpoint", str(cifar10_checkpoint), "--no-progress", "--device", "cpu", "--workers", "0",
    ]  # fmt: skip
    return root, common


def test_precompute_of_a_subset_writes_its_own_files_and_keeps_the_whole_sets(tiny):
    root, common = tiny
    cache = root / "cache"
    precompute.main(common)
    whole = {p: p.read_bytes() for p in cache.glob("CIFAR-10_densenet_*.*")}
    assert len(whole) == 4  # two .npy, two records
    precompute.main([*common, "--max-samples", "10"])
    assert {p: p.read_bytes() for p in whole} == whole  # untouched
    for stem in ("CIFAR-10_densenet_taylor_mean_class_n10", "CIFAR-10_densenet_feat_stat_n10"):
        record = json.loads((cache / f"{stem}.json").read_text())
        assert record["max_samples"] == 10 and record["num_images"] == 10
    assert json.loads((cache / "CIFAR-10_densenet_feat_stat.json").read_text())["num_images"] == 30


def test_ood_eval_reads_the_statistics_of_its_max_samples(tiny, capsys):
    root, common = tiny
    if not (root / "cache" / "CIFAR-10_densenet_feat_stat_n10.npy").is_file():
        precompute.main([*common, "--max-samples", "10"])
    base = root / "out"
    ood_eval.main([*common, "--method", "dice", "--out-datasets", "gaussian", "--max-samples", "10",
                   "--base-dir", str(base)])  # fmt: skip
    out = capsys.readouterr().out
    result = json.loads((base / "CIFAR-10" / "dice" / "densenet" / "results.json").read_text())
    assert result["settings"]["files"]["mean_feature"]["path"].endswith("CIFAR-10_densenet_feat_stat_n10.npy")
    assert result["settings"]["training_images"]["count"] == 10
    assert "fits used" not in out and "_n10.npy (--max-samples 10)" not in out  # same training images
