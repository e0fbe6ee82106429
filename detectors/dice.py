"""DICE (Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022).

With m the mean ID training feature and V = m[None, :] * W, keep W[c, j] where
V[c, j] > percentile(V, p). Score = logsumexp((W * mask) h' + b), h' = min(h, tau) (DICE+ReAct,
named ``dice_react``) or h (plain DICE). The masked layer is ``models.route.RouteDICE``. Paper
settings: p = 90 on CIFAR, p = 70 on ImageNet.
"""

from __future__ import annotations

import torch

from models.route import RouteDICE
from util.argtypes import nonnegative_float, percentile_arg

from .base import Detector
from .react import clip


class DICE(Detector):
    name = "dice"
    paper = "Sun & Li, ECCV 2022"
    param_help = {
        "p": "sparsity percentile p: keep the weights whose contribution m * W is above it",
        "clip_threshold": "activation clipping threshold tau, h' = min(h, tau), for DICE+ReAct (none: no "
        "clipping)",
    }
    param_types = {"p": percentile_arg, "clip_threshold": nonnegative_float}
    defaults = {"imagenet": {"p": 70.0}}
    fit_params = ("p",)

    def __init__(self, p: float = 90.0, clip_threshold: float | None = None):
        self.p = p
        self.clip_threshold = clip_threshold

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"p": (10.0, 30.0, 50.0, 70.0, 90.0)}

    @classmethod
    def run_names(cls) -> list[str]:
        return ["dice", "dice_react"]

    def run_name(self) -> str:
        return "dice" if self.clip_threshold is None else "dice_react"

    def fit(self, fc, mean_feature) -> DICE:
        super().fit(fc)
        self.route_ = RouteDICE(self.fc_, mean_feature, self.p)
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.route_(clip(h, self.clip_threshold))
