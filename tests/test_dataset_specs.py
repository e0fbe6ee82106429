"""util.datasets: every dataset is one spec, and adding one is enough to run it end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from reference import random_images

import ood_eval
import precompute
from detectors.line import LINe
from pipeline.config import RunConfig
from util import datasets
from util.datasets import (
    CIFAR_INPUT,
    ID_DATASETS,
    OOD_SETS,
    IDDataset,
    OODSet,
    canonical_id_name,
    id_spec,
    load_class_folders,
    read_folder,
)
from util.errors import UserError

# A set laid out as OpenOOD v1.5 ships NINCO: images/<class>/*.
NINCO = OODSet("NINCO", "ood_datasets/NINCO/images", "https://zenodo.org/record/8013288 (NINCO)", read_folder)
# A three-class dataset of image folders, with CIFAR-10's detector settings and NINCO as its OOD set.
TOY = IDDataset(
    name="toy", num_classes=3, folder="toy", source="our lab's server", load=load_class_folders,
    input=CIFAR_INPUT, default_arch="torchvision:resnet18", preset="CIFAR-10", ood_sets=("NINCO",),
    aliases=("Toy-3",),
)  # fmt: skip


@pytest.fixture()
def toy_root(tmp_path, monkeypatch):
    """datasets/toy (3 classes), datasets/ood_datasets/NINCO, a random 3-class resnet18; both specs
    registered for the test only."""
    rng = np.random.default_rng(0)
    for c in range(3):
        random_images(tmp_path / "datasets" / "toy" / "train" / f"c{c}", 4, rng)
        random_images(tmp_path / "datasets" / "toy" / "test" / f"c{c}", 3, rng)
    random_images(tmp_path / "datasets" / "ood_datasets" / "NINCO" / "images" / "amphiuma", 5, rng, 48)
    torch.manual_seed(0)
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=3).state_dict()}, tmp_path / "toy.pt")
    monkeypatch.setitem(OOD_SETS, "NINCO", NINCO)
    monkeypatch.setitem(ID_DATASETS, "toy", TOY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_id_dataset_and_an_ood_set_added_as_one_spec_each_run_end_to_end(toy_root, capsys):
    common = ["--in-dataset", "toy", "--checkpoint", "toy.pt", "--no-progress"]
    precompute.main(common)
    ood_eval.main([*common, "--method", "taylor"])  # the OOD sets: the spec's default, NINCO
    result = json.loads(
        (toy_root / "output/ood_scores/toy/line/torchvision-resnet18/results.json").read_text()
    )
    assert list(result["ood"]) == ["NINCO"]
    assert result["settings"]["model_arch"] == "torchvision:resnet18"  # the spec's default network
    paper = LINe.defaults["CIFAR-10"]  # the spec's preset
    assert {k: result["settings"]["detector"][k] for k in paper} == paper
    assert result["settings"]["num_images"] == {"in": 9, "NINCO": 5}


def test_an_added_id_dataset_answers_to_its_other_spellings(toy_root):
    assert canonical_id_name("Toy-3") == "toy"
    assert RunConfig(in_dataset="Toy-3", checkpoint="toy.pt").in_dataset == "toy"


def test_an_added_ood_set_that_is_absent_names_its_path_and_source(toy_root, capsys):
    message = datasets.missing_ood_message("NINCO", toy_root / "elsewhere")
    assert "ood_datasets/NINCO/images not found" in message and "zenodo" in message


def test_a_class_folder_dataset_with_the_wrong_number_of_classes_is_refused(toy_root):
    (toy_root / "datasets" / "toy" / "test" / "c3").mkdir()
    random_images(toy_root / "datasets" / "toy" / "test" / "c3", 1, np.random.default_rng(1))
    with pytest.raises(UserError, match="has 4 class folders; toy needs 3"):
        load_class_folders(TOY, "test", toy_root / "datasets", CIFAR_INPUT.transform())


def test_every_named_dataset_has_a_preset_that_the_detectors_know():
    presets = {preset for cls in (LINe,) for preset in cls.defaults}
    for spec in [*ID_DATASETS.values(), id_spec("/some/folder")]:
        assert spec.preset in presets, spec.name


def test_every_default_ood_set_of_a_named_dataset_is_a_named_ood_set():
    for spec in ID_DATASETS.values():
        assert set(spec.ood_sets) <= set(OOD_SETS), spec.name


def test_an_image_folder_takes_the_imagenet_preset_input_and_ood_sets():
    folder = id_spec("/data/my-folder")
    assert folder.preset == "imagenet" and folder.input == ID_DATASETS["imagenet"].input
    assert folder.ood_sets == ID_DATASETS["imagenet"].ood_sets and folder.default_arch is None


@pytest.mark.parametrize("spelling", ["cifar10", "CIFAR-10"])
def test_a_dataset_is_accepted_under_each_spelling_its_spec_lists(spelling):
    assert RunConfig(in_dataset=spelling).in_dataset == "CIFAR-10"
    assert ood_eval.build_parser().parse_args(["--in-dataset", spelling]).in_dataset == spelling


def test_a_folder_named_like_a_spelling_is_read_as_that_folder(tmp_path, monkeypatch):
    (tmp_path / "cifar10" / "train" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = RunConfig(in_dataset="cifar10", model_arch="torchvision:resnet18")
    assert config.id_root == str(tmp_path / "cifar10") and config.in_dataset == "cifar10"
    assert ood_eval.build_parser().parse_args(["--in-dataset", "cifar10"]).in_dataset == "cifar10"


def test_a_benchmark_takes_its_dataset_under_any_spelling():
    assert RunConfig(benchmark="openood-cifar10", in_dataset="cifar10").in_dataset == "CIFAR-10"


def test_an_image_folder_is_never_loaded_by_name():
    with pytest.raises(UserError, match="pass id_root=FOLDER"):
        datasets.id_dataset("my-folder", "test", "datasets", CIFAR_INPUT.transform())


def test_registering_a_dataset_under_a_taken_spelling_is_refused():
    with pytest.raises(ValueError, match="'ImageNet' exists already"):
        datasets.register(replace(TOY, name="toy2", aliases=("ImageNet",)))
    assert "toy2" not in ID_DATASETS


def test_show_ood_sets_prints_the_present_defaults_and_names_each_absent_one(toy_root, capsys):
    flags = ["--in-dataset", "toy", "--checkpoint", "toy.pt", "--show-ood-sets"]
    ood_eval.main(flags)
    assert capsys.readouterr().out.strip() == "NINCO"
    ood_eval.main([*flags, "--out-datasets", "dtd"])
    out, err = capsys.readouterr()
    assert out.strip() == "" and "missing: OOD set dtd:" in err and "dtd-r1.0.1.tar.gz" in err
