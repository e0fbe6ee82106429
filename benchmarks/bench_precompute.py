"""Precompute: the original per-image method vs ours, on the same CIFAR-10 training images.

  original  one image at a time: forward, then backward through the whole network to get
            d logit_y / d h, s = h * grad, summed per class (as the original LINe code does)
  ours      precompute.py's path: FeatureExtractor (batched, from the JPEG files, cached) then
            batched autograd contributions on the head and streaming class sums
  bare      a bare batched forward pass (our fast path) over the same pre-loaded images
Targets (issue 4): ours >= 5x faster than original, contributions equal to 1e-5, ours at most
1.15x the bare forward.

  python benchmarks/bench_precompute.py [-n 256] [--original-n 64]
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from common import DATA_ROOT, cpu_extractor, densenet, preload, timed

from detectors.statistics import ClassMeanAccumulator, class_mean_contributions, taylor_contributions
from util.cli import CliParser
from util.data import balanced_subset, dataset_labels
from util.datasets import id_dataset, id_transform


def original_method(model, x, y):
    """Per-image forward + full backward; returns per-class sums of s = h * d logit_y / d h."""
    acc = ClassMeanAccumulator(10, model.get_classifier().in_features)
    for i in range(len(x)):
        h = model.forward_features(x[i : i + 1])
        h.retain_grad()
        model.get_classifier()(h)[0, y[i]].backward()
        acc.add((h * h.grad).detach(), y[i : i + 1])
        model.zero_grad(set_to_none=True)
    return acc


def main() -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=256, help="training images for ours and bare")
    parser.add_argument("--original-n", type=int, default=64, help="images timed for the original method")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    train = balanced_subset(id_dataset("CIFAR-10", "train", DATA_ROOT, id_transform("CIFAR-10")), args.n, 10)
    labels = torch.from_numpy(dataset_labels(train))
    x = preload(train)
    n, n_orig = len(x), min(args.original_n, len(x))
    print(f"{n} CIFAR-10 training images (original method timed on the first {n_orig}), DenseNet-101")

    model = densenet()
    acc_orig, t_orig = timed(original_method, model, x[:n_orig], labels[:n_orig])

    with tempfile.TemporaryDirectory() as cache:
        extractor = cpu_extractor(cache, "precompute", args)

        def ours():
            fs = extractor.extract(train, "bench")
            return fs, class_mean_contributions(extractor.fc, fs.features, fs.labels)

        def bare():
            with torch.inference_mode():
                for i in range(0, n, args.batch_size):
                    extractor.forward(x[i : i + args.batch_size])

        bare()  # warm-up
        _, t_bare = timed(bare)
        (fs, (cm, counts)), t_ours = timed(ours)
        # the same per-class sums, restricted to the images the original method saw
        sub = ClassMeanAccumulator(10, fs.features.shape[1])
        h = torch.from_numpy(np.array(fs.features[:n_orig]))
        sub.add(taylor_contributions(extractor.fc, h, labels[:n_orig]), labels[:n_orig])

    per_img_orig, per_img_ours, per_img_bare = t_orig / n_orig, t_ours / n, t_bare / n
    print(f"  original per-image method   {1 / per_img_orig:8.1f} images/s")
    print(f"  ours (precompute path)      {1 / per_img_ours:8.1f} images/s")
    print(f"  bare batched forward        {1 / per_img_bare:8.1f} images/s")
    print(f"  ours vs original: {per_img_orig / per_img_ours:.1f}x faster   (target >= 5)")
    print(f"  ours / bare forward time: {per_img_ours / per_img_bare:.2f}   (target <= 1.15)")
    diff = (sub.mean() - acc_orig.mean()).abs().max().item()
    print(f"  max |contributions ours - original| = {diff:.2e}   (target <= 1e-5)")
    print(f"  full-subset class means: {cm.shape}, images per class {counts.tolist()}")


if __name__ == "__main__":
    main()
