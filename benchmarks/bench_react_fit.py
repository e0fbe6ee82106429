"""ReAct's fit at ImageNet scale: the exact percentile of every training activation, in bounded memory.

Generates a memory-mapped (N, D) float32 .npy of random non-negative features on disk (default
1,281,167 x 2,048 = 10.5 GB, ImageNet-1k's training set through ResNet-50), then fits ReAct
(tau = the 90th percentile of all N * D activations) in a fresh process and reports its wall
time and peak RSS (ru_maxrss of that process alone). It also checks the value against
numpy.percentile of the float64 copy on a slice that fits in memory (--check-rows rows).

    python benchmarks/bench_react_fit.py                        # full scale, about 10.5 GB of disk
    python benchmarks/bench_react_fit.py --rows 64000 --keep    # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import write_relu_rows  # noqa: E402

from util.cli import CliParser  # noqa: E402


def generate(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """A .npy of max(N(0, 1), 0) float32 values, written block by block (about half exact zeros)."""
    write_relu_rows(path, rows, dim, np.random.default_rng(seed))


def fit_in_this_process(path: str, percentile: float) -> dict:
    import torch

    from detectors.react import ReAct

    features = np.load(path, mmap_mode="r")
    head = torch.nn.Linear(features.shape[1], 1000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    detector = ReAct(percentile=percentile).fit(head, train_features=features)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "threshold": detector.threshold_,
        "seconds": seconds,
        "peak_rss_gb": peak,
        "rss_before_gb": before,
    }


def main() -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_281_167)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--percentile", type=float, default=90.0)
    parser.add_argument("--check-rows", type=int, default=100_000, help="rows of the numpy comparison")
    parser.add_argument("--dir", default=None, help="where the array is written (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated array")
    parser.add_argument("--fit-only", default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.fit_only:
        print(json.dumps(fit_in_this_process(args.fit_only, args.percentile)))
        return

    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_react_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"features_{args.rows}x{args.dim}.npy"
    size_gb = args.rows * args.dim * 4 / 1e9
    try:
        if not path.is_file():
            start = time.perf_counter()
            generate(path, args.rows, args.dim)
            print(f"generated {path} ({size_gb:.1f} GB) in {time.perf_counter() - start:.1f} s")
        child = subprocess.run(
            [sys.executable, __file__, "--fit-only", str(path), "--percentile", str(args.percentile)],
            capture_output=True,
            text=True,
            check=True,
        )
        fit = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"ReAct fit, {args.rows} x {args.dim} float32 memory-mapped ({size_gb:.1f} GB), "
            f"p = {args.percentile:g}: "
            f"tau = {fit['threshold']!r} in {fit['seconds']:.1f} s, peak RSS {fit['peak_rss_gb']:.2f} GB "
            f"(process before the fit: {fit['rss_before_gb']:.2f} GB)"
        )
        from detectors.react import ReAct

        rows = min(args.check_rows, args.rows)
        part = np.array(np.load(path, mmap_mode="r")[:rows])
        got = ReAct(percentile=args.percentile).fit(_head(args.dim), train_features=part).threshold_
        want = float(np.percentile(part.astype(np.float64), args.percentile))
        print(
            f"first {rows} rows: streaming {got!r}, numpy.percentile of the float64 copy {want!r} -> "
            f"{'equal' if got == want else 'DIFFERENT'}"
        )
        if got != want:
            sys.exit(1)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            if not args.dir:
                os.rmdir(folder)


def _head(dim: int):
    import torch

    return torch.nn.Linear(dim, 1000)


if __name__ == "__main__":
    main()
