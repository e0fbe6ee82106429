"""What the multi-layer statistics cost in the one forward pass: DenseNet-101 on CIFAR-10 test
images (JPEG files), ``FeatureExtractor`` into a fresh cache, with no layer statistics and with
each kind on the default layers block1..3 (``util.layer_taps``): pooled, gram (10 powers, float64),
nac (a backward pass from the logits), and all three together. Also checks that the features are
bit-identical in every run (the taps only read the layer outputs).

  python benchmarks/bench_layer_taps.py [-n 512] [-b 256] [--workers 1]
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch
from common import cifar10_test_images, cpu_extractor

from util.cli import CliParser
from util.layer_taps import TapSpec

SETTINGS = {
    "none": (),
    "pooled": ("pooled",),
    "gram": ("gram",),
    "nac": ("nac",),
    "all": ("pooled", "gram", "nac"),
}


def main() -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=512, help="number of images")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    data = cifar10_test_images(args.n)
    print(
        f"{len(data)} CIFAR-10 test images, DenseNet-101, {torch.get_num_threads()} threads, layers block1..3"
    )
    base, base_rate = None, None
    for name, kinds in SETTINGS.items():
        with tempfile.TemporaryDirectory() as cache:
            extractor = cpu_extractor(cache, name, args)
            extractor.set_taps(TapSpec(("block1", "block2", "block3"), kinds) if kinds else None)
            t0 = time.perf_counter()
            fs = extractor.extract(data, "test")
            seconds = time.perf_counter() - t0
        rate = len(data) / seconds
        base = base if base is not None else np.array(fs.features)
        base_rate = base_rate or rate
        same = np.array_equal(base, fs.features)
        print(
            f"{name:7s} {rate:7.1f} img/s  {seconds:6.1f} s  x{base_rate / rate:4.2f} of no taps  "
            f"features bit-identical: {same}"
        )


if __name__ == "__main__":
    main()
