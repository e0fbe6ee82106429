"""Class-conditional Gaussian mixture on the penultimate features (a classical baseline; no single
paper; pytorch-ood 0.4 ``GMM``, OpenOOD ``GMMPostprocessor``).

One Gaussian per class c fitted to the ID training features of class c: mean mu_c, maximum-
likelihood covariance Sigma_c = (1/N_c) sum (h - mu_c)(h - mu_c)^T + reg I, mixing weight
pi_c = N_c / N. Score = log p(h) = logsumexp_c [log pi_c + log N(h | mu_c, Sigma_c)], the
log-likelihood under the whole mixture (pytorch-ood's rule; its outlier score is the negation).
With ``pca_dim`` the features are first projected onto the top ``pca_dim`` principal directions
of all training features (centred; OpenOOD projects uncentred, which only translates them and
leaves every likelihood unchanged). Penultimate layer only.

Defaults: reg = 1e-6 (pytorch-ood's); no projection on CIFAR (pytorch-ood), pca_dim = 50 on
ImageNet (OpenOOD's ``pca_50``): 1000 full 2048 x 2048 covariances would take 33 GB and are
singular with 1,300 images a class. OpenOOD's own GMM differs in kind: 50 unsupervised components
(sklearn ``GaussianMixture``, EM, tied covariance, ``random_state=0``) on several layers; the fit
here is closed-form (no EM, no random start), so it is deterministic without a seed.

Numerical choices: statistics in float64, streamed over row blocks; each covariance is factored
by Cholesky and the squared distance is ||L_c^{-1} (h - mu_c)||^2 (no explicit inverse).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from util.argtypes import nonnegative_float
from util.io import row_blocks

from .base import Detector

MAX_FACTOR_BYTES = 4 << 30  # the C Cholesky factors (C, d, d) in float64 kept for scoring


def principal_projection(features, dim: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), basis (D, dim)): the top ``dim`` eigenvectors of the 1/N covariance of all rows."""
    n, d = len(features), features.shape[1]
    mean = np.zeros(d)
    for block in row_blocks(features, chunk):
        mean += block.astype(np.float64).sum(axis=0)
    mean /= n
    scatter = np.zeros((d, d))
    for block in row_blocks(features, chunk):
        centred = block.astype(np.float64) - mean
        scatter += centred.T @ centred
    eigvals, eigvecs = np.linalg.eigh(scatter / n)
    return mean, np.ascontiguousarray(eigvecs[:, np.argsort(-eigvals, kind="stable")[:dim]])


def class_gaussians(features, labels, num_classes: int, transform, chunk: int = 8192):
    """(counts (C,), means (C, d), 1/N_c scatter matrices (C, d, d)) in float64 of the rows of
    each class after ``transform`` (a function of a float64 row block), in two passes."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if counts.size != num_classes or np.any(counts == 0):
        missing = np.flatnonzero(counts[:num_classes] == 0)[:10].tolist()
        raise ValueError(f"gmm needs training features of all {num_classes} classes; none of class {missing}")
    means = None
    for start, block in zip(range(0, len(labels), chunk), row_blocks(features, chunk)):
        x = transform(block.astype(np.float64))
        means = np.zeros((num_classes, x.shape[1])) if means is None else means
        np.add.at(means, labels[start : start + chunk], x)
    means /= counts[:, None]
    scatter = np.zeros((num_classes, means.shape[1], means.shape[1]))
    for start, block in zip(range(0, len(labels), chunk), row_blocks(features, chunk)):
        y = labels[start : start + chunk]
        centred = transform(block.astype(np.float64)) - means[y]
        for c in np.unique(y):
            rows = centred[y == c]
            scatter[c] += rows.T @ rows
    return counts, means, scatter / counts[:, None, None]


class GMM(Detector):
    name = "gmm"
    paper = "classical baseline, as pytorch-ood 0.4's GMM"
    needs_each_class = True
    param_help = {
        "reg": "ridge added to the diagonal of each class covariance",
        "pca_dim": "project the features onto this many principal directions first (none: keep all D)",
    }
    param_types = {"reg": nonnegative_float}
    defaults = {"imagenet": {"pca_dim": 50}}

    def __init__(self, reg: float = 1e-6, pca_dim: int | None = None):
        self.reg = reg
        self.pca_dim = pca_dim

    def check_params(self) -> None:
        if not self.reg >= 0:
            raise ValueError(f"gmm reg must be >= 0, got {self.reg}")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise ValueError(f"gmm pca_dim must be >= 1 or None, got {self.pca_dim}")

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        """``pca_dim`` at most D; the C factors of d x d float64 within ``MAX_FACTOR_BYTES``."""
        problems = super().check_sizes(feature_dim, num_classes, num_train)
        flag = self.flag("pca_dim")
        if self.pca_dim is not None and self.pca_dim > feature_dim:
            problems.append(
                f"{flag} {self.pca_dim} exceeds the D = {feature_dim} feature dimensions; lower {flag}"
            )
        d = feature_dim if self.pca_dim is None else min(int(self.pca_dim), feature_dim)
        size = num_classes * d * d * 8
        if size > MAX_FACTOR_BYTES:
            problems.append(
                f"gmm's {num_classes} covariances of {d} x {d} need {size / 2**30:.1f} GiB; "
                f"give {flag} (e.g. 50, OpenOOD's) to reduce the features first"
            )
        return problems

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        dims = sorted({d for d in (32, 64, 128) if d < feature_dim} | {feature_dim})
        return {"reg": (1e-6, 1e-4, 1e-2, 1.0), "pca_dim": tuple(dims)}

    def fit(self, fc, train_features, train_labels) -> GMM:
        super().fit(fc)
        d = train_features.shape[1]
        problems = self.check_sizes(d, self.fc_.out_features, None)  # before any large allocation
        if problems:
            raise ValueError("; ".join(problems))
        if self.pca_dim is None:
            self.center_, self.basis_ = None, None
        else:
            center, basis = principal_projection(train_features, int(self.pca_dim))
            self.center_, self.basis_ = torch.from_numpy(center), torch.from_numpy(basis)
        counts, means, covariances = class_gaussians(
            train_features,
            train_labels,
            self.fc_.out_features,
            lambda x: self.project(torch.from_numpy(x)).numpy(),
        )
        self.means_ = torch.from_numpy(means)
        self.inverse_factors_, self.log_dets_ = self.factor(covariances)
        self.log_weights_ = torch.from_numpy(np.log(counts / counts.sum()))
        return self

    def factor(self, covariances: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_c^{-1} (C, d, d), log det Sigma_c (C,)) of Sigma_c + reg I = L_c L_c^T."""
        eye = np.eye(covariances.shape[1])
        inverse, log_det = covariances, np.empty(len(covariances))  # each factor replaces its covariance
        for c, cov in enumerate(covariances):
            try:
                lower = np.linalg.cholesky(cov + float(self.reg) * eye)
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"gmm: the covariance of class {c} is not positive definite with reg = {self.reg}; "
                    f"raise {self.flag('reg')}"
                ) from None
            inverse[c] = scipy.linalg.solve_triangular(lower, eye, lower=True)
            log_det[c] = 2 * np.log(np.diag(lower)).sum()
        return torch.from_numpy(inverse), torch.from_numpy(log_det)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """The features the Gaussians model: h itself, or (h - mean) @ basis with ``pca_dim``."""
        x = h.double()
        return x if self.basis_ is None else (x - self.center_) @ self.basis_

    def log_likelihoods(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C) of log pi_c + log N(h | mu_c, Sigma_c), float64, one class at a time."""
        x = self.project(h)
        d = x.shape[1]
        out = torch.empty(len(x), len(self.means_), dtype=torch.float64)
        for c in range(len(self.means_)):
            z = (x - self.means_[c]) @ self.inverse_factors_[c].T
            out[:, c] = -0.5 * ((z * z).sum(dim=1) + self.log_dets_[c] + d * math.log(2 * math.pi))
        return out + self.log_weights_

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logsumexp_c of the class log-likelihoods: log p(h) under the mixture."""
        return torch.logsumexp(self.log_likelihoods(h), dim=1), self.logits(h)
