"""Shared test fixtures: the repository on sys.path and the read-only ../shared data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("LINE_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder (LINE_SHARED_DIR overrides); tests needing it skip without it."""
    if not (SHARED / "checkpoints").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set LINE_SHARED_DIR)")
    return SHARED


@pytest.fixture(scope="session")
def cifar10_checkpoint(shared) -> Path:
    return shared / "checkpoints" / "CIFAR-10" / "densenet" / "checkpoint_100.pth.tar"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device for the device-sensitive tests (default: cpu; gpu_check.sh passes cuda)",
    )


@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    """The --device the device-sensitive tests run on, checked by util.devices.check_device
    (a device this machine lacks fails those tests with its message instead of skipping them)."""
    from util.devices import check_device
    from util.errors import UserError

    name = pytestconfig.getoption("--device")
    try:
        check_device(name)
    except UserError as error:
        pytest.fail(str(error))
    return name
