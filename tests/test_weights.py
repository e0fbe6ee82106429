"""The published weights specs (models.weights) and the mechanism that reads them
(models.checkpoints): hashes, inputs, and that a spec alone makes a file found or downloaded.

No network: downloads come from file:// URLs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet50_Weights

from models import MODELS, input_normalization, preferred_input
from models.checkpoints import (
    packaged_file,
    published_weights,
    resolve_checkpoint,
    weight_paths,
)
from models.weights import WEIGHTS, Weights
from util.datasets import ID_DATASETS
from util.errors import UserError
from util.inputs import InputSpec
from util.io import sha256_file

REPO = Path(__file__).resolve().parent.parent
DENSENETS = [w for w in WEIGHTS.values() if w.arch == "densenet"]


def test_every_spec_is_keyed_by_its_dataset_and_architecture_and_fits_both():
    for key, w in WEIGHTS.items():
        assert key == (w.dataset, w.arch)
        assert w.arch in MODELS and w.dataset in ID_DATASETS
        assert w.num_classes == ID_DATASETS[w.dataset].num_classes
        assert (w.url is None) != (w.package is None), "a file comes from a URL or a package"
        assert w.sha256 is None or re.fullmatch(r"[0-9a-f]{8,64}", w.sha256)
        assert w.top1 is None or 0 < w.top1 < 100


@pytest.mark.parametrize("w", DENSENETS, ids=lambda w: w.dataset)
def test_the_densenet_sha256_is_that_of_the_shared_file(w, shared):
    path = weight_paths(w, shared / "checkpoints")[0]  # the spec's place, under the shared root
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert sha256_file(path) == w.sha256


def test_file_names_with_a_hash_carry_the_first_digits_of_the_specs_sha256():
    named = {w.arch: w for w in WEIGHTS.values() if re.search(r"-[0-9a-f]{8}\.pth$", w.file)}
    assert set(named) == {"resnet50", "efficientnet-lite0"}
    for w in named.values():
        assert w.sha256.startswith(w.file.rsplit("-", 1)[1][:8])


def test_the_packaged_lite0_file_has_the_specs_sha256():
    w = WEIGHTS["imagenet", "efficientnet-lite0"]
    path = packaged_file(w)
    assert path is not None and path.name == w.file
    assert sha256_file(path) == w.sha256


def test_the_resnet50_spec_is_torchvisions_imagenet1k_v1():
    w, tv = WEIGHTS["imagenet", "resnet50"], ResNet50_Weights.IMAGENET1K_V1
    preset = tv.transforms()
    assert w.url == tv.url and w.file == tv.url.rsplit("/", 1)[1]
    assert w.top1 == tv.meta["_metrics"]["ImageNet-1K"]["acc@1"] == 76.13
    assert w.num_classes == len(tv.meta["categories"])
    assert (w.input.resize, w.input.crop) == (preset.resize_size[0], preset.crop_size[0])
    assert (list(w.input.mean), list(w.input.std)) == (preset.mean, preset.std)
    assert w.input.interpolation == preset.interpolation.value


# The inputs before the specs existed, written out: the transforms must stay bit-identical.
_BEFORE = {
    "resnet50": "InputSpec(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), "
    "interpolation='bilinear')",
    "BiT-S-R101x1": "InputSpec(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), "
    "interpolation='bilinear')",
    "efficientnet-lite0": "InputSpec(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), "
    "interpolation='bilinear')",
}


@pytest.mark.parametrize("arch", sorted(_BEFORE))
def test_the_imagenet_specs_input_is_what_the_model_prefers(arch):
    w = WEIGHTS["imagenet", arch]
    assert preferred_input(arch) == MODELS[arch].input == w.input
    assert repr(w.input) == _BEFORE[arch]  # repr(input) is part of the statistics record
    assert input_normalization(arch) == (w.input.mean, w.input.std)


def test_the_densenet_specs_input_is_the_cifar_input_the_run_applies():
    from pipeline.config import RunConfig
    from pipeline.setup import input_spec

    assert preferred_input("densenet") is None and input_normalization("densenet") is None
    for w in DENSENETS:
        assert w.input == ID_DATASETS[w.dataset].input == input_spec(RunConfig(in_dataset=w.dataset))
    imagenet = {w.arch: w.input for w in WEIGHTS.values() if w.dataset == "imagenet"}
    for arch, spec in imagenet.items():
        assert input_spec(RunConfig(in_dataset="imagenet", model_arch=arch)) == spec


def test_each_input_statistic_is_defined_once():
    literals = ("0.485", "0.4914", "0.2023", "0.229")
    found = [
        str(p.relative_to(REPO))
        for p in [*REPO.glob("models/*.py"), *REPO.glob("util/*.py")]
        if any(v in p.read_text() for v in literals)
    ]
    assert found == ["util/inputs.py"]


def test_the_published_weights_of_a_run():
    cifar10 = WEIGHTS["CIFAR-10", "densenet"]
    assert published_weights("CIFAR-10", "densenet", "densenet") is cifar10
    assert published_weights("CIFAR-10", "mynet", "densenet") is None  # another run folder
    assert published_weights("CIFAR-10", "densenet", "densenet", epoch=50) is None
    assert published_weights("imagenet", "r50", "resnet50") is WEIGHTS["imagenet", "resnet50"]
    assert (
        published_weights("flowers", "r50", "resnet50", num_classes=1000) is WEIGHTS["imagenet", "resnet50"]
    )
    assert published_weights("flowers", "r50", "resnet50", num_classes=102) is None


# -- the mechanism reads the spec: a new one is found, downloaded and checked ----------------------
@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A published file at a file:// URL; the working folder is an empty one."""
    source = tmp_path / "published" / "toy-weights.pth"
    source.parent.mkdir()
    torch.save({"w": torch.arange(4.0)}, source)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = Weights(
        arch="toy",
        dataset="imagenet",
        num_classes=1000,
        file="toy-weights.pth",
        source="a test's toy weights",
        input=InputSpec(256, 224, (0.5,) * 3, (0.5,) * 3),
        url=source.as_uri(),
        sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
    )
    return spec, source


def _add(monkeypatch, spec: Weights) -> None:
    monkeypatch.setitem(WEIGHTS, (spec.dataset, spec.arch), spec)


def test_a_new_spec_is_downloaded_checked_and_then_found(toy, monkeypatch):
    spec, source = toy
    _add(monkeypatch, spec)
    path = resolve_checkpoint(None, "imagenet", "toy", "toy")
    assert path == Path("checkpoints/imagenet/toy-weights.pth")
    assert path.read_bytes() == source.read_bytes()
    assert list(path.parent.iterdir()) == [path]  # no partial download left

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert resolve_checkpoint(None, "imagenet", "toy", "toy") == path
    assert resolve_checkpoint(None, "flowers", "toy", "toy", num_classes=1000) == path


def test_a_sha256_prefix_is_enough_and_a_wrong_one_refuses_the_file(toy, monkeypatch):
    spec, _ = toy
    _add(monkeypatch, replace(spec, sha256=spec.sha256[:8]))
    assert resolve_checkpoint(None, "imagenet", "toy", "toy").is_file()
    Path("checkpoints/imagenet/toy-weights.pth").unlink()
    _add(monkeypatch, replace(spec, sha256="0" * 64))
    with pytest.raises(UserError, match=f"has sha256 {spec.sha256}, expected 0{{64}}; not using it"):
        resolve_checkpoint(None, "imagenet", "toy", "toy")
    assert list(Path("checkpoints/imagenet").iterdir()) == []


def test_a_failed_download_says_where_to_put_the_file(toy, monkeypatch):
    spec, source = toy
    _add(monkeypatch, replace(spec, url=source.with_name("absent.pth").as_uri()))
    with pytest.raises(UserError, match=r"(?s)toy weights not found at .*downloading them failed.*by hand"):
        resolve_checkpoint(None, "imagenet", "toy", "toy")
    assert list(Path("checkpoints/imagenet").iterdir()) == []


def test_without_downloads_the_message_names_the_place_and_the_url(toy, monkeypatch):
    spec, _ = toy
    _add(monkeypatch, spec)
    where = re.escape(f"checkpoints/imagenet/toy-weights.pth (get {spec.url})")
    with pytest.raises(UserError, match=f"toy weights not found at {where}"):
        resolve_checkpoint(None, "imagenet", "toy", "toy", download=False)
    _add(monkeypatch, replace(spec, download=False))
    with pytest.raises(UserError, match=re.escape(f"Download {spec.url} (a test's toy weights) to")):
        resolve_checkpoint(None, "imagenet", "toy", "toy")
    assert not Path("checkpoints").exists()


def test_a_run_layout_spec_is_taken_at_the_runs_default_path_only(toy, monkeypatch):
    spec, _ = toy
    _add(
        monkeypatch,
        replace(spec, dataset="CIFAR-10", num_classes=10, folder="toynet", file="checkpoint_100.pth.tar"),
    )
    with pytest.raises(
        UserError, match="No published checkpoint is known for --in-dataset CIFAR-10 --name other"
    ):
        resolve_checkpoint(None, "CIFAR-10", "other", "toy")
    with pytest.raises(
        UserError, match="checkpoint not found: checkpoints/CIFAR-10/toynet/checkpoint_50.pth.tar$"
    ):
        resolve_checkpoint(None, "CIFAR-10", "toynet", "toy", epoch=50)
    path = resolve_checkpoint(None, "CIFAR-10", "toynet", "toy")
    assert path == Path("checkpoints/CIFAR-10/toynet/checkpoint_100.pth.tar") and path.is_file()


def test_torchvisions_file_is_also_found_in_torch_hubs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    w = WEIGHTS["imagenet", "resnet50"]
    cached = tmp_path / "hub" / "checkpoints" / w.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not checked when found")
    assert weight_paths(w) == [Path("checkpoints/imagenet") / w.file, cached]
    assert resolve_checkpoint(None, "imagenet", "resnet50", "resnet50") == cached
