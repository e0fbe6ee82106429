"""Per-image score files of two runs (e.g. --device cpu and --device cuda) agree to a tolerance.

Every numeric file under the first folder (the latest run's files; per-run copies under runs/ are
skipped) must exist under the second with the same relative path and shape; prints the largest
absolute difference per file and exits 1 when any exceeds --atol + --rtol * |reference|
(numpy.allclose semantics) or a file is missing.

    python benchmarks/compare_score_dirs.py output/gpu_check/cpu output/gpu_check/cuda --rtol 1e-4
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from util.cli import CliParser  # noqa: E402


def load(path: Path) -> np.ndarray | None:
    """The numbers in a score file (.npy or whitespace text), or None for a non-numeric file."""
    try:
        return np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except ValueError:
        return None


def compare(ref_dir: Path, new_dir: Path, rtol: float, atol: float) -> int:
    """Prints one line per compared file; returns the number of files that disagree or are missing."""
    bad = compared = 0
    paths = (p for p in ref_dir.rglob("*") if p.suffix in (".txt", ".npy") and "runs" not in p.parts)
    for ref_path in sorted(paths):
        rel = ref_path.relative_to(ref_dir)
        ref = load(ref_path)
        if ref is None:
            continue
        new_path = new_dir / rel
        new = load(new_path) if new_path.is_file() else None
        compared += 1
        if new is None or new.shape != ref.shape:
            print(f"MISSING or reshaped  {rel}")
            bad += 1
            continue
        diff = float(np.max(np.abs(new - ref))) if ref.size else 0.0
        ok = np.allclose(new, ref, rtol=rtol, atol=atol)
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  max |diff| {diff:.3g}  {rel}")
    if compared == 0:
        print(f"no score files under {ref_dir}")
        return 1
    return bad


def main() -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args()
    bad = compare(args.reference, args.other, args.rtol, args.atol)
    print(f"{bad} file(s) disagree" if bad else "all files agree")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
