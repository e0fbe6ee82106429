"""Every bad input gets a clear answer (issue 5): one test per case, run as a user runs the scripts.

Most runs call the scripts' ``main`` in this process through ``run_cli`` (the same code path as the
command line, minus the interpreter start-up); the cases that are about the process itself (exit
code and no traceback on stderr, Ctrl-C and kill) start real subprocesses. The data are a few
symlinked images from ../shared, so each run forwards at most a few dozen images.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ood_eval
import precompute
from pipeline.report import set_metrics
from util.data import NoiseImages
from util.features import FeatureExtractor
from util.io import sha256_file
from util.metrics import ood_metrics
from util.runtime import run_cli

REPO = Path(__file__).resolve().parent.parent
TRAIN_PER_CLASS, TEST_PER_CLASS, N_DTD = 3, 2, 4


def link_images(src: Path, dst: Path, n: int) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir())[:n]:
        (dst / f.name).symlink_to(f)


@pytest.fixture(scope="module")
def env(shared, tmp_path_factory):
    """A tiny data root (symlinks into ../shared), one shared feature cache and the checkpoint."""
    base = tmp_path_factory.mktemp("bad_inputs")
    root = base / "data"
    cifar = shared / "data" / "CIFAR-10"
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for cls in sorted(p.name for p in (cifar / split).iterdir()):
            link_images(cifar / split / cls, root / "CIFAR-10" / split / cls, n)
    link_images(
        shared / "data" / "ood_datasets" / "dtd" / "images" / "braided",
        root / "ood_datasets" / "dtd" / "images" / "braided",
        N_DTD,
    )
    ckpt = shared / "checkpoints" / "CIFAR-10" / "densenet" / "checkpoint_100.pth.tar"
    return {"base": base, "root": root, "ckpt": ckpt, "cache": base / "cache", "out": base / "out"}


def common(env, cache=None, out=None, batch=3) -> list[str]:
    args = ["--in-dataset", "CIFAR-10", "--data-root", str(env["root"]), "--checkpoint", str(env["ckpt"])]
    args += ["--cache-dir", str(cache or env["cache"]), "--no-progress", "-b", str(batch), "--workers", "0"]
    return args


def eval_args(env, *extra, cache=None, out=None, batch=3) -> list[str]:
    return common(env, cache, batch=batch) + ["--base-dir", str(out or env["out"]), *extra]


def run_main(script, argv, capsys) -> tuple[int, str, str]:
    """``script.main(argv)`` as the command line runs it: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        run_cli(lambda: script.main(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_script(script: str, args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=300, **kw
    )


@pytest.fixture(scope="module")
def precomputed(env):
    """precompute.py on the tiny training set (30 images), uninterrupted: the reference run."""
    precompute.main(common(env))
    entries = list((env["cache"] / "features").glob("CIFAR-10_densenet_train-*"))
    assert len(entries) == 1 and not entries[0].name.endswith(".partial")
    return {
        "entry": entries[0],
        "contrib": env["cache"] / "CIFAR-10_densenet_taylor_mean_class.npy",
        "feat_stat": env["cache"] / "CIFAR-10_densenet_feat_stat.npy",
    }


# 1 -------------------------------------------------------------------------------------------
def test_missing_or_empty_data_names_path_and_source_with_exit_2(env, tmp_path, capsys):
    proc = run_script("ood_eval.py", eval_args(env) + ["--data-root", str(tmp_path / "nowhere")])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"data root {tmp_path / 'nowhere'} does not exist" in proc.stderr
    assert "CIFAR-10/test/<class>/*" in proc.stderr and "cifar-10-python.tar.gz" in proc.stderr

    empty_id = tmp_path / "empty_id"
    (empty_id / "CIFAR-10" / "test").mkdir(parents=True)
    code, _, err = run_main(ood_eval, eval_args(env) + ["--data-root", str(empty_id)], capsys)
    assert code == 2 and f"no images found under {empty_id / 'CIFAR-10' / 'test'}" in err
    assert "10 class folders" in err and "cifar-10-python.tar.gz" in err

    code, _, err = run_main(ood_eval, eval_args(env, "--out-datasets", "LSUN"), capsys)
    assert code == 2
    assert f"{env['root'] / 'ood_datasets' / 'LSUN'} not found; get it from https://" in err

    empty_ood = tmp_path / "empty_ood"
    shutil.copytree(env["root"] / "CIFAR-10", empty_ood / "CIFAR-10", symlinks=True)
    (empty_ood / "ood_datasets" / "dtd" / "images").mkdir(parents=True)
    code, _, err = run_main(
        ood_eval, eval_args(env, "--out-datasets", "dtd") + ["--data-root", str(empty_ood)], capsys
    )
    assert code == 2 and "OOD set dtd belongs there, get it from https://www.robots.ox.ac.uk" in err


# 2 -------------------------------------------------------------------------------------------
def test_corrupt_image_is_named_or_skipped_and_counted(env, tmp_path, capsys):
    folder = tmp_path / "textures"
    link_images(env["root"] / "ood_datasets" / "dtd" / "images" / "braided", folder, N_DTD)
    (folder / "zz_broken.jpg").write_bytes(b"this is not a JPEG")
    code, _, err = run_main(ood_eval, eval_args(env, "--out-datasets", str(folder)), capsys)
    assert code == 2
    assert f"cannot read image {folder / 'zz_broken.jpg'}" in err and "--skip-bad-images" in err

    code, out, _ = run_main(
        ood_eval, eval_args(env, "--out-datasets", str(folder), "--skip-bad-images"), capsys
    )
    assert code == 0
    assert f"{folder}: {N_DTD + 1} images requested, 1 unreadable skipped, {N_DTD} used" in out
    settings = json.loads((env["out"] / "CIFAR-10" / "energy" / "densenet" / "results.json").read_text())[
        "settings"
    ]
    assert settings["num_images"][str(folder)] == N_DTD + 1
    assert settings["num_images_used"][str(folder)] == N_DTD
    assert settings["skipped_bad_images"] == {str(folder): [str(folder / "zz_broken.jpg")]}

    # A network-level detector next to a cached one lists the skipped file once.
    code, out, _ = run_main(
        ood_eval,
        eval_args(env, "--out-datasets", str(folder), "--skip-bad-images", "--methods", "energy,odin"),
        capsys,
    )
    assert code == 0
    odin = json.loads((env["out"] / "CIFAR-10" / "odin" / "densenet" / "results.json").read_text())[
        "settings"
    ]
    assert odin["skipped_bad_images"] == {str(folder): [str(folder / "zz_broken.jpg")]}


def test_sweep_skips_an_unreadable_id_test_image_when_asked(env, tmp_path, capsys):
    import sweep

    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in sorted((env["root"] / "CIFAR-10" / split).iterdir()):
            link_images(cls, root / "CIFAR-10" / split / cls.name, 10)
    (root / "CIFAR-10" / "test" / "airplane" / "zz_broken.jpg").write_bytes(b"not an image")
    textures = env["root"] / "ood_datasets" / "dtd" / "images"
    link_images(textures / "braided", tmp_path / "val_ood", N_DTD)
    args = [
        "--data-root",
        str(root),
        "--checkpoint",
        str(env["ckpt"]),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    args += ["--no-progress", "--workers", "0", "--method", "energy", "--out-datasets", str(textures)]
    args += ["--val-ood", str(tmp_path / "val_ood"), "--base-dir", str(tmp_path / "out"), "--skip-bad-images"]
    code, _, err = run_main(sweep, args, capsys)
    assert code == 0, err
    result = json.loads(
        (tmp_path / "out" / "CIFAR-10" / "energy_sweep" / "densenet" / "sweep.json").read_text()
    )
    assert result["val_images"] == round(0.2 * 10 * TEST_PER_CLASS)  # the broken image is not scored


# 3 -------------------------------------------------------------------------------------------
def test_bad_checkpoints_are_refused_with_the_file_and_the_mismatch(env, tmp_path, capsys):
    marker = tmp_path / "code_ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(env["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    cases = {
        "missing.pth": (None, ["checkpoint not found: {path}"]),
        "garbage.pth": (b"not a checkpoint", ["cannot load checkpoint {path}: not a PyTorch checkpoint"]),
        "code.pth": (
            {"state_dict": state, "x": RunsCode()},
            ["refusing checkpoint {path}", "weights_only=True", "GLOBAL posix.system"],
        ),
        "other_arch.pth": (
            {"state_dict": {"layer.weight": torch.zeros(2)}},
            ["596 missing keys, e.g. ['conv1.weight'", "1 unexpected keys, e.g. ['layer.weight']"],
        ),
        "cifar100.pth": (
            {"state_dict": {**state, "fc.weight": torch.zeros(100, 342), "fc.bias": torch.zeros(100)}},
            ["does not fit model DenseNet3", "fc.weight: checkpoint (100, 342) vs model (10, 342)"],
        ),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        argv = common(env, tmp_path / "cache") + ["--checkpoint", str(path)]
        code, _, err = run_main(precompute, argv, capsys)
        assert code == 2, name
        assert str(path) in err
        for text in expected:
            assert text.format(path=path) in err, err
    assert not marker.exists(), "unpickling the checkpoint ran code"


# 4 -------------------------------------------------------------------------------------------
class ToyNet(nn.Module):
    def __init__(self, bias: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        nn.init.constant_(self.fc.weight, 0.5)
        nn.init.constant_(self.fc.bias, bias)

    def forward_features(self, x):
        return x.mean(dim=(2, 3))

    def get_classifier(self):
        return self.fc


def test_stale_caches_are_recomputed_or_refused(env, precomputed, tmp_path, capsys):
    # Feature cache: an entry whose meta.json names another checkpoint is recomputed, with a message.
    data = NoiseImages("uniform", 6, 4, nn.Identity())
    key = {"arch": "toy", "num_classes": 2, "checkpoint_sha256": "a" * 64}
    extractor = FeatureExtractor(ToyNet(), key, tmp_path / "toy", device="cpu", num_workers=0, progress=False)
    first = extractor.extract(data, "toy")
    meta_file = first.path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["model"]["checkpoint_sha256"] = "b" * 64
    meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    again = extractor.extract(data, "toy")
    assert "was made with a different model than this run; recomputing it" in capsys.readouterr().out
    assert not again.from_cache and np.array_equal(again.features, first.features)
    np.save(first.path / "features.npy", np.zeros((5, 3), np.float32))  # truncated array
    extractor.extract(data, "toy")
    assert "holds features.npy of shape (5, 3), expected (6, 3); recomputing it" in capsys.readouterr().out

    # Contributions / feature statistics made for another checkpoint: refused, never recomputed silently.
    state = torch.load(env["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {**state, "fc.bias": state["fc.bias"] + 0.01}}, other)
    for flags in (["--method", "taylor"], ["--p", "90"]):
        argv = eval_args(env, "--out-datasets", "dtd", *flags) + ["--checkpoint", str(other)]
        code, _, err = run_main(ood_eval, argv, capsys)
        assert code == 2 and "checkpoint_sha256: file made with 'deaefd08" in err
        assert "rerun `python precompute.py --in-dataset CIFAR-10` with this --checkpoint" in err
    argv = eval_args(
        env, "--out-datasets", "dtd", "--method", "taylor", "--contrib", str(precomputed["contrib"])
    )
    code, _, err = run_main(ood_eval, [*argv, "--checkpoint", str(other)], capsys)
    assert code == 2 and "(given with --contrib) does not match this run" in err

    # A file changed after precompute.py wrote it no longer matches its record.
    edited = tmp_path / "edited_mean_class.npy"
    np.save(edited, np.load(precomputed["contrib"]) * 2)
    shutil.copy(precomputed["contrib"].with_suffix(".json"), edited.with_suffix(".json"))
    code, _, err = run_main(ood_eval, eval_args(env, "--method", "taylor", "--contrib", str(edited)), capsys)
    assert code == 2 and "was changed after precompute.py wrote it" in err

    # Wrong shape (here transposed): an error naming both shapes, not a broadcast.
    transposed = tmp_path / "transposed_mean_class.npy"
    np.save(transposed, np.load(precomputed["contrib"]).T)
    code, _, err = run_main(
        ood_eval, eval_args(env, "--method", "taylor", "--contrib", str(transposed)), capsys
    )
    assert code == 2 and "holds shape (10, 342); this model needs (features, classes) = (342, 10)" in err

    # A file from the original code (no record next to it) still loads.
    plain = tmp_path / "original_mean_class.npy"
    shutil.copy(precomputed["contrib"], plain)
    argv = eval_args(env, "--out-datasets", "dtd", "--method", "taylor", "--contrib", str(plain))
    assert run_main(ood_eval, argv, capsys)[0] == 0


# 5 -------------------------------------------------------------------------------------------
def _wait_for_progress(proc, partial_glob: Path, more_than: int) -> int:
    """Poll progress.json of the .partial entry until it records more than ``more_than`` rows."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "run finished before it could be interrupted"
        for f in partial_glob.parent.glob(partial_glob.name):
            try:
                done = json.loads((f / "progress.json").read_text())["done"]
            except (OSError, ValueError, KeyError):
                continue
            if done > more_than:
                return done
        time.sleep(0.02)
    raise AssertionError("no progress recorded")


def test_interrupted_precompute_resumes_to_the_same_result(env, precomputed, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["precompute.py", *common(env, cache)]
    partial = cache / "features" / "CIFAR-10_densenet_train-*.partial"
    child_env = {**os.environ, "LINE_PROGRESS_SECONDS": "0"}
    done = 0
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # a run started in the background inherits SIGINT ignored; the child must see Ctrl-C
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        done = _wait_for_progress(proc, partial, done)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "Traceback" not in err.decode()
            assert "interrupted; partial results were not kept as complete" in err.decode()
        else:
            assert proc.returncode == -signal.SIGKILL
        # Nothing is complete: no final cache entry, no statistics file.
        assert [p.name.endswith(".partial") for p in (cache / "features").iterdir()] == [True]
        assert not list(cache.glob("*.npy"))

    code, out, _ = run_main(precompute, argv[1:], capsys)
    assert code == 0 and f"of {10 * TRAIN_PER_CLASS} images already extracted" in out
    entry = cache / "features" / precomputed["entry"].name
    for name in ("features.npy", "logits.npy", "labels.npy"):
        assert np.array_equal(np.load(entry / name), np.load(precomputed["entry"] / name)), name
    assert np.array_equal(np.load(cache / precomputed["contrib"].name), np.load(precomputed["contrib"]))


# 6 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--p", "101"], "argument --p: 101 is outside the valid range [0, 100]"),
        (["--p-w", "-1"], "argument --p-w: -1 is outside the valid range [0, 100]"),
        (["--p-a", "abc"], "'abc' is not a number; expected a percentile in [0, 100]"),
        (["--clip_threshold", "-0.5"], "-0.5 is out of range; expected a value >= 0"),
        (["-b", "0"], "argument -b/--batch-size: 0 is out of range; expected an integer >= 1"),
        (["--workers", "-1"], "argument --workers: -1 is out of range; expected an integer >= 0"),
        (["--max-samples", "0"], "0 is out of range; expected an integer >= 1"),
        (["--in-dataset", "cifar-11"], "unknown dataset 'cifar-11': choose from CIFAR-10, CIFAR-100"),
        (["--in-dataset", "cifar-11"], "did you mean 'CIFAR-10'?"),
        (["--model-arch", "densenett"], "unknown model 'densenett'; choose one of densenet"),
    ],
)
def test_out_of_range_flags_are_argparse_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ood_eval.build_parser().parse_args(flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "--device 'gpu' is not a torch device; use cpu, cuda or cuda:N"),
        ("meta", "--device meta: only cpu and cuda devices are supported"),
        ("cuda:99", "--device cuda:99: this machine has"),
    ],
)
def test_unusable_devices_are_refused_naming_the_device(env, capsys, device, message):
    code, _, err = run_main(ood_eval, eval_args(env, "--device", device), capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_unknown_ood_set_name_suggests_the_close_one(env, capsys):
    code, _, err = run_main(ood_eval, eval_args(env, "--out-datasets", "svhn"), capsys)
    assert code == 2 and "OOD set 'svhn': not a known set name" in err and "Did you mean 'SVHN'?" in err


# 7 -------------------------------------------------------------------------------------------
def test_degenerate_scores_are_defined_or_refused(env, precomputed, tmp_path, capsys):
    # All scores tied, and a single OOD image: every metric is a defined number.
    tied = ood_metrics(np.zeros(20), np.zeros(7))
    assert tied == {"FPR95": 0.0, "AUROC": 0.5, "AUPR_IN": 20 / 27, "AUPR_OUT": 7 / 27}
    single = ood_metrics(np.arange(20.0), np.array([3.5]))
    assert single["FPR95"] == 1.0 and single["AUROC"] == pytest.approx(16 / 20)

    one = tmp_path / "one_image"
    link_images(env["root"] / "ood_datasets" / "dtd" / "images" / "braided", one, 1)
    code, _, _ = run_main(ood_eval, eval_args(env, "--out-datasets", str(one)), capsys)
    result = json.loads((env["out"] / "CIFAR-10" / "energy" / "densenet" / "results.json").read_text())
    assert code == 0 and all(np.isfinite(v) for v in result["ood"][one.name].values())

    # Non-finite scores: an error naming the set and the count, never "nan" in a table.
    with pytest.raises(Exception, match=r"2 of 5 scores of OOD set dtd are NaN or infinite"):
        set_metrics({"in": np.arange(4.0), "dtd": np.array([1, np.nan, 2, np.inf, 3])}, "dtd")
    state = torch.load(env["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    state["fc.weight"][0] = float("nan")
    nan_ckpt = tmp_path / "broken_weights.pth"  # its path is printed: no "nan" in the name
    torch.save({"state_dict": state}, nan_ckpt)
    argv = eval_args(env, "--out-datasets", "dtd", "--max-samples", "2", out=tmp_path / "out")
    code, out, err = run_main(ood_eval, [*argv, "--checkpoint", str(nan_ckpt)], capsys)
    assert code == 2 and "2 of 2 scores of the ID test set are NaN or infinite" in err
    assert "nan" not in out.lower() and not (tmp_path / "out" / "CIFAR-10").exists()
    # Statistics files holding NaN are refused too.
    nan_contrib = tmp_path / "nan_mean_class.npy"
    np.save(nan_contrib, np.full((342, 10), np.nan, np.float32))
    code, _, err = run_main(
        ood_eval, eval_args(env, "--method", "taylor", "--contrib", str(nan_contrib)), capsys
    )
    assert code == 2 and "holds 3420 NaN or infinite values" in err


# 8 -------------------------------------------------------------------------------------------
def test_results_are_reproducible_and_record_their_inputs(env, precomputed, tmp_path, capsys):
    contrib = str(precomputed["contrib"])
    sets = [
        "--out-datasets",
        "dtd",
        "gaussian",
        "--max-samples",
        "4",
        "--method",
        "taylor",
        "--contrib",
        contrib,
    ]

    def run(name, batch, workers):
        out = tmp_path / name
        argv = eval_args(env, *sets, cache=tmp_path / f"cache_{name}", out=out, batch=batch)
        code, _, err = run_main(ood_eval, [*argv, "--workers", str(workers)], capsys)
        assert code == 0, err
        res = out / "CIFAR-10" / "line" / "densenet"
        scores = {k: np.load(res / "scores" / f"{k}.npy") for k in ("in", "dtd", "gaussian")}
        return scores, json.loads((res / "results.json").read_text())

    first, result = run("a", 3, 0)
    second, again = run("b", 3, 0)
    other, _ = run("c", 4, 1)
    for key in first:
        assert first[key].tobytes() == second[key].tobytes(), key
        np.testing.assert_allclose(other[key], first[key], rtol=0, atol=1e-5)
    assert result["ood"] == again["ood"]
    settings = result["settings"]
    assert settings["code_version"] and settings["code_version"] != "unknown"
    assert settings["files"]["checkpoint"]["sha256"] == sha256_file(env["ckpt"])
    assert settings["files"]["contributions"]["sha256"] == sha256_file(contrib)
    assert settings["files"]["contributions"]["record"]["checkpoint_sha256"] == sha256_file(env["ckpt"])
    for flag in ("batch_size", "workers", "max_samples", "data_root"):
        assert flag in settings
    assert {"p_w", "p_a", "clip_threshold"} <= set(settings["detector"])
    assert settings["detector"]["clip_threshold"] == 1.0


# 9 -------------------------------------------------------------------------------------------
def test_unwritable_or_full_directories_fail_before_any_work(env, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run_main(precompute, common(env, a_file / "cache"), capsys)
    assert code == 2 and f"cache directory {a_file / 'cache'} is not writable (Not a directory)" in err
    code, _, err = run_main(ood_eval, eval_args(env, "--out-datasets", "dtd", out=a_file / "out"), capsys)
    assert code == 2 and f"output directory {a_file / 'out'} is not writable (Not a directory)" in err

    # A disk with 1 KiB free (shutil.disk_usage as the filesystem would report it).
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024))
    cache = tmp_path / "cache"
    for script, argv in ((precompute, common(env, cache)), (ood_eval, eval_args(env, cache=cache))):
        code, out, err = run_main(script, argv, capsys)
        assert code == 2 and f"not enough free disk space in {cache} for the feature cache" in err
        assert "1.0 KiB free" in err and "pass another --cache-dir" in err
        features = cache / "features"
        assert not features.exists() or not any(features.iterdir()), "work started before the check"
