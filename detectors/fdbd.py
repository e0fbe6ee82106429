"""fDBD: fast decision-boundary-based detection (Liu & Qin, "Fast Decision Boundary based
Out-of-Distribution Detector", ICML 2024).

For the predicted class yhat = argmax z, z = W h + b, the distance of h to the decision boundary
between yhat and class c in feature space is |z_yhat - z_c| / ||w_yhat - w_c||. Score = the mean of
these distances over the C - 1 other classes, divided by ||h - mu|| with mu the mean ID training
feature (the paper's regulariser; ``normalizer="norm"`` divides by ||h|| instead). The
weight-row distances ||w_yhat - w_c|| are computed in float64.
"""

from __future__ import annotations

import torch

from util.argtypes import name_arg

from .base import Detector
from .statistics import mean_feature

NORMALIZERS = ("distance", "norm")


class FDBD(Detector):
    name = "fdbd"
    paper = "Liu & Qin, ICML 2024"
    param_help = {"normalizer": "divide by ||h - training mean|| ('distance', the paper's) or ||h|| ('norm')"}
    param_types = {"normalizer": name_arg(NORMALIZERS, "fDBD normalizer")}
    fit_params = ()

    def __init__(self, normalizer: str = "distance"):
        self.normalizer = normalizer

    def check_params(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise ValueError(
                f"fDBD normalizer must be one of {', '.join(NORMALIZERS)}, got {self.normalizer!r}"
            )

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"normalizer": NORMALIZERS}

    def fit(self, fc, train_features) -> FDBD:
        super().fit(fc)
        w = self.fc_.weight.detach().double()
        self.train_mean_ = torch.from_numpy(mean_feature(train_features))
        gaps = torch.cdist(w, w)  # ||w_p - w_c||
        gaps.fill_diagonal_(1.0)  # the predicted class's own term is |z_p - z_p| / 1 = 0
        self.boundary_scale_ = gaps
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        zd = z.double()
        top, pred = zd.max(dim=1)
        distances = (top[:, None] - zd).abs() / self.boundary_scale_[pred]
        mean_distance = distances.sum(dim=1) / max(zd.shape[1] - 1, 1)
        x = h.double()
        if self.normalizer == "distance":
            x = x - self.train_mean_
        return mean_distance / torch.linalg.vector_norm(x, dim=1), z
