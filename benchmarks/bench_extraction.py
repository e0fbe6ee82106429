"""Feature extraction throughput, DenseNet-101 on CIFAR-10 test images (one run, same images).

Compares:
  plain   eager fp32 forward, NCHW, torch.no_grad, batch 64, images pre-loaded as tensors
  model   our forward path (channels_last, inference_mode, batch -b) on pre-loaded tensors
  e2e     util.features.FeatureExtractor from the JPEG files (decode, transform, DataLoader,
          forward, writing the cache) into a fresh temporary cache
Targets (issue 4): e2e >= 0.9 x model, e2e >= 1.5 x plain; features equal to 1e-5.

  python benchmarks/bench_extraction.py [-n 1024] [-b 256] [--workers 1]
"""

from __future__ import annotations

import tempfile

import torch
from common import cifar10_test_images, cpu_extractor, densenet, plain_forward, preload, report, timed

from util.cli import CliParser


def main() -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1024, help="number of images")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = cifar10_test_images(args.n)
    x = preload(data)
    n = len(x)
    print(f"{n} CIFAR-10 test images, DenseNet-101, {torch.get_num_threads()} threads")

    plain_model = densenet()
    plain_forward(plain_model, x[:64])  # warm-up
    h_plain, t_plain = timed(plain_forward, plain_model, x)

    with tempfile.TemporaryDirectory() as cache:
        extractor = cpu_extractor(cache, "e2e", args)

        def model_only():
            with torch.inference_mode():
                return torch.cat(
                    [
                        torch.from_numpy(extractor.forward(x[i : i + args.batch_size])[0])
                        for i in range(0, n, args.batch_size)
                    ]
                )

        model_only()  # warm-up
        h_model, t_model = timed(model_only)
        fs, t_e2e = timed(extractor.extract, data, "bench")
        h_e2e = torch.from_numpy(fs.features[:])

    report(
        [
            ("plain eager fp32 (pre-loaded)", n / t_plain),
            ("model only (pre-loaded)", n / t_model),
            ("end to end from JPEG files", n / t_e2e),
        ]
    )
    print(f"  e2e / model-only = {t_model / t_e2e:.2f}   (target >= 0.90)")
    print(f"  e2e / plain      = {t_plain / t_e2e:.2f}   (target >= 1.50)")
    print(
        f"  max |features e2e - plain| = {(h_e2e - h_plain).abs().max().item():.2e}, "
        f"model-only vs e2e = {(h_e2e - h_model).abs().max().item():.2e}"
    )


if __name__ == "__main__":
    main()
