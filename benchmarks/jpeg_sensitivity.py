"""How much does JPEG compression move the CIFAR-10 accuracy of the DenseNet-101 checkpoint?

The shared CIFAR-10 images are JPEGs (quality 75 quantisation tables, PIL's default); the
original lossless images are not available offline, so the first-generation loss cannot be
measured directly. This script measures the sensitivity instead: accuracy on a class-balanced
subset of the test JPEGs as given, and after re-encoding them once more at several qualities
(in memory). Re-encoding with the same quality-75 tables is close to idempotent (it changes
little), so the informative row is the lower quality: how steeply accuracy falls with coarser
quantisation indicates how much the original quality-75 encoding may have cost.

    python benchmarks/jpeg_sensitivity.py --data-root ../shared/data \
        --checkpoint ../shared/checkpoints/CIFAR-10/densenet/checkpoint_100.pth.tar --n 1000 \
        --out /tmp/jpeg_sensitivity.json

``--out`` writes the accuracies as JSON, which ``scripts/make_results_md.py --jpeg-sensitivity``
puts into docs/results.md.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import get_model  # noqa: E402
from util.cli import CliParser  # noqa: E402
from util.data import balanced_subset, dataset_labels, load_rgb  # noqa: E402
from util.datasets import id_dataset, id_transform  # noqa: E402

VARIANTS = {
    "as given": None,
    "re-encoded q95 4:4:4": dict(quality=95, subsampling=0),
    "re-encoded q75 4:2:0": dict(quality=75, subsampling=2),
    "re-encoded q50 4:2:0": dict(quality=50, subsampling=2),
}


def main() -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument(
        "--checkpoint", default="../shared/checkpoints/CIFAR-10/densenet/checkpoint_100.pth.tar"
    )
    parser.add_argument("--n", type=int, default=1000, help="test images (class-balanced)")
    parser.add_argument("-b", "--batch-size", type=int, default=100)
    parser.add_argument("--out", default=None, help="write the accuracies to this JSON file")
    args = parser.parse_args()
    from PIL import Image

    transform = id_transform("CIFAR-10")
    test = balanced_subset(id_dataset("CIFAR-10", "test", args.data_root, transform), args.n, 10)
    labels = dataset_labels(test)
    files = [test.dataset.files[i] for i in test.indices] if hasattr(test, "indices") else test.files
    images = [load_rgb(f) for f in files]
    model = get_model("densenet", 10, args.checkpoint).eval()
    torch.set_grad_enabled(False)
    print(f"{len(images)} CIFAR-10 test JPEGs from {args.data_root}, DenseNet-101, CPU", flush=True)
    accuracies = {}
    for name, options in VARIANTS.items():
        t0 = time.time()
        preds = []
        for start in range(0, len(images), args.batch_size):
            batch = []
            for im in images[start : start + args.batch_size]:
                if options is not None:
                    buf = io.BytesIO()
                    im.save(buf, format="JPEG", **options)
                    im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
                batch.append(transform(im))
            preds.append(model(torch.stack(batch)).argmax(1).numpy())
        acc = float(np.mean(np.concatenate(preds) == labels))
        accuracies[name] = acc
        print(f"{name:<24} accuracy {100 * acc:6.2f}%  ({time.time() - t0:.1f} s)", flush=True)
    if args.out:
        payload = {"images": len(images), "data_root": args.data_root, "accuracy": accuracies}
        Path(args.out).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
