"""CARef and CADRef (Ling, Chang, Zhao, Zhao, Chow & Deng, "CADRef: Robust Out-of-Distribution
Detection via Class-Aware Decoupled Relative Feature Leveraging", CVPR 2025, arXiv:2503.00325).

Class-aware average features: m_k = mean of the ID training features h_i whose *predicted* class
argmax_c (W h_i + b)_c is k (grouped by prediction, not by label, as the authors' code does). A
test feature h with logits z = W h + b and predicted class k = argmax z has the relative feature
d = h - m_k.

- CARef: score = -||d||_1 / ||h||_1, the negated relative L1 error.
- CADRef: d is decoupled by the sign alignment of d_j with the predicted class's weight W_kj:
  with s_j = sign(W_kj), E+ = sum_j max(s_j d_j, 0) / ||h||_1 (deviations that raise the
  predicted logit) and E- = sum_j max(-s_j d_j, 0) / ||h||_1 (deviations that lower it).
  Score = -(E+ / S(z) + E- / S_train), where S is a logit-based score and S_train its mean over
  all ID training samples. S (``logit_score``) is Energy (logsumexp z) by default, the authors'
  default; MaxLogit (max z), MSP (max softmax) and GEN are their other choices, GEN as their code
  defines it: with p the softmax and M = max(C // 10, 10) (all classes if C < M),
  S = 1 / sum over the M largest p of p^0.1 (1 - p)^0.1. If S(z) <= 0 the division flips the
  sign of E+'s term; that is kept.
Neither method has a hyperparameter beyond this choice of S. The definitions follow the authors'
code. A class that no training sample is predicted as takes the mean of the training features
*labelled* with it (``unpredicted_classes_`` counts them; fit fails for a class with neither).

Numerical choices: the logits W h + b are computed in float64 (at fit and at scoring; k, also the
returned prediction, is their argmax), because E+ / S(z) amplifies float32 rounding of the
logits where S(z) is small, which made scores depend on the batch (BLAS blocking) at the 1e-5
level. ||h||_1 is clamped below at 1e-12 (this only changes an all-zero feature). Class sums and
the training mean of S are accumulated in float64 over row blocks, in one pass that also takes
the means of all four S, so changing ``logit_score`` needs no refit.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import name_arg
from util.io import row_blocks

from .base import Detector, head_float64

EPS = 1e-12  # lower bound of ||h||_1: only an all-zero feature reaches it
GEN_GAMMA = 0.1  # the official code's GEN gamma
LOGIT_SCORES = ("energy", "maxlogit", "msp", "gen")


def logit_score(z: torch.Tensor, kind: str) -> torch.Tensor:
    """S(z) of float logits (B, C): energy, maxlogit, msp or gen (the CADRef code's definitions)."""
    z = z.double()
    if kind == "energy":
        return torch.logsumexp(z, dim=1)
    if kind == "maxlogit":
        return z.max(dim=1).values
    p = torch.softmax(z, dim=1)
    if kind == "msp":
        return p.max(dim=1).values
    if kind == "gen":
        m = min(max(z.shape[1] // 10, 10), z.shape[1])
        top = torch.topk(p, m, dim=1).values
        return 1.0 / (top**GEN_GAMMA * (1 - top) ** GEN_GAMMA).sum(dim=1)
    raise ValueError(f"unknown CADRef logit score {kind!r}: choose from {', '.join(LOGIT_SCORES)}")


def float64_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """W h + b of a (B, D) batch in float64."""
    return h.double() @ weight.T + bias


def class_aware_means(fc, features, labels, scores=(), chunk: int = 8192):
    """(means (C, D) float64, unpredicted classes, {S: mean over the training set}) in one pass.

    means[k] averages the training features predicted as k (argmax of the float64 logits of
    ``fc``); a class predicted for none falls back to the mean of the features labelled k.
    """
    labels = np.asarray(labels, dtype=np.int64)
    weight, bias = head_float64(fc)
    c, d = weight.shape[0], features.shape[1]
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} training features but {len(labels)} labels")
    pred_sums, label_sums = torch.zeros(c, d, dtype=torch.float64), torch.zeros(c, d, dtype=torch.float64)
    pred_counts = torch.zeros(c, dtype=torch.float64)
    score_sums = dict.fromkeys(scores, 0.0)
    with torch.inference_mode():
        for start, block in zip(range(0, len(labels), chunk), row_blocks(features, chunk)):
            x = torch.from_numpy(block.astype(np.float64))
            z = float64_logits(x, weight, bias)
            pred = z.argmax(dim=1)
            pred_sums.index_add_(0, pred, x)
            pred_counts += torch.bincount(pred, minlength=c).double()
            label_sums.index_add_(0, torch.from_numpy(labels[start : start + len(block)]), x)
            for kind in scores:
                score_sums[kind] += float(logit_score(z, kind).sum())
    label_counts = torch.from_numpy(np.bincount(labels, minlength=c)[:c]).double()
    unpredicted = pred_counts == 0
    missing = unpredicted & (label_counts == 0)
    if missing.any():
        raise ValueError(
            f"classes {missing.nonzero().flatten().tolist()} are neither predicted for nor labelled on any "
            "training feature: their class-aware mean is undefined"
        )
    means = torch.where(
        unpredicted[:, None],
        label_sums / label_counts.clamp(min=1)[:, None],
        pred_sums / pred_counts.clamp(min=1)[:, None],
    )
    n = max(len(labels), 1)
    return means, int(unpredicted.sum()), {k: v / n for k, v in score_sums.items()}


class CARef(Detector):
    """-||h - m_k||_1 / ||h||_1 with m_k the mean training feature of the predicted class k."""

    name = "caref"
    paper = "Ling et al., CVPR 2025"

    def fit(self, fc, train_features, train_labels) -> CARef:
        super().fit(fc)
        self.weight_, self.bias_ = head_float64(self.fc_)
        self.means_, self.unpredicted_classes_, self.train_logit_scores_ = class_aware_means(
            self.fc_, train_features, train_labels, self._train_scores()
        )
        return self

    def _train_scores(self) -> tuple[str, ...]:
        return ()

    def relative_feature(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d = h - m_k (B, D), ||h||_1 (B,) clamped at EPS, logits z = W h + b (B, C)), all float64."""
        x = h.double()
        z = float64_logits(x, self.weight_, self.bias_)
        d = x - self.means_[z.argmax(dim=1)]
        return d, x.abs().sum(dim=1).clamp(min=EPS), z

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, norm, z = self.relative_feature(h)
        return -d.abs().sum(dim=1) / norm, z


class CADRef(CARef):
    """-(E+ / S(z) + E- / mean_train S): CARef's error split by sign(W_kj (h_j - m_kj))."""

    name = "cadref"
    paper = "Ling et al., CVPR 2025"
    param_help = {
        "logit_score": "logit-based score S scaling the errors: energy (the authors' code), maxlogit, msp "
        "or gen"
    }
    param_types = {"logit_score": name_arg(LOGIT_SCORES, "CADRef logit score")}
    fit_params = ()  # fit takes the training means of every S, so any logit_score shares one fit

    def __init__(self, logit_score: str = "energy"):
        self.logit_score = logit_score

    def check_params(self) -> None:
        if self.logit_score not in LOGIT_SCORES:
            raise ValueError(
                f"unknown CADRef logit score {self.logit_score!r}: choose from {', '.join(LOGIT_SCORES)}"
            )

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"logit_score": LOGIT_SCORES}

    def _train_scores(self) -> tuple[str, ...]:
        return LOGIT_SCORES

    def fitted_values(self) -> dict:
        values = super().fitted_values()
        if "train_logit_scores_" in vars(self):
            values["train_logit_score_mean"] = self.train_logit_scores_[self.logit_score]
        return values

    def decoupled_errors(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E+ (B,), E- (B,), logits z (B, C)): the relative L1 errors of the deviations that raise
        and that lower the predicted logit."""
        d, norm, z = self.relative_feature(h)
        aligned = d * torch.sign(self.weight_[z.argmax(dim=1)])
        return aligned.clamp(min=0).sum(dim=1) / norm, (-aligned).clamp(min=0).sum(dim=1) / norm, z

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positive, negative, z = self.decoupled_errors(h)
        scale = logit_score(z, self.logit_score)
        return -(positive / scale + negative / self.train_logit_scores_[self.logit_score]), z
