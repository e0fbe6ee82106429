"""NECO: neural-collapse-based detection (Ammar, Belkhir, Popescu, Manzanera & Franchi, "NECO:
NEural Collapse Based Out-of-distribution Detection", ICLR 2024).

From the ID training features: the per-dimension mean m and standard deviation s (population,
as sklearn's StandardScaler; a constant dimension gets s = 1), and the principal axes of the
standardised features x = (h - m) / s (PCA, eigenvectors of their covariance by decreasing
eigenvalue). With P the projection on the first ``dim`` axes,
score = ||P x|| / ||x||: under neural collapse ID features lie in the span of the class means,
OOD features mostly outside it. ``maxlogit=True`` multiplies the score by max_c z_c, which the
authors do for their vision transformers (not for ResNets).

Default ``dim``: the paper tunes it per model and gives no rule; C - 1, the dimension of the
simplex ETF of the C class means that neural collapse predicts, is used here (``None``; at most
D). Covariance and eigendecomposition in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from util.io import row_blocks

from .base import Detector
from .statistics import mean_and_std


class NECO(Detector):
    name = "neco"
    paper = "Ammar et al., ICLR 2024"
    param_help = {
        "dim": "principal dimensions kept (none: C - 1, the class-mean simplex)",
        "maxlogit": "multiply the score by the max logit (the authors' ViT setting)",
    }
    fit_params = ()

    def __init__(self, dim: int | None = None, maxlogit: bool = False):
        self.dim = dim
        self.maxlogit = maxlogit

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        """A given ``dim`` must lie in [1, D] (the default, C - 1, is capped at D)."""
        if self.dim is None or 1 <= self.dim <= feature_dim:
            return []
        flag = self.flag("dim")
        return [f"{flag} {self.dim} exceeds the D = {feature_dim} feature dimensions; lower {flag}"]

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"dim": tuple(d for d in (5, 9, 20, 50, 100, 200, 500) if d < feature_dim) or (1,)}

    def fit(self, fc, train_features, chunk: int = 8192) -> NECO:
        super().fit(fc)
        n, d = train_features.shape
        mean, std = mean_and_std(train_features, chunk)
        std[std == 0] = 1.0
        second = np.zeros((d, d))
        for block in row_blocks(train_features, chunk):
            x = (block.astype(np.float64) - mean) / std
            second += x.T @ x
        eigvals, eigvecs = np.linalg.eigh(second / n)  # the standardised features have mean 0
        self.mean_ = torch.from_numpy(mean)
        self.std_ = torch.from_numpy(std)
        self.axes_ = torch.from_numpy(np.ascontiguousarray(eigvecs[:, np.argsort(-eigvals)]))
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        dim = min(z.shape[1] - 1, h.shape[1]) if self.dim is None else int(self.dim)
        if not 1 <= dim <= h.shape[1]:
            raise ValueError(f"NECO dim must be in [1, {h.shape[1]}], got {dim}")
        x = (h.double() - self.mean_) / self.std_
        kept = torch.linalg.vector_norm(x @ self.axes_[:, :dim], dim=1)
        score = kept / torch.linalg.vector_norm(x, dim=1)
        if self.maxlogit:
            score = score * z.double().max(dim=1).values
        return score, z
