"""DenseNet-BC for 32x32 images (Huang et al., CVPR 2017), depth 100, growth rate 12.

The DICE and LINe papers call it "DenseNet-101". Parameter names follow the checkpoints those
papers published, so ``load_state_dict(strict=True)`` accepts them as they are.

Penultimate feature: h = avgpool_8x8(relu(bn(block3(...)))), D = 342 for depth 100.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BottleneckBlock(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), output concatenated to the input."""

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        inter_planes = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter_planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter_planes)
        self.conv2 = nn.Conv2d(inter_planes, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class TransitionBlock(nn.Module):
    """BN-ReLU-Conv1x1 then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseBlock(nn.Module):
    def __init__(self, num_layers: int, in_planes: int, growth_rate: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[BottleneckBlock(in_planes + i * growth_rate, growth_rate) for i in range(num_layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class DenseNet3(nn.Module):
    """DenseNet-BC (bottleneck, compression 0.5) for CIFAR; 342 features at depth 100."""

    def __init__(
        self, depth: int = 100, num_classes: int = 10, growth_rate: int = 12, reduction: float = 0.5
    ):
        super().__init__()
        n = (depth - 4) // 6  # bottleneck layers per dense block
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)
        self.block1 = DenseBlock(n, planes, growth_rate)
        planes += n * growth_rate
        self.trans1 = TransitionBlock(planes, int(math.floor(planes * reduction)))
        planes = int(math.floor(planes * reduction))
        self.block2 = DenseBlock(n, planes, growth_rate)
        planes += n * growth_rate
        self.trans2 = TransitionBlock(planes, int(math.floor(planes * reduction)))
        planes = int(math.floor(planes * reduction))
        self.block3 = DenseBlock(n, planes, growth_rate)
        planes += n * growth_rate
        self.bn1 = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features h, shape (B, 342), non-negative, unclipped."""
        out = self.conv1(x)
        out = self.trans1(self.block1(out))
        out = self.trans2(self.block2(out))
        out = F.relu(self.bn1(self.block3(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
