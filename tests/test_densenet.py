"""DenseNet-101 loads the papers' checkpoints and exposes features and classifier."""

import numpy as np
import pytest
import torch

from models import get_model
from models.route import RouteDICE
from pipeline.statistics import load_feat_stat


def test_densenet_loads_the_published_checkpoints_strictly_with_weights_only(shared):
    for dataset, classes in (("CIFAR-10", 10), ("CIFAR-100", 100)):
        path = shared / "checkpoints" / dataset / "densenet" / "checkpoint_100.pth.tar"
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        model = get_model("densenet", classes, path)  # strict=True inside
        assert set(model.state_dict()) == set(state)
        assert not model.training


def test_densenet_features_are_342_dimensional_non_negative_and_the_head_is_linear(cifar10_checkpoint):
    model = get_model("densenet", 10, cifar10_checkpoint)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = model.forward_features(x)
    assert h.shape == (3, 342) and bool((h >= 0).all())
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (342, 10)


@pytest.mark.parametrize("dataset,classes", [("CIFAR-10", 10), ("CIFAR-100", 100)])
def test_dice_feat_stat_files_of_the_original_code_load_as_dice_statistics(shared, dataset, classes):
    path = shared / "reference" / "dice-cache" / f"{dataset}_densenet_feat_stat.npy"
    stat = load_feat_stat(path, 342)
    assert stat.dtype == np.float64 and (stat >= 0).all()
    model = get_model(
        "densenet", classes, shared / "checkpoints" / dataset / "densenet" / "checkpoint_100.pth.tar"
    )
    route = RouteDICE(model.get_classifier(), stat, 90)
    assert route.mask.float().mean().item() == pytest.approx(0.10, abs=0.002)
