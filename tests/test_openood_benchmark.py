"""--benchmark openood-cifar10: OpenOOD v1.5's image lists read from a data root, the ID test list
scored against the near- and far-OOD lists, group averages in both FPR95 conventions, and the
validation lists driving sweep.py's selection (best AUROC of ID-val against OOD-val).

Everything is generated here: an OpenOOD-shaped data root (benchmark_imglist/cifar10/*.txt and
images_classic/...) of small PNG images, and a randomly initialised DenseNet-101 checkpoint.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ood_eval
import precompute
import sweep
from models.densenet import DenseNet3
from util.errors import UserError
from util.openood import BENCHMARKS, read_image_list

BENCH = BENCHMARKS["openood-cifar10"]
SIZES = {"train": 4, "val": 2, "test": 3}  # ID images per class in each list


def write_images(root, folder, n, rng, style, label=None):
    """n PNG images under images_classic/folder; returns their list lines."""
    lines = []
    (root / "images_classic" / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if style == "smooth":
            base = rng.uniform(0, 255, (4, 4, 3))
            pixels = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 8, (32, 32, 3))
        else:
            pixels = rng.uniform(0, 255, (32, 32, 3))
        rel = f"{folder}/{i:04d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images_classic" / rel)
        lines.append(f"{rel} {label if label is not None else -1}")
    return lines


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("openood")
    rng = np.random.default_rng(0)
    lists = root / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    for split, n in SIZES.items():
        lines = []
        for c in range(BENCH.num_classes):
            lines += write_images(root, f"cifar10/{split}/{c}", n, rng, "smooth", label=c)
        (lists / f"{split}_cifar10.txt").write_text("\n".join(lines) + "\n")
    for split, name in [("val", BENCH.val_ood), *(("test", n) for n in BENCH.test_sets)]:
        lines = write_images(root, f"{name}/{split}", 6, rng, "noise" if name in BENCH.far else "smooth")
        (lists / f"{split}_{name}.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    checkpoint = root / "densenet_random.pth"
    torch.save(DenseNet3(100, 10).state_dict(), checkpoint)
    common = [
        "--benchmark", "openood-cifar10", "--data-root", str(root), "--cache-dir", str(root / "cache"),
        "--checkpoint", str(checkpoint), "--no-progress", "--device", "cpu", "-b", "64",
    ]  # fmt: skip
    return root, common


def test_image_lists_are_read_as_relative_paths_and_integer_labels(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("a/b c.png 3\nd/e.png -1\n\nf.png\n")
    assert read_image_list(lst) == [("a/b c.png", 3), ("d/e.png", -1), ("f.png", -1)]
    lst.write_text("a.png three\n")
    with pytest.raises(UserError, match=r"l.txt, line 1: .* \(label 'three' is not an integer\)"):
        read_image_list(lst)


def test_a_missing_list_names_the_path_and_how_to_get_openood_data(bench_root):
    root, common = bench_root
    with pytest.raises(UserError, match=r"benchmark_imglist/cifar100/test_cifar100.txt not found.*download"):
        ood_eval.main([*common[:2], "--benchmark", "openood-cifar100", *common[2:], "--method", "msp"])


def test_the_benchmark_prints_each_set_and_the_near_and_far_averages_in_both_conventions(bench_root, capsys):
    root, common = bench_root
    ood_eval.main([*common, "--methods", "msp,energy,knn", "--knn-k", "5", "--base-dir", str(root / "out")])
    out = capsys.readouterr().out
    assert "FPR95 (ID+)" in out and "FPR95 (OOD+)" in out
    rows = [line.split()[:2] for line in out.splitlines() if line.startswith(("near ", "far "))]
    expected = [[g, n] for g, sets in BENCH.groups.items() for n in (*sets, g)]  # each set, then "<g> AVG"
    assert rows == expected * 3  # msp, energy, knn
    folder = root / "out" / "openood-cifar10" / "energy" / "densenet"
    result = json.loads((folder / "results.json").read_text())
    assert set(result["ood"]) == set(BENCH.test_sets)
    for group, sets in BENCH.groups.items():
        got = result["groups"][group]
        assert got["sets"] == list(sets)
        for metric in ("FPR95", "FPR95_OOD_POSITIVE", "AUROC"):
            assert got[metric] == pytest.approx(np.mean([result["ood"][s][metric] for s in sets]))
    assert result["settings"]["num_images"] == {"in": 30, **{n: 6 for n in BENCH.test_sets}}
    assert "3 methods on openood-cifar10" in out and "near AVG" in out


def test_the_training_list_fits_the_detectors_and_the_statistics_files_carry_its_name(bench_root, capsys):
    root, common = bench_root
    precompute.main(common)
    assert (root / "cache" / "openood-cifar10_densenet_feat_stat.npy").is_file()
    ood_eval.main([*common, "--method", "dice", "--base-dir", str(root / "out2")])
    folder = root / "out2" / "openood-cifar10" / "dice" / "densenet"
    result = json.loads((folder / "results.json").read_text())
    assert result["settings"]["benchmark"] == "openood-cifar10"
    assert "training_images" in result["settings"]
    capsys.readouterr()


def test_out_datasets_restricts_to_the_benchmarks_sets_and_names_them_when_unknown(bench_root, capsys):
    root, common = bench_root
    ood_eval.main(
        [*common, "--method", "msp", "--out-datasets", "tin", "svhn", "--base-dir", str(root / "o3")]
    )
    out = capsys.readouterr().out
    assert "near (partial) AVG" in out and "far (partial) AVG" in out and "mnist" not in out
    with pytest.raises(UserError, match="openood-cifar10 has the OOD sets cifar100, tin, mnist"):
        ood_eval.main([*common, "--method", "msp", "--out-datasets", "dtd"])


def test_sweep_selects_on_the_validation_lists_by_auroc_as_openood_does(bench_root, capsys):
    from detectors import registry
    from detectors.base import score_features
    from pipeline import setup
    from pipeline.config import SweepConfig
    from util.metrics import auroc

    root, common = bench_root
    sweep.main([*common, "--method", "knn", "--grid", "k=1,3,8", "--base-dir", str(root / "sw")])
    folder = root / "sw" / "openood-cifar10" / "knn_sweep" / "densenet"
    summary = json.loads((folder / "sweep.json").read_text())
    assert summary["selection"].startswith("best AUROC of ID val_cifar10 against OOD val_tin")
    assert summary["val_images"] == 20 and set(summary["selected"]["groups"]) == {"near", "far"}
    # The validation AUROC of each k, recomputed here from the two validation lists' features.
    config = SweepConfig(
        benchmark="openood-cifar10", data_root=str(root), cache_dir=str(root / "cache"),
        checkpoint=common[common.index("--checkpoint") + 1], device="cpu", progress=False, method="knn",
    )  # fmt: skip
    tf = setup.transform(config)
    model, key, _ = setup.load_classifier(config)
    extractor = setup.make_extractor(config, model, key)
    sets, _ = setup.benchmark_sets(config, tf, None, val=True)
    feats = {k: extractor.extract(sets[k], setup.set_tag(config, k)).features for k in ("in_val", "val_tin")}
    train = extractor.extract(setup.train_set(config, tf), setup.tag(config, "train")).features
    assert extractor.images_forwarded == 0  # all cached by the sweep
    val_auroc = {}
    for k in (1, 3, 8):
        knn = registry.build("knn", "CIFAR-10", {"k": k}).fit(model.get_classifier(), train_features=train)
        val_auroc[k] = auroc(
            score_features(knn, feats["in_val"])[0], score_features(knn, feats["val_tin"])[0]
        )
    assert {r["k"]: r["val_AUROC"] for r in summary["rows"]} == pytest.approx(val_auroc)
    assert summary["selected"]["k"] == max(val_auroc, key=val_auroc.get)
    capsys.readouterr()


def test_a_list_with_an_absolute_path_a_missing_image_or_a_bad_label_is_refused(tmp_path):
    from util.openood import list_dataset

    lists = tmp_path / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    (tmp_path / "images_classic" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "images_classic" / "a" / "x.png")
    cases = {
        "/etc/x.png 0": "is not a path inside the image folder",
        "a/missing.png 0": r"1 of the 1 images listed in .*test_cifar10.txt are missing",
        "a/x.png 10": r"labels outside 0..9, e.g. a/x.png 10",
    }
    for line, message in cases.items():
        (lists / "test_cifar10.txt").write_text(line + "\n")
        with pytest.raises(UserError, match=message):
            list_dataset(tmp_path, BENCH, "test", "cifar10", None, labelled=True)


def test_the_groups_are_openoods_near_and_far_sets_and_textures_are_classic_images():
    # OpenOOD v1.5, openood/evaluation_api/datasets.py (DATA_INFO)
    assert BENCHMARKS["openood-cifar10"].groups == {
        "near": ("cifar100", "tin"), "far": ("mnist", "svhn", "texture", "places365")
    }  # fmt: skip
    assert BENCHMARKS["openood-cifar100"].groups == {
        "near": ("cifar10", "tin"), "far": ("mnist", "svhn", "texture", "places365")
    }  # fmt: skip
    for name in ("openood-imagenet", "openood-imagenet200"):
        bench = BENCHMARKS[name]
        assert bench.groups == {
            "near": ("ssb_hard", "ninco"),
            "far": ("inaturalist", "textures", "openimage_o"),
        }
        assert bench.val_ood == "openimage_o" and bench.image_dir("textures") == "images_classic"
        assert bench.image_dir("ninco") == "images_largescale"
    assert BENCHMARKS["openood-cifar10"].val_ood == "tin"


def test_imagenet200_asks_for_the_checkpoint_of_a_200_class_network():
    with pytest.raises(UserError, match="needs a 200-class classifier: pass its --checkpoint"):
        ood_eval.main(["--benchmark", "openood-imagenet200", "--method", "msp"])


def test_a_benchmark_with_a_different_in_dataset_is_refused(bench_root):
    root, common = bench_root
    with pytest.raises(UserError, match="evaluates CIFAR-10 classifiers on its own image lists; drop --in"):
        ood_eval.main([*common, "--in-dataset", "CIFAR-100", "--method", "msp"])
