"""The demos' command lines: --help runs nothing, --quick passes the subset flags, other arguments
are passed on.

Each demo runs as a copy in a temporary folder beside a stand-in ``setup_env.sh`` and a stand-in
``python`` first on PATH; both record what they were asked to do, so no environment is set up and
no network runs (the real run is measured by hand: README.md, docs/usage.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

FAKE_PYTHON = """#!/bin/bash
# records its arguments; answers the demos' queries to ood_eval.py
printf 'python %s\\n' "$*" >> "$DEMO_LOG"
case " $* " in
    *" --show-ood-sets "*) echo "dtd gaussian" ;;
    *" --show-flags "*) echo "--p 90" ;;
esac
"""
FAKE_SETUP = 'echo "setup_env.sh sourced" >> "$DEMO_LOG"\n'
DEMOS = ("demo-cifar.sh", "demo-imagenet.sh")
# the demos' environment variables: a test run sees only the ones it sets
DEMO_ENV = ("DATA_ROOT", "CHECKPOINT_ROOT", "CACHE_DIR", "BASE_DIR", "EXTRA_FLAGS", "MODEL", "NPROC")
DEMO_ENV += ("SKIP_BIT", "OOD_SAMPLES")


def run_demo(tmp_path: Path, demo: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run a copy of ``demo`` with the stand-ins; (the process, the recorded lines)."""
    root, bin_dir, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls.log"
    root.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    shutil.copy(REPO / demo, root / demo)
    (root / "setup_env.sh").write_text(FAKE_SETUP)
    for name in ("python", "python3", "torchrun"):
        (bin_dir / name).write_text(FAKE_PYTHON)
        (bin_dir / name).chmod(0o755)
    inherited = {k: v for k, v in os.environ.items() if k not in DEMO_ENV}  # only what the test sets
    full_env = {**inherited, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DEMO_LOG": str(log), **env}
    res = subprocess.run(
        ["bash", str(root / demo), *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res, log.read_text().splitlines() if log.exists() else []


def script_calls(calls: list[str], script: str) -> list[list[str]]:
    """The argument lists of the calls to ``script`` that do real work (not the demos' queries)."""
    return [
        line.split()[2:]
        for line in calls
        if line.split()[1:2] == [script] and "--show-flags" not in line and "--show-ood-sets" not in line
    ]


def last_value(argv: list[str], flag: str) -> str:
    """The value argparse keeps for ``flag``: the one after its last occurrence."""
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def lite0_layout(tmp_path: Path) -> dict[str, str]:
    return {"MODEL": "efficientnet-lite0", "DATA_ROOT": str(tmp_path / "data")}


def imagenet_layout(tmp_path: Path) -> dict[str, str]:
    """A DATA_ROOT that passes demo-imagenet.sh's shell check (one file in every folder it needs)."""
    data = tmp_path / "data"
    for folder in ("ILSVRC-2012/train", "ILSVRC-2012/val", "ood_datasets/iNaturalist", "ood_datasets/SUN",
                   "ood_datasets/Places", "ood_datasets/dtd/images"):  # fmt: skip
        (data / folder).mkdir(parents=True)
        (data / folder / "x").write_text("")
    return {"DATA_ROOT": str(data), "TORCH_HOME": str(tmp_path / "torch")}


@pytest.mark.parametrize("demo", DEMOS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_demo_help_prints_usage_and_sets_up_and_runs_nothing(tmp_path, demo, flag):
    res, calls = run_demo(tmp_path, demo, flag, DATA_ROOT=str(tmp_path / "no-data"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"Usage: bash {demo}") and "--quick" in res.stdout
    assert calls == []  # neither setup_env.sh nor python
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [demo, "setup_env.sh"]  # no .venv, cache


@pytest.mark.parametrize("demo", DEMOS)
def test_demo_help_names_the_environment_the_pass_through_and_measured_durations(tmp_path, demo):
    res, _ = run_demo(tmp_path, demo, "--help")
    for word in ("DATA_ROOT", "CACHE_DIR", "BASE_DIR", "--max-samples 1000", "--max-ood-samples 500",
                 "passed on", "Measured", " s "):  # fmt: skip
        assert word in res.stdout, word
    assert "QUICK_SECONDS" not in res.stdout and "LITE_QUICK_SECONDS" not in res.stdout


def test_demo_cifar_quick_gives_precompute_and_every_evaluation_the_subset(tmp_path):
    res, calls = run_demo(tmp_path, "demo-cifar.sh", "--quick")
    assert res.returncode == 0, res.stderr
    (pre,) = script_calls(calls, "precompute.py")
    evals = script_calls(calls, "ood_eval.py")
    assert len(evals) == 3  # LINe, DICE, Energy
    assert last_value(pre, "--max-samples") == "1000" and "--max-ood-samples" not in pre
    for argv in evals:
        assert last_value(argv, "--max-samples") == "1000" and last_value(argv, "--max-ood-samples") == "500"


def test_demo_cifar_without_quick_runs_on_every_image(tmp_path):
    res, calls = run_demo(tmp_path, "demo-cifar.sh")
    assert res.returncode == 0, res.stderr
    work = script_calls(calls, "precompute.py") + script_calls(calls, "ood_eval.py")
    assert len(work) == 4 and not any("--max-samples" in argv for argv in work)


@pytest.mark.parametrize("demo", DEMOS)
def test_demo_passes_further_arguments_and_unknown_options_on_to_every_command(tmp_path, demo):
    env = lite0_layout(tmp_path) if demo == "demo-imagenet.sh" else {}
    res, calls = run_demo(tmp_path, demo, "--quick", "--workers", "0", "--not-a-demo-option", **env)
    assert res.returncode == 0, res.stderr
    work = script_calls(calls, "precompute.py") + script_calls(calls, "ood_eval.py")
    assert len(work) == 4
    for argv in work:
        assert argv[-3:] == ["--workers", "0", "--not-a-demo-option"]


@pytest.mark.parametrize("demo", DEMOS)
def test_demo_flags_given_by_the_user_come_after_the_quick_subset_so_they_win(tmp_path, demo):
    env = lite0_layout(tmp_path) if demo == "demo-imagenet.sh" else {}
    res, calls = run_demo(tmp_path, demo, "--quick", "--max-samples", "200", **env)
    assert res.returncode == 0, res.stderr
    for argv in script_calls(calls, "precompute.py") + script_calls(calls, "ood_eval.py"):
        assert last_value(argv, "--max-samples") == "200"


def test_demo_cifar_extra_flags_from_the_environment_reach_both_scripts(tmp_path):
    res, calls = run_demo(tmp_path, "demo-cifar.sh", "--no-progress", EXTRA_FLAGS="--workers 0")
    assert res.returncode == 0, res.stderr
    for argv in script_calls(calls, "precompute.py") + script_calls(calls, "ood_eval.py"):
        assert argv[-3:] == ["--workers", "0", "--no-progress"]


def test_demo_double_dash_ends_the_demo_options(tmp_path):
    res, calls = run_demo(tmp_path, "demo-cifar.sh", "--", "--help")
    assert res.returncode == 0 and "Usage:" not in res.stdout
    assert all(argv[-1] == "--help" for argv in script_calls(calls, "ood_eval.py"))


def test_demo_imagenet_lite0_quick_limits_the_training_test_and_ood_images(tmp_path):
    res, calls = run_demo(
        tmp_path, "demo-imagenet.sh", "--quick", CACHE_DIR="/tmp/c", **lite0_layout(tmp_path)
    )
    assert res.returncode == 0, res.stderr
    (pre,) = script_calls(calls, "precompute.py")
    evals = script_calls(calls, "ood_eval.py")
    assert len(evals) == 3 and last_value(pre, "--max-samples") == "1000"
    assert last_value(pre, "--cache-dir") == "/tmp/c"
    for argv in evals:
        assert last_value(argv, "--max-samples") == "1000" and last_value(argv, "--max-ood-samples") == "500"
        assert last_value(argv, "--cache-dir") == "/tmp/c"


def test_demo_imagenet_resnet50_quick_subsets_every_command_and_leaves_out_bit_saying_so(tmp_path):
    res, calls = run_demo(tmp_path, "demo-imagenet.sh", "--quick", **imagenet_layout(tmp_path))
    assert res.returncode == 0, res.stderr
    pre = script_calls(calls, "precompute.py")
    evals = script_calls(calls, "ood_eval.py")
    assert len(pre) == 1 and len(evals) == 3 and "BiT-S-R101x1" not in " ".join(calls)
    assert "BiT-S-R101x1 left out" in res.stdout
    for argv in evals:
        assert last_value(argv, "--max-samples") == "1000" and last_value(argv, "--max-ood-samples") == "500"


def test_demo_imagenet_quick_still_checks_the_data_before_any_setup(tmp_path):
    res, calls = run_demo(tmp_path, "demo-imagenet.sh", "--quick", DATA_ROOT=str(tmp_path / "no-data"))
    assert res.returncode == 2 and "ILSVRC-2012/train" in res.stderr
    assert calls == []
