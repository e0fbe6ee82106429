"""BiT ResNet-v2 (Kolesnikov et al., "Big Transfer (BiT)", ECCV 2020): BiT-S-R101x1 for DICE.

Pre-activation bottleneck ResNet with GroupNorm (32 groups) and weight-standardised
convolutions (each filter normalised to zero mean, unit variance, eps 1e-10, before use). The
stride sits on the 3x3 convolution; the stem is a 7x7/2 convolution, zero padding of 1 and a
3x3/2 max-pool without padding. R101x1: units [3, 4, 23, 3], width factor 1, D = 2048.

Penultimate feature: h = mean over positions of relu(head.gn(body(root(x)))); BiT's classifier is
a 1x1 convolution on the pooled map, i.e. a linear layer, exposed here as ``head.conv``
(``nn.Linear``) by ``get_classifier()``.

Weights load from
- Google's ``BiT-S-R101x1.npz`` (https://storage.googleapis.com/bit_models/BiT-S-R101x1.npz):
  TensorFlow names ``resnet/root_block/standardized_conv2d/kernel``,
  ``resnet/block{1-4}/unit{NN}/{a,b,c}/standardized_conv2d/kernel``,
  ``.../{a,b,c}/group_norm/{gamma,beta}``, ``.../a/proj/standardized_conv2d/kernel`` (first unit of
  a block), ``resnet/group_norm/{gamma,beta}``, ``resnet/head/conv2d/{kernel,bias}``; kernels
  are HWIO and become OIHW (the head kernel (1, 1, 2048, C) becomes (C, 2048));
- a fine-tuned PyTorch checkpoint with the parameter names of Google's PyTorch port
  (``root.conv.weight``, ``body.block1.unit01.gn1.weight``, ..., ``head.conv.weight`` of shape
  (C, 2048, 1, 1)), optionally under ``state_dict``/``model`` and with ``module.`` prefixes.
Input: BiT's own normalisation, pixels mapped from [0, 1] to [-1, 1] (mean 0.5, std 0.5;
``models.weights``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from util.errors import UserError

from .checkpoints import read_state_dict
from .weights import WEIGHTS

BIT_UNITS = {"R50": (3, 4, 6, 3), "R101": (3, 4, 23, 3), "R152": (3, 8, 36, 3)}


class StdConv2d(nn.Conv2d):
    """Convolution with weight standardisation: w' = (w - mean(w)) / sqrt(var(w) + 1e-10) per filter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActUnit(nn.Module):
    """GN-ReLU-conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1):
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cin)
        self.conv1 = StdConv2d(cin, cmid, kernel_size=1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid)
        self.conv2 = StdConv2d(cmid, cmid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cmid)
        self.conv3 = StdConv2d(cmid, cout, kernel_size=1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.gn1(x))
        shortcut = self.downsample(pre) if hasattr(self, "downsample") else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + shortcut


class _Head(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.gn = nn.GroupNorm(32, channels)
        self.conv = nn.Linear(channels, num_classes)


class ResNetV2(nn.Module):
    """BiT ResNet-v2 with ``forward_features`` (B, 2048 * width) and ``get_classifier``."""

    def __init__(self, units=BIT_UNITS["R101"], width: int = 1, num_classes: int = 1000):
        super().__init__()
        self.units, self.width = tuple(units), width
        self.root = nn.Sequential(
            OrderedDict(
                conv=StdConv2d(3, 64 * width, kernel_size=7, stride=2, padding=3, bias=False),
                pad=nn.ConstantPad2d(1, 0.0),
                pool=nn.MaxPool2d(kernel_size=3, stride=2),
            )
        )
        blocks, cin = OrderedDict(), 64 * width
        for b, n_units in enumerate(self.units):
            cmid = 64 * width * 2**b
            cout = 4 * cmid
            layers = OrderedDict()
            for u in range(1, n_units + 1):
                stride = 2 if (u == 1 and b > 0) else 1
                layers[f"unit{u:02d}"] = PreActUnit(cin, cout, cmid, stride)
                cin = cout
            blocks[f"block{b + 1}"] = nn.Sequential(layers)
        self.body = nn.Sequential(blocks)
        self.head = _Head(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features h, shape (B, 2048 * width), non-negative, unclipped."""
        x = F.relu(self.head.gn(self.body(self.root(x))))
        return x.mean(dim=(2, 3))

    def get_classifier(self) -> nn.Linear:
        return self.head.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.conv(self.forward_features(x))

    def read_checkpoint(self, path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """State dict from Google's ``.npz`` or a PyTorch checkpoint (1x1-conv head reshaped)."""
        path = Path(path)
        if path.suffix == ".npz":
            return bit_npz_to_state_dict(path, self)
        state = dict(read_state_dict(path))
        w = state.get("head.conv.weight")
        if w is not None and w.ndim == 4 and w.shape[2:] == (1, 1):
            state["head.conv.weight"] = w[:, :, 0, 0]
        return state


def _tf_name(key: str) -> str:
    """Google's npz name of one of our parameter names (root/body/head layout above)."""
    parts = key.split(".")
    if parts[0] == "root":
        return "resnet/root_block/standardized_conv2d/kernel"
    if parts[0] == "head":
        if parts[1] == "gn":
            return f"resnet/group_norm/{'gamma' if parts[2] == 'weight' else 'beta'}"
        return f"resnet/head/conv2d/{'kernel' if parts[2] == 'weight' else 'bias'}"
    _, block, unit, module, kind = parts
    prefix = f"resnet/{block}/{unit}/"
    if module == "downsample":
        return prefix + "a/proj/standardized_conv2d/kernel"
    letter = "abc"[int(module[-1]) - 1]
    if module.startswith("conv"):
        return f"{prefix}{letter}/standardized_conv2d/kernel"
    return f"{prefix}{letter}/group_norm/{'gamma' if kind == 'weight' else 'beta'}"


def bit_npz_to_state_dict(path: Path, model: ResNetV2) -> dict[str, torch.Tensor]:
    """Read Google's BiT ``.npz`` into ``model``'s state_dict names and layouts (HWIO -> OIHW)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read BiT weights {path}: {exc}") from None
    with npz:
        names = set(npz.files)
        state, missing = {}, []
        for key in model.state_dict():
            name = _tf_name(key)
            if name not in names:
                missing.append(name)
                continue
            value = np.asarray(npz[name])
            if value.ndim == 4:  # HWIO -> OIHW; the head's (1, 1, D, C) -> (C, D)
                value = value.transpose(3, 2, 0, 1)
                if key == "head.conv.weight":
                    value = value[:, :, 0, 0]
            state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        used = {_tf_name(k) for k in state}
        unexpected = sorted(n for n in names - used if n.startswith("resnet/"))
    if missing or unexpected:
        raise UserError(
            f"{path} is not a BiT ResNet-v2 of units {list(model.units)} x{model.width}: "
            f"{len(missing)} arrays missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}). BiT-S-R101x1 comes from {WEIGHTS['imagenet', 'BiT-S-R101x1'].url}."
        )
    return state
