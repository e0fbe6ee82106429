"""Per-image score text files at the original repositories' paths, in their format, so that
analysis scripts written for the originals (their ``util/metrics.py``) read our runs.

    {base_dir}/{in_dataset}/{method}/{name}/nat/in_scores{suffix}.txt     one score per line
    {base_dir}/{in_dataset}/{method}/{name}/nat/in_labels{suffix}.txt     "label prediction confidence"
    {base_dir}/{in_dataset}/{method}/{name}/nat/{set}/out_scores{suffix}.txt   (a folder: its base name)

``method`` is the original code's ``--method``: ``taylor`` for LINe, whose files carry the suffix
``_taylor_{detail}`` (LINe's code), and ``energy`` for DICE and ReAct, which the DICE code runs as
energy with ``--p`` or ``--clip_threshold`` (suffix empty, DICE's code); other methods under their
own name, DICE's format. Scores are higher-is-ID, as the originals wrote them; confidence is the max
softmax probability of the method's logits. Like the originals, these files hold the latest run
that wrote them; ``nat/written_by.json`` names, for each file, the method and the run folder that
wrote it, and a run that leaves files of another run there (sets it did not score) says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from util.io import atomic_write_json, atomic_write_text, file_stem, short_names

# Our method -> the original code's --method (its folder name).
ORIGINAL_METHOD = {"line": "taylor", "dice": "energy", "react": "energy"}


def original_folder(method: str) -> str:
    return ORIGINAL_METHOD.get(method, method)


def nat_dir(base_dir, in_dataset: str, method: str, name: str) -> Path:
    return Path(base_dir) / in_dataset / original_folder(method) / name / "nat"


def suffix(method: str, detail: str) -> str:
    return f"_taylor_{detail}" if method == "line" else ""


def owners(methods: list[str]) -> dict[str, str]:
    """{method: original folder} for the methods of one run that get the original files: where two
    share a folder (energy, dice, react all use ``energy``), the one named like it, else the first."""
    by_folder: dict[str, str] = {}
    for m in methods:
        folder = original_folder(m)
        if folder not in by_folder or m == folder:
            by_folder[folder] = m
    return {m: f for f, m in by_folder.items()}


def location_line(base_dir, in_dataset: str, name: str, methods: list[str]) -> str | None:
    """One line saying where the original code's files of ``methods`` (those of a run that wrote
    them) went; a method sharing its folder with another (``owners``) is said to have none."""
    owned = owners(methods)
    if not owned:
        return None
    folders = [f if f == m else f"{f} ({m})" for m, f in owned.items()]
    if len(owned) == 1:
        where = f"{nat_dir(base_dir, in_dataset, next(iter(owned)), name)}/"
    else:
        where = f"{nat_dir(base_dir, in_dataset, '<folder>', name)}/ for <folder> = {', '.join(folders)}"
    holder = {f: m for m, f in owned.items()}
    skipped = "".join(
        f"; {m}'s are not written ({original_folder(m)}/ holds {holder[original_folder(m)]}'s)"
        for m in methods
        if m not in owned
    )
    return f"original code's per-image text files (its --method folders): {where}{skipped}"


def _lines(values) -> str:
    return "".join(f"{v}\n" for v in np.asarray(values).tolist())


def write_original_files(
    base_dir,
    in_dataset: str,
    name: str,
    method: str,
    detail: str,
    scores: dict[str, np.ndarray],
    id_predictions: dict[str, np.ndarray] | None,
    run_dir: Path,
) -> tuple[Path, dict[str, dict]]:
    """Write the files of the sets in ``scores`` ("in" and OOD set names); returns the nat/ folder
    and the files there that another run wrote ({file: {"method", "run_dir"}})."""
    nat = nat_dir(base_dir, in_dataset, method, name)
    end = suffix(method, detail)
    written = []
    label = short_names(scores)  # a folder by its base name (parent_base where two share it)
    for key, values in scores.items():
        if key == "in":
            written.append(f"in_scores{end}.txt")
        else:
            written.append(f"{file_stem(label[key])}/out_scores{end}.txt")
        atomic_write_text(nat / written[-1], _lines(values))
    if id_predictions is not None and "in" in scores:
        rows = zip(
            id_predictions["labels"].tolist(),
            id_predictions["predictions"].tolist(),
            id_predictions["confidence"].tolist(),
        )
        written.append(f"in_labels{end}.txt")
        atomic_write_text(nat / written[-1], "".join(f"{y} {p} {c}\n" for y, p, c in rows))
    return nat, _record_writer(nat, method, run_dir, written)


def _record_writer(nat: Path, method: str, run_dir: Path, written: list[str]) -> dict[str, dict]:
    """Update nat/written_by.json ({file: writer}) with this run's files; return the other runs' files."""
    path = nat / "written_by.json"
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        files = {}
    writer = {"method": method, "run_dir": str(run_dir)}
    files.update({name: writer for name in written})
    atomic_write_json(path, {"files": dict(sorted(files.items()))})
    return {name: w for name, w in files.items() if w != writer}
