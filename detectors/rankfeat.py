"""RankFeat (Song, Sebe & Wang, "RankFeat: Rank-1 Feature Removal for Out-of-distribution
Detection", NeurIPS 2022). A network-level detector: it runs the network on the images.

Per image, X is the feature map of the network's last block reshaped to (C, HW). RankFeat removes
its rank-1 component, X' = X - s1 u1 v1^T (s1 the largest singular value of X, u1 and v1 its
singular vectors), runs the rest of the network (final norm and activation, global pooling, head)
on X' to get logits z', and scores with the Energy, score = logsumexp_c z'_c (temperature 1, the
paper's default). There is nothing to fit and no hyperparameter to tune. The logits returned (ID
accuracy) are the network's own, from one more plain forward pass: z' classifies badly.

The removal point, per model (the authors' code takes the output of the backbone's last block
and lets the network's own head, normalisation included, follow):
- torchvision ResNets (ResNet-50): the output of ``layer4``.
- BiT ResNet-v2 (models/resnetv2.py): the output of ``body``, before the final GroupNorm + ReLU.
- DenseNet-BC (models/densenet.py): the output of ``block3``, before the final BN + ReLU.
- EfficientNet-Lite0: the output of its last MBConv block, before ``_conv_head`` + BN + ReLU6.
- Any other model (``models.adapter``): the input of its global pooling module, found on the first
  batch. A model whose global pooling is a function, or that has none (ViT, VGG's 7x7 pool), is
  refused with a UserError naming it.

``fuse`` (variant ``rankfeat_fused``): the paper's "Block 3 + Block 4". X' at Block 3's output
(ResNets: ``layer3``; BiT: ``body.block3``; DenseNet-BC: ``block2``) run through the rest of the
network gives z3'; score = logsumexp((z3' + z4') / 2) ("fusion at the logit space", not an
average of the two energies). Block 3 is known for ResNets, BiT and DenseNet-BC only; for other
models ``fit`` refuses ``fuse``.

Numerics: the SVD (``torch.linalg.svd``) is taken in float64 and X' goes back in the map's dtype;
the energy is computed in float64. ``power_iterations = k > 0`` uses the paper's approximation
instead: k alternating steps v <- X^T u / |X^T u|, u <- X v / |X v|, then s1 = u^T X v, from a
fixed-seed Gaussian start u0 (the same for every image, so scores do not depend on the batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import ResNet as TorchvisionResNet

from models.adapter import AdaptedClassifier
from models.densenet import DenseNet3
from models.efficientnet_lite import EfficientNetLite0
from models.resnetv2 import ResNetV2
from util.argtypes import nonnegative_int
from util.errors import UserError

from .base import NetworkDetector

POWER_SEED = 0  # seed of the power iteration's start vector
NORM_EPS = 1e-10  # as the official code, so that an all-zero map is left as it is

# Model class -> (Block 4 module, Block 3 module or None): RankFeat replaces their outputs.
BLOCKS: tuple[tuple[type, Callable[[nn.Module], tuple[str, str | None]]], ...] = (
    (TorchvisionResNet, lambda m: ("layer4", "layer3")),  # models.resnet.ResNet50 included
    (ResNetV2, lambda m: ("body.block4", "body.block3")),
    (DenseNet3, lambda m: ("block3", "block2")),
    (EfficientNetLite0, lambda m: (f"_blocks.{len(m._blocks) - 1}", None)),
)


def remove_rank1(x: torch.Tensor, power_iterations: int = 0) -> torch.Tensor:
    """``x`` (B, C, H, W) less each image's rank-1 component s1 u1 v1^T of its (C, HW) matrix.

    Exact SVD in float64 when ``power_iterations`` is 0, else that many power-iteration steps;
    the result has ``x``'s shape, dtype and memory format.
    """
    b, c = x.shape[:2]
    m = x.reshape(b, c, -1).double()
    if power_iterations:
        top = power_rank1(m, power_iterations)
    else:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        top = s[:, :1, None] * (u[:, :, :1] @ vh[:, :1, :])
    out = (m - top).reshape(x.shape).to(x.dtype)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def power_rank1(m: torch.Tensor, iterations: int) -> torch.Tensor:
    """s1 u1 v1^T of each (C, N) matrix of ``m`` (B, C, N) by ``iterations`` power-iteration steps."""
    gen = torch.Generator().manual_seed(POWER_SEED)
    u = torch.randn(m.shape[1], generator=gen, dtype=m.dtype).to(m.device).expand(m.shape[0], -1)
    for _ in range(iterations):
        v = torch.einsum("bc,bcn->bn", u, m)
        v = v / (v.norm(dim=1, keepdim=True) + NORM_EPS)
        u = torch.einsum("bcn,bn->bc", m, v)
        u = u / (u.norm(dim=1, keepdim=True) + NORM_EPS)
    sigma = torch.einsum("bc,bcn,bn->b", u, m, v)
    return sigma[:, None, None] * u[:, :, None] * v[:, None, :]


def model_name(model: nn.Module) -> str:
    """The class name of the user's network (inside the adapter, when it wraps one)."""
    return type(model.body if isinstance(model, AdaptedClassifier) else model).__name__


def block_modules(model: nn.Module) -> tuple[str, str | None] | None:
    """(Block 4, Block 3 or None) module names of a known architecture, also inside the adapter."""
    inner, prefix = (model.body, "body.") if isinstance(model, AdaptedClassifier) else (model, "")
    for cls, names in BLOCKS:
        if isinstance(inner, cls):
            block4, block3 = names(inner)
            return prefix + block4, (prefix + block3 if block3 else None)
    return None


def find_global_pool(model: nn.Module, images: torch.Tensor) -> str:
    """Name of the module that pools the last spatial map to one value per channel, by a probe
    pass on ``images``: the last leaf module that receives a (B, C, H, W) map with H * W > 1 must
    output B x C values and be called once; otherwise a UserError naming the model."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, tuple, tuple]] = []

    def record(module, args, out):
        shape_in = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
        shape_out = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        calls.append((module, shape_in, shape_out))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    spatial = [c for c in calls if len(c[1]) == 4 and c[1][2] * c[1][3] > 1]
    what = f"RankFeat needs the feature map that enters global pooling, and {model_name(model)}"
    if not spatial:
        raise UserError(f"{what} has no layer that receives a (batch, channels, height, width) map")
    module, shape_in, shape_out = spatial[-1]
    name = names[id(module)]
    b, c = shape_in[:2]
    pooled = len(shape_out) >= 2 and shape_out[:2] == (b, c) and all(s == 1 for s in shape_out[2:])
    if not pooled:
        raise UserError(
            f"{what} has no global pooling module: the last layer that receives a spatial map, {name} "
            f"({type(module).__name__}), gives {shape_out}, not one value per channel (pooling done "
            "by a function, or none); RankFeat supports the built-in models and those that pool with "
            "a module (e.g. torchvision's ResNets, EfficientNets, ConvNeXts)"
        )
    if sum(call[0] is module for call in calls) != 1:
        raise UserError(f"{what}: its global pooling module {name} runs more than once per forward pass")
    return name


class RankFeat(NetworkDetector):
    name = "rankfeat"
    paper = "Song et al., NeurIPS 2022"
    param_help = {
        "fuse": "average the logits of rank-1 removal at Block 3 and at Block 4 (the official code's score; "
        "known Block 3 only: ResNets, BiT, DenseNet)",
        "power_iterations": "power-iteration steps instead of the exact SVD (0: exact; the paper's fast "
        "variant uses 20)",
    }
    param_types = {"power_iterations": nonnegative_int}

    def __init__(self, fuse: bool = False, power_iterations: int = 0):
        self.fuse = fuse
        self.power_iterations = power_iterations

    @classmethod
    def variants(cls) -> dict[str, dict]:
        return {"rankfeat": {}, "rankfeat_fused": {"fuse": True}}

    def run_name(self) -> str:
        return "rankfeat_fused" if self.fuse else "rankfeat"

    def fit(self, model: nn.Module, input_std) -> RankFeat:
        """Finds the removal points of a known architecture; for any other model the global
        pooling module is found on the first batch scored. ``fuse`` needs a known Block 3."""
        super().fit(model, input_std)
        blocks = block_modules(model)
        if self.fuse and (blocks is None or blocks[1] is None):
            raise UserError(
                f"rankfeat_fused: Block 3 is known for torchvision ResNets, BiT and DenseNet-BC, not for "
                f"{model_name(model)}; use rankfeat (Block 4)"
            )
        if blocks is None:
            self.points_ = None  # the global pooling module's input, found on the first batch
        else:
            self.points_ = [(blocks[0], "output")] + ([(blocks[1], "output")] if self.fuse else [])
        return self

    def logits_removing(self, images: torch.Tensor, module_name: str, where: str) -> torch.Tensor:
        """Logits of ``images`` with the rank-1 component removed from ``module_name``'s output
        (or input, ``where="input"``); the hook is gone afterwards."""
        module = self.model_.get_submodule(module_name)
        calls = []

        def removed(x):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise UserError(
                    f"RankFeat: {module_name} of {model_name(self.model_)} gives {got}, not a map"
                )
            calls.append(1)
            return remove_rank1(x, self.power_iterations)

        if where == "output":
            handle = module.register_forward_hook(lambda m, args, out: removed(out))
        else:
            handle = module.register_forward_pre_hook(lambda m, args: (removed(args[0]), *args[1:]))
        try:
            logits = self.model_(images)
        finally:
            handle.remove()
        if len(calls) != 1:
            raise UserError(f"RankFeat: {module_name} of {model_name(self.model_)} runs {len(calls)} times")
        return logits

    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(images) == 0:
            classes = self.model_.get_classifier().out_features
            return images.new_zeros(0, dtype=torch.float64), images.new_zeros(0, classes)
        with torch.inference_mode():
            if self.points_ is None:
                self.points_ = [(find_global_pool(self.model_, images[:1]), "input")]
            z = [self.logits_removing(images, name, where).double() for name, where in self.points_]
            return torch.logsumexp(sum(z) / len(z), dim=1), self.model_(images)
