"""Every run starts by saying what will run and where each choice came from, before any forward
pass: model and head (D, C), weights, the input transform and its source, the input the weights
were trained with (a WARNING when the crops differ twofold), each detector's settings and sources."""

from __future__ import annotations

import pytest
from reference import eval_config, pets_folder

import ood_eval
from detectors import registry
from models.weights import WEIGHTS
from pipeline.config import RunConfig
from pipeline.run_block import detector_line, input_lines
from util.errors import UserError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """pets/{train,test}/{a,b,c} (4 and 2 images per class) and a random 3-class resnet18 file."""
    root = tmp_path_factory.mktemp("run_block")
    pets_folder(root, 4, 2, "my.pth")
    return root


def test_a_folder_run_says_the_model_the_input_and_its_source_and_the_imagenet_preset(folder, capsys):
    """The issue's case: a 3-class ResNet-18 file on an image folder got ImageNet's transform and
    ImageNet's detector settings silently. The block is printed even when a check then stops the run
    before any forward pass."""
    flags = ["--in-dataset", str(folder / "pets"), "--model-arch", "torchvision:resnet18"]
    flags += ["--checkpoint", str(folder / "my.pth"), "--cache-dir", str(folder / "cache")]
    flags += [
        "--base-dir",
        str(folder / "out"),
        "--workers",
        "0",
        "--no-progress",
        "--out-datasets",
        "gaussian",
    ]
    with pytest.raises(UserError, match="--knn-k 1000 exceeds"):
        ood_eval.main([*flags, "--method", "knn"])
    out = capsys.readouterr().out
    assert (
        "model: torchvision:resnet18, head fc (its output nn.Linear): D = 512 features, C = 3 classes" in out
    )
    assert f"weights: {folder / 'my.pth'} (--checkpoint)" in out
    assert (
        "input: Resize 256, CenterCrop 224, mean 0.485,0.456,0.406, std 0.229,0.224,0.225 "
        "(from torchvision's ResNet18_Weights.IMAGENET1K_V1 transforms)"
    ) in out
    assert "my.pth was trained with is not known here" in out and "pass --image-size, --mean, --std" in out
    assert "knn: k 1000, fraction 0.01 (the imagenet preset, which image folders take)" in out


def test_a_cifar_network_on_224_px_crops_gets_a_warning(folder):
    config = RunConfig(in_dataset=str(folder / "pets"), model_arch="densenet", checkpoint="dice.pth")
    key = {"checkpoint_sha256": WEIGHTS["CIFAR-10", "densenet"].sha256, "num_classes": 10}
    lines = input_lines(config, key, "dice.pth")
    (warning,) = [line for line in lines if line.startswith("WARNING: 224-px crops")]
    assert warning.startswith("WARNING: 224-px crops, but the weights were trained on 32-px ones")
    assert "the DICE code's DenseNet-101 for CIFAR-10" in warning and "--image-size 32" in warning


def test_small_images_of_a_folder_scaled_up_to_the_crop_get_a_warning(folder):
    """The issue's case: 32-px images under ImageNet's Resize 256, CenterCrop 224."""
    config = RunConfig(in_dataset=str(folder / "pets"), model_arch="torchvision:resnet18")
    lines = input_lines(config, {"checkpoint_sha256": "0", "num_classes": 3}, str(folder / "my.pth"))
    assert lines[1] == (
        f"WARNING: the images of {folder / 'pets'} are 32-px (000.png), scaled up to 224-px crops; if the "
        "model was trained on 32-px images, pass --image-size 32 (and --mean, --std)"
    )
    sized = RunConfig(in_dataset=str(folder / "pets"), model_arch="torchvision:resnet18", image_size=32)
    assert not any(
        line.startswith("WARNING")
        for line in input_lines(sized, {"checkpoint_sha256": "0", "num_classes": 3}, "my.pth")
    )


def test_the_papers_own_input_gets_no_warning_and_names_the_dataset_spec():
    config = RunConfig(in_dataset="CIFAR-10", model_arch="densenet")
    key = {"checkpoint_sha256": WEIGHTS["CIFAR-10", "densenet"].sha256, "num_classes": 10}
    lines = input_lines(config, key, "checkpoint_100.pth.tar")
    assert lines[0].endswith("(from the CIFAR-10 dataset spec's default)")
    assert "WARNING" not in "\n".join(lines) and "trained on 32-px crops" in lines[1]


def test_an_image_size_flag_is_named_as_the_source_of_the_sizes(folder):
    config = RunConfig(in_dataset=str(folder / "pets"), model_arch="torchvision:resnet18", image_size=32)
    first = input_lines(config, {"checkpoint_sha256": "x", "num_classes": 3}, "my.pth")[0]
    assert first.startswith("input: Resize 37, CenterCrop 32,")
    assert "size from --image-size 32; mean, std from torchvision's" in first


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--in-dataset", "CIFAR-100", "--method", "line"],
         "line: p_w 90, p_a 10, clip_threshold 1 (CIFAR-100 preset); activation_clipping on, "
         "activation_pruning on, weight_pruning on (the detector's default)"),
        (["--in-dataset", "CIFAR-10", "--method", "knn", "--knn-k", "5"],
         "knn: k 5 (--knn-k); fraction 1 (the detector's default)"),
        (["--in-dataset", "CIFAR-10", "--method", "line_ac"],
         "line_ac: clip_threshold 1 (CIFAR-10 preset); activation_clipping on (the detector's default); "
         "activation_pruning off, weight_pruning off (the method name line_ac)"),
        (["--in-dataset", "CIFAR-10", "--method", "energy"], "energy: no parameters"),
    ],
)  # fmt: skip
def test_each_detector_value_is_named_with_its_source(argv, line):
    config = eval_config(argv)
    (run,) = config.detectors
    assert detector_line(config, run.detector, run.given) == line


def test_a_flag_equal_to_the_preset_is_named_as_the_flag_when_recorded():
    config = eval_config(["--in-dataset", "CIFAR-10", "--method", "dice"])
    detector = registry.build("dice", "CIFAR-10", {"p": 90.0})
    assert detector_line(config, detector, {"p": 90.0}).startswith(
        "dice: p 90 (--p, also the value without it)"
    )
