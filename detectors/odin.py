"""ODIN (Liang, Li & Srikant, ICLR 2018): temperature scaling plus input perturbation.

x~ = x - eps * sign(-d log S_y^(T)(x) / dx) / std (per channel, eps in pixel units), with
y = argmax and S^(T) = softmax(logits / T); score = max_c S^(T)(x~)_c. Needs input gradients,
so it runs the network on images instead of cached features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def odin_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    temperature: float = 1000.0,
    epsilon: float = 0.0014,
    std=(0.2023, 0.1994, 0.2010),
) -> torch.Tensor:
    """ODIN scores (B,) and the logits of the perturbed images (B, C) for one batch."""
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        logits = model(x)
        loss = F.cross_entropy(logits / temperature, logits.argmax(dim=1))
        (grad,) = torch.autograd.grad(loss, x)
    scale = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x_tilde = images - epsilon * torch.sign(grad) / scale
    with torch.inference_mode():
        out = model(x_tilde)
        return torch.softmax(out.double() / temperature, dim=1).max(dim=1).values, out
