"""Where each evaluation's results are kept, so that no run silently replaces another.

    {base_dir}/{in_dataset}/{method}/{name}/
        results.json, scores/<set>.npy, plots/   the latest run of the method (docs/files.md); a set
                                                 given as a folder by its base name (util.io.short_names),
                                                 scores/sets.json names each file's set
        runs/<run id>/                           every run with its own settings, kept:
            run.json                             the settings (detector, checkpoint, subsets, ...)
            scores/<set>.npy                     per-image scores, in dataset order
            id_predictions.npz                   ID test labels, predictions, max softmax
            results.json, plots/                 once both ID and OOD scores are there

The run id is the detector's settings, readable, then a digest of everything that changes the
numbers (model and checkpoint, detector parameters, precision, image subsets): a run with other
settings gets another folder, and a run with the same settings continues the same folder (so
``--in-dist-only`` then ``--out-dist-only`` meet, and ``--cal-metric`` finds them).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from util.errors import UserError
from util.io import SCORE_INDEX, atomic_write_json, score_files, sha256_json

RUNS = "runs"


def method_dir(base_dir, in_dataset: str, method: str, name: str) -> Path:
    """``{base_dir}/{in_dataset}/{method}/{name}``: the latest results of the method."""
    return Path(base_dir) / in_dataset / method / name


def results_line(base_dir, in_dataset: str, name: str, methods: list[str], plots: str | None = None) -> str:
    """The one line saying where the results of ``methods`` went (``plots``: their FPR95 convention,
    when plots were written)."""
    folder = method_dir(base_dir, in_dataset, methods[0] if len(methods) == 1 else "<method>", name)
    each = "" if len(methods) == 1 else " for each method"
    figures = f", plots ({plots.upper()} positive) in plots/" if plots else ""
    return (
        f"results: {folder / 'results.json'}{each} (per-image scores in scores/{figures}, settings in "
        f"results.json; {RUNS}/ keeps every run)"
    )


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def readable_settings(
    params: dict, inert: set, max_samples: int | None, max_ood_samples: int | None = None
) -> str:
    """``p_w=90,p_a=90,clip_threshold=1``: the parameters that act (switches are in the method name)."""
    parts = [
        f"{k}={_text(v)}"
        for k, v in params.items()
        if v is not None and not isinstance(v, bool) and k not in inert
    ]
    if max_samples:
        parts.append(f"max_samples={max_samples}")
    if max_ood_samples:
        parts.append(f"max_ood_samples={max_ood_samples}")
    return ",".join(parts) or "default"


def run_id(readable: str, key: dict) -> str:
    return f"{readable}-{sha256_json(key)[:10]}"


def find_runs(folder: Path, readable: str) -> list[Path]:
    """Run folders of ``folder`` whose readable settings are ``readable`` (any model or checkpoint)."""
    runs = folder / RUNS
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and p.name.rsplit("-", 1)[0] == readable)


def load_scores(run_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The saved scores of the sets ``names`` (as given: set names or folder paths; the file of
    each is in ``scores/sets.json``, ``util.io.score_files``)."""
    out = {}
    files = score_files(run_dir, names)
    for name in names:
        path = run_dir / "scores" / files[name]
        if not path.is_file():
            raise UserError(f"no saved scores of {name} in {run_dir} ({path} not found)")
        out[name] = np.load(path)
    return out


def save_id_predictions(run_dir: Path, labels, predictions, confidence) -> None:
    path = run_dir / "id_predictions.npz"
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, labels=np.asarray(labels), predictions=np.asarray(predictions), confidence=confidence)
    os.replace(tmp, path)


def load_id_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    path = run_dir / "id_predictions.npz"
    if not path.is_file():
        raise UserError(f"no saved ID predictions in {run_dir}: score the ID test set first")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def read_run(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {run_dir / 'run.json'} ({exc}); rerun the evaluation") from None


def write_run(run_dir: Path, settings: dict) -> None:
    atomic_write_json(run_dir / "run.json", settings)


def publish(run_dir: Path, latest: Path, score_names: list[str]) -> None:
    """Copy a complete run (results.json, its scores, plots) to the method's latest place.

    Scores there of sets that this run did not score are removed (they belong to another run,
    which keeps them in its own folder); results.json is written last.
    """
    scores = latest / "scores"
    files = score_files(run_dir, score_names)
    keep = set(files.values())
    if scores.is_dir():
        for old in scores.glob("*.npy"):
            if old.name not in keep:
                old.unlink()
    for name in sorted(keep):
        _copy(run_dir / "scores" / name, scores / name)
    atomic_write_json(scores / SCORE_INDEX, files)
    if (latest / "plots").is_dir():  # plots of an earlier run would not match these scores
        shutil.rmtree(latest / "plots")
    if (run_dir / "plots").is_dir():
        shutil.copytree(run_dir / "plots", latest / "plots")
    results = json.loads((run_dir / "results.json").read_text())
    results["settings"]["run_dir"] = str(run_dir)
    atomic_write_json(latest / "results.json", results)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
