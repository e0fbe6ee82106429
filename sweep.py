"""Sweep LINe settings (p_w, p_a, tau) from the feature cache and select one without test OOD data.

Every setting is scored from cached features (no forward pass once the sets are cached). The ID
test set is split (seeded) into a validation part and a test part; a setting is chosen by
FPR95 (then AUROC) of ID-validation against a validation OOD set (``gaussian`` noise by default,
never one of the test OOD sets), and reported on the ID-test part against the test OOD sets.

  python sweep.py --in-dataset CIFAR-10 --out-datasets dtd FashionMNIST \\
      --p-w 10 30 50 70 90 --p-a 10 30 50 70 90 --clip 0.5 0.8 1.0 1.5
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from detectors import LINe, TrainStats, score_features
from ood_eval import ood_set_names
from util.cli import (
    add_common_args,
    contributions_path,
    ensure_writable_dir,
    load_classifier,
    load_contributions,
    make_extractor,
    nonnegative_float,
    num_classes,
    percentile_arg,
    run_cli,
)
from util.data import cifar_dataset, id_transform, ood_dataset
from util.errors import UserError
from util.io import atomic_write_json
from util.metrics import auroc, fpr_at_95_tpr
from util.plots import plot_sweep_heatmap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--p-w", nargs="+", type=percentile_arg, default=[10, 30, 50, 70, 90])
    parser.add_argument("--p-a", nargs="+", type=percentile_arg, default=[10, 30, 50, 70, 90])
    parser.add_argument("--clip", nargs="+", type=nonnegative_float, default=[0.5, 0.8, 1.0, 1.5])
    parser.add_argument("--out-datasets", nargs="+", default=None, help="test OOD sets (reported)")
    parser.add_argument("--val-ood", default="gaussian", help="validation OOD set (default: gaussian)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="ID test share for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ID validation split")
    parser.add_argument("--contrib", default=None, help="LINe contributions file")
    parser.add_argument("--base-dir", default="output/ood_scores", help="result directory")
    return parser


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (validation, test) index arrays, each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(order[:k]), np.sort(order[k:])


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
    test_sets = ood_set_names(args)
    if args.val_ood in test_sets:
        raise UserError(f"the validation OOD set {args.val_ood!r} is also a test OOD set; pick another")
    start = time.time()
    cache_dir = ensure_writable_dir(args.cache_dir, "cache directory")
    model, model_key, _ = load_classifier(args)
    fc = model.get_classifier()
    C, D = num_classes(args.in_dataset), fc.in_features
    path = Path(args.contrib) if args.contrib else contributions_path(cache_dir, args.in_dataset, args.name)
    if not path.is_file():
        raise UserError(f"LINe contributions {path} not found: run precompute.py with the same --cache-dir")
    contrib = load_contributions(path, C, D)
    extractor = make_extractor(args, model, model_key, cache_dir)
    transform = id_transform(args.in_dataset)
    id_fs = extractor.extract(
        cifar_dataset(args.in_dataset, "test", args.data_root, transform),
        f"{args.in_dataset}_{args.name}_test",
    )
    feats = {
        name: extractor.extract(
            ood_dataset(name, args.data_root, transform), f"{args.in_dataset}_{args.name}_{name}"
        ).features
        for name in [args.val_ood, *test_sets]
    }
    val_idx, test_idx = split_indices(len(id_fs), args.val_fraction, args.seed)
    id_all = np.asarray(id_fs.features)
    extracted = time.time()
    print(
        f"features ready in {extracted - start:.1f} s "
        f"({extractor.images_forwarded} images forwarded; 0 = no forward pass);"
        f" ID validation {len(val_idx)} / test {len(test_idx)} images; validation OOD: {args.val_ood}"
    )

    # One scoring pass per setting over all sets stacked together.
    blocks = [("id", id_all)] + list(feats.items())
    stacked = np.concatenate([b for _, b in blocks]).astype(np.float32)
    bounds = np.cumsum([0] + [len(b) for _, b in blocks])
    rows = []
    stats = TrainStats(contributions=lambda: contrib)
    for p_w, p_a in itertools.product(args.p_w, args.p_a):
        base = LINe(p_w=p_w, p_a=p_a, clip_threshold=None).fit(fc, stats)
        for tau in args.clip:
            base.clip_threshold = tau
            scores, _ = score_features(base, stacked)
            part = {name: scores[bounds[i] : bounds[i + 1]] for i, (name, _) in enumerate(blocks)}
            id_val, id_test = part["id"][val_idx], part["id"][test_idx]
            test = {s: (fpr_at_95_tpr(id_test, part[s]), auroc(id_test, part[s])) for s in test_sets}
            rows.append(
                {
                    "p_w": p_w,
                    "p_a": p_a,
                    "clip_threshold": tau,
                    "val_FPR95": fpr_at_95_tpr(id_val, part[args.val_ood]),
                    "val_AUROC": auroc(id_val, part[args.val_ood]),
                    "test": {s: {"FPR95": f, "AUROC": a} for s, (f, a) in test.items()},
                    "test_FPR95": float(np.mean([f for f, _ in test.values()])),
                    "test_AUROC": float(np.mean([a for _, a in test.values()])),
                }
            )
    swept = time.time()
    best = min(rows, key=lambda r: (r["val_FPR95"], -r["val_AUROC"]))
    print(
        f"{'p_w':>5}{'p_a':>6}{'tau':>6} | {'val FPR95':>9}{'val AUROC':>10} | "
        f"{'test FPR95':>10}{'test AUROC':>11}   (test = mean over {', '.join(test_sets)}; %)"
    )
    for r in rows:
        mark = "  <- selected" if r is best else ""
        print(
            f"{r['p_w']:>5g}{r['p_a']:>6g}{r['clip_threshold']:>6g} | {100 * r['val_FPR95']:>9.2f}"
            f"{100 * r['val_AUROC']:>10.2f} | {100 * r['test_FPR95']:>10.2f}"
            f"{100 * r['test_AUROC']:>11.2f}{mark}"
        )
    print(
        f"{len(rows)} settings scored in {swept - extracted:.1f} s; selected on {args.val_ood}: "
        f"p_w={best['p_w']:g} p_a={best['p_a']:g} tau={best['clip_threshold']:g} -> test FPR95 "
        f"{100 * best['test_FPR95']:.2f}, AUROC {100 * best['test_AUROC']:.2f}"
    )
    out_dir = Path(args.base_dir) / args.in_dataset / "line_sweep" / args.name
    atomic_write_json(
        out_dir / "sweep.json",
        {
            "selected": best,
            "rows": rows,
            "val_ood": args.val_ood,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            "test_sets": test_sets,
        },
    )
    tau = best["clip_threshold"]
    heatmap = plot_sweep_heatmap(
        [r | {"FPR95": r["test_FPR95"]} for r in rows if r["clip_threshold"] == tau],
        out_dir / f"heatmap_tau{tau:g}.png",
        title=f"LINe on {args.in_dataset}: average test FPR95 at tau={tau:g}",
    )
    print(f"heat map: {heatmap}")
    print(f"results: {out_dir / 'sweep.json'}  ({time.time() - start:.1f} s in all)")


if __name__ == "__main__":
    run_cli(main)
