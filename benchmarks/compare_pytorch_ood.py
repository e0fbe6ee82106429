"""Per-image comparison of our detectors with pytorch-ood 0.4's on the same cached CIFAR-10 features.

For every detector both implement, both are fitted on the same ID training features (and labels)
and score the same ID test and OOD features. pytorch-ood returns outlier scores (higher = more
OOD), ours ID scores, so theirs are negated; the table reports Spearman's rank correlation, the
largest relative difference after the best affine map a * theirs + c (0 means equal up to sign and
a constant), and the AUROC of ID test vs each OOD set for both.

    pip install --no-deps pytorch-ood==0.4.0      # pure Python; uses the torch already installed
    python benchmarks/compare_pytorch_ood.py --data-root ../shared/data --cache-dir ../cache \
        --checkpoint ../shared/checkpoints/CIFAR-10/densenet/checkpoint_100.pth.tar

Runs from the feature cache (ood_eval.py fills it); no forward pass when the sets are cached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors import registry  # noqa: E402
from detectors.base import score_features  # noqa: E402
from pipeline import setup  # noqa: E402
from pipeline.config import EvalConfig  # noqa: E402
from util.cli import CliParser  # noqa: E402
from util.metrics import auroc  # noqa: E402


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def affine_gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - (a theirs + c)| / max |ours| for the least-squares a, c."""
    a, c = np.polyfit(theirs, ours, 1)
    return float(np.abs(ours - (a * theirs + c)).max() / max(np.abs(ours).max(), 1e-300))


def pytorch_ood_detectors(fc: torch.nn.Linear, z: torch.Tensor, y: torch.Tensor):
    """(our method name, pytorch-ood detector fitted on (z, y), how to score features) pairs."""
    import pytorch_ood.detector as pod

    def logits_of(f):
        return lambda h: f.predict_logits(fc(h))

    def feats_of(f):
        return f.predict_features

    with torch.enable_grad():  # TemperatureScaling fits T by L-BFGS
        ts = pod.TemperatureScaling(None).fit_logits(fc(z).detach(), y)
    # (our method, our parameters, their scoring function, their name); VRA is left out: pytorch-ood's
    # VRA clips to two percentiles (no zeroing below alpha, no gamma), another function.
    return [
        ("maxlogit", {}, logits_of(pod.MaxLogit(None)), "MaxLogit"),
        ("gen", {}, logits_of(pod.GEN(None, gamma=0.1, M=100)), "GEN(gamma=0.1, M=100)"),
        ("entropy", {}, logits_of(pod.Entropy(None)), "Entropy (p >= 1e-7)"),
        # their T: 50 L-BFGS steps of lr 0.01 from T = 1, short of the NLL minimum; ours scored at it
        ("temp_scaling", {"temperature": ts.t.item()}, logits_of(ts), f"TS(own fit, T={ts.t.item():.4f})"),
        ("kl_matching", {}, logits_of(pod.KLMatching(None).fit_logits(fc(z), y)), "KLMatching"),
        ("rmds", {}, feats_of(pod.RMD(None).fit_features(z, y)), "RMD"),
        ("she", {}, feats_of(pod.SHE(None, fc).fit_features(z, y)), "SHE"),
        ("nnguide", {"k": 10, "fraction": 1.0}, feats_of(pod.NNGuide(None, fc, k=10).fit_features(z, y)),
         "NNGuide(k=10, all train)"),
        ("fdbd", {}, feats_of(pod.fDBD(None, fc).fit_features(z)), "fDBD"),
        ("nci", {}, feats_of(pod.NCI(None, fc, alpha=1e-4).fit_features(z)), "NCI(alpha=1e-4)"),
        ("lts", {}, feats_of(pod.LTS(None, fc, p=0.05)), "LTS(p=0.05)"),
        ("gmm", {}, feats_of(pod.GMM(None).fit_features(z, y)), "GMM(reg=1e-6)"),
        # OpenMax: theirs fits on all training images, tail 25, float32 logits; scored in 4096-row calls
        # (theirs measures distances only to classes some row of the call predicts)
        ("openmax", {"tailsize": 25, "correct_only": False},
         logits_of(pod.OpenMax(None, tailsize=25).fit_logits(fc(z).detach(), y)),
         "OpenMax(tail 25, all train)"),
        # pNML: theirs pseudo-inverts X^T X in float32 (cutoff D eps32); our rtol set to it reproduces it
        ("pnml", {}, feats_of(pod.PNML(None, fc).fit_features(z, y)), "PNML"),
        ("pnml", {"rtol": z.shape[1] * float(torch.finfo(torch.float32).eps)},
         feats_of(pod.PNML(None, fc).fit_features(z, y)), "PNML; ours rtol=D*eps32"),
        # GradUncertainty on the head alone (model = fc, inputs = features); theirs differentiates
        # torch's BCE, whose backward divides by max(p (1 - p), 1e-12): differs where some p_c < 1e-12
        # or p_c == 1 in float32 (confident images); ours is the exact C p - 1
        ("graduncertainty", {}, pod.GradUncertainty(fc).predict, "GradUncertainty(head)"),
    ]  # fmt: skip


def main(argv=None) -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--cache-dir", default="../cache")
    parser.add_argument(
        "--checkpoint", default="../shared/checkpoints/CIFAR-10/densenet/checkpoint_100.pth.tar"
    )
    parser.add_argument("--out-datasets", nargs="+", default=["dtd", "FashionMNIST"])
    args = parser.parse_args(argv)
    config = EvalConfig(
        in_dataset="CIFAR-10", data_root=args.data_root, cache_dir=args.cache_dir,
        checkpoint=args.checkpoint, device="cpu", progress=False,
    )  # fmt: skip
    tf = setup.transform(config)
    model, key, _ = setup.load_classifier(config)
    fc = model.get_classifier().float().eval()
    extractor = setup.make_extractor(config, model, key)
    train = extractor.extract(setup.train_set(config, tf), setup.tag(config, "train"))
    sets, names = setup.test_sets(config, tf, args.out_datasets)
    features = {k: extractor.extract(ds, setup.set_tag(config, k)).features for k, ds in sets.items()}
    print(f"forward passes: {extractor.images_forwarded}; ID train {len(train.labels)}, "
          + ", ".join(f"{k} {len(v)}" for k, v in features.items()))  # fmt: skip
    z = torch.from_numpy(np.array(train.features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    stacked = np.concatenate([np.asarray(f, dtype=np.float32) for f in features.values()])
    bounds = np.cumsum([0, *(len(f) for f in features.values())])
    stats = {"train_features": train.features, "train_labels": train.labels}
    print(f"{'ours':<12}{'pytorch-ood 0.4':<24}{'Spearman':>10}{'affine gap':>12}   "
          + "   ".join(f"AUROC {n} ours/theirs" for n in names))  # fmt: skip
    with torch.no_grad():
        for method, given, theirs_fn, label in pytorch_ood_detectors(fc, z, y):
            ours_det = registry.build(method, "CIFAR-10", given)
            ours_det.fit(fc, **{k: stats[k] for k in ours_det.needs()})
            ours, _ = score_features(ours_det, stacked)
            theirs = -np.concatenate(
                [
                    theirs_fn(torch.from_numpy(stacked[i : i + 4096])).double().numpy()
                    for i in range(0, len(stacked), 4096)
                ]
            )
            part = {k: slice(bounds[i], bounds[i + 1]) for i, k in enumerate(features)}
            pairs = [
                (auroc(ours[part["in"]], ours[part[n]]), auroc(theirs[part["in"]], theirs[part[n]]))
                for n in names
            ]
            aurocs = "   ".join(f"{100 * a:>8.2f} / {100 * b:<8.2f}" for a, b in pairs)
            print(
                f"{method:<12}{label:<24}{rank_correlation(ours, theirs):>10.6f}"
                f"{affine_gap(ours, theirs):>12.2e}   {aurocs}"
            )


if __name__ == "__main__":
    main()
