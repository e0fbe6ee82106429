"""Deep nearest neighbours (Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest
Neighbors", ICML 2022).

z = h / (||h||_2 + 1e-10) for test and ID training features alike; score = -||z - z_(k)||_2,
the negated Euclidean distance to the k-th nearest normalised training feature. (The authors'
faiss code returns squared distances; squaring is monotone, so every metric is the same.)
Paper settings: CIFAR k = 50 with all training images; ImageNet k = 1000 with a random 1%
(``fraction``). Distances come from ||z - t||^2 = 2 - 2 z.t (unit vectors), in blocks of
``block`` test rows so the (block, N) similarity matrix stays small. Predictions (ID accuracy)
are the classifier's argmax of W h + b.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import fraction_arg, positive_int

from .base import Detector, Param


def normalise(h: torch.Tensor) -> torch.Tensor:
    return h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + 1e-10)


class KNN(Detector):
    name = "knn"
    paper = "Sun et al., ICML 2022"
    params = (
        Param("k", ("--knn-k",), "KNN k (default: 50 on CIFAR, 1000 on ImageNet)", positive_int),
        Param(
            "fraction", ("--knn-fraction",), "KNN: share of training features used (default 1)", fraction_arg
        ),
    )
    defaults = {"imagenet": {"k": 1000}}
    fit_params = ("fraction", "seed")

    def __init__(self, k: int = 50, fraction: float = 1.0, seed: int = 0, block: int = 1024):
        if k < 1:
            raise ValueError(f"KNN k must be >= 1, got {k}")
        if not 0 < fraction <= 1:
            raise ValueError(f"KNN fraction of training data must be in (0, 1], got {fraction}")
        self.k = int(k)
        self.fraction = float(fraction)
        self.seed = seed
        self.block = block

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"k": (1, 5, 10, 20, 50, 100, 200)}

    def fit(self, fc, train_features) -> KNN:
        super().fit(fc)
        features = train_features
        n = len(features)
        if self.fraction < 1:
            keep = np.sort(
                np.random.default_rng(self.seed).choice(n, max(1, round(self.fraction * n)), False)
            )
            features = np.asarray(features)[keep]
        if len(features) < self.k:
            raise ValueError(f"KNN k = {self.k} exceeds the {len(features)} training features")
        self.bank_ = normalise(torch.from_numpy(np.array(features, dtype=np.float32)))
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.bank_) < self.k:
            raise ValueError(f"KNN k = {self.k} exceeds the {len(self.bank_)} training features")
        z = normalise(h.float())
        out = []
        for start in range(0, len(z), self.block):
            sim = z[start : start + self.block] @ self.bank_.T
            kth = torch.topk(sim, self.k, dim=1).values[:, -1].double()
            out.append(-torch.sqrt((2 - 2 * kth).clamp(min=0)))
        scores = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
        return scores, self.logits(h)
