"""Network inputs: how images are resized, cropped and normalised (no datasets here)."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
