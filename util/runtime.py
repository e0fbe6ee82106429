"""What every command-line script does around its work: the error exit, writable folders, the
code version recorded with results."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
from pathlib import Path

from util.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


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
