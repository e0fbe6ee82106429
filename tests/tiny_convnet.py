"""A tiny conv net and plain references of Lee et al.'s (NeurIPS 2018) Mahalanobis score with
input pre-processing, for the tests of the network-level Mahalanobis detectors.

References: class means and the tied covariance by per-class loops in float64, distances by a
loop over classes, the perturbation per image (a batch of one) with the gradient of the
explicitly written closest-class distance; only that gradient uses autograd.
"""

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance
from torch import nn

STD = (0.5, 0.25, 1.0)  # per-channel input std: each channel's step differs
LAYERS = ("conv1", "block1", "block2")


class TinyConvNet(nn.Module):
    """conv1 -> block1 (ReLU, strided conv) -> block2 (ReLU, conv, ReLU) -> mean -> fc; the
    pooled output of block2 is the penultimate h (as ResNet's layer4)."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.block1 = nn.Sequential(nn.ReLU(), nn.Conv2d(5, 6, 3, stride=2, padding=1))
        self.block2 = nn.Sequential(nn.ReLU(), nn.Conv2d(6, 7, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(7, classes)
        self.eval()

    def stages(self, x):
        """[conv1 output, block1 output, block2 output] (feature maps)."""
        a = self.conv1(x)
        b = self.block1(a)
        return [a, b, self.block2(b)]

    def forward_features(self, x):
        return self.stages(x)[-1].mean(dim=(2, 3))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.forward_features(x))


class PooledConvNet(nn.Module):
    """conv -> relu -> global average pool (D = ``channels``) -> linear (C = ``classes``), float64:
    the smallest network with an input gradient, for the network-level detectors' references."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 3)
        self.fc = nn.Linear(channels, classes)
        self.double().eval()

    def forward_features(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.forward_features(x))


def images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (n, 3, 8, 8)).astype(np.float32))


def pooled_layer(net: TinyConvNet, x: torch.Tensor, layer: int) -> torch.Tensor:
    """(B, C_l) float32: layer ``layer``'s output averaged over positions."""
    return net.stages(x)[layer].mean(dim=(2, 3))


def gaussian(X: np.ndarray, y: np.ndarray, classes: int):
    """(class means (C, D), pseudo-inverse of the tied ML covariance) in float64, by loops."""
    X = X.astype(np.float64)
    means = np.array([X[y == c].mean(axis=0) for c in range(classes)])
    centred = np.array([X[i] - means[y[i]] for i in range(len(X))])
    return means, EmpiricalCovariance(assume_centered=False).fit(centred).precision_


def closest(f: np.ndarray, means: np.ndarray, precision: np.ndarray) -> tuple[float, int]:
    """(min_c (f - mu_c)^T P (f - mu_c), its class) by a loop over classes."""
    d = [float((f - m) @ precision @ (f - m)) for m in means]
    return min(d), int(np.argmin(d))


def perturbed(features, x: torch.Tensor, means, precision, eps: float, std=STD) -> torch.Tensor:
    """One image (1, 3, H, W): x - eps * sign(d/dx of the closest class's distance) / std, the
    sign +1 where the gradient is >= 0 (Lee et al.'s code)."""
    x = x.clone().requires_grad_(True)
    f = features(x)[0]
    _, c = closest(f.detach().double().numpy(), means, precision)
    mu, P = torch.from_numpy(means[c]), torch.from_numpy(precision)
    distance = (f.double() - mu) @ P @ (f.double() - mu)
    (grad,) = torch.autograd.grad(distance, x)
    out = x.detach().clone()
    for k in range(3):
        step = torch.where(grad[:, k] >= 0, 1.0, -1.0)
        out[:, k] = x[:, k].detach() - eps * step / std[k]
    return out


def preprocessed_score(features, x: torch.Tensor, means, precision, eps: float, std=STD) -> float:
    """max_c -(f(x~) - mu_c)^T P (f(x~) - mu_c) of one image."""
    x_tilde = perturbed(features, x, means, precision, eps, std)
    with torch.no_grad():
        f = features(x_tilde)[0]
    return -closest(f.double().numpy(), means, precision)[0]
