"""Classifiers defined outside this repository, named by ``--model-arch``:

- ``torchvision:NAME``: ``torchvision.models.get_model(NAME)`` (any classification builder);
- ``timm:NAME``: ``timm.create_model(NAME)`` (timm is optional: installed, it is used);
- ``package.module:factory``: a user's function returning an ``nn.Module``, called with
  ``num_classes=C`` when it takes that argument.

Each gives the raw model (``models.adapter`` then splits it at its output Linear) and, where the
library knows it, the input its pretrained weights expect (torchvision weights' transforms, timm's
data config).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

from util.errors import UserError
from util.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec

PREFIXES = ("torchvision", "timm")


def is_external(arch: str) -> bool:
    return ":" in arch


def check_arch(arch: str) -> str:
    """``arch`` if it is well formed (``torchvision:NAME``, ``timm:NAME``, ``module:function``)."""
    prefix, _, name = arch.partition(":")
    if not prefix or not name or ":" in name:
        raise UserError(
            f"--model-arch {arch!r}: expected torchvision:NAME, timm:NAME or package.module:function"
        )
    return arch


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("--model-arch timm:... needs timm: pip install timm") from None
    return timm


def _torchvision_builder(name: str):
    """The weights enum of torchvision's classification builder ``name`` (which must exist)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"torchvision has no classification model {name!r}{hint}")
    return torchvision.models.get_model_weights(name)


def build(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    """The model ``arch`` with ``num_classes`` outputs; ``pretrained``: the library's ImageNet-1k
    weights (torchvision's DEFAULT, timm's pretrained tag), downloaded by the library."""
    prefix, _, name = check_arch(arch).partition(":")
    if prefix == "torchvision":
        import torchvision

        builder_weights = _torchvision_builder(name)  # checks the name
        weights = builder_weights.DEFAULT if pretrained else None
        where = ""
        if weights is not None:
            target = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[1]
            where = f" (or download {weights.url} to {target})"
        return _download(
            arch,
            pretrained,
            lambda: torchvision.models.get_model(name, weights=weights, num_classes=num_classes),
            where,
        )
    if prefix == "timm":
        timm = _timm()
        if not timm.is_model(name) and not timm.list_models(name):
            raise UserError(f"timm has no model {name!r} (timm.list_models('*{name}*') lists similar ones)")
        config = timm.models.get_pretrained_cfg(name) if pretrained else None
        if config is not None and config.num_classes not in (None, num_classes):
            raise UserError(
                f"{arch}'s pretrained weights have {config.num_classes} outputs, not {num_classes}: timm "
                "would replace the head by a random one. Choose a tag trained on these classes (e.g. "
                ".in1k), or pass --checkpoint"
            )
        return _download(
            arch, pretrained, lambda: timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
        )
    return _from_factory(prefix, name, num_classes)


def _download(arch: str, pretrained: bool, make, where: str = ""):
    """``make()``; with ``pretrained``, a failure (no network, most often) becomes a UserError."""
    if not pretrained:
        return make()
    try:
        return make()
    except Exception as exc:
        raise UserError(
            f"cannot build {arch} with its pretrained weights ({type(exc).__name__}: {str(exc)[:300]}). "
            f"Without network access, pass the weights file with --checkpoint{where}."
        ) from None


def _from_factory(module_name: str, function: str, num_classes: int) -> nn.Module:
    if os.getcwd() not in sys.path:  # as `python -m`: modules of the current folder import
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"--model-arch {module_name}:{function}: cannot import {module_name} ({exc}); run from the "
            "folder that holds it, or add that folder to PYTHONPATH"
        ) from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise UserError(f"--model-arch {module_name}:{function}: {module_name} has no function {function}")
    takes_classes = "num_classes" in inspect.signature(factory).parameters
    model = factory(num_classes=num_classes) if takes_classes else factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"{module_name}.{function}() returned {type(model).__name__}, not an nn.Module")
    return model


def preferred_input(arch: str) -> InputSpec | None:
    """The input the library's pretrained weights expect: torchvision's weights transforms or
    timm's pretrained config (resize = floor(crop / crop_pct)); None for a user's factory."""
    prefix, _, name = arch.partition(":")
    if prefix == "torchvision":
        preset = _torchvision_builder(name).DEFAULT.transforms()
        return InputSpec(
            resize=int(preset.resize_size[0]),
            crop=int(preset.crop_size[0]),
            mean=tuple(float(v) for v in preset.mean),
            std=tuple(float(v) for v in preset.std),
            interpolation=preset.interpolation.value,
        )
    if prefix == "timm":
        config = _timm().models.get_pretrained_cfg(name)
        if config is None:
            return None
        crop = int(config.input_size[-1])
        return InputSpec(
            resize=int(math.floor(crop / float(config.crop_pct or 0.875))),
            crop=crop,
            mean=tuple(float(v) for v in (config.mean or IMAGENET_MEAN)),
            std=tuple(float(v) for v in (config.std or IMAGENET_STD)),
            interpolation=str(config.interpolation or "bilinear"),
        )
    return None


def code_sha256(arch: str) -> str | None:
    """For ``module:function`` models, a digest of the module's source file (its code decides the
    features as much as the weights do); None for library models."""
    prefix, _, _ = arch.partition(":")
    if prefix in PREFIXES:
        return None
    source = inspect.getsourcefile(sys.modules[prefix]) if prefix in sys.modules else None
    if source is None:
        return None
    with open(source, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """A digest of every tensor of the state_dict (names, shapes, dtypes and values): identifies
    weights that did not come from a file (a factory's or a library's pretrained weights)."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}\t{tuple(t.shape)}\t{t.dtype}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
