"""Your own classifier and your own image folders, from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from reference import eval_config, random_images

import ood_eval
import precompute
from pipeline import setup
from pipeline.config import EvalConfig, RunConfig
from util.data import (
    dataset_labels,
    follow_link_files,
    read_class_map,
)
from util.datasets import IMAGENET_INPUT, id_dataset
from util.errors import UserError


def _random_resnet18(path, classes):
    torch.manual_seed(classes)
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=classes).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """datasets/CIFAR-10 (3 train, 2 test images per class), a dtd folder, a random resnet18."""
    root = tmp_path_factory.mktemp("byo_cifar")
    rng = np.random.default_rng(0)
    for c in range(10):
        random_images(root / "datasets" / "CIFAR-10" / "train" / f"class{c}", 3, rng)
        random_images(root / "datasets" / "CIFAR-10" / "test" / f"class{c}", 2, rng)
    random_images(root / "datasets" / "ood_datasets" / "dtd" / "images" / "banded", 6, rng, 40)
    _random_resnet18(root / "resnet18_cifar10.pt", 10)
    return root


def test_torchvision_resnet18_runs_precompute_line_and_dice_on_cifar10(cifar_root, monkeypatch, capsys):
    monkeypatch.chdir(cifar_root)
    common = ["--in-dataset", "CIFAR-10", "--model-arch", "torchvision:resnet18"]
    common += ["--checkpoint", "resnet18_cifar10.pt", "--no-progress"]
    precompute.main(common)
    assert (cifar_root / "cache" / "CIFAR-10_torchvision-resnet18_taylor_mean_class.npy").is_file()
    contrib = np.load(cifar_root / "cache" / "CIFAR-10_torchvision-resnet18_taylor_mean_class.npy")
    assert contrib.shape == (512, 10)
    for method in (["--method", "taylor"], ["--method", "dice"]):
        ood_eval.main([*common, *method, "--out-datasets", "dtd"])
        out = capsys.readouterr().out
        assert "dtd" in out and "ID accuracy" in out
    result = json.loads(
        (cifar_root / "output/ood_scores/CIFAR-10/dice/torchvision-resnet18/results.json").read_text()
    )
    assert result["settings"]["model_arch"] == "torchvision:resnet18"
    assert 0 <= result["ood"]["dtd"]["AUROC"] <= 1


def test_a_torchvision_model_on_cifar_without_a_checkpoint_asks_for_one(cifar_root, monkeypatch):
    monkeypatch.chdir(cifar_root)
    with pytest.raises(UserError, match="ImageNet-1k only; pass the weights"):
        setup.load_classifier(RunConfig(in_dataset="CIFAR-10", model_arch="torchvision:resnet18"))


def test_num_classes_that_contradict_the_dataset_are_refused():
    with pytest.raises(UserError, match="--num-classes 7: CIFAR-10 has 10 classes"):
        setup.num_classes(RunConfig(in_dataset="CIFAR-10", num_classes=7))


# -- inputs --------------------------------------------------------------------------------------
def test_on_cifar_the_input_is_the_datasets_and_on_imagenet_the_weights_own():
    cifar = setup.input_spec(RunConfig(in_dataset="CIFAR-10", model_arch="torchvision:resnet18"))
    assert (cifar.resize, cifar.crop, cifar.mean[0]) == (32, 32, 0.4914)
    vit = setup.input_spec(RunConfig(in_dataset="imagenet", model_arch="torchvision:vit_b_16"))
    assert (vit.resize, vit.crop, vit.interpolation) == (256, 224, "bilinear")
    lite = setup.input_spec(RunConfig(in_dataset="imagenet", model_arch="efficientnet-lite0"))
    assert (lite.resize, lite.crop, lite.mean, lite.std) == (256, 224, (0.5,) * 3, (0.5,) * 3)


def test_timm_models_take_their_pretrained_data_config():
    pytest.importorskip("timm")
    spec = setup.input_spec(RunConfig(in_dataset="imagenet", model_arch="timm:vit_small_patch16_224"))
    assert (spec.resize, spec.crop, spec.mean, spec.interpolation) == (248, 224, (0.5,) * 3, "bicubic")


def test_image_size_mean_and_std_flags_override_and_keep_the_resize_ratio():
    config = RunConfig(
        in_dataset="imagenet", model_arch="resnet50", image_size=112, mean=(0.1, 0.2, 0.3), std=(1, 1, 1)
    )
    spec = setup.input_spec(config)
    assert (spec.resize, spec.crop, spec.mean, spec.std) == (128, 112, (0.1, 0.2, 0.3), (1, 1, 1))


def test_input_flags_parse_and_reach_the_configuration():
    config = eval_config(
        ["--model-arch", "timm:resnet18", "--image-size", "64", "--mean", "0.5,0.5,0.5", "--std", "1 1 1"]
    )
    assert (config.image_size, config.mean, config.std) == (64, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
    with pytest.raises(SystemExit):
        eval_config(["--mean", "0.5,0.5"])


# -- image-folder ID datasets -------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    """animals/{train,val}/{cat,dog,fox}, an OOD folder, and a random 3-class resnet18."""
    root = tmp_path_factory.mktemp("byo_folder")
    rng = np.random.default_rng(2)
    for c in ("cat", "dog", "fox"):
        random_images(root / "animals" / "train" / c, 3, rng)
        random_images(root / "animals" / "val" / c, 2, rng)
    random_images(root / "rocks", 5, rng)
    _random_resnet18(root / "r18_3.pt", 3)
    return root


def test_an_image_folder_is_an_id_dataset_with_sorted_folder_labels(folder_root, monkeypatch, capsys):
    monkeypatch.chdir(folder_root)
    common = ["--in-dataset", "animals", "--model-arch", "torchvision:resnet18", "--checkpoint", "r18_3.pt"]
    common += ["--image-size", "32", "--no-progress"]
    precompute.main(common)
    assert np.load(folder_root / "cache" / "animals_torchvision-resnet18_taylor_mean_class.npy").shape == (
        512,
        3,
    )
    ood_eval.main([*common, "--method", "taylor", "--out-datasets", "rocks"])
    out = capsys.readouterr().out
    assert "rocks" in out and "ID accuracy" in out
    config = RunConfig(in_dataset=str(folder_root / "animals"), model_arch="torchvision:resnet18")
    assert config.in_dataset == "animals" and config.id_root == str(folder_root / "animals")
    test = id_dataset(config.in_dataset, "test", "datasets", None, id_root=config.id_root)
    assert {f.parent.name: y for f, y in zip(test.files, test.labels)} == {"cat": 0, "dog": 1, "fox": 2}
    assert all(f.parent.parent.name == "val" for f in test.files)


def test_an_image_folder_needs_a_model_arch():
    with pytest.raises(UserError, match="has no default network; pass --model-arch"):
        EvalConfig(in_dataset="/tmp")


def test_a_class_map_gives_folder_labels_and_a_larger_head(folder_root, tmp_path):
    mapping = tmp_path / "map.txt"
    mapping.write_text("# folder index\ncat 4\ndog 1\nfox 7\n")
    config = RunConfig(
        in_dataset=str(folder_root / "animals"), model_arch="densenet", class_map=str(mapping), num_classes=10
    )
    assert setup.num_classes(config) == 10
    train = id_dataset("animals", "train", ".", None, id_root=config.id_root, class_map=str(mapping))
    assert {f.parent.name: y for f, y in zip(train.files, train.labels)} == {"cat": 4, "dog": 1, "fox": 7}
    with pytest.raises(UserError, match="--num-classes 5 is too few.*needs 8"):
        setup.num_classes(RunConfig(**{**config.__dict__, "num_classes": 5}))


def test_a_class_map_for_a_named_dataset_is_refused():
    with pytest.raises(UserError, match="class maps label image-folder datasets"):
        RunConfig(in_dataset="CIFAR-10", class_map="map.txt")


def test_a_folder_the_class_map_does_not_name_is_an_error(folder_root, tmp_path):
    mapping = tmp_path / "map.txt"
    mapping.write_text("cat\ndog\n")  # one per line: the line number is the index
    assert read_class_map(mapping) == {"cat": 0, "dog": 1}
    with pytest.raises(UserError, match="not among the 2 classes.*fox"):
        id_dataset("animals", "test", ".", None, id_root=str(folder_root / "animals"), class_map=str(mapping))


@pytest.mark.parametrize(
    "text, message",
    [("cat 1\ndog\n", "mixes"), ("cat 1\ncat 2\n", "twice"), ("cat 1\ndog 1\n", "given to two folders")],
)
def test_a_malformed_class_map_says_which_line(tmp_path, text, message):
    path = tmp_path / "map.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_class_map(path)


def test_classes_without_training_images_get_the_mean_features_contribution(
    folder_root, tmp_path, monkeypatch
):
    """LINe's class mean is undefined without images: those classes get h_mean * W[y], and are named."""
    monkeypatch.chdir(tmp_path)
    mapping = tmp_path / "map.txt"
    mapping.write_text("cat 0\ndog 2\nfox 4\n")  # classes 1 and 3 have no folder at all
    ckpt = _random_resnet18(tmp_path / "r18_5.pt", 5)
    flags = ["--in-dataset", str(folder_root / "animals"), "--model-arch", "torchvision:resnet18"]
    flags += [
        "--checkpoint",
        str(ckpt),
        "--class-map",
        str(mapping),
        "--num-classes",
        "5",
        "--image-size",
        "32",
    ]
    precompute.main([*flags, "--no-progress"])
    record = json.loads(
        (tmp_path / "cache" / "animals_torchvision-resnet18_taylor_mean_class.json").read_text()
    )
    assert record["classes_without_images"] == [1, 3] and record["images_per_class"] == [3, 0, 3, 0, 3]
    contrib = np.load(tmp_path / "cache" / "animals_torchvision-resnet18_taylor_mean_class.npy")  # (D, C)
    mean = np.load(tmp_path / "cache" / "animals_torchvision-resnet18_feat_stat.npy")
    weight = torch.load(ckpt, weights_only=True)["state_dict"]["fc.weight"].double().numpy()
    for c in (1, 3):
        np.testing.assert_allclose(contrib[:, c], (weight[c] * mean).astype(np.float32), rtol=1e-6)
    assert np.all(np.isfinite(contrib))


# -- ImageNet ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """ILSVRC-2012/train with 1000 wnid folders (classes 5 and 6 empty) and a val of 3 of them."""
    root = tmp_path_factory.mktemp("byo_imagenet")
    rng = np.random.default_rng(3)
    for c in range(1000):
        folder = root / "ILSVRC-2012" / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        if c not in (5, 6):
            random_images(folder, 1, rng, 8)
    for c in (3, 500, 999):
        random_images(root / "ILSVRC-2012" / "val" / f"n{c:08d}", 2, rng, 8)
    return root


def test_an_imagenet_val_subset_keeps_each_wnids_label_among_the_1000(imagenet_root):
    val = id_dataset("imagenet", "test", imagenet_root, IMAGENET_INPUT.transform())
    assert dataset_labels(val).tolist() == [3, 3, 500, 500, 999, 999]
    train = id_dataset("imagenet", "train", imagenet_root, IMAGENET_INPUT.transform())
    assert len(train) == 998 and set(dataset_labels(train)) == set(range(1000)) - {5, 6}


def test_a_val_wnid_that_is_not_a_training_class_is_named(imagenet_root, tmp_path):
    for split, names in (("train", [f"n{c:08d}" for c in range(1000)]), ("val", ["n00000001", "n99999999"])):
        for name in names:
            (tmp_path / "ILSVRC-2012" / split / name).mkdir(parents=True)
    random_images(tmp_path / "ILSVRC-2012" / "val" / "n99999999", 1, np.random.default_rng(0), 8)
    with pytest.raises(UserError, match="not among the 1000 classes.*n99999999"):
        id_dataset("imagenet", "test", tmp_path, None)


def test_a_link_stored_as_a_text_file_is_followed(tmp_path):
    random_images(tmp_path / "ILSVRC-2012" / "train" / "n00000000", 1, np.random.default_rng(0), 8)
    (tmp_path / "ILSVRC-2012" / "val").write_text("train")  # how git stores a link without symlinks
    assert follow_link_files(tmp_path / "ILSVRC-2012" / "val" / "n00000000") == (
        tmp_path / "ILSVRC-2012" / "train" / "n00000000"
    )
    (tmp_path / "notes").write_text("not a folder name\n")
    assert follow_link_files(tmp_path / "notes") == tmp_path / "notes"


def test_the_same_images_under_another_tag_are_not_forwarded_again(cifar_root, monkeypatch, capsys):
    """ImageNet-sample's val is its train: the ID test set comes from the training set's cache entry."""
    from util.features import FeatureExtractor

    monkeypatch.chdir(cifar_root)
    config = RunConfig(
        in_dataset="CIFAR-10", model_arch="torchvision:resnet18", checkpoint="resnet18_cifar10.pt"
    )
    model, key, _ = setup.load_classifier(config)
    tf = setup.transform(config)
    train = id_dataset("CIFAR-10", "train", "datasets", tf)
    extractor = FeatureExtractor(model, key, "cache", progress=False)
    first = extractor.extract(train, "train-tag")
    again = extractor.extract(id_dataset("CIFAR-10", "train", "datasets", tf), "test-tag")
    assert extractor.images_forwarded in (0, len(train))  # 0 when an earlier test cached it
    np.testing.assert_array_equal(np.asarray(first.features), np.asarray(again.features))
    assert again.path == first.path


def test_class_map_lines_may_name_folders_with_spaces(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("# comment\ngolden retriever 207\nfire#truck 555\n")
    assert read_class_map(path) == {"golden retriever": 207, "fire#truck": 555}


def test_another_class_map_gives_another_feature_cache_entry(folder_root, tmp_path):
    """The labels are cached with the features: relabelling the same files must not reuse them."""
    from util.features import FeatureCache

    maps = []
    for i, text in enumerate(("cat 0\ndog 1\nfox 2\n", "cat 1\ndog 0\nfox 2\n")):
        maps.append(tmp_path / f"map{i}.txt")
        maps[-1].write_text(text)
    cache = FeatureCache(tmp_path / "cache", {"arch": "x"})
    root = str(folder_root / "animals")
    a, b = (id_dataset("animals", "train", ".", None, id_root=root, class_map=str(m)) for m in maps)
    assert cache.entry(a, "t") != cache.entry(b, "t")


def test_statistics_made_with_another_class_map_are_refused(folder_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "map.txt").write_text("cat 0\ndog 1\nfox 2\n")
    ckpt = _random_resnet18(tmp_path / "r18.pt", 3)
    flags = ["--in-dataset", str(folder_root / "animals"), "--model-arch", "torchvision:resnet18"]
    flags += ["--checkpoint", str(ckpt), "--image-size", "32", "--no-progress", "--class-map", "map.txt"]
    precompute.main(flags)
    (tmp_path / "map.txt").write_text("cat 1\ndog 0\nfox 2\n")
    with pytest.raises(UserError, match="(?s)does not match this run.*inputs.class_map_sha256"):
        ood_eval.main([*flags, "--method", "taylor", "--out-datasets", str(folder_root / "rocks")])


def test_a_folder_named_like_a_dataset_keeps_its_own_file_names(tmp_path):
    (tmp_path / "imagenet" / "train" / "a").mkdir(parents=True)
    config = RunConfig(in_dataset=str(tmp_path / "imagenet"), model_arch="densenet")
    assert config.in_dataset == "imagenet-folder" and config.id_root == str(tmp_path / "imagenet")


def test_a_config_replaced_onto_a_named_dataset_leaves_the_folder(folder_root):
    from dataclasses import replace

    config = RunConfig(in_dataset=str(folder_root / "animals"), model_arch="densenet")
    assert replace(config, in_dataset="CIFAR-10").id_root is None
    other = replace(config, in_dataset=str(folder_root / "rocks"))
    assert other.in_dataset == "rocks" and other.id_root == str(folder_root / "rocks")


def test_num_classes_above_the_folders_without_a_class_map_is_refused(folder_root):
    config = RunConfig(in_dataset=str(folder_root / "animals"), model_arch="densenet", num_classes=1000)
    with pytest.raises(UserError, match="--num-classes 1000.*3 class folders.*--class-map"):
        setup.num_classes(config)


def test_images_outside_class_folders_of_an_id_split_are_refused(imagenet_root, tmp_path):
    for c in range(1000):
        (tmp_path / "ILSVRC-2012" / "train" / f"n{c:08d}").mkdir(parents=True)
    random_images(tmp_path / "ILSVRC-2012" / "val", 2, np.random.default_rng(0), 8)  # ILSVRC's flat val
    with pytest.raises(UserError, match="2 image.s. outside class folders.*valprep"):
        id_dataset("imagenet", "test", tmp_path, None)


def test_a_training_subset_spreads_over_the_classes_that_have_images():
    from util.data import ImageFiles, balanced_subset

    labels = [500] * 4 + [501] * 4  # two folders mapped into a 1000-way head
    ds = ImageFiles(".", [f"{i}.png" for i in range(8)], labels, None)
    assert dataset_labels(balanced_subset(ds, 4, 1000)).tolist() == [500, 500, 501, 501]


def test_a_users_module_in_the_current_folder_imports(tmp_path, monkeypatch):
    from models import get_model

    (tmp_path / "cwd_nets.py").write_text(
        "from torch import nn\n"
        "def net(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert get_model("cwd_nets:net", 4, image_size=8).get_classifier().out_features == 4
