"""Every command of the LINe and DICE repositories' demo scripts and READMEs runs unchanged here.

The commands are copied from those repositories (their demo-cifar.sh, demo-imagenet.sh, README
and argument lists). Each is parsed as a user types it and checked for the architecture it
builds; the CIFAR ones run end to end in a generated repository-like folder (``datasets/``,
``checkpoints/`` with random DenseNet-101 weights), and their original-format score files are read
back with a plain re-implementation of the original metric code.
"""

import json
import os
import shlex
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from reference import eval_config

import ood_eval
import precompute
from models import get_model
from models.densenet import DenseNet3
from models.resnet import ResNet50
from pipeline.config import PrecomputeConfig
from pipeline.flags import config_values
from util.errors import UserError

# (source, the command's arguments after `python ood_eval.py`, architecture, name, method)
ORIGINAL_EVAL_COMMANDS = [
    ("LINe demo-cifar.sh", "--in-dataset CIFAR-10 --p-w 90 --p-a 90 --method taylor --clip_threshold 1.0",
     "densenet", "densenet", "line"),
    ("LINe demo-cifar.sh", "--in-dataset CIFAR-100 --p-w 90 --p-a 10 --method taylor --clip_threshold 1.0",
     "densenet", "densenet", "line"),
    ("LINe demo-imagenet.sh",
     "--name resnet50 --in-dataset imagenet --p-w 10 --p-a 10 --method taylor --clip_threshold 0.8",
     "resnet50", "resnet50", "line"),
    ("DICE demo-cifar.sh", "--in-dataset CIFAR-100", "densenet", "densenet", "energy"),
    ("DICE demo-cifar.sh", "--in-dataset CIFAR-100 --p 90", "densenet", "densenet", "dice"),
    ("DICE demo-cifar.sh", "--in-dataset CIFAR-10", "densenet", "densenet", "energy"),
    ("DICE demo-cifar.sh", "--in-dataset CIFAR-10 --p 90", "densenet", "densenet", "dice"),
    ("DICE demo-imagenet.sh", "--name imagenet --in-dataset imagenet --model-arch resnet50",
     "resnet50", "imagenet", "energy"),
    ("DICE demo-imagenet.sh",
     "--name imagenet --in-dataset imagenet --model-arch resnet50 --p 15 --clip_threshold 1.5",
     "resnet50", "imagenet", "dice_react"),
]  # fmt: skip

# Every flag of the originals' ood_eval.py argument lists, with their default values.
LINE_EVAL_FLAGS = (
    "--in-dataset CIFAR-10 --name densenet --model_arch densenet --p-w 10 --p-a 10 --gpu 0 --method taylor "
    "--detail mean_class --clip_threshold 100000.0 --epsilon 8.0 --iters 40 --iter-size 1.0 "
    "--severity-level 5 --epochs 100 -b 50 --base-dir output/ood_scores --layers 100 --depth 40 --width 4"
)
DICE_EVAL_FLAGS = (
    "--in-dataset CIFAR-100 --name densenet --model-arch densenet --p 90 --gpu 0 --method energy "
    "--clip_threshold 100000.0 --epsilon 8.0 --iters 40 --iter-size 1.0 --severity-level 5 --epochs 100 "
    "-b 50 --base-dir output/ood_scores --layers 100 --depth 40 --width 4"
)
MODEL_CLASSES = {"densenet": DenseNet3, "resnet50": ResNet50}


@pytest.mark.parametrize("source, command, arch, name, method", ORIGINAL_EVAL_COMMANDS)
def test_original_ood_eval_command_builds_the_architecture_it_names(source, command, arch, name, method):
    config = eval_config(shlex.split(command))
    assert (config.model_arch, config.name) == (arch, name), source
    assert [run.method for run in config.detectors] == [method]
    classes = {"CIFAR-10": 10, "CIFAR-100": 100, "imagenet": 1000}[config.in_dataset]
    model = get_model(config.model_arch, classes)
    assert isinstance(model, MODEL_CLASSES[arch]) and model.get_classifier().out_features == classes


@pytest.mark.parametrize(
    "argv, arch, name",
    [
        ([], "densenet", "densenet"),  # CIFAR default
        (["--in-dataset", "imagenet"], "resnet50", "resnet50"),  # the in-dataset's default
        (["--name", "resnet50", "--in-dataset", "imagenet"], "resnet50", "resnet50"),  # LINe
        (["--name", "imagenet", "--in-dataset", "imagenet", "--model-arch", "resnet50"], "resnet50",
         "imagenet"),
        (["--name", "resnet50", "--model_arch", "densenet"], "densenet", "resnet50"),  # explicit arch wins
        (["--name", "my_run"], "densenet", "my_run"),  # a name that is no architecture
    ],
)  # fmt: skip
def test_architecture_is_explicit_then_a_known_name_then_the_datasets_default(argv, arch, name):
    config = eval_config(argv)
    assert (config.model_arch, config.name) == (arch, name)


@pytest.mark.parametrize("flags", [LINE_EVAL_FLAGS, DICE_EVAL_FLAGS])
def test_every_flag_of_the_original_ood_eval_is_accepted_and_the_ignored_ones_named_once(flags, capsys):
    config = eval_config(shlex.split(flags))
    out = capsys.readouterr().out
    assert config.batch_size == 50 and config.epochs == 100 and config.base_dir == "output/ood_scores"
    ignored = [line for line in out.splitlines() if line.startswith("ignored")]
    assert ignored == [
        "ignored (flags of the original code with no effect here): --epsilon 8.0, --iters 40, "
        "--iter-size 1.0, --severity-level 5, --layers 100, --depth 40, --width 4"
    ]
    if not torch.cuda.is_available():
        assert config.device == "cpu" and out.count("--gpu 0: this machine has no CUDA GPU") == 1
    for switch in ("--in-dist-only", "--out-dist-only", "--cal-metric"):
        eval_config([*shlex.split(flags), switch])


@pytest.mark.parametrize(
    "argv, in_dataset, arch",
    [
        (["--dataset", "CIFAR-10", "--method", "taylor", "--model_arch", "densenet"], "CIFAR-10", "densenet"),
        (["-d", "CIFAR-100"], "CIFAR-100", "densenet"),
        (["--dataset", "imagenet"], "imagenet", "resnet50"),
        ([], None, None),  # every ID dataset present
    ],
)  # fmt: skip
def test_original_precompute_flags_are_accepted(argv, in_dataset, arch):
    config = PrecomputeConfig(**config_values(precompute.build_parser().parse_args(argv), PrecomputeConfig))
    assert (config.in_dataset, config.model_arch) == (in_dataset, arch)


def test_gpu_and_device_together_are_refused():
    with pytest.raises(UserError, match="--device or --gpu, not both"):
        eval_config(["--gpu", "0", "--device", "cpu"])


def test_scripts_run_as_the_readmes_write_them():
    for script in ("precompute.py", "ood_eval.py", "sweep.py", "select_svhn_data.py", "demo-cifar.sh",
                   "demo-imagenet.sh"):  # fmt: skip
        path = REPO / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env "), f"{script} has no shebang"
    res = subprocess.run(["./precompute.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    help_text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "--dataset" in help_text and "every one whose data is present" in help_text


def test_a_script_started_by_a_python_without_torch_reruns_itself_under_the_venv():
    """A fresh clone's ``./ood_eval.py``: the shebang's python3 has no torch; bootstrap.py runs the
    command again with .venv's Python (setting .venv up first when it is missing)."""
    venv_bin = str(REPO / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "LINE_BOOTSTRAPPED")} | {
        "PATH": path
    }
    probe = subprocess.run(["python3", "-c", "import torch"], env=env, capture_output=True)
    if probe.returncode == 0 or not (REPO / ".venv" / "bin" / "python").is_file():
        pytest.skip("the python3 on PATH has torch (or there is no .venv): nothing to re-run")
    res = subprocess.run(["./ood_eval.py", "--show-flags", "--method", "taylor"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "--p-w 90 --p-a 90 --clip_threshold 1" and "has no torch" in res.stderr


# -- end to end, in a generated repository-like folder ----------------------------------------
def _images(folder, n, rng, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory):
    """datasets/ (CIFAR-10: 3 train and 2 test images per class; CIFAR-100: 1 and 1; dtd, LSUN)
    and checkpoints/ with random DenseNet-101 weights, as the original READMEs lay them out."""
    root = tmp_path_factory.mktemp("repo")
    rng = np.random.default_rng(0)
    for ds, classes, n_train, n_test in (("CIFAR-10", 10, 3, 2), ("CIFAR-100", 100, 1, 1)):
        for c in range(classes):
            _images(root / "datasets" / ds / "train" / f"class{c:03d}", n_train, rng)
            _images(root / "datasets" / ds / "test" / f"class{c:03d}", n_test, rng)
        torch.manual_seed(classes)
        ckpt = root / "checkpoints" / ds / "densenet" / "checkpoint_100.pth.tar"
        ckpt.parent.mkdir(parents=True)
        torch.save({"state_dict": DenseNet3(100, classes).state_dict()}, ckpt)
    _images(root / "datasets" / "ood_datasets" / "dtd" / "images" / "banded", 6, rng, 40)
    _images(root / "datasets" / "ood_datasets" / "LSUN" / "test", 5, rng)
    return root


def _original_metrics(base, in_dataset, method, name, out_dataset, detail=None):
    """FPR95 and AUROC from the original-format text files, as the original metric code defines
    them (threshold = sorted ID scores at round(0.05 n); AUROC by ranks)."""
    end = f"_{method}_{detail}" if detail else ""
    nat = base / in_dataset / method / name / "nat"
    known = np.loadtxt(nat / f"in_scores{end}.txt", ndmin=1)
    novel = np.loadtxt(nat / out_dataset / f"out_scores{end}.txt", ndmin=1)
    threshold = np.sort(known)[round(0.05 * len(known))]
    fpr = np.mean(novel > threshold)
    wins = (known[:, None] > novel[None, :]).sum() + 0.5 * (known[:, None] == novel[None, :]).sum()
    return fpr, wins / (len(known) * len(novel))


def test_original_cifar_commands_run_end_to_end_and_write_the_original_files(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    precompute.main([])  # `./precompute.py`: every ID dataset present (ImageNet is not)
    out = capsys.readouterr().out
    assert "skipping imagenet (resnet50): ImageNet train set not found" in out
    assert "precomputed CIFAR-10, CIFAR-100; skipped imagenet" in out
    for ds in ("CIFAR-10", "CIFAR-100"):
        assert (repo_root / "cache" / f"{ds}_densenet_taylor_mean_class.npy").is_file()

    for source, command, _, _, method in ORIGINAL_EVAL_COMMANDS:
        if "imagenet" in command:
            continue
        ood_eval.main(shlex.split(command))
        out = capsys.readouterr().out
        assert "skipping OOD set SVHN" in out and "ID accuracy" in out, source
        in_dataset = shlex.split(command)[1]
        result = json.loads(
            (repo_root / f"output/ood_scores/{in_dataset}/{method}/densenet/results.json").read_text()
        )
        assert set(result["ood"]) == {"LSUN", "dtd"}
        original = ("taylor", "mean_class") if method == "line" else ("energy", None)
        for ood in ("LSUN", "dtd"):
            base = repo_root / "output/ood_scores"
            fpr, auroc = _original_metrics(base, in_dataset, original[0], "densenet", ood, original[1])
            assert fpr == pytest.approx(result["ood"][ood]["FPR95"], abs=1e-12)
            assert auroc == pytest.approx(result["ood"][ood]["AUROC"], abs=1e-9)
        labels = np.loadtxt(repo_root / f"output/ood_scores/{in_dataset}/{original[0]}/densenet/nat/in_labels"
                            f"{'_taylor_mean_class' if method == 'line' else ''}.txt")  # fmt: skip
        assert np.mean(labels[:, 0] == labels[:, 1]) == pytest.approx(result["id_accuracy"])
        assert np.all((labels[:, 2] > 0) & (labels[:, 2] <= 1))
    # Energy and DICE share the original folder `energy`; the latest run (DICE) wrote it, and says so.
    written = json.loads(
        (repo_root / "output/ood_scores/CIFAR-10/energy/densenet/nat/written_by.json").read_text()
    )
    assert {w["method"] for w in written["files"].values()} == {"dice"}
    assert set(written["files"]) == {
        "in_scores.txt",
        "in_labels.txt",
        "dtd/out_scores.txt",
        "LSUN/out_scores.txt",
    }


def test_original_files_left_by_another_run_are_named(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    base = ["--in-dataset", "CIFAR-10", "--base-dir", "out_mixed"]
    ood_eval.main([*base, "--p", "90"])  # DICE on dtd and LSUN
    capsys.readouterr()
    ood_eval.main([*base, "--out-datasets", "dtd"])  # Energy, same original folder, dtd only
    out = capsys.readouterr().out
    assert "also holds files of other runs: LSUN/out_scores.txt (dice)" in out
    written = json.loads((repo_root / "out_mixed/CIFAR-10/energy/densenet/nat/written_by.json").read_text())
    assert written["files"]["dtd/out_scores.txt"]["method"] == "energy"
    assert written["files"]["LSUN/out_scores.txt"]["method"] == "dice"


def test_in_dist_only_needs_no_ood_set_and_cal_metric_then_asks_for_ood_scores(
    tmp_path, repo_root, monkeypatch, capsys
):
    import shutil

    root = tmp_path / "id_only"  # CIFAR-10 and its checkpoint, no OOD set at all
    shutil.copytree(repo_root / "datasets" / "CIFAR-10", root / "datasets" / "CIFAR-10")
    (root / "checkpoints").symlink_to(repo_root / "checkpoints")
    monkeypatch.chdir(root)
    precompute.main(["--in-dataset", "CIFAR-10"])
    ood_eval.main(["--in-dataset", "CIFAR-10", "--p", "90", "--in-dist-only"])
    assert "ID test scores saved" in capsys.readouterr().out
    with pytest.raises(UserError, match="holds no OOD scores"):
        ood_eval.main(["--in-dataset", "CIFAR-10", "--p", "90", "--cal-metric"])
    assert not (root / "output/ood_scores/CIFAR-10/dice/densenet/results.json").exists()


def line_on_dtd(base_dir: str) -> list[str]:
    """LINe with the paper's CIFAR-10 settings on dtd, results under ``base_dir``."""
    return ["--in-dataset", "CIFAR-10", "--method", "taylor", "--base-dir", base_dir, "--out-datasets", "dtd"]


def test_cal_metric_refuses_a_saved_run_made_with_other_flags(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    command = line_on_dtd("out_flags")
    ood_eval.main(command)
    with pytest.raises(UserError, match="no saved scores of line"):
        ood_eval.main([*command, "--cal-metric", "--epochs", "50"])
    with pytest.raises(UserError, match="no saved scores of line"):
        ood_eval.main([*command, "--cal-metric", "--clip_threshold", "1.0000001"])


def test_another_epoch_is_never_downloaded_under_its_name(tmp_path, monkeypatch):
    from models.checkpoints import resolve_checkpoint

    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: epoch 100 would be downloaded, epoch 50 is not
    with pytest.raises(
        UserError, match="checkpoint not found: checkpoints/CIFAR-10/densenet/checkpoint_50.pth.tar$"
    ):
        resolve_checkpoint(None, "CIFAR-10", "densenet", "densenet", epoch=50)
    assert not (tmp_path / "checkpoints").exists()


def test_cal_metric_recomputes_from_saved_scores_without_network_or_data(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    command = shlex.split(ORIGINAL_EVAL_COMMANDS[0][1])
    base = ["--base-dir", "out_cal"]
    ood_eval.main([*command, *base])
    first = json.loads((repo_root / "out_cal/CIFAR-10/line/densenet/results.json").read_text())
    capsys.readouterr()

    def no_network(*args, **kwargs):
        raise AssertionError("--cal-metric loaded a network")

    monkeypatch.setattr("pipeline.setup.build_model", no_network)
    monkeypatch.setattr("pipeline.setup.id_dataset", no_network)
    ood_eval.main([*command, *base, "--cal-metric"])
    again = json.loads((repo_root / "out_cal/CIFAR-10/line/densenet/results.json").read_text())
    assert again["ood"] == first["ood"] and again["id_accuracy"] == first["id_accuracy"]
    assert "AVG" in capsys.readouterr().out
    with pytest.raises(UserError, match="no saved scores of line with p_w=50"):
        ood_eval.main([*command, *base, "--cal-metric", "--p-w", "50"])


def test_in_dist_only_then_out_dist_only_equal_one_full_run(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    command = shlex.split(ORIGINAL_EVAL_COMMANDS[6][1])  # DICE p = 90 on CIFAR-10
    ood_eval.main([*command, "--base-dir", "out_full"])
    ood_eval.main([*command, "--base-dir", "out_split", "--in-dist-only"])
    assert "the metrics follow once --out-dist-only" in capsys.readouterr().out
    assert not (repo_root / "out_split/CIFAR-10/dice/densenet/results.json").exists()
    ood_eval.main([*command, "--base-dir", "out_split", "--out-dist-only"])
    full = json.loads((repo_root / "out_full/CIFAR-10/dice/densenet/results.json").read_text())
    split = json.loads((repo_root / "out_split/CIFAR-10/dice/densenet/results.json").read_text())
    assert split["ood"] == full["ood"] and split["id_accuracy"] == full["id_accuracy"]


def test_out_dist_only_without_id_scores_says_what_to_run(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    ood_eval.main(["--in-dataset", "CIFAR-10", "--base-dir", "out_only", "--out-dist-only"])
    assert "no ID test scores with these settings yet" in capsys.readouterr().out


# -- the traps a new user met -------------------------------------------------------------------
def test_max_samples_limits_the_training_features_and_the_table_says_when_fits_differ(
    repo_root, monkeypatch, capsys
):
    monkeypatch.chdir(repo_root)
    ood_eval.main(["--in-dataset", "CIFAR-10", "--methods", "dice,knn", "--knn-k", "1", "--max-samples", "10",
                   "--base-dir", "out_max", "--out-datasets", "dtd"])  # fmt: skip
    out = capsys.readouterr().out
    knn = json.loads((repo_root / "out_max/CIFAR-10/knn/densenet/results.json").read_text())
    assert knn["settings"]["training_images"]["count"] == 10
    assert "forward passes: 0 images" in out  # the subsets are read from the whole sets' cache
    assert "note: these fits used different training images:" in out
    assert "dice: 30 training images" in out and "knn: 10 training images" in out


@pytest.mark.parametrize(
    "argv, flag, method",
    [(["--method", "line", "--p", "90"], "--p", "line"),
     (["--method", "dice", "--p-w", "50"], "--p-w", "dice"),
     (["--method", "energy", "--detail", "mean_class"], "--detail", "energy")],
)  # fmt: skip
def test_a_flag_that_does_not_apply_is_an_error_naming_flag_and_method(argv, flag, method):
    with pytest.raises(UserError, match=f"{flag} applies to none of the chosen method\\(s\\) {method}"):
        eval_config(argv)


def test_runs_with_other_settings_are_kept_and_the_latest_is_in_the_canonical_place(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    command = line_on_dtd("out_keep")
    ood_eval.main([*command, "--p-w", "90"])
    ood_eval.main([*command, "--p-w", "50"])
    folder = repo_root / "out_keep/CIFAR-10/line/densenet"
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (folder / "runs").iterdir())
    assert runs == ["p_w=50,p_a=90,clip_threshold=1", "p_w=90,p_a=90,clip_threshold=1"]
    for run in (folder / "runs").iterdir():
        kept = json.loads((run / "results.json").read_text())
        assert run.name.startswith(f"p_w={kept['settings']['detector']['p_w']:g},")
    latest = json.loads((folder / "results.json").read_text())
    assert latest["settings"]["detector"]["p_w"] == 50 and "p_w=50" in latest["settings"]["run_dir"]


def test_results_table_script_handles_runs_over_different_ood_sets(repo_root, monkeypatch, tmp_path):
    from scripts.make_results_md import main as make_results_md

    monkeypatch.chdir(repo_root)
    common = ["--in-dataset", "CIFAR-10", "--base-dir", "out_sets"]
    ood_eval.main([*common, "--out-datasets", "dtd", "LSUN"])
    ood_eval.main([*common, "--method", "taylor", "--out-datasets", "dtd"])
    make_results_md(["--base-dir", "out_sets", "--out", str(tmp_path / "results.md")])
    text = (tmp_path / "results.md").read_text()
    assert "| `line` | " in text and "| – |" in text and "Not every method was run on every OOD set" in text


def test_plot_titles_follow_the_fpr_convention(monkeypatch, tmp_path):
    from util import plots

    titles = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: titles.append(fig.axes[0].get_title()) or path)
    rng = np.random.default_rng(0)
    scores = {"in": rng.normal(1, 1, 200), "dtd": rng.normal(0, 1, 100)}
    plots.plot_results(scores, tmp_path, "energy", positive="ood")
    assert len(titles) == 2 and all("OOD positive" in t for t in titles)
    assert "ID positive" not in " ".join(titles)


def test_help_shows_every_default_and_every_method_and_one_spelling_per_flag():
    import sweep
    from detectors import registry

    parsers = {m.__name__: m.build_parser() for m in (ood_eval, precompute, sweep)}
    for script, parser in parsers.items():
        for action in parser._actions:
            if action.option_strings and action.help and action.dest != "help" and action.nargs != 0:
                assert "default" in action.help, f"{script} {action.option_strings}: no default in --help"
    description = parsers["ood_eval"].description
    assert all(name in description for name in registry.method_names())
    assert "--max-samples" in parsers["sweep"]._option_string_actions
    spellings = {}  # dest -> the flag spellings of each script
    for parser in parsers.values():
        flags = {}
        for action in parser._actions:
            flags.setdefault(action.dest, set()).update(action.option_strings)
        for dest, forms in flags.items():
            spellings.setdefault(dest, set()).add(tuple(sorted(forms)))
    assert not [dest for dest, forms in spellings.items() if len(forms) > 1 and dest != "in_dataset"]
    assert "--clip" not in parsers["sweep"]._option_string_actions
    help_text = parsers["sweep"].format_help()
    assert "line         p_w=10,30,50,70,90; p_a=10,30,50,70,90" in help_text


def test_docs_results_were_made_by_committed_code():
    text = (REPO / "docs" / "results.md").read_text()
    version = text.split("Code version of the results: `", 1)[1].split("`", 1)[0]
    assert version and "dirty" not in version and version != "unknown"


def test_a_missing_checkpoint_says_not_found(tmp_path):
    with pytest.raises(UserError, match=f"checkpoint not found: {tmp_path / 'nope.pth'}$"):
        get_model("densenet", 10, tmp_path / "nope.pth")


@pytest.fixture(scope="module")
def imagenet_repo(tmp_path_factory):
    """datasets/ILSVRC-2012/{train,val} (1000 classes, one tiny image each), the four ImageNet OOD
    folders, and random ResNet-50 weights where the papers' torchvision file goes."""
    import torchvision

    root = tmp_path_factory.mktemp("imagenet_repo")
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in range(1000):
            _images(root / "datasets" / "ILSVRC-2012" / split / f"n{c:08d}", 1, rng, 8)
    for folder in ("iNaturalist/images", "SUN/images", "Places/images", "dtd/images/banded"):
        _images(root / "datasets" / "ood_datasets" / folder, 2, rng, 8)
    torch.manual_seed(0)
    weights = root / "checkpoints" / "imagenet" / "resnet50-0676ba61.pth"
    weights.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    return root


def _small_imagenet_input(config):
    """ImageNet's input at 32 instead of 224 pixels: ResNet-50 then runs 2,000 images in seconds."""
    from dataclasses import replace

    from util.datasets import IMAGENET_INPUT

    return replace(IMAGENET_INPUT, resize=32, crop=32)


def test_original_imagenet_commands_run_end_to_end_on_resnet50(imagenet_repo, monkeypatch, capsys):
    monkeypatch.chdir(imagenet_repo)
    monkeypatch.setattr("pipeline.setup.input_spec", _small_imagenet_input)  # speed only
    precompute.main([])  # `./precompute.py`: ImageNet is the ID dataset present here
    out = capsys.readouterr().out
    assert "skipping CIFAR-10" in out and "==== imagenet (resnet50, name resnet50)" in out
    assert (imagenet_repo / "cache" / "imagenet_resnet50_taylor_mean_class.npy").is_file()
    for source, command, arch, name, method in ORIGINAL_EVAL_COMMANDS:
        if "imagenet" not in command:
            continue
        ood_eval.main(shlex.split(command))
        capsys.readouterr()
        folder = imagenet_repo / "output" / "ood_scores" / "imagenet" / method / name
        result = json.loads((folder / "results.json").read_text())
        assert result["settings"]["model_arch"] == arch == "resnet50", source
        assert set(result["ood"]) == {"dtd", "sun", "inat", "places"}
        assert result["settings"]["files"]["checkpoint"]["path"].endswith("resnet50-0676ba61.pth")
