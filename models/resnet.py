"""ResNet-50 (He et al., CVPR 2016) with torchvision's parameter names, for ImageNet-1k.

The network *is* ``torchvision.models.ResNet`` with Bottleneck blocks [3, 4, 6, 3], so its
``state_dict`` keys and shapes are torchvision's and the ImageNet weights the DICE and LINe papers
used (``ResNet50_Weights.IMAGENET1K_V1``, file ``resnet50-0676ba61.pth``) load with
``strict=True``. Penultimate feature: h = avgpool(relu(layer4(...))), D = 2048; logits = fc(h).
Input: 224x224 crops normalised with the ImageNet mean and std (``models.weights``).
"""

from __future__ import annotations

import torch
from torchvision.models.resnet import Bottleneck, ResNet


class ResNet50(ResNet):
    """torchvision's ResNet-50 plus ``forward_features`` / ``get_classifier``."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features h, shape (B, 2048), non-negative, unclipped."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def get_classifier(self) -> torch.nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
