"""ResNet-50 (torchvision's names) and BiT-S-R101x1 (Google's npz layout): weights round-trip.

No downloads: random weights are written in each format the real files use and loaded back.
"""

import numpy as np
import pytest
import torch
import torchvision

from models import get_model, input_normalization
from models.resnetv2 import ResNetV2
from util.errors import UserError


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter and buffer (so GN/BN affine terms are not trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(
                        torch.randn(t.shape, generator=g) * 0.05
                        + (1.0 if "weight" in name and t.ndim == 1 else 0)
                    )
    return model.eval()


def test_resnet50_state_dict_keys_and_shapes_are_torchvisions():
    ours = get_model("resnet50", 1000).state_dict()
    theirs = torchvision.models.resnet50(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)
    assert theirs["fc.weight"].shape == (1000, 2048)


def test_resnet50_loads_a_torchvision_state_dict_file_and_gives_its_logits(tmp_path):
    tv = _randomize(torchvision.models.resnet50(weights=None))
    path = tmp_path / "resnet50-random.pth"
    torch.save(tv.state_dict(), path)  # the layout of torchvision's resnet50-0676ba61.pth
    model = get_model("resnet50", 1000, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = model.forward_features(x)
        assert h.shape == (2, 2048) and (h >= 0).all()
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)
    assert isinstance(model.get_classifier(), torch.nn.Linear)


def test_model_normalisation_follows_the_architecture():
    assert input_normalization("BiT-S-R101x1") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert input_normalization("resnet50") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_normalization("densenet") is None


def _google_bit_npz(model: ResNetV2, units=(3, 4, 23, 3)) -> dict[str, np.ndarray]:
    """Write a model's weights with Google's BiT npz names and layouts (HWIO kernels), spelled out."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}

    def hwio(w):
        return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO

    out = {
        "resnet/root_block/standardized_conv2d/kernel": hwio(sd["root.conv.weight"]),
        "resnet/group_norm/gamma": sd["head.gn.weight"],
        "resnet/group_norm/beta": sd["head.gn.bias"],
        "resnet/head/conv2d/kernel": sd["head.conv.weight"].T[None, None],  # (1, 1, D, C)
        "resnet/head/conv2d/bias": sd["head.conv.bias"],
    }
    for b, n in enumerate(units, start=1):
        for u in range(1, n + 1):
            ours, tf = f"body.block{b}.unit{u:02d}.", f"resnet/block{b}/unit{u:02d}/"
            for i, letter in enumerate("abc", start=1):
                out[f"{tf}{letter}/standardized_conv2d/kernel"] = hwio(sd[f"{ours}conv{i}.weight"])
                out[f"{tf}{letter}/group_norm/gamma"] = sd[f"{ours}gn{i}.weight"]
                out[f"{tf}{letter}/group_norm/beta"] = sd[f"{ours}gn{i}.bias"]
            if u == 1:
                out[f"{tf}a/proj/standardized_conv2d/kernel"] = hwio(sd[f"{ours}downsample.weight"])
    return out


@pytest.fixture(scope="module")
def random_bit():
    return _randomize(ResNetV2(num_classes=1000), seed=1)


def test_bit_r101x1_has_the_published_shapes(random_bit):
    sd = random_bit.state_dict()
    assert random_bit.get_classifier().weight.shape == (1000, 2048)
    assert sd["root.conv.weight"].shape == (64, 3, 7, 7)
    assert sd["body.block3.unit23.conv3.weight"].shape == (1024, 256, 1, 1)
    assert "body.block3.unit24.conv1.weight" not in sd
    assert sd["body.block4.unit01.downsample.weight"].shape == (2048, 1024, 1, 1)
    n_params = sum(p.numel() for p in random_bit.parameters())
    assert 42_000_000 < n_params < 46_000_000  # BiT-R101x1 with a 1000-way head: 44.5M


def test_bit_loads_googles_npz_layout_and_gives_the_writers_logits(tmp_path, random_bit):
    arrays = _google_bit_npz(random_bit)
    path = tmp_path / "BiT-S-R101x1.npz"
    np.savez(path, **arrays)
    model = get_model("BiT-S-R101x1", 1000, path)
    for k, v in random_bit.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), random_bit(x))
        h = model.forward_features(x)
    assert h.shape == (2, 2048) and (h >= 0).all()


def test_bit_loads_a_finetuned_pytorch_checkpoint_with_a_1x1_conv_head(tmp_path, random_bit):
    sd = {f"module.{k}": v for k, v in random_bit.state_dict().items()}
    sd["module.head.conv.weight"] = sd["module.head.conv.weight"][:, :, None, None]  # conv layout
    path = tmp_path / "BiT-S-R101x1-flat-finetune.pth.tar"
    torch.save({"model": sd, "step": 1}, path)
    model = get_model("BiT-S-R101x1", 1000, path)
    torch.testing.assert_close(model.get_classifier().weight, random_bit.get_classifier().weight)


def test_bit_npz_of_another_depth_is_refused_with_the_missing_names(tmp_path, random_bit):
    arrays = _google_bit_npz(random_bit)
    arrays = {k: v for k, v in arrays.items() if "block3/unit23" not in k}  # like an R50 file
    path = tmp_path / "wrong.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match="arrays missing"):
        get_model("BiT-S-R101x1", 1000, path)
