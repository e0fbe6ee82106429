"""IODIN (Regmi, "Image-based Outlier Synthesis With Training Data", the ASCOOD paper, arXiv
2411.10794): ODIN whose input perturbation touches only the input entry of largest gradient.

With g = d CE(softmax(z / T), argmax z) / dx (ODIN's gradient), j* = argmax_j |g_j| over the
C * H * W entries of each image (one value of one channel of one pixel) and c its channel,
x~ = x except x~_j* = x_j* - eps * sign(g_j*) / std_c; score = max_c softmax(z(x~) / T)_c. Every
other step, and the network-level setting, is ODIN's (``detectors.odin.odin_scores``).
Defaults and search space: OpenOOD's configs/postprocessors/iodin.yml (T = 1000, eps = 0.0014;
T in 1, 10, 100, 1000, eps in 0.0014, 0.0028), the same as its ODIN's.
"""

from __future__ import annotations

import torch

from .odin import ODIN, odin_scores


def top_gradient_mask(grad: torch.Tensor) -> torch.Tensor:
    """0/1 mask (B, C, H, W) with a 1 at each image's entry of largest |grad| (the first one on a tie)."""
    flat = grad.abs().flatten(1)
    mask = torch.zeros_like(flat).scatter_(1, flat.argmax(dim=1, keepdim=True), 1.0)
    return mask.view_as(grad)


class IODIN(ODIN):
    name = "iodin"
    paper = "Regmi, arXiv 2024 (ASCOOD)"

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"temperature": (1.0, 10.0, 100.0, 1000.0), "noise": (0.0014, 0.0028)}

    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return odin_scores(
            self.model_, images, self.temperature, self.noise, self.input_std_, top_gradient_mask
        )
