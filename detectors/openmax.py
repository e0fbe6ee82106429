"""OpenMax (Bendale & Boult, "Towards Open Set Deep Networks", CVPR 2016).

Activation vectors are the logits v = W h + b. Fit: per class c, the mean activation vector MAV_c
of the training images of class c that the classifier gets right, their distances to MAV_c, and a
Weibull fit to the ``tailsize`` largest of those distances (libMR's ``FitHigh``). Score of a test
image: with its classes ranked by logit, class i of rank r <= alpha gets omega_i = (alpha + 1 - r)
/ alpha (others 0) and w_i = the Weibull CDF of its distance to MAV_i; revised logits
v^_i = v_i (1 - omega_i w_i), unknown logit v^_0 = sum_i v_i omega_i w_i; score = -P(unknown) =
-softmax(v^_0, v^_1..v^_C)_0 (OpenOOD's and pytorch-ood's rule; higher = more ID).

libMR's FitHigh (reproduced, without libmr): the tail is translated so that its smallest value
sits at ``translate`` (x' = x + translate - min(tail)), a two-parameter Weibull is fitted to x'
by maximum likelihood (libMR's weibull_fit: the extreme-value likelihood equation of log x',
scaled to [-1, 0], solved for sigma by a bracketed root search; mu explicit; scale = e^mu, shape
= 1/sigma), and W-score(d) = 1 - exp(-((d + translate - min(tail)) / scale)^shape), 0 where that
argument is negative. libMR stops its root search at a tolerance of 1e-6; this solves the same
equation to machine precision (brentq).

Defaults: tailsize 20 (the paper's code and OpenOOD; pytorch-ood 25); alpha 10 (the paper's
ImageNet setting and pytorch-ood; OpenOOD uses 3), min(alpha, C) used; Euclidean distance
(``euclid_weight`` 1, both libraries; distance = w * Euclidean + (1 - w) * cosine, as pytorch-ood;
the paper's code uses Euclidean / 200 + cosine); translate 10000 (libMR 1.1, which the paper's
code used, and pytorch-ood; the PyPI libmr 0.1.9 that OpenOOD calls defaults to 1); correct
training images only (paper, OpenOOD; pytorch-ood 0.4 uses all of them). A class with fewer than
two correctly classified training images is fitted on all of its training images
(``classes_fitted_on_all_images_`` counts them). Predictions (ID accuracy) are the classifier's
argmax. Everything in float64.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import scipy.optimize
import torch

from util.argtypes import parsed_number, positive_float
from util.io import row_blocks

from .base import Detector, head_float64


def unit_interval(text: str) -> float:
    """argparse type: a weight in [0, 1]."""
    value = parsed_number(text, float, "a weight in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 1]")
    return value


def extreme_value_equation(sigma: float, x0: np.ndarray) -> float:
    """The likelihood equation of an extreme-value (Gumbel-min) scale sigma for data x0 <= 0 with
    max 0: sigma + mean(x0) - sum x0 e^(x0/sigma) / sum e^(x0/sigma); increasing, one root."""
    w = np.exp(x0 / sigma)
    return sigma + x0.mean() - (x0 * w).sum() / w.sum()


def weibull_mle(x: np.ndarray) -> tuple[float, float]:
    """(scale, shape) of the two-parameter Weibull maximum-likelihood fit to ``x`` > 0, by libMR's
    route: y = log x scaled to x0 = (y - max y) / range in [-1, 0]; sigma from the extreme-value
    likelihood equation, bracketed from sqrt(6) std(x0) / pi by halving or doubling (as libMR);
    mu = sigma log mean(e^(x0/sigma)); scale = exp(range mu + max y), shape = 1 / (range sigma)."""
    y = np.log(np.asarray(x, dtype=np.float64))
    top, spread = y.max(), y.max() - y.min()
    if not spread > 0:
        raise ValueError("the Weibull fit needs at least two different values")
    x0 = (y - top) / spread
    lower = upper = math.sqrt(6) * x0.std(ddof=1) / math.pi
    if extreme_value_equation(upper, x0) > 0:
        while extreme_value_equation(lower, x0) > 0:
            lower /= 2
    else:
        while extreme_value_equation(upper, x0) < 0:
            upper *= 2
    sigma = scipy.optimize.brentq(extreme_value_equation, lower, upper, args=(x0,), xtol=1e-300, rtol=1e-15)
    mu = sigma * math.log(np.exp(x0 / sigma).mean())
    return math.exp(spread * mu + top), 1.0 / (spread * sigma)


def fit_high(distances: np.ndarray, tailsize: int, translate: float) -> tuple[float, float, float]:
    """libMR's FitHigh on the ``tailsize`` largest ``distances`` (all if fewer): (scale, shape,
    smallest tail value)."""
    tail = np.sort(np.asarray(distances, dtype=np.float64))[-int(tailsize) :]
    small = float(tail[0])
    scale, shape = weibull_mle(tail + translate - small)
    return scale, shape, small


def w_scores(d: torch.Tensor, scale, shape, small, translate: float) -> torch.Tensor:
    """libMR's W_score: the Weibull CDF at d + translate - small, 0 where that is negative."""
    x = (d + translate - small).clamp(min=0)
    return 1 - torch.exp(-((x / scale) ** shape))


class OpenMax(Detector):
    name = "openmax"
    paper = "Bendale & Boult, CVPR 2016"
    needs_each_class = True
    param_help = {
        "tailsize": "number of largest training distances per class the Weibull is fitted to",
        "alpha": "number of top-ranked classes whose logits are revised",
        "euclid_weight": "weight w of the Euclidean distance; the cosine distance gets 1 - w",
        "translate": "libMR's translate_amount: the smallest tail distance is moved here before the fit",
        "correct_only": "fit on the correctly classified training images only (paper, OpenOOD)",
    }
    param_types = {"euclid_weight": unit_interval, "translate": positive_float}

    def __init__(
        self,
        tailsize: int = 20,
        alpha: int = 10,
        euclid_weight: float = 1.0,
        translate: float = 10000.0,
        correct_only: bool = True,
    ):
        self.tailsize = tailsize
        self.alpha = alpha
        self.euclid_weight = euclid_weight
        self.translate = translate
        self.correct_only = correct_only

    def check_params(self) -> None:
        if self.tailsize < 2:
            raise ValueError(
                f"openmax tailsize must be >= 2 (a Weibull fit needs two values), got {self.tailsize}"
            )
        if self.alpha < 1:
            raise ValueError(f"openmax alpha must be >= 1, got {self.alpha}")
        if not 0 <= self.euclid_weight <= 1:
            raise ValueError(f"openmax euclid_weight must be in [0, 1], got {self.euclid_weight}")
        if not self.translate > 0:
            raise ValueError(f"openmax translate must be > 0, got {self.translate}")

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"tailsize": (10, 20, 50, 100), "alpha": (1, 2, 3, 5, 10), "euclid_weight": (0.0, 0.5, 1.0)}

    def fit(self, fc, train_features, train_labels, chunk: int = 8192) -> OpenMax:
        super().fit(fc)
        self.weight_, self.bias_ = head_float64(self.fc_)
        labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
        used = self.fitting_rows(train_features, labels, chunk)
        sums = torch.zeros(len(self.weight_), len(self.weight_), dtype=torch.float64)
        for start, block in zip(range(0, len(labels), chunk), row_blocks(train_features, chunk)):
            z, y, keep = self.activations(block), labels[start : start + chunk], used[start : start + chunk]
            sums.index_add_(0, y[keep], z[keep])
        self.mavs_ = sums / torch.bincount(labels[used], minlength=len(sums)).double()[:, None]
        distances = torch.cat(
            [
                self.own_distances(self.activations(block), labels[start : start + chunk])
                for start, block in zip(range(0, len(labels), chunk), row_blocks(train_features, chunk))
            ]
        )
        fits = [self.fit_class(c, distances[used & (labels == c)].numpy()) for c in range(len(sums))]
        self.scale_, self.shape_, self.small_ = (torch.tensor(v, dtype=torch.float64) for v in zip(*fits))
        return self

    def fit_class(self, c: int, distances: np.ndarray) -> tuple[float, float, float]:
        """``fit_high`` of class ``c``'s distances, its failure named."""
        try:
            return fit_high(distances, self.tailsize, self.translate)
        except ValueError:
            raise ValueError(
                f"openmax: the Weibull fit of class {c} needs two different distances, got {len(distances)} "
                "training image(s) of it; use more training images"
            ) from None

    def fitting_rows(self, train_features, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        """Boolean (N,): the training rows the fit uses, the correctly classified ones (with
        ``correct_only``) except in classes with fewer than two of them, where all rows."""
        c = len(self.weight_)
        counts = torch.bincount(labels, minlength=c)
        if counts.numel() != c or (counts == 0).any():
            missing = torch.nonzero(counts[:c] == 0)[:10, 0].tolist()
            raise ValueError(f"openmax needs training features of all {c} classes; none of class {missing}")
        if not self.correct_only:
            self.classes_fitted_on_all_images_ = 0
            return torch.ones(len(labels), dtype=torch.bool)
        right = (
            torch.cat([self.activations(block).argmax(dim=1) for block in row_blocks(train_features, chunk)])
            == labels
        )
        few = torch.bincount(labels[right], minlength=c) < 2
        self.classes_fitted_on_all_images_ = int(few.sum())
        return right | few[labels]

    def activations(self, block) -> torch.Tensor:
        """The logits W h + b (float64) of a row block."""
        h = torch.as_tensor(block).double()
        return h @ self.weight_.T + self.bias_

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C): w ||z - MAV_c|| + (1 - w) (1 - cos(z, MAV_c))."""
        w = float(self.euclid_weight)
        euclid = torch.cdist(z, self.mavs_, compute_mode="donot_use_mm_for_euclid_dist")
        if w == 1:
            return euclid
        cosine = 1 - (z @ self.mavs_.T) / (z.norm(dim=1, keepdim=True) * self.mavs_.norm(dim=1)[None, :])
        return w * euclid + (1 - w) * cosine

    def own_distances(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,): the ``distances`` of each row to its own class's MAV only (the fit's; C times fewer)."""
        w, m = float(self.euclid_weight), self.mavs_[y]
        euclid = (z - m).norm(dim=1)
        if w == 1:
            return euclid
        return w * euclid + (1 - w) * (1 - (z * m).sum(dim=1) / (z.norm(dim=1) * m.norm(dim=1)))

    def unknown_probability(self, z: torch.Tensor) -> torch.Tensor:
        """P(unknown) of the OpenMax-recalibrated logits of activation vectors z (B, C)."""
        alpha = min(int(self.alpha), z.shape[1])
        ranked = torch.topk(z, alpha, dim=1).indices
        weights = (alpha - torch.arange(alpha, dtype=torch.float64)) / alpha
        omega = torch.zeros_like(z).scatter_(1, ranked, weights.expand(len(z), alpha))
        w = w_scores(self.distances(z), self.scale_, self.shape_, self.small_, float(self.translate))
        revised = z * (1 - omega * w)
        unknown = (z * omega * w).sum(dim=1, keepdim=True)
        return torch.softmax(torch.cat([unknown, revised], dim=1), dim=1)[:, 0]

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -self.unknown_probability(self.activations(h)), self.logits(h)
