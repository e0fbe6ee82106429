"""What precompute.py and ood_eval.py share: flags, model loading, cache file names, error exit."""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from util.data import IN_DATASETS
from util.errors import UserError
from util.io import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def parsed_number(text: str, convert: type, expected: str):
    """``convert(text)`` (int or float) for an argparse type; the error names what was expected."""
    try:
        return convert(text)
    except ValueError:
        kind = "an integer" if convert is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}; expected {expected}") from None


def percentile_arg(text: str) -> float:
    """argparse type: a percentile in [0, 100]."""
    value = parsed_number(text, float, "a percentile in [0, 100]")
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside the valid range [0, 100]")
    return value


def positive_int(text: str) -> int:
    value = parsed_number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected an integer >= 1")
    return value


def nonnegative_float(text: str) -> float:
    value = parsed_number(text, float, "a value >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range; expected a value >= 0")
    return value


def nonnegative_int(text: str) -> int:
    value = parsed_number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected an integer >= 0")
    return value


def closest_name(text: str, valid) -> str | None:
    """The valid name closest to ``text`` ignoring case, '-' and '_' (difflib), or None."""

    def norm(name: str) -> str:
        return name.lower().replace("-", "").replace("_", "")

    by_norm = {norm(v): v for v in valid}
    close = difflib.get_close_matches(norm(text), list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


def name_arg(choices, what: str):
    """argparse type: one of ``choices`` (a sequence or a function returning one), else an error
    listing them and suggesting the closest (case-insensitive first, then difflib)."""

    def parse(text: str) -> str:
        valid = list(choices() if callable(choices) else choices)
        if text in valid:
            return text
        close = closest_name(text, valid)
        hint = f"; did you mean {close!r}?" if close else ""
        raise argparse.ArgumentTypeError(f"unknown {what} {text!r}: choose from {', '.join(valid)}{hint}")

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _model_names():
    from models import MODEL_NAMES

    return MODEL_NAMES


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in-dataset",
        default="CIFAR-10",
        type=name_arg(sorted(IN_DATASETS), "dataset"),
        metavar="{" + ",".join(sorted(IN_DATASETS)) + "}",
        help="in-distribution dataset (default: CIFAR-10)",
    )
    parser.add_argument(
        "--name",
        default="densenet",
        help="network name: checkpoints/{in_dataset}/{name}/ and cache file names",
    )
    parser.add_argument(
        "--model-arch",
        default="densenet",
        type=name_arg(_model_names, "model"),
        help="architecture (default: densenet)",
    )
    parser.add_argument("--data-root", default="datasets", help="dataset root (default: ./datasets)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (default: checkpoints/{in_dataset}/{name}/"
        "checkpoint_100.pth.tar, downloaded if absent and published; ImageNet: torchvision's "
        "resnet50 IMAGENET1K_V1 weights, checkpoints/imagenet/BiT-S-R101x1.npz for BiT)",
    )
    parser.add_argument(
        "--cache-dir", default="cache", help="where features and ID statistics are cached (default: ./cache)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "-b", "--batch-size", default=256, type=positive_int, help="images per forward batch (default: 256)"
    )
    parser.add_argument(
        "--workers",
        default=None,
        type=nonnegative_int,
        help="DataLoader worker processes, 0 = load in the main process (default: 1 on CPU, 4 on CUDA)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip image files that cannot be read (counted in the output) instead of stopping",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="forward-pass precision: fp32 (default, exact), bf16 autocast (CPU/CUDA), "
        "fp16 autocast (CUDA); reduced precision is cached separately",
    )


def num_classes(in_dataset: str) -> int:
    return IN_DATASETS[in_dataset]


def load_classifier(args):
    """(model, model_key, checkpoint_path) for the flags; model_key identifies the weights."""
    from models import get_model
    from models.checkpoints import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint, args.in_dataset, args.name, args.model_arch)
    model = get_model(args.model_arch, num_classes(args.in_dataset), checkpoint)
    model_key = {
        "arch": args.model_arch,
        "num_classes": num_classes(args.in_dataset),
        "checkpoint_sha256": sha256_file(checkpoint),
    }
    return model, model_key, checkpoint


def make_extractor(args, model, model_key: dict, cache_dir):
    """The FeatureExtractor the shared flags describe (device, -b, --workers, --precision, ...)."""
    from util.features import FeatureExtractor

    return FeatureExtractor(
        model,
        model_key,
        cache_dir,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.no_progress,
        precision=args.precision,
        skip_bad_images=args.skip_bad_images,
    )


def contributions_path(cache_dir, in_dataset: str, name: str, method: str = "taylor") -> Path:
    """LINe's class-mean contributions, shape (D, C): ``{in_dataset}_{name}_{method}_mean_class.npy``."""
    return Path(cache_dir) / f"{in_dataset}_{name}_{method}_mean_class.npy"


def feat_stat_path(cache_dir, in_dataset: str, name: str) -> Path:
    """DICE's mean training feature, shape (D,): ``{in_dataset}_{name}_feat_stat.npy``."""
    return Path(cache_dir) / f"{in_dataset}_{name}_feat_stat.npy"


def load_feat_stat(path: Path, feature_dim: int) -> np.ndarray:
    """Mean feature (D,) float64 from a DICE ``feat_stat`` file; checks it fits the model."""
    try:
        stat = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read feature statistics {path}: {exc}") from None
    stat = np.asarray(stat, dtype=np.float64).squeeze()
    if stat.shape != (feature_dim,):
        raise UserError(
            f"{path} holds shape {stat.shape}; this model needs a mean feature of shape "
            f"({feature_dim},). It was made for another model: rerun precompute.py."
        )
    _require_finite(stat, path)
    return stat


def _require_finite(values: np.ndarray, path: Path) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise UserError(f"{path} holds {bad} NaN or infinite values of {values.size}; rerun precompute.py.")


def check_provenance(path: Path, model_key: dict, in_dataset: str, flag: str | None = None) -> dict | None:
    """Check the record ``{path}.json`` that precompute.py writes next to a statistics file.

    The record names what produced the file (dataset, architecture, checkpoint sha256, cache
    version) and the file's own sha256. Files without a record (made by the original LINe/DICE
    code) are accepted; their shape is checked when loaded. A record that names another model,
    or describes other file contents, is an error: these files cannot be recomputed here, so the
    message says to rerun precompute.py (or, for a file given with ``flag``, names the mismatch).
    Returns the record, or None.
    """
    from util.features import CACHE_VERSION

    record_path = path.with_suffix(".json")
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {record_path} (record of {path}): {exc}; rerun precompute.py") from None
    expected = {
        "in_dataset": in_dataset,
        "model_arch": model_key.get("arch"),
        "checkpoint_sha256": model_key.get("checkpoint_sha256"),
        "cache_version": CACHE_VERSION,
        "sha256": sha256_file(path),
    }
    mismatches = [
        f"{k}: file made with {record[k]!r}, now {v!r}"
        for k, v in expected.items()
        if k in record and record[k] != v
    ]
    if not mismatches:
        return record
    what = "\n  ".join(mismatches)
    if "sha256" in record and record["sha256"] != expected["sha256"]:
        advice = (
            f"{path} was changed after precompute.py wrote it (or precompute.py was interrupted); "
            f"rerun precompute.py, or delete {record_path} to use the file as it is"
        )
    elif flag:
        advice = f"pass a {flag} file made for this checkpoint, or rerun precompute.py for it"
    else:
        advice = (
            f"rerun `python precompute.py --in-dataset {in_dataset}` with this --checkpoint and "
            f"--cache-dir {path.parent} to recompute it"
        )
    given = f" (given with {flag})" if flag else ""
    raise UserError(f"{path}{given} does not match this run:\n  {what}\n{advice}")


def load_contributions(path: Path, num_classes: int, feature_dim: int) -> np.ndarray:
    """Class-mean contributions (C, D) from a ``mean_class`` file stored as (D, C)."""
    try:
        stored = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read contributions {path}: {exc}") from None
    if stored.shape != (feature_dim, num_classes):
        raise UserError(
            f"{path} holds shape {stored.shape}; this model needs (features, classes) = "
            f"({feature_dim}, {num_classes}). It was made for another model: rerun precompute.py."
        )
    _require_finite(stored, path)
    return np.asarray(stored, dtype=np.float64).T


@functools.cache
def code_version() -> str:
    """``git describe`` of this checkout, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def run_cli(main) -> None:
    """Run ``main()``; a UserError becomes 'error: ...' on stderr and exit code 2."""
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; partial results were not kept as complete", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror}{where}; free some space or pass another directory", file=sys.stderr)
        sys.exit(2)


def ensure_writable_dir(path, what: str) -> Path:
    """Create ``path`` if needed and check it can be written, before any long computation."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{what} {path} is not writable ({exc.strerror}); pass another directory") from None
    return path
