"""Any classifier ending in an nn.Linear: split into forward_features and that head, exactly."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torchvision
from torch import nn

from models import get_model
from models.adapter import AdaptedClassifier, adapt
from util.errors import UserError

TORCHVISION_CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)
NO_LINEAR_HEAD = {"squeezenet1_0", "squeezenet1_1"}  # a convolutional classifier
# The input sizes that keep each builder small and fast; ViTs are built for 32 px (image_size).
SIZES = {"inception_v3": 80, "maxvit_t": 224}


def _build(name: str, classes: int = 7) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    kwargs, size = {}, SIZES.get(name, 64)
    if name.startswith("vit_"):
        size = 28 if name == "vit_h_14" else 32
        kwargs["image_size"] = size
    return torchvision.models.get_model(name, weights=None, num_classes=classes, **kwargs).eval(), size


def test_every_torchvision_classification_builder_is_covered():
    assert len(TORCHVISION_CLASSIFIERS) >= 80 and "resnet18" in TORCHVISION_CLASSIFIERS


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
@pytest.mark.parametrize("name", sorted(set(TORCHVISION_CLASSIFIERS) - NO_LINEAR_HEAD))
def test_head_of_the_adapters_features_is_the_torchvision_models_output(name):
    model, size = _build(name)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        adapted = adapt(model, size)
        h = adapted.forward_features(x)
        got = adapted.get_classifier()(h)
    fc = adapted.get_classifier()
    assert isinstance(fc, nn.Linear) and h.shape == (3, fc.in_features)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(NO_LINEAR_HEAD))
def test_a_classifier_without_a_linear_output_layer_is_refused(name):
    model, size = _build(name)
    with pytest.raises(UserError, match="runs no nn.Linear"):
        adapt(model, size)


TIMM_MODELS = [
    "resnet18",
    "efficientnet_b0",
    "convnext_atto",
    "mobilenetv3_small_050",
    "vit_tiny_patch16_224",
]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_head_of_the_adapters_features_is_the_timm_models_output(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    size = 224 if name.startswith("vit") else 64
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        adapted = adapt(model, size)
        got = adapted.get_classifier()(adapted.forward_features(x))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class Net(nn.Module):
    def __init__(self, after_head=None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(4, 3))
        self.after_head = after_head

    def forward(self, x):
        z = self.classifier(self.body(x))
        return self.after_head(z) if self.after_head else z


def test_a_head_named_as_a_sequential_stands_for_its_last_linear():
    model = adapt(Net(), 16, head="classifier")
    assert isinstance(model, AdaptedClassifier) and model.head_name == "classifier.1"
    assert model.get_classifier().out_features == 3


def test_a_head_that_is_not_a_submodule_is_named_with_the_linears_there_are():
    with pytest.raises(UserError, match="no submodule of that name.*classifier.1"):
        adapt(Net(), 16, head="fc")


def test_a_head_that_is_not_linear_is_refused():
    with pytest.raises(UserError, match="is a Conv2d, not an nn.Linear"):
        adapt(Net(), 16, head="body.0")


def test_a_model_that_changes_its_logits_after_the_head_is_refused_and_left_as_it_was():
    model = Net(after_head=lambda z: 2 * z)
    with pytest.raises(UserError, match="something follows"):
        adapt(model, 16)
    assert isinstance(model.classifier[1], nn.Linear)


def test_a_named_head_that_something_consumes_is_refused_and_the_model_left_as_it_was():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.Linear(6, 2))
    with pytest.raises(UserError, match="something follows"):
        adapt(model, 4, head="1")
    assert isinstance(model[1], nn.Linear)


class TokenNet(nn.Module):
    """Its last Linear sees a sequence of tokens (B, T, D), pooled afterwards."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 5)

    def forward(self, x):
        return self.proj(x.flatten(2).transpose(1, 2)).mean(dim=1)


def test_a_last_linear_that_sees_a_sequence_is_refused_with_the_shape():
    with pytest.raises(UserError, match=r"receives \(2, 16, 3\), not \(batch, features\)"):
        adapt(TokenNet(), 4)


def test_a_model_that_does_not_run_at_the_image_size_says_which_flag_to_pass():
    model, _ = _build("vit_b_32")  # built for 32 px
    with pytest.raises(UserError, match="does not run on 64x64 inputs.*--image-size"):
        adapt(model, 64)


def test_built_in_models_keep_their_own_feature_method():
    model = get_model("densenet", 10)
    assert type(model).__name__ == "DenseNet3"


def test_a_users_factory_is_built_with_its_number_of_classes(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(num_classes=10):
                return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, num_classes))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = get_model("my_nets:tiny", 6, image_size=16)
    assert model.get_classifier().out_features == 6 and model.get_classifier().in_features == 8
    sys.modules.pop("my_nets", None)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("torchvision:resnet19", "did you mean 'resnet18'"),
        ("no_such_module_xyz:make", "cannot import no_such_module_xyz"),
        ("os:sep", "has no function sep"),
        ("resnet-50", "unknown model 'resnet-50'"),
    ],
)
def test_an_unknown_architecture_says_what_exists(arch, message):
    with pytest.raises(UserError, match=message):
        get_model(arch, 10)
