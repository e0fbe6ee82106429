#!/usr/bin/env python3
"""Write the SVHN OOD subset used by the papers: the first 1,000 test images of each digit.

Reads SVHN's test_32x32.mat (downloaded by torchvision into {data_root}/ood_datasets/svhn when
absent) and writes {data_root}/ood_datasets/svhn/svhn_test_subset.npz with ``images`` (10000, 32,
32, 3) uint8 and ``labels`` (10000,), in test-set order.

Example: python select_svhn_data.py --data-root datasets
"""

from __future__ import annotations

import bootstrap  # noqa: F401  (reruns this script under .venv when this Python has no torch)

# isort: split
import os
import tempfile
from pathlib import Path

import numpy as np

from util.cli import CliParser
from util.datasets import OOD_SETS
from util.errors import UserError
from util.runtime import run_cli

PER_DIGIT = 1000


def select_first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices (sorted) of the first ``per_class`` images of each label."""
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def main(argv=None) -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="datasets", help="dataset root (default: ./datasets)")
    parser.add_argument("--per-digit", default=PER_DIGIT, type=int, help="images per digit (default 1000)")
    args = parser.parse_args(argv)
    out = OOD_SETS["SVHN"].expected_path(args.data_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    from torchvision.datasets import SVHN

    try:
        svhn = SVHN(str(out.parent), split="test", download=True)
    except Exception as exc:
        raise UserError(
            f"cannot read or download the SVHN test set into {out.parent} ({type(exc).__name__}: "
            f"{exc}). Download http://ufldl.stanford.edu/housenumbers/test_32x32.mat into {out.parent}."
        ) from None
    keep = select_first_per_class(np.asarray(svhn.labels), args.per_digit)
    images = np.ascontiguousarray(svhn.data[keep].transpose(0, 2, 3, 1))
    labels = np.asarray(svhn.labels)[keep]
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    print(f"wrote {out}: {len(images)} images, {np.bincount(labels).tolist()} per digit")


if __name__ == "__main__":
    run_cli(main)
