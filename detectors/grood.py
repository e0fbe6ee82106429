"""GrOOD: gradients with respect to an OOD prototype (ElAraby, Sahoo, Pequignot, Novello & Paull,
"GROOD: Gradient-Aware Out-of-Distribution Detection", TMLR 2025; OpenOOD postprocessor ``grood``).

Class prototypes p_c = the class means of the ID training features (c = 1..C) and an OOD prototype
p_0. A nearest-class-prototype classifier has logits s_j = -||h - p_j|| over the C + 1 prototypes;
the gradient of its cross-entropy at the classifier's predicted class with respect to p_0 is
g(h) = softmax(s)_0 (h - p_0) / ||h - p_0|| (the predicted class is never the OOD prototype, so
only this term remains). The bank holds g of the correctly classified training images (argmax
W h + b equal to the label); score = -min_i ||g(x) - g_i||^2, the negated squared distance to the
nearest bank gradient (exact; OpenOOD searches a faiss IVF index approximately, nprobe 4).

``prototype="mean"``: p_0 = the unweighted mean of the C class prototypes (OpenOOD's
``use_proto_mean``) -- the only one of OpenOOD's OOD prototypes that needs neither OOD images
(``use_val_ood``, its config's default), nor the network (blurred uniform-noise images, or mixup of
an intermediate layer run through the rest of the network, the paper's synthetic OOD).
``fraction`` is OpenOOD's ``sampling_ratio`` (default 1.0, its sweep 0.01..1.0): the seeded share
of training images whose gradients form the bank; prototypes use all training images. ImageNet
default 0.05 keeps the float64 bank near 1 GB (OpenOOD's IVF visits about 4% of its lists).
Numerical choices: distances, softmax and gradients in float64; ||h - p_0|| below 1e-12 is divided
by 1e-12 (``torch.nn.functional.normalize``), so g = 0 there. Predictions (ID accuracy) are the
classifier's argmax of W h + b (OpenOOD reports the prototype classifier's).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from util.argtypes import fraction_arg, name_arg
from util.io import row_blocks, take_rows

from .base import Detector
from .statistics import ClassMeanAccumulator, seeded_rows

PROTOTYPES = ("mean",)
BLOCK_ELEMENTS = 1 << 22  # entries of a (test rows x bank rows) block of distances
CHUNK = 8192  # training rows read at a time


def noise_gradients(h: torch.Tensor, prototypes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(B, D) float64: softmax over -||h - p_j|| (the C class prototypes, then ``noise``) at the
    noise entry, times the unit vector (h - noise) / max(||h - noise||, 1e-12)."""
    h = h.double()
    away = h - noise[None, :]
    dist = torch.cat([torch.cdist(h, prototypes), torch.linalg.vector_norm(away, dim=1, keepdim=True)], 1)
    p_noise = torch.softmax(-dist, dim=1)[:, -1:]
    return p_noise * F.normalize(away, dim=1, eps=1e-12)


class GrOOD(Detector):
    name = "grood"
    paper = "ElAraby et al., TMLR 2025"
    needs_each_class = True
    param_help = {
        "prototype": "OOD prototype: 'mean', the mean of the class prototypes (needs no OOD data)",
        "fraction": "share of training images whose gradients form the bank, a seeded random subset",
    }
    param_types = {"prototype": name_arg(PROTOTYPES, "GrOOD prototype"), "fraction": fraction_arg}
    defaults = {"imagenet": {"fraction": 0.05}}

    def __init__(self, prototype: str = "mean", fraction: float = 1.0, seed: int = 0):
        self.prototype = prototype
        self.fraction = fraction
        self.seed = seed

    def check_params(self) -> None:
        if self.prototype not in PROTOTYPES:
            raise ValueError(
                f"GrOOD prototype must be one of {', '.join(PROTOTYPES)}, got {self.prototype!r}"
            )
        if not 0 < self.fraction <= 1:
            raise ValueError(f"GrOOD fraction of training data must be in (0, 1], got {self.fraction}")

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        """OpenOOD's sweep of sampling_ratio (configs/postprocessors/grood.yaml)."""
        return {"fraction": (0.01, 0.1, 0.25, 0.5, 0.7, 1.0)}

    def fit(self, fc, train_features, train_labels) -> GrOOD:
        super().fit(fc)
        labels = np.asarray(train_labels, dtype=np.int64)
        self.prototypes_ = self._class_means(train_features, labels)
        self.noise_ = self.prototypes_.mean(dim=0)
        keep = seeded_rows(len(labels), float(self.fraction), self.seed)
        if keep is not None:
            train_features, labels = take_rows(train_features, keep), labels[keep]
        self.bank_ = self._bank(train_features, labels)
        if len(self.bank_) == 0:
            raise ValueError("GrOOD needs a correctly classified training image; none of those used is")
        self.bank_sq_ = (self.bank_ * self.bank_).sum(dim=1)
        return self

    def _class_means(self, features, labels: np.ndarray) -> torch.Tensor:
        """(C, D) float64 class means; every class must have a training image."""
        acc = ClassMeanAccumulator(self.fc_.out_features, features.shape[1])
        for start, block in zip(range(0, len(labels), CHUNK), row_blocks(features, CHUNK)):
            acc.add(
                torch.from_numpy(block.astype(np.float32, copy=False)),
                torch.from_numpy(labels[start : start + CHUNK]),
            )
        if bool((acc.counts == 0).any()):
            raise ValueError(f"GrOOD needs training features of all {self.fc_.out_features} classes")
        return acc.mean()

    def _bank(self, features, labels: np.ndarray) -> torch.Tensor:
        """g of the rows whose classifier prediction (float32 head) equals their label."""
        out = [torch.zeros(0, features.shape[1], dtype=torch.float64)]
        with torch.inference_mode():
            for start, block in zip(range(0, len(labels), CHUNK), row_blocks(features, CHUNK)):
                h = torch.from_numpy(block.astype(np.float32, copy=False))
                right = self.fc_(h).argmax(dim=1) == torch.from_numpy(labels[start : start + CHUNK])
                out.append(noise_gradients(h[right], self.prototypes_, self.noise_))
        return torch.cat(out)

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-min_i ||g(h) - g_i||^2 over the bank (float64, blocks of test rows)."""
        g = noise_gradients(h, self.prototypes_, self.noise_)
        rows = max(1, BLOCK_ELEMENTS // len(self.bank_))
        out = [torch.zeros(0, dtype=torch.float64)]
        for start in range(0, len(g), rows):
            x = g[start : start + rows]
            sq = (x * x).sum(dim=1, keepdim=True) + self.bank_sq_[None, :] - 2 * x @ self.bank_.T
            out.append(-sq.min(dim=1).values.clamp(min=0))
        return torch.cat(out), self.logits(h)
