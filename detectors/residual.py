"""Residual: the residual part of ViM alone (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with
Virtual-logit Matching", CVPR 2022, which scores it on its own as "Residual"; OpenOOD's
``ResidualPostprocessor``).

Origin u = -pinv(W) b; R (D x (D - dim)) spans the complement of the ``dim`` leading eigenvectors
of the uncentred second moment (1/N) sum_i (h_i - u)(h_i - u)^T of the ID training features,
exactly as ``vim`` fits it (``ViM.fit_residual_space``, float64, no regularisation). Score =
-||(h - u) R||_2: a small norm outside the principal space means in-distribution. No logits
enter the score (no alpha is fitted); predictions are the classifier's argmax of W h + b.
Principal dimension: ViM's rule (1000 for D >= 2048, 512 for D >= 768, else D // 2), where
OpenOOD's config fixes 512 (written for ViT-B, D = 768, where the rule gives 512 too).
"""

from __future__ import annotations

import torch

from .vim import ViM


class Residual(ViM):
    name = "residual"
    paper = "Wang et al., CVPR 2022"

    def fit(self, fc, train_features, chunk: int = 8192) -> Residual:
        self.fit_residual_space(fc, train_features, chunk)
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-||(h - u) R||_2 (float64)."""
        return -self.residual(h), self.logits(h)
