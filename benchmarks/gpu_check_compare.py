"""Two ood_eval.py --base-dir trees (e.g. --device cpu and --device cuda) give the same results.

For every ``scores/*.npy`` under the first tree (per-run copies under runs/ are skipped), the file
of the same relative path under the second must have the same shape and agree: relative
--rtol (default 1e-4, i.e. |a - b| <= rtol * max(|a|, |b|, 1e-6) for every image), or, where
float32 reductions run in another order on the two devices, Spearman rank correlation
>= --spearman (default 0.9999; --no-spearman: --rtol only). For every ``results.json``, each
FPR95 and AUROC (per OOD set and the average) must be within --points percentage points (default
0.05). Prints one line per file and exits 1 when anything disagrees or is missing, or when
there is nothing to compare.

    python benchmarks/gpu_check_compare.py output/gpu_check/cpu/scores output/gpu_check/cuda/scores
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from util.cli import CliParser  # noqa: E402

METRICS = ("FPR95", "AUROC")


def scores_agree(a: np.ndarray, b: np.ndarray, rtol: float, spearman: float) -> tuple[bool, str]:
    """(agree, how) for two per-image score arrays of the same shape."""
    if a.size == 0:
        return True, "empty"
    rel = float((np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-6)).max())
    if rel <= rtol or not np.isfinite(spearman):
        return rel <= rtol, f"max rel diff {rel:.2g}"
    from scipy.stats import spearmanr

    rho = float(spearmanr(a.ravel(), b.ravel()).statistic) if a.size > 1 else float("nan")
    return rho >= spearman, f"max rel diff {rel:.2g}, Spearman {rho:.6f}"


def metric_pairs(ref: dict, new: dict):
    """(name, reference value, other value) of every FPR95/AUROC in two results.json files."""
    blocks = [("average", ref.get("average", {}), new.get("average", {}))]
    blocks += [(name, m, new.get("ood", {}).get(name, {})) for name, m in ref.get("ood", {}).items()]
    for where, a, b in blocks:
        for metric in METRICS:
            if metric in a:
                yield f"{where} {metric}", a[metric], b.get(metric)


def compare_results(ref_path: Path, new_path: Path, points: float) -> tuple[bool, str]:
    ref, new = (json.loads(p.read_text()) for p in (ref_path, new_path))
    worst, missing = 0.0, []
    for name, a, b in metric_pairs(ref, new):
        if b is None:
            missing.append(name)
            continue
        worst = max(worst, 100 * abs(a - b))
    if missing:
        return False, f"missing {', '.join(missing)}"
    return worst <= points, f"largest FPR95/AUROC difference {worst:.3f} points"


def compare(ref_dir: Path, new_dir: Path, rtol: float, spearman: float, points: float) -> int:
    """Prints one line per compared file; returns how many disagree or are missing (1 if none)."""
    bad = compared = 0
    files = (p for p in sorted(ref_dir.rglob("*")) if "runs" not in p.relative_to(ref_dir).parts)
    for ref_path in files:
        if not (ref_path.suffix == ".npy" or ref_path.name == "results.json"):
            continue
        rel, new_path = ref_path.relative_to(ref_dir), new_dir / ref_path.relative_to(ref_dir)
        compared += 1
        if not new_path.is_file():
            print(f"FAIL  missing in {new_dir}: {rel}")
            bad += 1
            continue
        if ref_path.suffix == ".npy":
            a, b = np.load(ref_path), np.load(new_path)
            ok, how = (False, f"shape {b.shape} != {a.shape}") if a.shape != b.shape else (None, "")
            if ok is None:
                ok, how = scores_agree(a.astype(np.float64), b.astype(np.float64), rtol, spearman)
        else:
            ok, how = compare_results(ref_path, new_path, points)
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {how}  {rel}")
    if compared == 0:
        print(f"FAIL  no score files under {ref_dir}")
        return 1
    return bad


def main(argv=None) -> int:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--spearman", type=float, default=0.9999)
    parser.add_argument("--no-spearman", action="store_true", help="scores must agree to --rtol")
    parser.add_argument("--points", type=float, default=0.05, help="FPR95/AUROC, percentage points")
    args = parser.parse_args(argv)
    spearman = float("inf") if args.no_spearman else args.spearman
    bad = compare(args.reference, args.other, args.rtol, spearman, args.points)
    print(f"{bad} file(s) disagree" if bad else "all files agree")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
