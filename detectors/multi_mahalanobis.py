"""Mahalanobis on several layers, combined (Lee, Lee, Lee & Shin, "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018, the "feature
ensemble"; pytorch-ood 0.4's ``MultiMahalanobis``).

For each tapped layer l, f_l(x) is the layer's output averaged over its positions (the ``pooled``
statistic of ``util.layer_taps``). From the ID training images: class means mu_lc and one tied
covariance Sigma_l per layer (``detectors.mahalanobis``: float64, maximum likelihood, pseudo-
inverse, no ridge). Per layer M_l(x) = max_c -(f_l - mu_lc)^T Sigma_l^+ (f_l - mu_lc), and the
score is sum_l alpha_l M_l(x). The paper fits the alpha_l by logistic regression on validation
OOD (or adversarial) samples, which is not post-hoc on ID data alone; the default here is
pytorch-ood's, alpha_l = 1 for every layer (``weights`` gives the paper's if known). No input
pre-processing: that is ``mds_ensemble``. pytorch-ood scores -1/2 of the same distances with a
covariance not divided by N (plus 1e-6 I): a positive multiple of this score. Predictions are
the classifier's own argmax of W h + b.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from util.argtypes import parsed_number
from util.layer_taps import LayerArrays

from .base import LayerDetector
from .mahalanobis import class_means_and_tied_precision, squared_distances


def weight_list(text: str) -> tuple[float, ...]:
    """argparse type: one weight per tapped layer, comma- or space-separated (1,1,0.5)."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one number per layer, e.g. 1,1,0.5")
    return tuple(parsed_number(v, float, "one number per layer") for v in parts)


def check_weights(weights, flag: str) -> None:
    """ValueError unless ``weights`` is None or finite numbers."""
    if weights is not None and (len(weights) == 0 or not np.all(np.isfinite(np.asarray(weights, float)))):
        raise ValueError(f"{flag}: weights must be finite numbers, one per layer (got {weights!r})")


def layer_weights(weights, num_layers: int, flag: str) -> torch.Tensor:
    """(L,) float64: ``weights``, or 1 per layer when None; ValueError when the count differs."""
    if weights is None:
        return torch.ones(num_layers, dtype=torch.float64)
    if len(weights) != num_layers:
        raise ValueError(f"{flag} gives {len(weights)} weights for {num_layers} layers: give one per layer")
    return torch.tensor([float(w) for w in weights], dtype=torch.float64)


def layer_gaussians(train_layers: LayerArrays, train_labels, num_classes: int):
    """Per layer, (class means (C, D_l), tied precision (D_l, D_l)) float64 tensors of the pooled
    outputs of ``train_layers``."""
    if "pooled" not in train_layers.arrays or not train_layers.arrays["pooled"]:
        raise ValueError("the training layer statistics hold no pooled outputs (util.layer_taps 'pooled')")
    out = []
    for array in train_layers.arrays["pooled"]:
        means, precision = class_means_and_tied_precision(array, train_labels, num_classes)
        out.append((torch.from_numpy(means), torch.from_numpy(precision)))
    return out


def layer_scores(pooled, gaussians) -> torch.Tensor:
    """(B, L) float64: max_c -(f_l - mu_lc)^T P_l (f_l - mu_lc) of each layer's pooled rows."""
    if len(pooled) != len(gaussians):
        raise ValueError(f"{len(pooled)} layers given to score, {len(gaussians)} fitted")
    columns = [
        -squared_distances(f.double(), means.to(f.device), precision.to(f.device)).min(dim=1).values
        for f, (means, precision) in zip(pooled, gaussians)
    ]
    return torch.stack(columns, dim=1)


class MultiMahalanobis(LayerDetector):
    name = "multi_mahalanobis"
    paper = "Lee et al., NeurIPS 2018"
    taps = ("pooled",)
    needs_each_class = True
    param_help = {"weights": "per-layer weights alpha_l of the sum, one per tapped layer (none: 1 each)"}
    param_types = {"weights": weight_list}
    fit_params = ()  # the weights only combine the fitted per-layer scores

    def __init__(self, weights: tuple[float, ...] | None = None):
        self.weights = weights

    def check_params(self) -> None:
        check_weights(self.weights, self.flag("weights"))

    def fit(self, fc, train_layers: LayerArrays, train_labels) -> MultiMahalanobis:
        super().fit(fc)
        layer_weights(self.weights, len(train_layers.names), self.flag("weights"))
        self.layers_ = tuple(train_layers.names)
        self.gaussians_ = layer_gaussians(train_layers, train_labels, self.fc_.out_features)
        return self

    def score_layers(self, h: torch.Tensor, layers: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """sum_l alpha_l max_c -(f_l - mu_lc)^T P_l (f_l - mu_lc) (float64), and W h + b."""
        per_layer = layer_scores(layers["pooled"], self.gaussians_)
        weights = layer_weights(self.weights, len(self.gaussians_), self.flag("weights"))
        return per_layer @ weights, self.logits(h)
