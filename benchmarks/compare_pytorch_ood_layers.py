"""Per-image comparison of our multi-layer and network-level detectors with pytorch-ood 0.4's on one net.

gram, nac_ue, multi_mahalanobis and mahalanobis_odin need a model (layer outputs, gradients, input
perturbations), so this runs on a tiny seeded conv net and seeded random images, not on the feature
cache (benchmarks/compare_pytorch_ood.py covers the single-layer detectors there). Ours are fitted
with ``detectors.from_loader.fit_loader`` (the layer statistics of ``util.layer_taps.LayerTaps``)
and scored with ``score_with_model``; pytorch-ood's detectors run on the same net, images and
labels. pytorch-ood returns outlier scores, ours ID scores. Each line gives the relation expected
per image (ours = r x theirs), the range of ours / theirs, and the largest absolute and relative
difference |ours - r theirs| (relative to |r theirs|, per image). Where the two differ by design,
further lines reproduce the difference: pytorch-ood changed (Gram rows in float64, the authors'
NAC bins instead of its geometric ones, a float64 run) or ours (its 1e-6 ridge, its NAC pooling,
float32 NAC states).

    pip install --no-deps pytorch-ood==0.4.0      # pure Python; uses the torch already installed
    python benchmarks/compare_pytorch_ood_layers.py [--ptood /path/holding/pytorch_ood]

CPU only, single-threaded, deterministic; a few seconds.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import logging
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import detectors.mahalanobis_odin as ours_odin  # noqa: E402
import detectors.multi_mahalanobis as ours_mmd  # noqa: E402
import detectors.nac_ue as nac_ue  # noqa: E402
from detectors import NACUE, Gram, MahalanobisODIN, MultiMahalanobis  # noqa: E402
from detectors.from_loader import fit_loader, score_with_model  # noqa: E402
from detectors.gram import class_permutations  # noqa: E402
from detectors.nac_ue import thresholds  # noqa: E402
from util import layer_taps  # noqa: E402
from util.cli import CliParser  # noqa: E402

CLASSES, TRAIN, STD = 4, 400, (0.5, 0.25, 1.0)
SPATIAL = ("conv1", "block1", "block2")  # 8x8, 4x4, 4x4 outputs
ONE_BY_ONE = ("pool", "mlp")  # (B, C, 1, 1) outputs: after the global pooling


class TinyNet(nn.Sequential):
    """conv1 -> block1 (ReLU, strided conv) -> block2 (ReLU, conv, ReLU) -> pool (global mean,
    1x1) -> mlp (1x1 conv, bias raised by 0.2, ReLU) -> flat (h) -> fc; a Sequential so that
    pytorch-ood's detectors, which run lists of consecutive modules, see the same net."""

    def __init__(self, classes: int = CLASSES, seed: int = 0):
        torch.manual_seed(seed)
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(3, 8, 3, padding=1),
                block1=nn.Sequential(nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1)),
                block2=nn.Sequential(nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU()),
                pool=nn.AdaptiveAvgPool2d(1),
                mlp=nn.Sequential(nn.Conv2d(12, 8, 1), nn.ReLU()),
                flat=nn.Flatten(),
                fc=nn.Linear(8, classes),
            )
        )
        with torch.no_grad():  # no channel of h 0 on every image (a singular covariance)
            self.mlp[0].bias += 0.2
        self.eval()

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def part(self, first: str, last: str) -> nn.Sequential:
        """The consecutive modules ``first`` .. ``last`` as one Sequential."""
        names = [n for n, _ in self.named_children()]
        return nn.Sequential(*list(self.children())[names.index(first) : names.index(last) + 1])


def images(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """(n, 3, 8, 8) float32: scale * (N(0, 1) pixels + an N(0, 1) offset per image and channel)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 3, 8, 8)) + rng.normal(0, 1, (n, 3, 1, 1))
    return torch.from_numpy((scale * x).astype(np.float32))


def import_pytorch_ood(path: str | None):
    """pytorch_ood (from ``path`` if given, else PYTHONPATH / site-packages), or exit with a message."""
    if path is not None:
        sys.path.insert(0, str(Path(path).expanduser().resolve()))
    try:
        module = importlib.import_module("pytorch_ood")
        importlib.import_module("pytorch_ood.detector")
    except ImportError as error:
        where = f"--ptood {path}" if path else "PYTHONPATH or site-packages"
        raise SystemExit(
            f"pytorch-ood not found in {where} ({error}): pip install --no-deps pytorch-ood==0.4.0, or "
            "give --ptood with the folder that holds pytorch_ood/"
        ) from None
    logging.getLogger("pytorch_ood").setLevel(logging.ERROR)  # "No device set. Will use 'cpu'."
    return module


@contextlib.contextmanager
def patched(owner, name: str, value):
    """``owner.name`` set to ``value`` inside the block, restored after (as stored: a class's
    staticmethod stays one)."""
    old = inspect.getattr_static(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def report(label: str, relation: str, ours, expected, extra: str = "") -> None:
    """One line: ours vs ``expected`` (theirs mapped by ``relation``), per image."""
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    diff = np.abs(ours - expected)
    rel = np.where(diff == 0, 0.0, diff / np.maximum(np.abs(expected), 1e-300))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = ours / expected
    ratio = ratio[np.isfinite(ratio)]
    span = f"[{ratio.min():.7g}, {ratio.max():.7g}]" if ratio.size else "[-]"
    print(
        f"{label:<70} {relation:<14} ours/(r theirs) in {span:<26} max abs {diff.max():.2e}, "
        f"max rel {rel.max():.2e}{'; ' + extra if extra else ''}"
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def ours_scores(detector, net, loader, test, feature_layers=None, input_std=None):
    """(scores, logits) float64 of ``test`` by our ``detector`` fitted on ``loader``."""
    fit_loader(detector, net, loader, input_std=input_std, feature_layers=feature_layers)
    scores, logits = score_with_model(detector, net, test)
    return scores.double().numpy(), logits.double()


def compare_gram(pod, net, loader, labels, test, powers: int, float64_rows: bool = False) -> None:
    """Gram on conv1, block1, block2: ours = -theirs / MSP (theirs does not divide by the MSP);
    pytorch-ood's held-out split is made ours (its torch.randperm calls return our permutations)."""
    import pytorch_ood.detector.gram as pgram

    ours, logits = ours_scores(Gram(powers=powers, seed=0), net, loader, test, SPATIAL)
    msp = torch.softmax(logits, dim=1).max(dim=1).values.numpy()
    perms = iter(class_permutations(labels, CLASSES, 0))
    rows = pgram.Gram._gram_vector
    rows64 = staticmethod(lambda f, p: rows(f.double(), p).float())  # as util.layer_taps.gram_rows
    with (
        patched(pgram.torch, "randperm", lambda n, *a, **k: torch.from_numpy(next(perms))),
        patched(pgram.Gram, "_gram_vector", rows64 if float64_rows else staticmethod(rows)),
    ):
        theirs_det = pod.Gram(
            net.part("pool", "fc"), [net.conv1, net.block1, net.block2], CLASSES, list(range(1, powers + 1))
        )
        theirs = theirs_det.fit(loader).predict(test).double().numpy()
    label = f"gram P={powers}" + (" (theirs: Gram rows in float64)" if float64_rows else "")
    report(label, "r = -1/MSP", ours, -theirs / msp)


def authors_bins(z_hat: torch.Tensor, m: int, eps: float = 1e-6) -> torch.Tensor:
    """pytorch-ood's bin index with the authors' M edges (``detectors.nac_ue.thresholds``) instead
    of its geometric ones."""
    edges = torch.from_numpy(thresholds(m))
    k = torch.searchsorted(edges, z_hat.double().contiguous(), right=True) - 1
    return k.clamp(0, m - 1).long()


def theirs_nac(pod, net, layers, loader, test, setting, bins_authors: bool) -> np.ndarray:
    """pytorch-ood's NACUE on ``layers`` + the penultimate (flat), geometric or the authors' bins."""
    import pytorch_ood.detector.nac as pnac

    alpha, m, o_star = setting
    modules = [getattr(net, n) for n in (*layers, "flat")]
    binning = authors_bins if bins_authors else pnac._bin_indices_geometric
    with patched(pnac, "_bin_indices_geometric", binning):
        det = pod.NACUE(net, modules, m_bins=m, alpha=alpha, o_star=o_star).fit(loader)
        return det.predict(test).double().numpy()


class Float32Sigmoid:
    """``torch`` for detectors.nac_ue with its sigmoid rounded to float32, as pytorch-ood's states
    (alpha v is the same in both: a float64 product of two float32 numbers is exact)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def sigmoid(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x.float()).double()


def mean_of_products():
    """util.layer_taps' ``nac`` kind as pytorch-ood pools: the mean over positions of z * dKL/dz."""
    kind = layer_taps.TapKind(lambda z, g: layer_taps.pooled(z * g), lambda c: (c,), needs_grad=True)
    return patched_item(layer_taps.TAP_KINDS, "nac", kind)


@contextlib.contextmanager
def patched_item(mapping: dict, key, value):
    old = mapping[key]
    mapping[key] = value
    try:
        yield
    finally:
        mapping[key] = old


def per_layer_text(value) -> str:
    return "/".join(f"{v:g}" for v in np.atleast_1d(value))


def compare_nac(pod, net, loader, test, setting) -> None:
    """NAC-UE on two tapped layers and h, every training image (balanced labels): ours is the mean
    over the L = 3 layers, theirs minus the sum: ours = -theirs / 3. On 1x1 taps both poolings of
    z * dKL/dz coincide; on conv1, block1 ours is (sum z)(sum dKL/dz), theirs the mean of z * dKL/dz.
    Their states are float32 (a state within ~1e-7 of an edge may fall in the next bin)."""
    alpha, m, o_star = setting  # each one value, or one per layer (2 tapped, then h)
    name = "nac_ue " + " ".join(f"{k}={per_layer_text(v)}" for k, v in zip(("alpha", "M", "O*"), setting))

    def ours_on(layers, float32_states=False):
        det = NACUE(alpha=alpha, bins=m, o_star=o_star, train_images=TRAIN)
        with patched(nac_ue, "torch", Float32Sigmoid() if float32_states else torch):
            return ours_scores(det, net, loader, test, layers)[0]

    ours = ours_on(ONE_BY_ONE)
    theirs = theirs_nac(pod, net, ONE_BY_ONE, loader, test, setting, bins_authors=True)
    report(f"{name}, 1x1 taps: theirs, authors' bins", "r = -1/3", ours, -theirs / 3)
    ours32 = ours_on(ONE_BY_ONE, float32_states=True)
    report(f"{name}, 1x1 taps: ours f32 states, authors' bins", "r = -1/3", ours32, -theirs / 3)
    geometric = theirs_nac(pod, net, ONE_BY_ONE, loader, test, setting, bins_authors=False)
    report(
        f"{name}, 1x1 taps: theirs geometric bins", "r = -1/3", ours, -geometric / 3,
        f"Spearman {spearman(ours, -geometric):.4f}",
    )  # fmt: skip
    spatial = SPATIAL[:2]
    theirs = theirs_nac(pod, net, spatial, loader, test, setting, bins_authors=True)
    ours = ours_on(spatial)
    report(
        f"{name}, conv1,block1: authors' bins", "r = -1/3", ours, -theirs / 3,
        f"Spearman {spearman(ours, -theirs):.4f}",
    )  # fmt: skip
    with mean_of_products():
        ours = ours_on(spatial, float32_states=True)
    report(f"{name}, conv1,block1: ours their pooling, f32 states", "r = -1/3", ours, -theirs / 3)


def ridge_precision(features, labels, num_classes: int, chunk: int = 8192):
    """Our (means, precision) with pytorch-ood's ridge: precision = N (S + 1e-6 I)^-1, S the scatter."""
    means, _ = RIDGELESS(features, labels, num_classes, chunk)
    x = np.asarray(features, np.float64)
    centred = x - means[np.asarray(labels)]
    scatter = centred.T @ centred + 1e-6 * np.eye(x.shape[1])
    return means, len(x) * np.linalg.inv(scatter)


RIDGELESS = ours_mmd.class_means_and_tied_precision


@contextlib.contextmanager
def ridge_on_ours(ridge: bool):
    """Our multi-layer and ODIN Mahalanobis fits with pytorch-ood's 1e-6 I ridge when ``ridge``."""
    fit = ridge_precision if ridge else RIDGELESS
    with (
        patched(ours_mmd, "class_means_and_tied_precision", fit),
        patched(ours_odin, "class_means_and_tied_precision", fit),
    ):
        yield


@contextlib.contextmanager
def in_float64(net, loader, test, float64: bool):
    """(net, loader, test) as given, or float64 copies with float64 the default dtype (pytorch-ood
    allocates its means and scatter with the default dtype)."""
    if not float64:
        yield net, loader, test
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield copy.deepcopy(net).double(), [(x.double(), y) for x, y in loader], test.double()
    finally:
        torch.set_default_dtype(old)


def compare_multi_mahalanobis(pod, net, loader, test, weights=None, ridge=False, float64=False) -> None:
    """Multi-layer Mahalanobis on conv1, block1, block2: theirs -1/2 the distances with the scatter
    (not / N) plus 1e-6 I: ours = -2N x theirs."""
    with ridge_on_ours(ridge):
        ours, _ = ours_scores(MultiMahalanobis(weights=weights), net, loader, test, SPATIAL)
    alpha = list(weights) if weights else None
    with in_float64(net, loader, test, float64) as (model, batches, x), torch.no_grad():
        theirs_det = pod.MultiMahalanobis([model.conv1, model.block1, model.block2], alpha=alpha)
        theirs = theirs_det.fit(batches).predict(x).double().numpy()
    notes = [n for n, on in (("ours + 1e-6 I ridge", ridge), ("theirs float64", float64)) if on]
    label = f"multi_mahalanobis w={weights or (1, 1, 1)}" + (f" ({'; '.join(notes)})" if notes else "")
    report(label, f"r = -2N = {-2 * TRAIN}", ours, -2 * TRAIN * theirs)


def zero_gradients(encoder, test) -> int:
    """Exactly-zero input-gradient entries of any scalar of h (where sign(0) matters)."""
    x = test.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((encoder(x) ** 2).sum(), x)
    return int((grad == 0).sum())


def compare_mahalanobis_odin(pod, net, loader, test, eps: float, ridge=False, float64=False) -> None:
    """Mahalanobis on h with input pre-processing eps (divided by the input std), theirs -1/2 the
    distances with the scatter plus 1e-6 I: ours = -2N x theirs. With ``float64`` both run a float64
    copy of the net, ours fitted on its float64 h (``fit_loader`` gives float32 h, as the cache).
    Their sign(0) is 0, ours +1: the count of exactly-zero input-gradient entries says whether
    that matters here."""
    with ridge_on_ours(ridge), in_float64(net, loader, test, float64) as (model, batches, x):
        ours_det, encoder = MahalanobisODIN(noise=eps), model.part("conv1", "flat")
        if float64:
            with torch.no_grad():
                h = torch.cat([encoder(b) for b, _ in batches]).numpy()
            ours_det.fit(model, STD, h, torch.cat([y for _, y in batches]).numpy())
            ours = score_with_model(ours_det, model, x)[0].numpy()
        else:
            ours, _ = ours_scores(ours_det, model, batches, x, input_std=STD)
        theirs_det = pod.MahalanobisODIN(encoder, eps=eps, norm_std=list(STD)).fit(batches)
        theirs = theirs_det.predict(x).double().detach().numpy()
    notes = [n for n, on in (("ours + 1e-6 I ridge", ridge), ("both float64", float64)) if on]
    label = f"mahalanobis_odin eps={eps}" + (f" ({'; '.join(notes)})" if notes else "")
    extra = f"zero input-gradient entries {zero_gradients(net.part('conv1', 'flat'), test)}" if ridge else ""
    report(label, f"r = -2N = {-2 * TRAIN}", ours, -2 * TRAIN * theirs, extra)


def main(argv=None) -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ptood", default=None, help="folder holding pytorch_ood/ (default: PYTHONPATH)")
    args = parser.parse_args(argv)
    pod_module = import_pytorch_ood(args.ptood)
    import pytorch_ood.detector as pod

    torch.set_num_threads(1)
    net = TinyNet()
    labels = np.arange(TRAIN) % CLASSES
    train = images(TRAIN, seed=1)
    loader = [(train[i : i + 100], torch.from_numpy(labels[i : i + 100])) for i in range(0, TRAIN, 100)]
    test = torch.cat([images(100, 2), images(50, 3, 3.0), images(50, 4, 0.3)])  # ID-like, wider, narrower
    print(
        f"pytorch-ood {getattr(pod_module, '__version__', '?')} from {Path(pod_module.__file__).parent}; "
        f"TinyNet, {CLASSES} classes, {TRAIN} training images (balanced labels), {len(test)} test images"
    )
    for powers in (1, 5, 10):
        compare_gram(pod, net, loader, labels, test, powers)
    compare_gram(pod, net, loader, labels, test, 10, float64_rows=True)
    for setting in ((100.0, 50, 50), (1000.0, 50, 10), ((1000.0, 100.0, 3000.0), (50, 8, 20), (10, 50, 5))):
        compare_nac(pod, net, loader, test, setting)
    compare_multi_mahalanobis(pod, net, loader, test)
    compare_multi_mahalanobis(pod, net, loader, test, ridge=True)
    compare_multi_mahalanobis(pod, net, loader, test, ridge=True, float64=True)
    compare_multi_mahalanobis(pod, net, loader, test, weights=(1.0, 0.5, 2.0), ridge=True, float64=True)
    for eps in (0.0, 0.002, 0.01):
        compare_mahalanobis_odin(pod, net, loader, test, eps)
        compare_mahalanobis_odin(pod, net, loader, test, eps, ridge=True)
        compare_mahalanobis_odin(pod, net, loader, test, eps, ridge=True, float64=True)


if __name__ == "__main__":
    main()
