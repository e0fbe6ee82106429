"""Precompute ID training statistics: LINe's class-mean contributions and DICE's mean feature.

One batched forward pass over the ID training set (its features are cached, so ood_eval.py and
later runs reuse them), then per-class sums of the Taylor contributions s = h * d logit_y / d h,
accumulated chunk by chunk. Writes atomically to --cache-dir:
  {in_dataset}_{name}_{method}_mean_class.npy   (D, C) float32
  {in_dataset}_{name}_feat_stat.npy             (D,)   float64
and a .json next to each naming what produced it.

Example: python precompute.py --in-dataset CIFAR-10
Several processes or machines (util/distributed.py): torchrun --nproc_per_node=N precompute.py ...
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from models import input_normalization
from models.heads import cpu_copy
from util import distributed
from util.cli import (
    add_common_args,
    code_version,
    contributions_path,
    ensure_writable_dir,
    feat_stat_path,
    load_classifier,
    make_extractor,
    num_classes,
    positive_int,
    run_cli,
)
from util.contributions import class_mean_contributions, mean_feature
from util.data import balanced_subset, id_dataset, id_transform
from util.errors import UserError
from util.features import CACHE_VERSION
from util.io import atomic_save_npy, atomic_write_json, sha256_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument(
        "--method",
        default="taylor",
        choices=["taylor"],
        help="contribution estimate (default: taylor, first-order Shapley value)",
    )
    parser.add_argument(
        "--max-samples",
        default=None,
        type=positive_int,
        help="use a fixed class-balanced subset of N training images (quick runs)",
    )
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    args.device = distributed.setup(args.device)  # torchrun: join the process group
    start = time.time()
    cache_dir = ensure_writable_dir(args.cache_dir, "cache directory")
    model, model_key, checkpoint = load_classifier(args)
    C = num_classes(args.in_dataset)
    transform = id_transform(args.in_dataset, input_normalization(args.model_arch))
    train = id_dataset(args.in_dataset, "train", args.data_root, transform)
    if args.max_samples:
        train = balanced_subset(train, args.max_samples, C)
    print(f"{args.in_dataset} training set: {len(train)} images; checkpoint {checkpoint}")

    extractor = make_extractor(args, model, model_key, cache_dir)
    tag = f"{args.in_dataset}_{args.name}_train"
    fs = extractor.extract(train, tag)
    if not distributed.leave():  # torchrun: ranks > 0 are done; rank 0 goes on alone
        return
    if fs.from_cache:
        print(f"training features loaded from cache {fs.path} (no forward pass)")
    if fs.skipped:
        print(f"images: {fs.requested} requested, {len(fs.skipped)} unreadable skipped, {len(fs)} used")

    fc = cpu_copy(extractor.fc)
    contrib, counts = class_mean_contributions(fc, fs.features, fs.labels)
    mean = mean_feature(fs.features)
    nonfinite = int(np.count_nonzero(~np.isfinite(contrib))) + int(np.count_nonzero(~np.isfinite(mean)))
    if nonfinite:
        raise UserError(
            f"{nonfinite} NaN or infinite values in the statistics of {fs.path}: checkpoint "
            f"{checkpoint} gives non-finite features or logits; nothing was written"
        )
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        print(f"warning: classes {empty.tolist()} have no training image; their contributions are 0")

    provenance = {
        "code_version": code_version(),
        "in_dataset": args.in_dataset,
        "name": args.name,
        "model_arch": args.model_arch,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": model_key["checkpoint_sha256"],
        "num_images": int(len(fs)),
        "num_images_requested": int(fs.requested),
        "skipped_bad_images": fs.skipped,
        "cache_version": CACHE_VERSION,
        "max_samples": args.max_samples,
        "images_per_class": counts.tolist(),
        "feature_cache": str(fs.path),
    }
    contrib_file = contributions_path(cache_dir, args.in_dataset, args.name, args.method)
    stat_file = feat_stat_path(cache_dir, args.in_dataset, args.name)
    atomic_save_npy(contrib_file, contrib.T.astype(np.float32))
    atomic_save_npy(stat_file, mean)
    for path, kind in ((contrib_file, "contributions"), (stat_file, "feat_stat")):
        atomic_write_json(
            path.with_suffix(".json"), {"kind": kind, "sha256": sha256_file(path), **provenance}
        )
    print(f"wrote {contrib_file} {tuple(contrib.T.shape)} and {stat_file} {mean.shape}")
    print(
        f"precompute done in {time.time() - start:.1f} s "
        f"({extractor.images_forwarded} images through the network)"
    )


if __name__ == "__main__":
    run_cli(main)
