"""Images/s of DenseNet-101 (CIFAR-size input) and ResNet-50 (random weights, 224 px), fp32 and bf16.

Two figures per network and precision (issue 24's throughput table):

- model only: ``FeatureExtractor.forward`` (channels_last, autocast for bf16, as precompute.py
  runs the network) on random images already on --device, --batches batches of -b images after
  one warm-up batch;
- end to end from JPEG files: ``FeatureExtractor.extract`` over -n JPEG files (decode, transform,
  DataLoader with --workers, transfer, forward, features written to a fresh cache), as
  precompute.py runs it: CIFAR-10 test images (32 px) for DenseNet-101, the ImageNet images of
  ../shared/data/imagenet-sample (224 px crops) for ResNet-50.

DenseNet-101 has the CIFAR-10 checkpoint's weights when it is present (random otherwise; the
speed is the same). Prints one table; with --out also writes it there.

    python benchmarks/gpu_throughput.py --device cuda                 # the GPU check's figures
    python benchmarks/gpu_throughput.py --device cpu -b 8 -n 16 --batches 1 --precisions fp32
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from util.cli import CliParser  # noqa: E402


def networks(n: int):
    """(name, model, input size, dataset of n JPEG files) of the two networks measured."""
    from common import CHECKPOINT, DATA_ROOT

    from models import get_model
    from models.resnet import ResNet50
    from util.data import spread_subset
    from util.datasets import id_dataset, id_transform

    densenet = get_model("densenet", 10, CHECKPOINT if CHECKPOINT.is_file() else None)
    cifar = spread_subset(id_dataset("CIFAR-10", "test", DATA_ROOT, id_transform("CIFAR-10")), n)
    imagenet_root = DATA_ROOT / "imagenet-sample"
    imagenet = spread_subset(id_dataset("imagenet", "train", imagenet_root, id_transform("imagenet")), n)
    return [
        ("DenseNet-101 32 px", densenet, 32, cifar),
        ("ResNet-50 224 px", ResNet50().eval(), 224, imagenet),
    ]


def model_only(extractor, size: int, batch: int, batches: int) -> float:
    """Images/s of ``extractor.forward`` on random images already on its device."""
    import torch

    with torch.inference_mode():  # as extract runs it
        x = torch.randn(batch, 3, size, size, device=extractor.device)
        extractor.forward(x)  # warm-up: kernel selection, allocations
        start = time.perf_counter()
        for _ in range(batches):
            extractor.forward(x)  # returns numpy arrays: the GPU's work is finished when it returns
        return batch * batches / (time.perf_counter() - start)


def end_to_end(extractor, dataset) -> float:
    """Images/s of ``extractor.extract`` over the JPEG files of ``dataset`` (cache is fresh)."""
    start = time.perf_counter()
    extractor.extract(dataset, "throughput")
    return len(dataset) / (time.perf_counter() - start)


def measure(args) -> list[tuple[str, str, float, float]]:
    from util.features import FeatureExtractor

    rows = []
    for name, model, size, dataset in networks(args.n):
        for precision in args.precisions.split(","):
            with tempfile.TemporaryDirectory() as cache:
                extractor = FeatureExtractor(
                    model,
                    {"bench": name, "n": args.n},
                    cache,
                    device=args.device,
                    batch_size=args.batch_size,
                    num_workers=args.workers,
                    progress=False,
                    precision=precision,
                )
                speed = model_only(extractor, size, args.batch_size, args.batches)
                rows.append((name, precision, speed, end_to_end(extractor, dataset)))
    return rows


def main(argv=None) -> None:
    import torch

    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("-n", type=int, default=1000, help="JPEG files read end to end (default 1000)")
    parser.add_argument("--batches", type=int, default=5, help="timed batches, model only (default 5)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers (default 8)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    where = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    lines = [
        f"throughput on {where}, batch {args.batch_size}, images/s (model only: {args.batches} batches "
        f"on the device; end to end: {args.n} JPEG files, {args.workers} workers)",
        f"{'network':<20}{'precision':>10}{'model only':>12}{'end to end':>12}",
    ]
    for name, precision, model_speed, e2e_speed in measure(args):
        lines.append(f"{name:<20}{precision:>10}{model_speed:>12.0f}{e2e_speed:>12.0f}")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
