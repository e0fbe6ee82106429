"""KL-Matching (Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, "Scaling
Out-of-Distribution Detection for Real-World Settings", ICML 2022).

Templates: d_c = the mean softmax posterior of the ID images the classifier predicts as class c.
Score = -min_c KL(p || d_c) with p = softmax(W h + b) and KL(p || q) = sum_k p_k log(p_k / q_k).
A class that no ID image is predicted as gets the one-hot template e_c.

Which ID images: the ID training set here (the cached training features, the statistics every
fit reads); the paper uses held-out validation images, on which the network is less confident,
so its templates are flatter. Softmax, templates and KL are computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from util.io import row_blocks

from .base import Detector


def kl_to_templates(p: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """(B, C') matrix of KL(p_i || d_c) = sum_k p_k log p_k - sum_k p_k log d_ck in float64, with
    0 log 0 = 0 and p log(p / 0) = inf, by two matrix products (no (B, C', C) array)."""
    p = p.double()
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim=1, keepdim=True)
    zero = templates <= 0
    logd = torch.where(zero, torch.zeros_like(templates), torch.log(templates.clamp(min=1e-300)))
    kl = plogp - p @ logd.T
    infinite = ((p > 0).double() @ zero.double().T) > 0
    return kl.masked_fill(infinite, torch.inf)


class KLMatching(Detector):
    name = "kl_matching"
    aliases = ("klm",)
    paper = "Hendrycks et al., ICML 2022"
    family = "logit"

    def fit(self, fc, train_features, chunk: int = 8192) -> KLMatching:
        super().fit(fc)
        c = self.fc_.out_features
        sums = torch.zeros(c, c, dtype=torch.float64)
        counts = torch.zeros(c, dtype=torch.float64)
        with torch.inference_mode():
            for block in row_blocks(train_features, chunk):
                z = self.fc_(torch.from_numpy(block.astype(np.float32, copy=False)))
                p = torch.softmax(z.double(), dim=1)
                pred = z.argmax(dim=1)
                sums.index_add_(0, pred, p)
                counts += torch.bincount(pred, minlength=c).double()
        templates = torch.eye(c, dtype=torch.float64)
        seen = counts > 0
        templates[seen] = sums[seen] / counts[seen, None]
        self.templates_ = templates
        self.classes_never_predicted_ = int((~seen).sum())
        return self

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.double(), dim=1)
        return -kl_to_templates(p, self.templates_).min(dim=1).values
