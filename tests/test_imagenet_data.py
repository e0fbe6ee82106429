"""ImageNet data layout (small generated folders), model-driven normalisation, demo-imagenet.sh checks."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reference import eval_config

from util.datasets import id_dataset, id_transform, missing_ood_message, ood_dataset
from util.errors import UserError
from util.features import FeatureExtractor

REPO = Path(__file__).resolve().parent.parent


def _write_images(folder: Path, n: int, rng, size=(20, 14)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"img_{i}.JPEG")


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    """ILSVRC-2012/{train,val}/<wnid>/ with 1000 classes (1 tiny image each) and the 4 OOD folders."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    wnids = [f"n{10_000_000 - 7 * i:08d}" for i in range(1000)]  # not created in sorted order
    for split in ("train", "val"):
        for w in wnids:
            _write_images(root / "ILSVRC-2012" / split / w, 1, rng, size=(8, 8))
    for folder in ("iNaturalist/images", "SUN/images", "Places/images", "dtd/images/banded"):
        _write_images(root / "ood_datasets" / folder, 3, rng)
    return root


def test_imagenet_splits_use_sorted_wnid_folders_as_labels(imagenet_root):
    val = id_dataset("imagenet", "test", imagenet_root, id_transform("imagenet"))  # test = val folder
    assert val.root == imagenet_root / "ILSVRC-2012" / "val"
    assert len(val) == 1000 and val.classes == sorted(val.classes)
    assert val.labels == list(range(1000))
    x, y = val[5]
    assert x.shape == (3, 224, 224) and y == 5


def test_imagenet_needs_all_1000_class_folders(tmp_path):
    _write_images(tmp_path / "ILSVRC-2012" / "train" / "n01440764", 2, np.random.default_rng(0))
    with pytest.raises(UserError, match="1 class folders; ImageNet-1k needs 1000"):
        id_dataset("imagenet", "train", tmp_path, id_transform("imagenet"))
    with pytest.raises(UserError, match="ILSVRC-2012/val does not exist"):
        id_dataset("imagenet", "test", tmp_path, id_transform("imagenet"))


def test_imagenet_ood_set_names_map_to_the_mos_folders(imagenet_root):
    t = id_transform("imagenet")
    for name in ("inat", "sun", "places", "dtd"):
        ds = ood_dataset(name, imagenet_root, t)
        assert len(ds) == 3 and ds[0][0].shape == (3, 224, 224)
    msg = missing_ood_message("inat", imagenet_root / "nowhere")
    assert "ood_datasets/iNaturalist" in msg and "iNaturalist.tar.gz" in msg


def test_bit_normalisation_changes_the_transform_and_the_feature_cache_key(imagenet_root, tmp_path):
    from models import get_model, input_normalization

    std = id_transform("imagenet")
    bit = id_transform("imagenet", input_normalization("BiT-S-R101x1"))
    assert bit.transforms[-1].mean == (0.5, 0.5, 0.5) and std.transforms[-1].std[0] == 0.229
    ex = FeatureExtractor(get_model("resnet50", 1000), {"arch": "x"}, tmp_path, device="cpu")
    keys = {ex.cache.entry(ood_dataset("sun", imagenet_root, t), "sun").name for t in (std, bit)}
    assert len(keys) == 2


def test_ood_eval_uses_the_imagenet_paper_settings():
    flags = ["--in-dataset", "imagenet", "--model-arch", "resnet50", "--method", "taylor"]
    config = eval_config(flags)
    line = config.detectors[0].detector
    assert (line.p_w, line.p_a, line.clip_threshold) == (10.0, 10.0, 0.8)
    dice = eval_config(["--in-dataset", "imagenet", "--method", "dice"]).detectors[0].detector
    assert dice.p == 70.0


def test_demo_imagenet_without_data_stops_at_once_listing_every_missing_folder(tmp_path):
    env = {**os.environ, "DATA_ROOT": str(tmp_path / "no-data"), "TORCH_HOME": str(tmp_path / "torch")}
    res = subprocess.run(
        ["bash", str(REPO / "demo-imagenet.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    for folder in ("ILSVRC-2012/train", "ILSVRC-2012/val", "iNaturalist", "SUN", "Places", "dtd/images"):
        assert f"{tmp_path}/no-data/" in res.stderr and folder in res.stderr
    assert "image-net.org" in res.stderr and "iNaturalist.tar.gz" in res.stderr
    assert "BiT-S-R101x1.npz" in res.stderr
    if not (REPO / "checkpoints/imagenet/resnet50-0676ba61.pth").exists():
        assert "download.pytorch.org/models/resnet50-0676ba61.pth" in res.stderr
    assert "setting up .venv" not in res.stderr  # stopped before any setup or Python work


def test_precompute_and_sweep_run_on_a_1000_class_folder_with_random_resnet50_weights(
    imagenet_root, tmp_path
):
    import torch
    import torchvision

    import precompute
    import sweep

    torch.manual_seed(0)
    checkpoint = tmp_path / "resnet50-random.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), checkpoint)
    common = [
        "--in-dataset", "imagenet", "--model-arch", "resnet50", "--data-root", str(imagenet_root),
        "--checkpoint", str(checkpoint), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
        "--device", "cpu", "--workers", "0", "-b", "16",
    ]  # fmt: skip
    precompute.main([*common, "--max-samples", "6"])  # the statistics of the sweep's training subset
    out = tmp_path / "out"
    sweep.main(
        [*common, "--out-datasets", "sun", "dtd", "--max-samples", "6", "--base-dir", str(out),
         "--grid", "p_w=10,90", "--grid", "p_a=10", "--grid", "clip_threshold=0.8"]
    )  # fmt: skip
    result = json.loads((out / "imagenet" / "line_sweep" / "resnet50" / "sweep.json").read_text())
    assert len(result["rows"]) == 2 and result["test_sets"] == ["sun", "dtd"]
    assert result["settings"]["model_arch"] == "resnet50"
