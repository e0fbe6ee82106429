"""Network inputs: how images are resized, cropped and normalised (no datasets here)."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms

# The input statistics, defined here only. CIFAR: the DICE/LINe code's; ImageNet: torchvision's;
# HALF (pixels [0, 1] -> [-1, 1]): BiT's and TensorFlow EfficientNet-Lite's.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class InputSpec:
    """How images become network inputs: Resize(resize) (shorter side), CenterCrop(crop), ToTensor,
    Normalize(mean, std); ``interpolation`` is the resize filter."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def transform(self) -> transforms.Compose:
        mode = transforms.InterpolationMode(self.interpolation)
        return transforms.Compose(
            [
                transforms.Resize(self.resize, interpolation=mode),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )


# The papers' inputs: CIFAR at its own 32 px; ImageNet Resize(256) (shorter side), CenterCrop(224).
CIFAR_INPUT = InputSpec(32, 32, CIFAR_MEAN, CIFAR_STD)
IMAGENET_INPUT = InputSpec(256, 224, IMAGENET_MEAN, IMAGENET_STD)
