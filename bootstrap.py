"""Run a script with the project's environment when the Python that started it lacks PyTorch.

``./ood_eval.py`` (as the original READMEs write the commands) starts ``python3`` from the
shebang; on a fresh clone that Python usually has no torch. The scripts import this module first:
when torch or torchvision cannot be found, it sets up ``.venv`` from requirements.txt
(``setup_env.sh``, a few minutes the first time) and runs the same command again with
``.venv/bin/python``. A Python that has both (the activated .venv, or a user's own environment)
is used as it is, and nothing happens.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_GUARD = "LINE_BOOTSTRAPPED"  # set for the re-run, so that a broken .venv cannot loop


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def ensure_environment() -> None:
    if (_has("torch") and _has("torchvision")) or os.environ.get(_GUARD) == "1":
        return
    python = ROOT / ".venv" / "bin" / "python"
    print(f"{sys.executable} has no torch/torchvision: using {python} (setup_env.sh)", file=sys.stderr)
    status = subprocess.call(["bash", "-c", "source ./setup_env.sh"], cwd=ROOT)
    if status == 0 and python.is_file():  # a .venv that cannot import them would loop back here
        status = subprocess.call([str(python), "-c", "import torch, torchvision"], cwd=ROOT)
    if status != 0 or not python.is_file():
        print(
            f"error: setting up {ROOT / '.venv'} failed (exit {status}); run `bash setup_env.sh` in {ROOT} "
            "to see why, or install the packages of requirements.txt into this Python",
            file=sys.stderr,
        )
        sys.exit(2)
    os.environ[_GUARD] = "1"
    os.execv(str(python), [str(python), *sys.argv])


ensure_environment()
