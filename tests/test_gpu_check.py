"""benchmarks/gpu_check.sh and its score comparison (benchmarks/compare_score_dirs.py)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from compare_score_dirs import compare  # noqa: E402


def write_scores(folder, name, values):
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / name, values)


def test_compare_accepts_scores_within_tolerance(tmp_path):
    write_scores(tmp_path / "a" / "dtd", "out.txt", [1.0, 2.0, 3.0])
    write_scores(tmp_path / "b" / "dtd", "out.txt", [1.0, 2.0, 3.0 + 1e-6])
    assert compare(tmp_path / "a", tmp_path / "b", rtol=1e-4, atol=1e-4) == 0


def test_compare_counts_scores_that_differ(tmp_path):
    write_scores(tmp_path / "a", "in.txt", [1.0, 2.0])
    write_scores(tmp_path / "b", "in.txt", [1.0, 2.1])
    assert compare(tmp_path / "a", tmp_path / "b", rtol=1e-4, atol=1e-4) == 1


def test_compare_counts_a_missing_file(tmp_path):
    write_scores(tmp_path / "a", "in.txt", [1.0])
    (tmp_path / "b").mkdir()
    assert compare(tmp_path / "a", tmp_path / "b", rtol=1e-4, atol=1e-4) == 1


def test_compare_fails_when_there_is_nothing_to_compare(tmp_path):
    (tmp_path / "a").mkdir()
    assert compare(tmp_path / "a", tmp_path / "a", rtol=1e-4, atol=1e-4) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_exits_3_without_cuda(tmp_path):
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 3
    assert "no CUDA GPU" in run.stderr
    assert not any(tmp_path.iterdir())
