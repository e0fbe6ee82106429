"""Temperature scaling (Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks",
ICML 2017), as OpenOOD's ``TemperatureScalingPostprocessor`` and pytorch-ood's
``TemperatureScaling`` use it for OOD detection.

Score = max_c softmax(z / T)_c with z = W h + b: MSP at a temperature T > 0 fitted to minimise the
negative log-likelihood NLL(T) = mean_i [logsumexp(z_i / T) - z_{i,y_i} / T] of labelled ID data.
Here that data is the cached ID training features and labels (this project keeps no ID
validation split; the paper and both libraries use held-out images, on which the network is
less confident, so their T is typically larger), or a seeded random share ``fraction`` of them. Defaults:
all of them on CIFAR (50,000 x 10 logits); 2% on ImageNet (25,623 images, about the 25,000
held-out images of the paper, and 100 MB of logits instead of 5 GB). A given ``temperature`` is
used as it is, without a fit.

The fit is exact and deterministic: with beta = 1/T, NLL is convex in beta (a mean of
logsumexp of functions linear in beta) with slope mean_i sum_c p_ic (z_ic - z_{i,y_i}),
p_i = softmax(beta z_i), non-decreasing in beta; its one zero is found by Brent's method
(scipy.optimize.brentq) on log beta over T in [1e-4, 1e4], in float64 to machine precision.
The libraries instead run torch's L-BFGS on T itself (float32, lr 0.01, at most 50 iterations,
no line search; T starts at 1.5 in OpenOOD, following the paper's code, and at 1 in pytorch-ood):
it moves T slowly and can stop well short of the minimiser (CIFAR-10 DenseNet-101, 200 training
images: T = 1.16 from 1, 1.56 from 1.5; here 1.678) or, from 1 toward a T below 1, overshoot to
T < 0. Run to convergence (strong Wolfe line search, float64), L-BFGS reaches the T found here
(tests/detectors/test_temp_scaling.py).
No minimiser exists when every training image is classified correctly (NLL keeps falling as
T -> 0) or when the labels are no better predicted than by the mean logit (T -> infinity): fit
then raises ValueError naming the flag that sets T. The softmax is taken in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq

from util.argtypes import fraction_arg, positive_float
from util.io import row_blocks, take_rows

from .base import Detector
from .statistics import seeded_rows

T_RANGE = (1e-4, 1e4)  # the temperatures the fit searches
CHUNK = 16384  # rows of logits per block in the fit


def nll_and_slope(beta: float, logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(NLL, d NLL / d beta) of softmax(beta z) at the labels, float64, over row blocks."""
    nll = slope = 0.0
    for start in range(0, len(labels), CHUNK):
        z = torch.from_numpy(logits[start : start + CHUNK]).double()
        y = torch.from_numpy(labels[start : start + CHUNK]).long()[:, None]
        gap = z - z.gather(1, y)  # z - z_y: 0 at the label
        log_p = torch.log_softmax(beta * gap, dim=1)
        nll -= float(log_p.gather(1, y).sum())
        slope += float((log_p.exp() * gap).sum())
    return nll / len(labels), slope / len(labels)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in ``T_RANGE`` minimising NLL(T) of (N, C) ``logits`` at ``labels``: the zero of the
    slope in beta = 1/T (non-decreasing, as NLL is convex in beta), by brentq on log beta."""
    if len(labels) == 0:
        raise ValueError("no labelled images to fit the temperature on")
    lo, hi = -math.log(T_RANGE[1]), -math.log(T_RANGE[0])  # log beta

    def slope(log_beta: float) -> float:
        return nll_and_slope(math.exp(log_beta), logits, labels)[1]

    if slope(lo) >= 0:
        raise ValueError(
            f"the NLL of the {len(labels)} labelled images keeps falling as T rises above "
            f"{T_RANGE[1]:g}: the logits predict their labels no better than their mean does"
        )
    if slope(hi) <= 0:
        wrong = int((logits.argmax(axis=1) != labels).sum())
        raise ValueError(
            f"the NLL of the {len(labels)} labelled images keeps falling as T falls below "
            f"{T_RANGE[0]:g} ({wrong} misclassified): no temperature minimises it"
        )
    log_beta = brentq(slope, lo, hi, xtol=1e-13, rtol=4 * np.finfo(float).eps)
    return math.exp(-log_beta)


class TemperatureScaling(Detector):
    name = "temp_scaling"
    paper = "Guo et al., ICML 2017"
    family = "logit"
    param_help = {
        "temperature": "temperature T of max softmax(z / T) (none: T minimising the NLL of the ID "
        "training labels)",
        "fraction": "share of training images the temperature is fitted on, a seeded random subset",
    }
    param_types = {"temperature": positive_float, "fraction": fraction_arg}
    defaults = {"imagenet": {"fraction": 0.02}}

    def __init__(self, temperature: float | None = None, fraction: float = 1.0, seed: int = 0):
        self.temperature = temperature
        self.fraction = fraction
        self.seed = seed

    def check_params(self) -> None:
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temp_scaling temperature must be > 0, got {self.temperature}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"temp_scaling fraction of training data must be in (0, 1], got {self.fraction}")

    def inert_params(self) -> set[str]:
        return {"fraction", "seed"} if self.temperature is not None else set()

    def needs(self) -> tuple[str, ...]:
        return () if self.temperature is not None else ("train_features", "train_labels")

    def fit(self, fc, train_features=None, train_labels=None) -> TemperatureScaling:
        super().fit(fc)
        if self.temperature is not None:
            self.temperature_ = float(self.temperature)
            return self
        if train_features is None or train_labels is None:
            raise ValueError("temp_scaling without a temperature needs the ID training features and labels")
        logits, labels = self._training_logits(train_features, np.asarray(train_labels, dtype=np.int64))
        try:
            self.temperature_ = fit_temperature(logits, labels)
        except ValueError as error:
            raise ValueError(f"temp_scaling: {error}; set T with {self.flag('temperature')}") from None
        self.nll_at_1_ = nll_and_slope(1.0, logits, labels)[0]
        self.nll_ = nll_and_slope(1 / self.temperature_, logits, labels)[0]
        return self

    def _training_logits(self, features, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32 logits of the head, labels) of the seeded share ``fraction`` of the rows."""
        keep = seeded_rows(len(labels), float(self.fraction), self.seed)
        if keep is not None:
            features, labels = take_rows(features, keep), labels[keep]
        c = self.fc_.out_features
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"temp_scaling: training labels must be class indices 0..{c - 1}")
        blocks = [np.zeros((0, c), np.float32)]
        with torch.inference_mode():
            for block in row_blocks(features, CHUNK):
                blocks.append(self.fc_(torch.from_numpy(block.astype(np.float32, copy=False))).numpy())
        return np.concatenate(blocks), labels

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """max_c softmax(z / T)_c, float64."""
        return torch.softmax(logits.double() / self.temperature_, dim=1).max(dim=1).values
