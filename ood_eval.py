"""Evaluate an OOD detector (LINe, DICE, Energy, MSP, ReAct, ODIN) on ID test and OOD sets.

Features of every set are extracted once and cached (see util/features.py); every detector and
hyperparameter setting is then computed from the cache. Prints FPR95 / AUROC / AUPR-In per OOD
set and on average (ID positive, the DICE/LINe convention), the ID accuracy of the logits used,
and writes {base_dir}/{in_dataset}/{method}/{name}/results.json plus per-image scores.

Examples (the original demo commands):
  python ood_eval.py --in-dataset CIFAR-10 --p-w 90 --p-a 90 --method taylor --clip_threshold 1.0
  python ood_eval.py --in-dataset CIFAR-10 --p 90
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from detectors import DICE, MSP, Energy, LINe, ReAct, TrainStats, score_sets
from detectors.registry import BASELINE_METHODS, add_baseline_args, line_name, make_baseline
from models import input_normalization
from util import distributed
from util.cli import (
    add_common_args,
    check_provenance,
    code_version,
    contributions_path,
    ensure_writable_dir,
    feat_stat_path,
    load_classifier,
    load_contributions,
    load_feat_stat,
    make_extractor,
    nonnegative_float,
    num_classes,
    percentile_arg,
    positive_int,
    run_cli,
)
from util.data import (
    BAD_IMAGE_LABEL,
    CIFAR_OOD_SETS,
    default_ood_sets,
    id_dataset,
    id_transform,
    image_path,
    missing_ood_message,
    normalization,
    ood_available,
    ood_dataset,
    spread_subset,
)
from util.errors import UserError
from util.features import FeatureExtractor, bad_image_message
from util.io import atomic_write_json, save_scores, sha256_file
from util.metrics import FPR_CONVENTIONS, average_metrics, format_table, ood_metrics
from util.multi_method import METRIC_CONVENTIONS, add_report_args, parse_methods, run_methods

METHOD_ALIASES = {
    "taylor": "line",
    "line": "line",
    "dice": "dice",
    "energy": "energy",
    "msp": "msp",
    "react": "react",
    "odin": "odin",
    **{m: m for m in BASELINE_METHODS},
}
PAPER_LINE = {"CIFAR-10": (90.0, 90.0, 1.0), "CIFAR-100": (90.0, 10.0, 1.0), "imagenet": (10.0, 10.0, 0.8)}
PAPER_DICE_P = {"imagenet": 70.0}  # DICE paper: p = 90 on CIFAR, 70 on ImageNet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[8:]),
    )
    add_common_args(parser)
    parser.add_argument(
        "--method",
        default="energy",
        choices=sorted(METHOD_ALIASES),
        help="score: energy (DICE when --p is given), taylor/line (LINe), dice, "
        "msp, react, odin (default: energy)",
    )
    parser.add_argument(
        "--p",
        default=None,
        type=percentile_arg,
        help="DICE sparsity percentile p (with --method energy or dice)",
    )
    parser.add_argument(
        "--p-w", default=None, type=percentile_arg, help="LINe weight-pruning percentile (paper: 90 on CIFAR)"
    )
    parser.add_argument(
        "--p-a",
        default=None,
        type=percentile_arg,
        help="LINe activation-pruning percentile (paper: 90 CIFAR-10, 10 CIFAR-100)",
    )
    parser.add_argument(
        "--clip_threshold",
        "--clip-threshold",
        dest="clip_threshold",
        default=None,
        type=nonnegative_float,
        help="activation clipping tau: h' = min(h, tau) (LINe paper: 1.0 on CIFAR)",
    )
    parser.add_argument(
        "--react-percentile",
        default=90.0,
        type=percentile_arg,
        help="ReAct: tau = this percentile of ID training activations (default 90)",
    )
    parser.add_argument("--temperature", default=1000.0, type=float, help="ODIN temperature")
    parser.add_argument(
        "--noise", default=0.0014, type=nonnegative_float, help="ODIN input perturbation magnitude"
    )
    parser.add_argument(
        "--out-datasets",
        nargs="+",
        default=None,
        help=f"OOD set names or folders (default: {' '.join(CIFAR_OOD_SETS)}; "
        "extra: FashionMNIST gaussian uniform)",
    )
    parser.add_argument(
        "--contrib",
        default=None,
        help="LINe contributions file (default: the one precompute.py wrote in --cache-dir)",
    )
    parser.add_argument(
        "--feat-stat", default=None, help="DICE mean-feature file (default: the one in --cache-dir)"
    )
    parser.add_argument(
        "--max-samples",
        default=None,
        type=positive_int,
        help="use N images spread evenly over each set (quick runs)",
    )
    parser.add_argument("--base-dir", default="output/ood_scores", help="result directory")
    add_report_args(parser)
    add_baseline_args(parser)
    return parser


def resolve_detector(args, stats: TrainStats):
    """(canonical method name, detector) for the flags; --p with energy means DICE."""
    method = METHOD_ALIASES[args.method]
    tau = args.clip_threshold
    if method in BASELINE_METHODS:
        return method, make_baseline(method, args, args.in_dataset)
    if method == "energy" and args.p is not None:
        method = "dice"
    if method == "energy" and tau is not None:
        method = "react"
    if method == "line":
        p_w, p_a, paper_tau = PAPER_LINE[args.in_dataset]
        p_w = p_w if args.p_w is None else args.p_w
        p_a = p_a if args.p_a is None else args.p_a
        ac, ap, wp = (not getattr(args, flag, False) for flag in ("no_clip", "no_ap", "no_wp"))
        detector = LINe(
            p_w=p_w,
            p_a=p_a,
            clip_threshold=paper_tau if tau is None else tau,
            activation_clipping=ac,
            activation_pruning=ap,
            weight_pruning=wp,
        )
        return line_name(ac, ap, wp), detector
    if method == "dice":
        return ("dice" if tau is None else "dice_react"), DICE(
            p=PAPER_DICE_P.get(args.in_dataset, 90.0) if args.p is None else args.p, clip_threshold=tau
        )
    if method == "react":
        return "react", ReAct(clip_threshold=tau, percentile=args.react_percentile)
    if method == "msp":
        return "msp", MSP()
    if method == "odin":
        return "odin", None
    return "energy", Energy()


def ood_set_names(args) -> list[str]:
    """Requested OOD sets; default sets that are absent are skipped with one line each."""
    if args.out_datasets:
        missing = [n for n in args.out_datasets if not ood_available(n, args.data_root)]
        if missing:
            raise UserError("\n".join(missing_ood_message(n, args.data_root) for n in missing))
        return list(args.out_datasets)
    names = []
    for name in default_ood_sets(args.in_dataset):
        if ood_available(name, args.data_root):
            names.append(name)
        else:
            print(f"skipping {missing_ood_message(name, args.data_root)}")
    if not names:
        raise UserError(
            f"no OOD set found under {Path(args.data_root) / 'ood_datasets'}; download "
            "one of the sets above or pass --out-datasets NAME_OR_FOLDER"
        )
    return names


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    start = time.time()
    cache_dir = ensure_writable_dir(args.cache_dir, "cache directory")
    args.device = distributed.setup(args.device)  # torchrun: join the process group
    transform = id_transform(args.in_dataset, input_normalization(args.model_arch))
    id_test = spread_subset(id_dataset(args.in_dataset, "test", args.data_root, transform), args.max_samples)
    names = ood_set_names(args)
    model, model_key, checkpoint = load_classifier(args)
    fc = model.get_classifier()
    C, D = num_classes(args.in_dataset), fc.in_features

    files_used = {"checkpoint": {"path": str(checkpoint), "sha256": model_key["checkpoint_sha256"]}}

    def mean_feature():
        path = Path(args.feat_stat) if args.feat_stat else _find_feat_stat(args)
        if not path.is_file():
            raise UserError(f"DICE feature statistics {path} (given with --feat-stat) not found")
        record = check_provenance(path, model_key, args.in_dataset, "--feat-stat" if args.feat_stat else None)
        files_used["feat_stat"] = {"path": str(path), "sha256": sha256_file(path), "record": record}
        return load_feat_stat(path, D)

    def contributions():
        path = (
            Path(args.contrib)
            if args.contrib
            else contributions_path(args.cache_dir, args.in_dataset, args.name)
        )
        if not path.is_file():
            raise UserError(
                f"LINe contributions {path} not found: run `python precompute.py "
                f"--in-dataset {args.in_dataset}` with the same --cache-dir first"
            )
        record = check_provenance(path, model_key, args.in_dataset, "--contrib" if args.contrib else None)
        files_used["contributions"] = {"path": str(path), "sha256": sha256_file(path), "record": record}
        return load_contributions(path, C, D)

    extractor = make_extractor(args, model, model_key, cache_dir)

    def train_features():
        train = id_dataset(args.in_dataset, "train", args.data_root, transform)
        return extractor.extract(train, f"{args.in_dataset}_{args.name}_train").features

    def train_labels():
        train = id_dataset(args.in_dataset, "train", args.data_root, transform)
        return extractor.extract(train, f"{args.in_dataset}_{args.name}_train").labels

    stats = TrainStats(
        mean_feature=mean_feature,
        contributions=contributions,
        train_features=train_features,
        train_labels=train_labels,
    )
    method, detector = resolve_detector(args, stats)
    ensure_writable_dir(Path(args.base_dir), "output directory")
    datasets = {"in": id_test}
    for name in names:
        datasets[name] = spread_subset(ood_dataset(name, args.data_root, transform), args.max_samples)
    if method != "odin":
        needed = sum(extractor.bytes_needed(ds, _tag(args, key)) for key, ds in datasets.items())
        extractor.require_space(needed, "the test and OOD sets")
    if distributed.active():
        # torchrun: every rank forwards its share of each set (the training set first when the
        # detector reads training features); then rank 0 alone fits and scores from the cache.
        if _needs_train_set(args, method):
            train = id_dataset(args.in_dataset, "train", args.data_root, transform)
            extractor.extract(train, f"{args.in_dataset}_{args.name}_train")
        if method != "odin":
            for key, ds in datasets.items():
                extractor.extract(ds, _tag(args, key))
        if not distributed.leave():
            return

    if args.methods:
        tokens = parse_methods(args.methods)
        features = {key: extractor.extract(ds, _tag(args, key)) for key, ds in datasets.items()}
        base = {
            "code_version": code_version(),
            "num_images": {k: len(v) for k, v in datasets.items()},
            "skipped_bad_images": extractor.skipped,
            "device": str(extractor.device),
        }
        run_methods(
            args,
            tokens,
            fc=fc,
            stats=stats,
            features=features,
            datasets=datasets,
            names=names,
            files_used=files_used,
            resolve=resolve_detector,
            odin=_odin,
            extractor=extractor,
            base_settings=base,
            set_metrics=_set_metrics,
        )
        print(f"forward passes: {extractor.images_forwarded} images ({time.time() - start:.1f} s)")
        return

    if method == "odin":
        scores, preds, labels = _odin(args, extractor, datasets)
        settings_detector = {"temperature": args.temperature, "noise": args.noise}
    else:
        detector.fit(fc, stats)  # before any forward pass: missing statistics fail at once
        settings_detector = detector.settings()
        features = {key: extractor.extract(ds, _tag(args, key)) for key, ds in datasets.items()}
        scores, preds = score_sets(detector, {key: fs.features for key, fs in features.items()})
        labels = features["in"].labels
        if extractor.images_forwarded == 0:
            print(f"all features loaded from the cache in {cache_dir / 'features'}: no forward pass")
        else:
            print(f"forward pass over {extractor.images_forwarded} images (now cached)")

    accuracy = float(np.mean(preds["in"] == labels))
    per_set = {name: _set_metrics(scores, name) for name in names}
    skipped = {k: extractor.skipped[_tag(args, k)] for k in datasets if _tag(args, k) in extractor.skipped}
    for key, files in skipped.items():
        print(
            f"{key}: {len(datasets[key])} images requested, {len(files)} unreadable skipped, "
            f"{len(scores[key])} used (--skip-bad-images; listed in results.json)"
        )
    settings = {
        **{k: v for k, v in vars(args).items()},
        "method": method,
        "method_flag": args.method,
        "detector": settings_detector,
        "files": files_used,
        "code_version": code_version(),
        "num_images": {k: len(v) for k, v in datasets.items()},
        "num_images_used": {k: len(v) for k, v in scores.items()},
        "skipped_bad_images": skipped,
        "device": str(extractor.device),
        "fpr_convention": args.fpr_convention,
        "metric_conventions": METRIC_CONVENTIONS,
    }
    out_dir = Path(args.base_dir) / args.in_dataset / method / args.name
    save_scores(out_dir, scores)
    atomic_write_json(
        out_dir / "results.json",
        {"id_accuracy": accuracy, "ood": per_set, "average": average_metrics(per_set), "settings": settings},
    )

    title = (
        f"{method} on {args.in_dataset} ({args.name}), {_describe(settings_detector)}\n"
        f"{FPR_CONVENTIONS[args.fpr_convention][1]}, percent"
    )
    print(format_table(per_set, title, fpr_key=FPR_CONVENTIONS[args.fpr_convention][0]))
    if args.plots:
        from util.plots import plot_results

        plot_results(scores, out_dir / "plots", f"{method} on {args.in_dataset} ({args.name})")
    print(f"ID accuracy ({method} logits): {100 * accuracy:.2f}%")
    print(f"results: {out_dir / 'results.json'}  ({time.time() - start:.1f} s)")


def _tag(args, key: str) -> str:
    return f"{args.in_dataset}_{args.name}_{'test' if key == 'in' else key}"


def _needs_train_set(args, method: str) -> bool:
    """Whether fitting may read the training features (ReAct's percentile, feature-space baselines)."""
    light = ("msp", "energy", "dice", "dice_react", "odin", "taylor")
    tokens = parse_methods(args.methods) if args.methods else [method]
    for token in tokens:
        if token.startswith("line") or token in light:
            continue
        if token == "react" and args.clip_threshold is not None:
            continue
        return True
    return False


def _set_metrics(scores: dict, name: str) -> dict:
    """ood_metrics of one set; non-finite scores become an error naming the set and the count."""
    for key in ("in", name):
        bad = int(np.count_nonzero(~np.isfinite(scores[key])))
        which = "the ID test set" if key == "in" else f"OOD set {name}"
        if len(scores[key]) == 0:
            raise UserError(f"no image of {which} could be scored (all were skipped as unreadable)")
        if bad:
            raise UserError(
                f"{bad} of {len(scores[key])} scores of {which} are NaN or infinite (the model's features "
                "or logits overflowed, or the checkpoint holds NaN/inf weights); metrics are undefined, "
                "nothing was written"
            )
    return ood_metrics(scores["in"], scores[name], with_ood_positive=True)


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "no parameters"


def _find_feat_stat(args) -> Path:
    """The DICE mean-feature file in --cache-dir, by --name, else by --model-arch (DICE's naming)."""
    candidates = [
        feat_stat_path(args.cache_dir, args.in_dataset, args.name),
        feat_stat_path(args.cache_dir, args.in_dataset, args.model_arch),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"DICE feature statistics {candidates[0]} not found: run `python precompute.py "
        f"--in-dataset {args.in_dataset}` with the same --cache-dir, or pass --feat-stat"
    )


def _odin(args, extractor: FeatureExtractor, datasets: dict):
    """ODIN needs input gradients: run the network on every set (not cached)."""
    from torch.utils.data import DataLoader

    from detectors.odin import odin_scores

    model = extractor.model
    std = normalization(datasets["in"].transform).std  # the ID transform's, per channel
    scores, preds, labels = {}, {}, None
    for key, ds in datasets.items():
        loader = DataLoader(ds, batch_size=extractor.batch_size, num_workers=extractor.num_workers)
        s, p, y, seen = [np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
        for images, targets in loader:
            bad = np.flatnonzero(targets.numpy() == BAD_IMAGE_LABEL)
            files = [image_path(ds, seen + int(i)) for i in bad]
            seen += len(targets)
            if files and not extractor.skip_bad_images:
                raise UserError(bad_image_message(files, len(ds)))
            if files:
                extractor.skipped.setdefault(_tag(args, key), []).extend(files)
                keep = targets != BAD_IMAGE_LABEL
                images, targets = images[keep], targets[keep]
            if len(targets) == 0:
                continue
            images = images.to(extractor.device)
            sc, out = odin_scores(model, images, args.temperature, args.noise, std)
            s.append(sc.cpu().numpy())
            p.append(out.argmax(1).cpu().numpy())
            y.append(targets.numpy())
        scores[key], preds[key] = np.concatenate(s), np.concatenate(p)
        if key == "in":
            labels = np.concatenate(y)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return scores, preds, labels


if __name__ == "__main__":
    run_cli(main)
