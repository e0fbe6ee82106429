"""The network-facing code gives the CPU's results on the pytest --device (gpu_check.sh: cuda).

Each test runs one piece on --device and on the CPU and compares: extraction, Taylor
contributions, the adapter, fitting and scoring through a model (the Python API), every
network-level detector of the registry, and GradNorm's network version. The DICE and LINe layers
and SparsifiedClassifier take the device in test_route.py. On the CPU (the default) these run as
ordinary tests; on a GPU they find device mismatches and numpy calls on device tensors.
TF32 is turned off here (cuDNN uses it for float32 convolutions by default): these tests check
where tensors live, not TF32's rounding, which gpu_check.sh's score comparison measures.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from detectors import DETECTORS
from detectors.from_loader import fit_loader, score_with_model
from detectors.gradnorm import gradnorm_network_scores
from detectors.registry import build
from detectors.statistics import taylor_contributions
from models.adapter import adapt
from models.densenet import DenseNet3
from util.features import FeatureExtractor

C = 10
NETWORK_DETECTORS = [cls for cls in DETECTORS if cls.kind == "network"]


@pytest.fixture(autouse=True)
def exact_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


LAYERS = ("block1", "block2", "block3")  # the multi-layer detectors' taps of tiny_densenet


def tiny_densenet() -> nn.Module:
    """A DenseNet-BC of depth 16 (D = 24) with random BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    net = DenseNet3(depth=16, num_classes=C, growth_rate=6)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return net.eval()


def images(n: int = 6, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def close(got, want, rtol=1e-4, atol=1e-5):
    got, want = (np.asarray(x.detach().double().cpu() if torch.is_tensor(x) else x) for x in (got, want))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def test_extraction_on_the_device_gives_the_cpus_features_and_logits(device, tmp_path):
    x = images()
    got = FeatureExtractor(
        tiny_densenet(), {"t": 1}, tmp_path / "a", device=device, num_workers=0, progress=False
    )
    want = FeatureExtractor(
        tiny_densenet(), {"t": 1}, tmp_path / "b", device="cpu", num_workers=0, progress=False
    )
    with torch.inference_mode():
        for a, b in zip(got.forward(x)[:2], want.forward(x)[:2]):
            close(a, b)


def test_taylor_contributions_on_the_device_equal_the_cpus(device):
    fc = tiny_densenet().get_classifier()
    h = torch.rand(20, fc.in_features, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(20) % C
    got = taylor_contributions(copy.deepcopy(fc).to(device), h.to(device), labels.to(device))
    assert got.device.type == torch.device(device).type
    close(got, taylor_contributions(fc, h, labels))


def test_the_adapter_splits_a_model_already_on_the_device(device):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=C).eval()
    x = images(3, 64)
    with torch.no_grad():
        want = model(x)
        adapted = adapt(copy.deepcopy(model).to(device), 64)
        got = adapted.get_classifier()(adapted.forward_features(x.to(device)))
    close(got, want)


@pytest.mark.parametrize("name,params", [("energy", {}), ("dice", {}), ("line", {}), ("knn", {"k": 3})])
def test_detectors_fitted_and_scored_through_a_model_on_the_device_score_as_on_the_cpu(name, params, device):
    """The Python API: fit_loader's training pass and score_with_model with the model on --device."""
    loader = [(images(8), torch.arange(8) % C), (images(8) + 0.5, (torch.arange(8) + 3) % C)]
    results = []
    for where in (device, "cpu"):
        model = tiny_densenet().to(where)
        detector = fit_loader(build(name, "CIFAR-10", params), model, [(x.to(where), y) for x, y in loader])
        scores, logits = score_with_model(detector, model, images().to(where))
        assert scores.device.type == torch.device(where).type
        results.append((scores, logits))
    close(results[0][0], results[1][0])
    close(results[0][1], results[1][1])


@pytest.mark.parametrize("cls", NETWORK_DETECTORS, ids=lambda cls: cls.name)
def test_every_network_level_detector_scores_on_the_device_as_on_the_cpu(cls, device):
    results = []
    train = [(images(8), torch.arange(8) % C), (images(8) + 0.5, (torch.arange(8) + 3) % C)]
    for where in (device, "cpu"):
        model, batches = tiny_densenet().to(where), [(x.to(where), y) for x, y in train]
        # the training statistics its fit names (Mahalanobis's class means, AdaSCALE's images)
        detector = fit_loader(cls(), model, batches, input_std=(0.2, 0.2, 0.2), feature_layers=LAYERS)
        with torch.no_grad():
            results.append(detector.score_images(images().to(where)))
    close(results[0][0], results[1][0])
    close(results[0][1], results[1][1])


def test_gradnorm_by_autograd_on_the_device_equals_the_cpu(device):
    x = images(4)
    got = gradnorm_network_scores(tiny_densenet().to(device), x.to(device))
    close(got, gradnorm_network_scores(tiny_densenet(), x))
