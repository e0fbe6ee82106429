"""Atomic file writes and checksums: nothing written is ever left half-done."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from util.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_path(path: Path) -> Path:
    """A fresh temporary file next to ``path`` with the usual (umask) permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` to `path` (.npy) via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _is_path(name: str) -> bool:
    return "/" in name or "\\" in name or name in (".", "..")


def _parts(name: str) -> list[str]:
    """The folders of a path, outermost first (``a/b/myood/`` -> [..., a, b, myood])."""
    return [p for p in Path(os.path.abspath(name.replace("\\", "/"))).parts if p not in ("/", "\\")]


def short_names(names, taken=()) -> dict[str, str]:
    """The name each set goes by in tables, results.json and file names.

    A set name (``dtd``, ``in``) stays as it is; a folder path (a name with ``/`` or ``\\``) goes by
    its base name (``/tmp/x/myood`` -> ``myood``), with as many parent folders in front
    (``x/myood``) as it takes to differ from every other set of ``names``, from ``taken`` and from
    the named sets (``ood_datasets/dtd``: a folder named ``dtd`` is not the set ``dtd``).
    """
    from util.datasets import OOD_SETS  # here: util.io is imported by modules util.datasets needs

    names = list(dict.fromkeys(names))
    labels = {n: n for n in names if not _is_path(n)}
    paths = {n: _parts(n) for n in names if _is_path(n)}
    depth = dict.fromkeys(paths, 1)
    fixed = set(labels.values()) | set(taken) | {"in", *OOD_SETS}
    while True:
        current = {n: "/".join(parts[-depth[n] :]) for n, parts in paths.items()}
        counts: dict[str, int] = {}
        for label in current.values():
            counts[label] = counts.get(label, 0) + 1
        clash = [
            n
            for n, label in current.items()
            if (label in fixed or counts[label] > 1) and depth[n] < len(paths[n])
        ]
        if not clash:
            break
        for n in clash:
            depth[n] += 1
    out = {n: labels.get(n) or current[n] for n in names}
    seen: dict[str, str] = {}
    for name, label in out.items():
        if label in seen:  # the same folder twice (/x/myood and /x/myood/), or a folder named like a set
            raise UserError(
                f"OOD sets {seen[label]!r} and {name!r} would both be called {label!r}: give each once"
            )
        seen[label] = name
    return out


def file_stem(label: str) -> str:
    """A short name as a file name: ``parent/base`` -> ``parent_base``."""
    return label.replace("/", "_").replace("\\", "_")


SCORE_INDEX = "sets.json"  # scores/sets.json: {set as given (a name or a folder path): its .npy file}


def _read_index(scores_dir: Path) -> dict[str, str]:
    try:
        index = json.loads((scores_dir / SCORE_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def score_files(out_dir: str | os.PathLike, names) -> dict[str, str]:
    """The .npy file of each set's scores in ``out_dir/scores``: the one recorded in its
    ``sets.json``, else ``<short name>.npy`` (``short_names``), distinct from the files of the sets
    recorded there (a folder scored later into the same run keeps its own file). Folders of runs
    written before the index: ``<set>.npy`` with ``/`` and ``\\`` as ``_``."""
    scores_dir = Path(out_dir) / "scores"
    index = _read_index(scores_dir)
    out = {n: index[n] for n in names if n in index}
    new = [n for n in names if n not in index]
    legacy = {n: file_stem(n) + ".npy" for n in new if _is_path(n)}
    out.update({n: f for n, f in legacy.items() if (scores_dir / f).is_file() and not index})
    taken = {Path(f).stem for f in index.values()}
    labels = short_names([n for n in names if n not in out], taken)
    out.update({n: file_stem(label) + ".npy" for n, label in labels.items()})
    return {n: out[n] for n in names}


def save_scores(out_dir: str | os.PathLike, scores: dict[str, np.ndarray]) -> dict[str, str]:
    """Each set's scores as ``out_dir/scores/<short name>.npy`` (``score_files``), and the set of each
    file in ``out_dir/scores/sets.json``; returns {set: file}."""
    scores_dir = Path(out_dir) / "scores"
    files = score_files(out_dir, list(scores))
    for name, values in scores.items():
        atomic_save_npy(scores_dir / files[name], values)
    atomic_write_json(scores_dir / SCORE_INDEX, {**_read_index(scores_dir), **files})
    return files


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _npy_file_of(array) -> tuple[str, int] | None:
    """(path, data offset) when ``array`` is a whole .npy file opened with mmap_mode, else None."""
    if not isinstance(array, np.memmap) or not array.filename or not array.flags.c_contiguous:
        return None
    try:
        with open(array.filename, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError):
        return None
    if tuple(shape) != array.shape or fortran or dtype != array.dtype:
        return None
    return array.filename, offset


def row_blocks(array, rows: int):
    """Consecutive blocks of at most ``rows`` rows of ``array``, each a fresh in-memory array.

    A memory-mapped .npy file (``np.load(path, mmap_mode="r")``, as the feature cache returns) is
    read with plain file reads: pages touched through the map would stay in this process's
    resident memory (10.5 GB for ImageNet's training features), file reads go to the page cache
    only. Any other array is sliced.
    """
    source = _npy_file_of(array)
    n = len(array)
    if source is None:
        for start in range(0, n, rows):
            yield np.array(array[start : start + rows])
        return
    path, offset = source
    row_items = int(np.prod(array.shape[1:], dtype=np.int64))
    row_bytes = row_items * array.dtype.itemsize
    with open(path, "rb") as f:
        for start in range(0, n, rows):
            m = min(rows, n - start)
            f.seek(offset + start * row_bytes)
            block = np.fromfile(f, dtype=array.dtype, count=m * row_items)
            if block.size != m * row_items:
                raise OSError(f"{path} ended early: expected {n} rows")
            yield block.reshape((m, *array.shape[1:]))


def take_rows(array, indices) -> np.ndarray:
    """``array[indices]`` as a fresh in-memory array; for a memory-mapped .npy file (as
    ``row_blocks``) by plain file reads, row by row: fancy indexing through the map would leave
    every page the kernel reads ahead around each row resident (gigabytes for rows spread over
    a 10.5 GB file)."""
    indices = np.asarray(indices, dtype=np.int64)
    source = _npy_file_of(array)
    if source is None:
        return np.array(np.asarray(array)[indices])
    path, offset = source
    row_items = int(np.prod(array.shape[1:], dtype=np.int64))
    row_bytes = row_items * array.dtype.itemsize
    out = np.empty((len(indices), *array.shape[1:]), dtype=array.dtype)
    flat = out.reshape(len(indices), row_items)
    with open(path, "rb", buffering=0) as f:
        for i, row in enumerate(indices):
            f.seek(offset + int(row) * row_bytes)
            if f.readinto(memoryview(flat[i]).cast("B")) != row_bytes:
                raise OSError(f"{path} ended early: expected {len(array)} rows")
    return out
