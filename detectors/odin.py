"""ODIN (Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in
Neural Networks", ICLR 2018): temperature scaling plus input perturbation.

x~ = x - eps * sign(-d log S_y^(T)(x) / dx) / std (per channel, eps in pixel units), with
y = argmax and S^(T) = softmax(logits / T); score = max_c S^(T)(x~)_c. It needs input gradients,
so it runs the network on the images instead of reading cached features (a network-level
detector). Defaults: T = 1000, eps = 0.0014 (the DICE code's CIFAR setting).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from util.argtypes import nonnegative_float, positive_float

from .base import NetworkDetector


def odin_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    temperature: float = 1000.0,
    epsilon: float = 0.0014,
    std=(0.2023, 0.1994, 0.2010),
    select: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ODIN scores (B,) and the logits of the perturbed images (B, C) for one batch.

    ``select(grad)`` gives the 0/1 mask (B, C, H, W) of the input entries to perturb (None: all;
    IODIN: the one of largest |gradient|)."""
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        logits = model(x)
        loss = F.cross_entropy(logits / temperature, logits.argmax(dim=1))
        (grad,) = torch.autograd.grad(loss, x)
    scale = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    sign = torch.sign(grad) if select is None else torch.sign(grad) * select(grad)
    x_tilde = images - epsilon * sign / scale
    with torch.inference_mode():
        out = model(x_tilde)
        return torch.softmax(out.double() / temperature, dim=1).max(dim=1).values, out


class ODIN(NetworkDetector):
    name = "odin"
    paper = "Liang et al., ICLR 2018"
    param_help = {"temperature": "temperature T of the softmax", "noise": "input perturbation magnitude eps"}
    param_types = {"temperature": positive_float, "noise": nonnegative_float}

    def __init__(self, temperature: float = 1000.0, noise: float = 0.0014):
        self.temperature = temperature
        self.noise = noise

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"temperature": (1.0, 10.0, 100.0, 1000.0), "noise": (0.0, 0.0007, 0.0014, 0.0028)}

    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return odin_scores(self.model_, images, self.temperature, self.noise, self.input_std_)
