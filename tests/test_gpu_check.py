"""benchmarks/gpu_check.sh and its score comparison (benchmarks/compare_score_dirs.py)."""

import json
import os
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


def test_gpu_check_refuses_an_unknown_device_setting(tmp_path):
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHON": sys.executable,
            "GPU_CHECK_OUT": str(tmp_path),
            "GPU_CHECK_DEVICE": "tpu",
        },
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "GPU_CHECK_DEVICE must be cuda" in run.stderr


# benchmarks/gpu_check_compare.py: scores relative 1e-4 or Spearman 0.9999; FPR95/AUROC within 0.05 points.


def write_run(folder, scores, fpr=0.5, auroc=0.9):
    method = folder / "CIFAR-10" / "line" / "densenet"
    (method / "scores").mkdir(parents=True, exist_ok=True)
    np.save(method / "scores" / "in.npy", np.asarray(scores, dtype=np.float64))
    metrics = {"FPR95": fpr, "AUROC": auroc}
    (method / "results.json").write_text(json.dumps({"ood": {"dtd": metrics}, "average": metrics}))


def check_runs(tmp_path, **kwargs):
    from gpu_check_compare import compare

    options = {"rtol": 1e-4, "spearman": 0.9999, "points": 0.05, **kwargs}
    return compare(tmp_path / "a", tmp_path / "b", **options)


def test_runs_agree_when_scores_are_within_relative_1e_4(tmp_path):
    write_run(tmp_path / "a", [1.0, 2.0, 3.0])
    write_run(tmp_path / "b", [1.0, 2.0, 3.0 * (1 + 5e-5)])
    assert check_runs(tmp_path) == 0


def test_runs_agree_when_only_the_ranking_is_kept(tmp_path):
    scores = np.linspace(1, 2, 50)
    write_run(tmp_path / "a", scores)
    write_run(tmp_path / "b", scores * 1.01)
    assert check_runs(tmp_path) == 0
    assert check_runs(tmp_path, spearman=float("inf")) == 1  # --no-spearman: relative 1e-4 only


def test_runs_disagree_when_the_ranking_changes(tmp_path):
    write_run(tmp_path / "a", [1.0, 2.0, 3.0, 4.0])
    write_run(tmp_path / "b", [1.0, 3.0, 2.0, 4.0])
    assert check_runs(tmp_path) == 1


def test_runs_disagree_when_a_metric_moves_more_than_0_05_points(tmp_path):
    write_run(tmp_path / "a", [1.0, 2.0], fpr=0.5)
    write_run(tmp_path / "b", [1.0, 2.0], fpr=0.5 + 0.0006)
    assert check_runs(tmp_path) == 1
    write_run(tmp_path / "b", [1.0, 2.0], fpr=0.5 + 0.0004)
    assert check_runs(tmp_path) == 0


def test_runs_disagree_when_a_file_is_missing(tmp_path):
    write_run(tmp_path / "a", [1.0, 2.0])
    (tmp_path / "b").mkdir()
    assert check_runs(tmp_path) == 2  # the scores and results.json


def test_bench_line_batches_prints_the_ratio_to_resnet50_with_scores_checked():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_line_batches.py"), "--batch-sizes", "3,5"]
        + ["--classes", "12", "--check", "3", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.split()[:1] in (["3"], ["5"])]
    assert [r[0] for r in rows] == ["3", "5"] and all(r[5] == "equal" for r in rows)
    assert "scores equal the per-sample reference (rel 1e-05): yes" in run.stdout


# The dry run (GPU_CHECK_DEVICE=cpu): every step of the GPU check on the CPU at tiny sizes. It is
# NOT the GPU check; it shows that the script's steps run and are wired together.


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, shared):
    out = tmp_path_factory.mktemp("gpu_check_dry")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(out), "GPU_CHECK_DEVICE": "cpu"}
    env["LINE_SHARED_DIR"] = str(shared)
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return run, out


def test_the_cpu_dry_run_passes_every_step(dry_run):
    run, out = dry_run
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    lines = (out / "summary.txt").read_text().splitlines()
    passed = {line.split()[1] for line in lines if line.startswith("ok ")}
    assert not [line for line in lines if line.startswith("FAIL")]
    assert {"tests-device", "pipeline-cpu", "pipeline-cpu-again", "features-agree", "network-cpu"} <= passed
    assert {"torchrun-1", "torchrun-agree", "precision-bf16", "throughput", "line-vs-resnet50"} <= passed


def test_the_cpu_dry_run_says_it_is_not_the_gpu_check(dry_run):
    run, out = dry_run
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("DRY RUN ON THE CPU") and "NOT THE GPU CHECK" in summary.splitlines()[-1]
    assert f"summary: {out / 'summary.txt'}" in run.stdout


def test_the_gpu_check_evaluates_every_feature_level_method_of_the_registry(dry_run):
    from detectors.registry import DETECTORS

    _, out = dry_run
    expected = [name for cls in DETECTORS if cls.kind == "features" for name in cls.variants()]
    listed = next(
        line for line in (out / "summary.txt").read_text().splitlines() if line.startswith("feature-level:")
    )
    assert listed.split(": ")[1].split(",") == expected
    evaluated = {
        p.parent.parent.name for p in (out / "cpu" / "scores" / "CIFAR-10").glob("*/densenet/results.json")
    }
    assert set(expected) <= evaluated


def test_the_summary_ends_with_the_throughput_and_line_tables(dry_run):
    _, out = dry_run
    summary = (out / "summary.txt").read_text()
    assert "network              precision  model only  end to end" in summary
    assert "ResNet-50 224 px" in summary and "bf16" in summary
    assert "LINe layer (grouped path) vs ResNet-50 forward" in summary
