"""Datasets: image-folder order, Fashion-MNIST idx files, seeded noise, subsets."""

import gzip

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from util.data import (
    NoiseImages,
    balanced_subset,
    dataset_labels,
    image_folder,
    read_idx_images,
)
from util.datasets import id_transform, ood_dataset


def write_images(root, layout):
    for rel, value in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_image_folder_order_and_labels_match_torchvision_image_folder(tmp_path):
    write_images(tmp_path, {"b/2.png": 1, "b/10.png": 2, "a/x/1.png": 3, "a/0.png": 4, "c/z.jpg": 5})
    ours = image_folder(tmp_path, id_transform("CIFAR-10"))
    theirs = ImageFolder(str(tmp_path))
    assert [str(p) for p in ours.files] == [p for p, _ in theirs.samples]
    assert ours.labels == [y for _, y in theirs.samples]


def test_fashion_mnist_idx_file_reads_as_grayscale_images_converted_to_rgb(tmp_path):
    raw = tmp_path / "ood_datasets" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, 5, 28, 28))
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    np.testing.assert_array_equal(read_idx_images(raw / "t10k-images-idx3-ubyte.gz"), images)
    ds = ood_dataset("FashionMNIST", tmp_path, id_transform("CIFAR-10"))
    x, _ = ds[0]
    assert len(ds) == 5 and x.shape == (3, 32, 32)
    torch.testing.assert_close(x[0] * 0.2023 + 0.4914, x[1] * 0.1994 + 0.4822, atol=1e-5, rtol=0)


def test_noise_sets_are_seeded_per_image_and_normalised_like_id_images():
    norm = id_transform("CIFAR-10").transforms[-1]
    a = NoiseImages("gaussian", 10_000, 32, norm)
    b = NoiseImages("gaussian", 10_000, 32, norm)
    torch.testing.assert_close(a[123][0], b[123][0])
    assert not torch.equal(a[1][0], a[2][0])
    u, _ = NoiseImages("uniform", 10, 32, norm)[0]
    pixels = u * torch.tensor(norm.std).view(3, 1, 1) + torch.tensor(norm.mean).view(3, 1, 1)
    assert 0 <= pixels.min() and pixels.max() <= 1


def test_balanced_subset_takes_the_first_images_of_each_class(tmp_path):
    write_images(tmp_path, {f"{c}/{i}.png": i for c in "abc" for i in range(5)})
    ds = image_folder(tmp_path, id_transform("CIFAR-10"))
    sub = balanced_subset(ds, 7, 3)
    labels = dataset_labels(sub)
    assert np.bincount(labels).tolist() == [3, 2, 2]
    assert [p.name for p in np.array(ds.files)[sub.indices]] == [
        "0.png",
        "1.png",
        "2.png",
        "0.png",
        "1.png",
        "0.png",
        "1.png",
    ]
