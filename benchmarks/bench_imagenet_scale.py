"""Every feature-level detector at ImageNet scale: fit and scoring time, and peak memory.

Generates, on disk, what an ImageNet-1k run through ResNet-50 caches: memory-mapped training
features (1,281,167 x 2,048 float32 = 10.5 GB, random non-negative, about half exact zeros as
after a ReLU) with labels, 50,000 test features, a random 1,000-way head, and the statistics
precompute.py derives from them (class-mean contributions and the mean feature, computed here
by the same streamed code). Then each detector of the registry, with its ImageNet defaults, is
fitted and scores the test features in a fresh process of its own, which reports its fit and
scoring wall times and its peak resident memory (ru_maxrss: that process alone, the Python
interpreter and PyTorch included). One table is printed (and written as JSON with --out).

    python benchmarks/bench_imagenet_scale.py --quick      # 1/20 scale, under a minute
    python benchmarks/bench_imagenet_scale.py              # full scale: about 11 GB of disk
    python benchmarks/bench_imagenet_scale.py --methods knn --knn-fraction 1   # exact KNN over every
                                                   # row (at full scale the bank streams from disk)

Arrays are generated into --dir (default: a folder in the temporary directory), reused when
they are there at the same sizes, and removed at the end unless --keep. All detectors run in one
process, its peak RSS reset before each (Linux's clear_refs), so each row's peak is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
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

C, D = 1000, 2048
FULL_TRAIN, FULL_TEST = 1_281_167, 50_000


def generate(folder: Path, n_train: int, n_test: int) -> None:
    """Features, labels, head and the precompute statistics, unless already there at these sizes."""
    meta = folder / "meta.json"
    want = {"n_train": n_train, "n_test": n_test, "C": C, "D": D, "version": 1}
    if meta.is_file() and json.loads(meta.read_text()) == want:
        return
    import torch

    from detectors.statistics import class_mean_contributions, mean_feature

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t0 = time.time()
    write_relu_rows(folder / "train.npy", n_train, D, rng)
    write_relu_rows(folder / "test.npy", n_test, D, rng)
    np.save(folder / "train_labels.npy", np.arange(n_train, dtype=np.int64) % C)  # every class present
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(rng.normal(0, 0.02, (C, D)).astype(np.float32)))
        fc.bias.copy_(torch.from_numpy(rng.normal(0, 0.01, C).astype(np.float32)))
    torch.save(fc.state_dict(), folder / "head.pt")
    train = np.load(folder / "train.npy", mmap_mode="r")
    labels = np.load(folder / "train_labels.npy")
    contrib, _ = class_mean_contributions(fc, train, labels)
    np.save(folder / "contributions.npy", contrib)
    np.save(folder / "mean_feature.npy", mean_feature(train))
    meta.write_text(json.dumps(want))
    print(
        f"generated {n_train:,} x {D} training and {n_test:,} test features in {folder} "
        f"({time.time() - t0:.0f} s)"
    )


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_gb() -> float:
    """VmHWM of /proc/self/status (the peak since the last reset), else ru_maxrss."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_methods(folder: str, jobs: list[list]) -> None:
    """Fit and score each (name, method, params) in this process, one JSON line each; the peak RSS
    is reset before each, so each line's peak is its own (the interpreter and PyTorch included)."""
    import gc

    import torch

    from detectors import registry, score_features

    folder = Path(folder)
    fc = torch.nn.Linear(D, C)
    fc.load_state_dict(torch.load(folder / "head.pt", weights_only=True))
    statistics = {
        "train_features": lambda: np.load(folder / "train.npy", mmap_mode="r"),
        "train_labels": lambda: np.load(folder / "train_labels.npy"),
        "contributions": lambda: np.load(folder / "contributions.npy"),
        "mean_feature": lambda: np.load(folder / "mean_feature.npy"),
    }
    for name, method, given in jobs:
        gc.collect()
        separate = _reset_peak_rss()
        detector = registry.build(method, "imagenet", given)
        t0 = time.time()
        try:
            detector.fit(fc, **{key: statistics[key]() for key in detector.needs()})
        except ValueError as exc:
            print(json.dumps({"name": name, "error": str(exc)}), flush=True)
            continue
        fit_s = time.time() - t0
        test = np.load(folder / "test.npy", mmap_mode="r")
        t0 = time.time()
        scores, _ = score_features(detector, test)
        row = {
            "name": name,
            "method": method,
            "settings": {**detector.get_params(), **detector.fitted_values()},
            "fit_s": round(fit_s, 2),
            "score_s": round(time.time() - t0, 2),
            "finite": bool(np.isfinite(scores).all()),
            "peak_rss_gb": round(_peak_rss_gb(), 3),
            "peak_is_own": separate,
        }
        print(json.dumps(row), flush=True)
        del detector, scores, test


def feature_methods() -> list[str]:
    """Every detector of the registry scored from features (network-level ones need images); of
    LINe the full method (its ablations are masks of the same layer)."""
    from detectors import registry

    names = [m for m in registry.method_names() if registry.lookup(m)[0].kind == "features"]
    return [m for m in names if not m.startswith("line_")]


def main(argv=None) -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/20 scale (64,058 x 2,048 training rows)")
    parser.add_argument("--dir", default=None, help="where the arrays go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="leave the arrays in --dir")
    parser.add_argument(
        "--methods", default=None, help="comma-separated methods (default: every feature-level one)"
    )
    parser.add_argument(
        "--knn-fraction",
        type=float,
        default=None,
        help="KNN's share of the bank (default: its ImageNet default, 0.01)",
    )
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--jobs", nargs=2, metavar=("DIR", "JOBS"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=3, metavar=("DIR", "N_TRAIN", "N_TEST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs:
        run_methods(args.jobs[0], json.loads(args.jobs[1]))
        return
    if args.generate:
        generate(Path(args.generate[0]), int(args.generate[1]), int(args.generate[2]))
        return

    scale = 20 if args.quick else 1
    n_train, n_test = -(-FULL_TRAIN // scale), FULL_TEST // scale
    folder = Path(args.dir) if args.dir else Path(tempfile.gettempdir()) / f"line-imagenet-scale-{n_train}"
    # in a process of its own, so that this one stays small (a child's peak RSS starts at its parent's)
    subprocess.run(
        [sys.executable, __file__, "--generate", str(folder), str(n_train), str(n_test)], check=True
    )
    methods = args.methods.split(",") if args.methods else feature_methods()
    jobs = []
    for method in methods:
        if method != "knn":
            jobs.append([method, method, {}])
            continue
        # The paper's ImageNet bank: a random 1% of 1.28M rows (12,812); at 1/20 scale the same size.
        fraction = args.knn_fraction or min(1.0, 0.01 * scale)
        jobs.append([f"knn ({fraction:g})", "knn", {"fraction": fraction}])
    print(f"{n_train:,} x {D} training features (memory-mapped), {n_test:,} test features, C = {C}")
    print(f"{'detector':<14}{'fit s':>9}{'score s':>9}{'peak RSS GB':>13}  settings")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--jobs", str(folder), json.dumps(jobs)], stdout=subprocess.PIPE, text=True
    )
    rows = []
    for line in proc.stdout:
        row = json.loads(line)
        if "error" in row:
            print(f"{row['name']:<14} not run: {row['error']}")
            continue
        rows.append(row)
        shown = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["settings"].items()
        )
        print(
            f"{row['name']:<14}{row['fit_s']:>9.1f}{row['score_s']:>9.1f}{row['peak_rss_gb']:>13.2f}  {shown}"
        )
    if proc.wait() != 0:
        raise SystemExit(f"the benchmark process failed (exit {proc.returncode})")
    worst = max((r["peak_rss_gb"] for r in rows), default=0.0)
    print(f"largest peak RSS: {worst:.2f} GB ({'under' if worst < 4 else 'OVER'} the 4 GB budget)")
    if args.out:
        Path(args.out).write_text(json.dumps({"n_train": n_train, "n_test": n_test, "rows": rows}, indent=1))
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
