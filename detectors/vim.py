"""ViM: virtual-logit matching (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with
Virtual-logit Matching", CVPR 2022).

Origin u = -pinv(W) b (the point whose logits are all zero). From the ID training features,
the (uncentred about u) covariance S = (1/N) sum_i (h_i - u)(h_i - u)^T; the principal space is
spanned by its ``dim`` leading eigenvectors and R (D x (D - dim)) holds the others. Residual
r(h) = ||(h - u) R||_2, the norm of h - u outside the principal space. alpha = mean_i max_c
logit_c(h_i) / mean_i r(h_i) over the training set. Score = logsumexp(W h + b) - alpha r(h)
(the paper's -(alpha r - energy)). Principal dimension: the authors use 1000 for D >= 2048 and
512 for D >= 768; for smaller D (DenseNet-101 has D = 342) no setting is given, so the default
here is D // 2 (171), the rule later ViM code applies below 768.

Numerical choices that matter: the second-moment matrix, its eigendecomposition, u and alpha
are computed in float64 with no regularisation; in float32 the eigenvalues around the cut can
swap order when they are closer than float32 resolves. The features are read in row blocks
(memory-mapped training features are never copied whole).
"""

from __future__ import annotations

import numpy as np
import torch

from util.io import row_blocks

from .base import Detector


def default_principal_dim(feature_dim: int) -> int:
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


class ViM(Detector):
    name = "vim"
    paper = "Wang et al., CVPR 2022"
    param_help = {"dim": "principal-space dimension (none: 1000 if D >= 2048, 512 if D >= 768, else D // 2)"}

    def __init__(self, dim: int | None = None):
        self.dim = dim

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        """The principal dimension (given, or ``default_principal_dim``) must be below D."""
        dim = default_principal_dim(feature_dim) if self.dim is None else int(self.dim)
        if 0 <= dim < feature_dim:
            return []
        flag = self.flag("dim")
        return [
            f"{flag} {dim} must be below the D = {feature_dim} feature dimensions (the residual space "
            f"needs at least one); lower {flag}"
        ]

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"dim": tuple(sorted({max(1, feature_dim * k // 8) for k in (1, 2, 4, 6)}))}

    def fit(self, fc, train_features, chunk: int = 8192) -> ViM:
        weight, bias = self.fit_residual_space(fc, train_features, chunk)
        origin, residual_basis = self.origin_.numpy(), self.residual_basis_.numpy()
        max_logit, residual = 0.0, 0.0
        for block in row_blocks(train_features, chunk):
            h = block.astype(np.float64)
            max_logit += (h @ weight.T + bias).max(axis=1).sum()
            residual += np.linalg.norm((h - origin) @ residual_basis, axis=1).sum()
        self.alpha_ = float(max_logit / residual)
        return self

    def fit_residual_space(self, fc, train_features, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Sets ``fc_``, ``dim_``, ``origin_`` (u) and ``residual_basis_`` (R) from the training
        features (ViM and ``residual`` share it); returns the head's (W, b) in float64."""
        super().fit(fc)
        weight = self.fc_.weight.detach().double().numpy()
        bias = self.fc_.bias.detach().double().numpy() if self.fc_.bias is not None else np.zeros(len(weight))
        d = weight.shape[1]
        dim = default_principal_dim(d) if self.dim is None else int(self.dim)
        if not 0 <= dim < d:
            raise ValueError(
                f"{self.name} principal dimension must be in [0, {d - 1}] for D = {d}, got {dim}"
            )
        self.dim_ = dim
        origin = -np.linalg.pinv(weight) @ bias
        n = len(train_features)
        second = np.zeros((d, d))
        for block in row_blocks(train_features, chunk):
            x = block.astype(np.float64) - origin
            second += x.T @ x
        eigvals, eigvecs = np.linalg.eigh(second / n)
        residual_basis = eigvecs[:, np.argsort(-eigvals)[dim:]]
        self.origin_ = torch.from_numpy(origin)
        self.residual_basis_ = torch.from_numpy(np.ascontiguousarray(residual_basis))
        return weight, bias

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm((h.double() - self.origin_) @ self.residual_basis_, dim=1)

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        return torch.logsumexp(z.double(), dim=1) - self.alpha_ * self.residual(h), z
