"""Atomic file writes and checksums: nothing written is ever left half-done."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


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


def save_scores(out_dir: str | os.PathLike, scores: dict[str, np.ndarray]) -> None:
    """Each set's scores as out_dir/scores/<set>.npy ("/" and "\\" in a set name become "_")."""
    for name, values in scores.items():
        file_name = name.replace("/", "_").replace("\\", "_") + ".npy"
        atomic_save_npy(Path(out_dir) / "scores" / file_name, values)


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
