"""AdaSCALE (Regmi, "AdaSCALE: Adaptive Scaling for OOD Detection", arXiv 2503.08023, 2025): SCALE
with a percentile chosen per image from how much its largest activations move under a small input
perturbation. Network-level: scoring needs an input gradient and a second forward pass per image,
and the fit runs the network the same way on ID training images.

Per image x, with h = f(x) the penultimate features, z = W h + b and y = argmax z:
1. g = d z_y / dx; the n = floor(o C H W) input entries of smallest |g| move by 0.5 sign(g) (in
   the network's normalised input units): x' = x + 0.5 sign(g) m.
2. h' = f(x'); Q = sum of |h - h'| over the k2 largest entries of h, C_o = sum of relu(h') over the
   k1 largest entries of h (k = floor(D * k% / 100), at least 1); Q' = C_o + lambda Q.
3. p = p_min + (1 - F(Q')) (p_max - p_min), F the empirical CDF (fraction <= Q') of the fit
   images' Q' (likely OOD: large Q', p near p_min, weaker scaling).
4. r = s1 / s2 on relu(h): s1 its sum, s2 the sum of its k = D - round(D p / 100) largest entries
   (at least 1). AdaSCALE-A: logits = W (h e^r) + b; AdaSCALE-L: logits = (W h + b) r^2.
   Score = logsumexp(logits) (higher = more ID); the predictions are those logits' argmax.
Defaults: OpenOOD's configs/postprocessors/adascale_{a,l}.yml (the same): percentiles [75, 85],
k1 = 5, k2 = 1, lambda = 10, o = 0.05, 5,000 fit images; ImageNet: [80, 85] (the config's ResNet-50
note, as the authors' results/imagenet_resnet50 settings). OpenOOD fits F on its ID validation
split; here on a fixed-seed random subset of the ID training set, as every other statistic.
The fitted state (h, h' of the fit images) depends on o and the images only: F is rebuilt for
k1, k2 and lambda at scoring, so a sweep over them (and the percentiles) fits once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from models.split import evaluating, known_head, model_device
from util.argtypes import fraction_arg, nonnegative_float, open_percentile_arg, positive_float
from util.data import BAD_IMAGE_LABEL
from util.errors import UserError

from .ash import sum_ratio
from .base import NetworkDetector
from .from_loader import batch_parts

STEP = 0.5  # OpenOOD's perturbation size, in normalised input units
FIT_SEED = 0  # seed of the random subset of a training Dataset
FIT_BATCH = 64  # batch size of the fit pass over a training Dataset


def perturbed(x: torch.Tensor, grad: torch.Tensor, fraction: float) -> torch.Tensor:
    """x + STEP * sign(grad) on the floor(fraction * C*H*W) entries of each image of smallest |grad|."""
    flat = grad.abs().flatten(1)
    n = int(flat.shape[1] * fraction)
    mask = torch.zeros_like(flat).scatter_(1, torch.topk(flat, n, dim=1, largest=False).indices, 1.0)
    return x + STEP * torch.sign(grad) * mask.view_as(grad)


def features_pair(model: nn.Module, images: torch.Tensor, fraction: float):
    """(h, logits W h + b, h' = f(x')) of one batch: one forward pass with the input gradient of
    each image's largest logit, one forward pass of the perturbed images."""
    head = model.get_classifier()
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        h = model.forward_features(x)
        z = head(h)
        top = z.gather(1, z.argmax(dim=1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(top, x)
    with torch.no_grad():
        return h.detach(), z.detach(), model.forward_features(perturbed(images, grad, fraction))


def top_count(dim: int, percent: float) -> int:
    """floor(D * percent / 100) entries (OpenOOD's int()), at least 1."""
    return max(1, int(dim * percent / 100))


def q_prime(h: torch.Tensor, h_pert: torch.Tensor, k1: float, k2: float, lmbda: float) -> torch.Tensor:
    """Q' = C_o + lambda Q (float64, one per row): C_o sums relu(h') and Q sums |h - h'| over the
    top k1% and top k2% entries of h."""
    h, h_pert = h.double(), h_pert.double()
    order = torch.argsort(h, dim=1, descending=True)
    c_o = torch.relu(h_pert).gather(1, order[:, : top_count(h.shape[1], k1)]).sum(dim=1)
    q = (h - h_pert).abs().gather(1, order[:, : top_count(h.shape[1], k2)]).sum(dim=1)
    return c_o + lmbda * q


def adaptive_percentiles(q: torch.Tensor, reference: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """p = low + (1 - F(q)) (high - low), F(v) = fraction of ``reference`` values <= v."""
    below = torch.searchsorted(torch.sort(reference).values, q, right=True)
    return low + (1.0 - below.double() / len(reference)) * (high - low)


def scale_ratio(h: torch.Tensor, percentiles: torch.Tensor) -> torch.Tensor:
    """r = s1 / s2 of relu(h) per row, s2 over its D - round(D p / 100) largest entries (>= 1)."""
    x = torch.relu(h.double())
    dim = x.shape[1]
    kept = (dim - torch.round(dim * percentiles / 100.0)).clamp(min=1)
    order = torch.argsort(x, dim=1, descending=True)
    rank_kept = torch.arange(dim, device=x.device)[None, :] < kept[:, None]
    return sum_ratio(x, torch.zeros_like(rank_kept).scatter_(1, order, rank_kept))


def percentile_pair(low: float, high: float) -> str | None:
    """Why (low, high) is not a percentile range 0 <= low <= high < 100, or None."""
    if not 0 <= low <= high < 100:
        return f"needs 0 <= min_percentile <= max_percentile < 100 (got {low:g}, {high:g})"
    return None


def fit_images(train_images, count: int):
    """Batches of images from ``train_images``: a map-style Dataset gives a fixed-seed random
    subset of ``count`` images, in batches of FIT_BATCH; any other iterable of batches (a loader,
    any batch form ``batch_parts`` reads) is read until ``count`` images. Unreadable images
    (BAD_IMAGE_LABEL) are left out. Says which images it used."""
    source = "the first images of the training loader"
    if isinstance(train_images, Dataset) and not isinstance(train_images, IterableDataset):
        total = len(train_images)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(FIT_SEED))[:count]
        train_images = DataLoader(Subset(train_images, sorted(order.tolist())), batch_size=FIT_BATCH)
        source = f"a random subset (seed {FIT_SEED}) of the {total} ID training images"
    taken = 0
    for batch in train_images:
        x, y = batch_parts(batch)
        if y is not None:
            x = x[y != BAD_IMAGE_LABEL]
        x = x[: count - taken]
        taken += len(x)
        if len(x):
            yield x
        if taken >= count:
            break
    print(f"adascale: the empirical CDF of Q' is fitted on {taken} images, {source}")


class AdaSCALE(NetworkDetector):
    """Energy of AdaSCALE-A's or AdaSCALE-L's logits (module docstring); ``variant`` 'a' or 'l'."""

    name = "adascale"
    paper = "Regmi, arXiv 2025"
    param_help = {
        "min_percentile": "p_min: the percentile of the most unstable (likely OOD) images",
        "max_percentile": "p_max: the percentile of the most stable (likely ID) images",
        "k1": "C_o sums relu(h') over the top k1 percent of the entries of h",
        "k2": "Q sums |h - h'| over the top k2 percent of the entries of h",
        "lmbda": "weight lambda of Q in Q' = C_o + lambda Q",
        "perturb_fraction": "fraction o of the input entries perturbed (those of smallest gradient)",
        "num_samples": "ID training images the empirical CDF of Q' is fitted on",
    }
    param_types = {
        "min_percentile": open_percentile_arg,
        "max_percentile": open_percentile_arg,
        "k1": positive_float,
        "k2": positive_float,
        "lmbda": nonnegative_float,
        "perturb_fraction": fraction_arg,
    }
    defaults = {"imagenet": {"min_percentile": 80.0, "max_percentile": 85.0}}
    fit_params = ("perturb_fraction", "num_samples")

    def __init__(
        self,
        variant: str = "a",
        min_percentile: float = 75.0,
        max_percentile: float = 85.0,
        k1: float = 5.0,
        k2: float = 1.0,
        lmbda: float = 10.0,
        perturb_fraction: float = 0.05,
        num_samples: int = 5000,
    ):
        self.variant = variant
        self.min_percentile = min_percentile
        self.max_percentile = max_percentile
        self.k1 = k1
        self.k2 = k2
        self.lmbda = lmbda
        self.perturb_fraction = perturb_fraction
        self.num_samples = num_samples

    @classmethod
    def variants(cls) -> dict[str, dict]:
        return {"adascale_a": {"variant": "a"}, "adascale_l": {"variant": "l"}}

    def run_name(self) -> str:
        return f"adascale_{self.variant}"

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        # OpenOOD sweeps 36 pairs p_min < p_max in 60..99 (k1, k2, lambda, o fixed); a product of
        # disjoint ranges keeps every setting valid
        return {"min_percentile": (60.0, 65.0, 70.0, 75.0, 80.0), "max_percentile": (85.0, 90.0, 95.0, 99.0)}

    def check_params(self) -> None:
        if self.variant not in ("a", "l"):
            raise ValueError(f"AdaSCALE variant must be 'a' or 'l', got {self.variant!r}")
        problem = percentile_pair(float(self.min_percentile), float(self.max_percentile))
        if problem:
            raise ValueError(f"{self.flag('min_percentile')}, {self.flag('max_percentile')}: {problem}")
        for param in ("k1", "k2"):
            if not 0 < getattr(self, param) <= 100:
                raise ValueError(f"{self.flag(param)} must be a percent in (0, 100]")
        if not 0 < self.perturb_fraction <= 1:
            raise ValueError(f"{self.flag('perturb_fraction')} must be a fraction in (0, 1]")
        if not self.lmbda >= 0 or int(self.num_samples) < 1:
            raise ValueError(f"{self.flag('lmbda')} must be >= 0 and {self.flag('num_samples')} >= 1")

    def fit(self, model: nn.Module, input_std, train_images) -> AdaSCALE:
        """h and h' of up to ``num_samples`` ID training images (``fit_images``), kept on the CPU."""
        super().fit(model, input_std)
        if known_head(model) is None or not callable(getattr(model, "forward_features", None)):
            raise UserError(f"{self.name}: the model needs forward_features(x) and a Linear get_classifier()")
        pairs = []
        device = model_device(model)
        with evaluating(model):
            for x in fit_images(train_images, int(self.num_samples)):
                h, _, h_pert = features_pair(model, x.to(device), float(self.perturb_fraction))
                pairs.append((h.float().cpu(), h_pert.float().cpu()))
        if not pairs:
            raise UserError(f"{self.name}: the training images gave no image to fit on")
        self.fit_features_ = torch.cat([p[0] for p in pairs])
        self.fit_perturbed_ = torch.cat([p[1] for p in pairs])
        return self

    def q_prime(self, h: torch.Tensor, h_pert: torch.Tensor) -> torch.Tensor:
        return q_prime(h, h_pert, float(self.k1), float(self.k2), float(self.lmbda))

    def reference(self) -> torch.Tensor:
        """Q' of the fit images for the current k1, k2 and lambda (kept for the next batches)."""
        key = (float(self.k1), float(self.k2), float(self.lmbda))
        if getattr(self, "_reference", (None,))[0] != key:
            self._reference = (key, self.q_prime(self.fit_features_, self.fit_perturbed_))
        return self._reference[1]

    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model_
        h, z, h_pert = features_pair(model, images, float(self.perturb_fraction))
        reference = self.reference().to(h.device)
        p = adaptive_percentiles(self.q_prime(h, h_pert), reference, *self.percentiles)
        r = scale_ratio(h, p)
        with torch.no_grad():
            if self.variant == "a":
                logits = model.get_classifier()((h.double() * torch.exp(r)[:, None]).to(h.dtype)).double()
            else:
                logits = z.double() * (r**2)[:, None]
        return torch.logsumexp(logits, dim=1), logits.to(z.dtype)

    @property
    def percentiles(self) -> tuple[float, float]:
        return float(self.min_percentile), float(self.max_percentile)
