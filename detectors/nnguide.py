"""NNGuide: nearest-neighbour guidance (Park, Jung & Teoh, "Nearest Neighbor Guidance for
Out-of-Distribution Detection", ICCV 2023).

Bank: a seeded random share ``fraction`` of the ID training features, each normalised and scaled
by its own confidence, g_i = (h_i / ||h_i||) * E(h_i) with E = logsumexp(W h + b) (energy).
Score = E(h) * mean of the k largest similarities (h / ||h||) . g_i over the bank: the classifier's
confidence guided by how typical of confident training features h is.

Defaults k = 10 with a random 1% of the training set as the bank (``fraction`` 0.01): the authors'
code (roomo7time/nnguide: ``knn_k: 10``, a random 1% bank; their ImageNet ResNet-50 is also
ReAct-clipped, not done here).

Memory: the bank is held as float32 (normalised and scaled in blocks); a bank over 4 GiB is
refused with the fraction that fits. k must not exceed the bank's rows.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import fraction_arg
from util.io import take_rows

from .base import Detector
from .knn import bank_problems
from .statistics import seeded_rows

MAX_BANK_BYTES = 4 << 30


def unit_rows(h: torch.Tensor) -> torch.Tensor:
    return h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp(min=1e-30)


class NNGuide(Detector):
    name = "nnguide"
    paper = "Park et al., ICCV 2023"
    param_help = {
        "k": "number of nearest neighbours averaged",
        "fraction": "share of training features in the bank, a seeded random subset",
    }
    param_types = {"fraction": fraction_arg}
    fit_params = ("fraction", "seed")

    def __init__(self, k: int = 10, fraction: float = 0.01, seed: int = 0, block: int = 1024):
        self.k = k
        self.fraction = fraction
        self.seed = seed
        self.block = block

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        return bank_problems(self, num_train)

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        # the fit's parameter first, so a sweep fits once per fraction
        return {"fraction": (0.01, 0.1), "k": (1, 5, 10, 50, 100)}

    def fit(self, fc, train_features) -> NNGuide:
        super().fit(fc)
        n = len(train_features)
        keep = seeded_rows(n, float(self.fraction), self.seed)
        count = n if keep is None else len(keep)
        row_bytes = train_features.shape[1] * 4
        if count * row_bytes > MAX_BANK_BYTES:
            raise ValueError(
                f"an NNGuide bank of {count} training features would take {count * row_bytes / 2**30:.1f} "
                f"GiB of memory (at most {MAX_BANK_BYTES / 2**30:.0f} GiB); pass --nnguide-fraction "
                f"{MAX_BANK_BYTES // row_bytes / n:.3g} or less"
            )
        rows = np.arange(n) if keep is None else keep
        bank = torch.from_numpy(np.array(take_rows(train_features, rows), dtype=np.float32))
        with torch.inference_mode():
            for start in range(0, len(bank), 8192):  # in place, block by block: no float64 copy
                block = bank[start : start + 8192]
                energy = torch.logsumexp(self.fc_(block).double(), dim=1)
                scale = energy / torch.linalg.vector_norm(block.double(), dim=1).clamp(min=1e-30)
                block.mul_(scale.float()[:, None])
        self.bank_ = bank
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.bank_) < self.k:
            raise ValueError(f"NNGuide k = {self.k} exceeds the bank of {len(self.bank_)} training features")
        z = self.logits(h)
        q = unit_rows(h.float())
        guide = [torch.zeros(0, dtype=torch.float64)]
        for start in range(0, len(q), self.block):
            sim = q[start : start + self.block] @ self.bank_.T
            guide.append(torch.topk(sim, int(self.k), dim=1).values.double().mean(dim=1))
        return torch.logsumexp(z.double(), dim=1) * torch.cat(guide), z
