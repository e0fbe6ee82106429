"""Mahalanobis with input pre-processing on the penultimate features (Lee, Lee, Lee & Shin, "A
Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
NeurIPS 2018, Algorithm 1 on one layer; pytorch-ood 0.4's ``MahalanobisODIN``).

Fit as ``mahalanobis`` (class means mu_c, tied covariance Sigma, pseudo-inverse P, float64) from
the cached training features. Per image: c* = argmin_c M_c(h(x)) with M_c(h) = (h - mu_c)^T P
(h - mu_c); x~ = x - eps * sign(dM_c*(h(x))/dx) / std (per channel, eps in pixel units); score
= max_c -M_c(h(x~)) (higher = more ID). As the authors' code (``lib_generation.py``): the step
decreases the distance to the closest mean, the sign is +1 where the gradient is >= 0 (so a zero
gradient also moves by eps), and the step is divided by the input normalisation's std. The
gradient is of the sum over the batch (the authors and pytorch-ood: the mean), so that an image's
step does not depend on its batch. Default eps = 0.002, pytorch-ood's ``MahalanobisODIN``
default; the paper picks eps from {0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01}
(``OOD_Generate_Mahalanobis.py``) on validation OOD data: that list is the search space.
Predictions are the classifier's own argmax on the unperturbed image.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from models.split import known_head, model_device
from util.argtypes import nonnegative_float
from util.errors import UserError

from .base import NetworkDetector
from .mahalanobis import class_means_and_tied_precision, squared_distances

# The authors' list of noise magnitudes (OOD_Generate_Mahalanobis.py), sorted.
NOISE_GRID = (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)


def closest_distance(f: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B,) float64 min_c (f - mu_c)^T P (f - mu_c), differentiable in ``f``: its gradient is the
    closest class's distance's."""
    return squared_distances(f.double(), means, precision).min(dim=1).values


def preprocessed(x: torch.Tensor, distance: torch.Tensor, noise: float, std) -> torch.Tensor:
    """x - noise * s / std with s = +1 where d(sum distance)/dx >= 0, else -1 (the authors' sign)."""
    (grad,) = torch.autograd.grad(distance.sum(), x, retain_graph=True)
    step = torch.where(grad >= 0, 1.0, -1.0).to(x.dtype)
    scale = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - noise * step / scale).detach()


@contextmanager
def head_input(head: nn.Module):
    """A list that holds the input of ``head`` (the penultimate features h) of the last forward."""
    held: list[torch.Tensor] = []

    def keep(_module, args, _output):
        held[:] = [args[0]]

    handle = head.register_forward_hook(keep)
    try:
        yield held
    finally:
        handle.remove()


def classifier_head(model: nn.Module, who: str) -> nn.Linear:
    """The model's output Linear (``models.split.known_head``), else a UserError."""
    head = known_head(model)
    if head is None:
        raise UserError(f"{who}: the model has no get_classifier() Linear head whose input is h")
    return head


def check_noise(detector) -> None:
    """ValueError naming the flag when the pre-processing magnitude ``detector.noise`` is negative."""
    if not detector.noise >= 0:
        raise ValueError(f"{detector.flag('noise')} must be >= 0 (got {detector.noise})")


class MahalanobisODIN(NetworkDetector):
    name = "mahalanobis_odin"
    paper = "Lee et al., NeurIPS 2018"
    needs_each_class = True
    param_help = {"noise": "input pre-processing magnitude eps (pixel units, divided by the input std)"}
    param_types = {"noise": nonnegative_float}
    fit_params = ()  # the fitted means and covariance do not depend on eps

    def __init__(self, noise: float = 0.002):
        self.noise = noise

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"noise": NOISE_GRID}

    def check_params(self) -> None:
        check_noise(self)

    def fit(self, model, input_std, train_features, train_labels) -> MahalanobisODIN:
        super().fit(model, input_std)
        self.head_ = classifier_head(model, self.name)
        means, precision = class_means_and_tied_precision(
            train_features, train_labels, self.head_.out_features
        )
        device = model_device(model)
        self.means_ = torch.from_numpy(means).to(device)
        self.precision_ = torch.from_numpy(precision).to(device)
        return self

    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """max_c -M_c(h(x~)) (float64) and the logits of the unperturbed images."""
        means, precision = self.means_.to(images.device), self.precision_.to(images.device)
        with head_input(self.head_) as held, torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = self.model_(x)
            if self.noise == 0:  # x~ = x: the clean pass's distances
                return -closest_distance(held[-1].detach(), means, precision), logits.detach()
            x_tilde = preprocessed(
                x, closest_distance(held[-1], means, precision), self.noise, self.input_std_
            )
            with torch.no_grad():
                self.model_(x_tilde)
                scores = -closest_distance(held[-1], means, precision)
        return scores, logits.detach()
