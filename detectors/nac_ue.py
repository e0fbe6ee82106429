"""Neuron Activation Coverage, NAC-UE (Liu, Tian, Li, Ma & Wang, "Neuron Activation Coverage:
Rethinking Out-of-distribution Detection and Generalization", ICLR 2024; code BierOne/ood_coverage).

Neuron state of channel n of layer l: s = sigmoid(alpha_l v), v = (sum_pos z) (sum_pos g),
g = dKL(u || softmax(logits))/dz (the cache's ``nac`` kind, pooled as the authors' code pools conv
outputs), and, with ``penultimate`` (the authors' ``avgpool`` layer, in all their settings), of the
penultimate features h themselves, v = h * W^T (softmax(W h + b) - 1/C), exact for a linear head. Fit: a
histogram per neuron over M_l - 1 bins [t_k, t_k+1) of the authors' thresholds (``logspace(1e3,
M)``: t = log_1000(linspace(1, sqrt(1000), M/2)) mirrored about 0.5, the last raised to 1.01,
then 1.2: dense near s = 0.5, so M must be even), counted on a class-balanced seeded subset of
``train_images`` training images (floor(train_images / C) per class, at most the smallest
class's count). Coverage of a bin: phi = min(count / O*_l, 1). Score = mean over layers of the
mean over neurons of phi of the bin each neuron's state falls into (higher = more ID).

Defaults: the authors' per-layer settings for their README's layers "layer1 layer2 layer3 avgpool"
(configs/postprocessors/nac/resnet/nac_{cifar10,cifar100,imagenet}.yml, ResNet-18 on CIFAR,
ResNet-50 on ImageNet), matched in order to three tapped layers and the penultimate: DenseNet-101's
default block1..3 take layer1..3's values. alpha, M and O* each take one value per layer (comma
list, tapped layers in order, then the penultimate) or one for all; a run tapping another number
of layers (ResNet-50's default layer1..4) is refused with a message: give one value or a list of
its length, or the authors' layers (--feature-layers layer1,layer2,layer3). 1000 training images
(their ``valid_num``). pytorch-ood 0.4's ``NACUE`` (``ai_coded``) differs: the mean over
positions of z * g instead of the sums' product, geometric bins dense near 0 and 1, all fitting
images, layer scores summed (L times the mean here) and no penultimate layer from h.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from util.argtypes import parsed_number
from util.io import take_rows

from .base import LayerDetector

PER_LAYER = ("alpha", "bins", "o_star")


def per_layer(convert: type, expected: str):
    """argparse type: one number (every layer) or a comma list of numbers (one per layer)."""

    def parse(text: str):
        values = tuple(parsed_number(t.strip(), convert, expected) for t in text.split(","))
        if any(not v > 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return values[0] if len(values) == 1 else values

    return parse


def thresholds(m: int) -> np.ndarray:
    """The authors' M bin edges (float64): log-spaced halves mirrored about 0.5, then 1.01 and 1.2."""
    half = np.log(np.linspace(1.0, np.sqrt(1e3), m // 2)) / np.log(1e3)
    edges = np.concatenate([half[:-1], (1.0 - half)[::-1]])
    edges[-1] += 1e-2
    return np.append(edges, 1.2)


def bin_index(states: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(B, N) int64: k with edges[k] <= s < edges[k + 1], or -1 outside every bin (NaN)."""
    k = torch.searchsorted(edges, states.contiguous(), right=True) - 1
    return torch.where((k >= 0) & (k < len(edges) - 1), k, -1)


def balanced_subset(labels: np.ndarray, num_classes: int, total: int, seed: int) -> np.ndarray:
    """Sorted rows: per class a seeded floor(total / C) of its rows, at most the smallest class's count."""
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    per_class = min(total // num_classes, int(counts.min()))
    rng = np.random.default_rng(seed)
    rows = [np.flatnonzero(labels == c)[rng.permutation(int(n))[:per_class]] for c, n in enumerate(counts)]
    return np.sort(np.concatenate(rows))


class NACUE(LayerDetector):
    name = "nac_ue"
    paper = "Liu et al., ICLR 2024"
    taps = ("nac",)
    needs_each_class = True
    param_help = {
        "alpha": "sigmoid steepness of the states (one value, or one per layer: tapped, then penultimate)",
        "bins": "histogram bins M per neuron, even (one value, or one per layer)",
        "o_star": "count O* at which a bin is fully covered (one value, or one per layer)",
        "train_images": "class-balanced seeded training images the histograms are counted on",
        "penultimate": "also the penultimate features h as a layer (the authors' avgpool)",
    }
    param_types = {
        "alpha": per_layer(float, "numbers > 0"),
        "bins": per_layer(int, "even integers >= 4"),
        "o_star": per_layer(float, "numbers > 0"),
    }
    # The authors' values for (layer1, layer2, layer3, avgpool), from their configs.
    defaults = {
        "CIFAR-10": {
            "alpha": (0.001, 0.001, 1000.0, 100.0),
            "bins": (500, 50, 500, 50),
            "o_star": (100.0, 5.0, 100.0, 50.0),
        },
        "CIFAR-100": {
            "alpha": (0.005, 1.0, 10.0, 50.0),
            "bins": (50, 50, 1000, 50),
            "o_star": (5.0, 500.0, 500.0, 50.0),
        },
        "imagenet": {
            "alpha": (1.0, 0.01, 300.0, 3000.0),
            "bins": (1000, 500, 50, 50),
            "o_star": (5000.0, 50.0, 500.0, 10.0),
        },
    }
    fit_params = ("alpha", "bins", "train_images", "penultimate", "seed")

    def __init__(
        self,
        alpha: float | tuple = 100.0,
        bins: int | tuple = 50,
        o_star: float | tuple = 50.0,
        train_images: int = 1000,
        penultimate: bool = True,
        seed: int = 0,
    ):
        self.alpha = alpha
        self.bins = bins
        self.o_star = o_star
        self.train_images = train_images
        self.penultimate = penultimate
        self.seed = seed

    def check_params(self) -> None:
        for name in PER_LAYER:
            if any(not v > 0 for v in np.atleast_1d(getattr(self, name))):
                raise ValueError(f"nac_ue {name} must be > 0, got {getattr(self, name)}")
        if any(int(m) != m or m < 4 or m % 2 for m in np.atleast_1d(self.bins)):
            raise ValueError(f"nac_ue bins must be even integers >= 4 (the authors' edges), got {self.bins}")
        if self.train_images < 1:
            raise ValueError(f"nac_ue train_images must be >= 1, got {self.train_images}")

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        problems = super().check_sizes(feature_dim, num_classes, num_train)
        if self.train_images < num_classes:
            problems.append(
                f"{self.flag('train_images')} {self.train_images} gives no image to some of the "
                f"{num_classes} classes (floor(train_images / C) each); raise it to at least {num_classes}"
            )
        return problems

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"alpha": (1.0, 10.0, 50.0, 100.0, 1000.0, 3000.0), "o_star": (5.0, 10.0, 50.0, 100.0, 500.0)}

    def check_layers(self, layers: tuple[str, ...]) -> list[str]:
        """One message naming every per-layer flag whose list does not fit the tapped layers."""
        num_layers = len(layers) + int(self.penultimate)
        wrong = [n for n in PER_LAYER if np.ndim(getattr(self, n)) and len(getattr(self, n)) != num_layers]
        if not wrong:
            return []
        given = ", ".join(f"{self.flag(n)} ({len(getattr(self, n))} values)" for n in wrong)
        return [
            f"{given} for {num_layers} layers ({len(layers)} tapped, then the penultimate; the defaults "
            "are the authors' for 3 tapped layers): give one value or one per layer, or tap 3 layers "
            "with --feature-layers"
        ]

    def layer_values(self, name: str, num_layers: int) -> list:
        """The value of per-layer parameter ``name`` for each of ``num_layers`` layers."""
        value = getattr(self, name)
        if np.ndim(value) == 0:
            return [value] * num_layers
        if len(value) != num_layers:
            raise ValueError(
                f"{self.flag(name)} gives {len(value)} values for {num_layers} layers (tapped layers, "
                "then the penultimate; the defaults are the authors' for 3 tapped layers): give one "
                "value or one per layer, or tap 3 layers with --feature-layers"
            )
        return list(value)

    def fit(self, fc, train_layers, train_labels, train_features) -> NACUE:
        super().fit(fc)
        labels = np.asarray(train_labels, dtype=np.int64)
        num_classes = self.fc_.out_features
        if (
            np.bincount(labels, minlength=num_classes)[:num_classes].min() == 0
            or self.train_images < num_classes
        ):
            raise ValueError(f"nac_ue needs training images of all {num_classes} classes, at least one each")
        rows = balanced_subset(labels, num_classes, int(self.train_images), self.seed)
        values = [take_rows(a, rows) for a in train_layers.arrays["nac"]]
        if self.penultimate:
            h = torch.from_numpy(take_rows(train_features, rows).astype(np.float32, copy=False))
            values.append(self.penultimate_values(h).numpy())
        if not values:
            raise ValueError("nac_ue has no layer: tap layers (--feature-layers) or keep the penultimate one")
        alphas, bins = self.layer_values("alpha", len(values)), self.layer_values("bins", len(values))
        self.layer_values("o_star", len(values))  # checked now, read when scoring
        self.edges_ = [torch.from_numpy(thresholds(int(m))) for m in bins]
        self.counts_ = []
        for v, alpha, edges in zip(values, alphas, self.edges_):
            k = bin_index(torch.sigmoid(alpha * torch.from_numpy(v).double()), edges)
            cells = (torch.arange(v.shape[1]) * (len(edges) - 1) + k)[k >= 0]  # (neuron, bin) flat
            counts = torch.bincount(cells, minlength=v.shape[1] * (len(edges) - 1))
            self.counts_.append(counts.reshape(v.shape[1], len(edges) - 1).double())
        self.fit_images_ = len(rows)
        return self

    @torch.no_grad()
    def penultimate_values(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D) float32: h * dKL(u || softmax(W h + b))/dh = h * W^T (softmax - 1/C)."""
        logits = self.fc_(h.float())
        grad = torch.softmax(logits, dim=1) - 1.0 / logits.shape[1]
        return h.float() * (grad @ self.fc_.weight.detach())

    def score_layers(self, h: torch.Tensor, layers: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over layers of the mean over neurons of min(count / O*, 1) of each state's bin."""
        values = [v.float() for v in layers["nac"]]
        if self.penultimate:
            values.append(self.penultimate_values(h))
        alphas = self.layer_values("alpha", len(values))
        o_stars = self.layer_values("o_star", len(values))
        total = torch.zeros(len(h), dtype=torch.float64)
        for v, alpha, o_star, edges, counts in zip(values, alphas, o_stars, self.edges_, self.counts_):
            k = bin_index(torch.sigmoid(alpha * v.double()), edges)
            phi = torch.clamp(counts / o_star, max=1.0)
            neuron = torch.arange(v.shape[1]).expand_as(k)
            total += torch.where(k >= 0, phi[neuron, k.clamp(min=0)], 0.0).mean(dim=1)
        return total / len(values), self.logits(h)
