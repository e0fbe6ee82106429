"""Reduced precision (bf16 autocast on CPU, fp16/bf16 on CUDA) vs the plain eager fp32 forward.

Throughput on the same pre-loaded CIFAR-10 test images: plain eager fp32 (NCHW, no_grad, batch
64) against our path with --precision bf16 (channels_last, inference_mode, autocast). Target
(issue 4): >= 3x. Prints the largest feature difference too. The effect on OOD results is
measured by benchmarks/precision_results.sh (full CIFAR-10 benchmark, fp32 vs bf16).

  python benchmarks/bench_precision.py [-n 512] [--precision bf16]
"""

from __future__ import annotations

import tempfile

import torch
from common import cifar10_test_images, densenet, plain_forward, preload, report, timed

from util.cli import CliParser
from util.devices import default_device
from util.features import FeatureExtractor


def main() -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=512)
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--device", default=default_device())
    args = parser.parse_args()
    x = preload(cifar10_test_images(args.n))
    n = len(x)
    print(f"{n} CIFAR-10 test images, DenseNet-101, device {args.device}")
    model = densenet().to(args.device)
    xd = x.to(args.device)
    plain_forward(model, xd[:64])
    h32, t32 = timed(plain_forward, model, xd)

    with tempfile.TemporaryDirectory() as cache:
        fast = FeatureExtractor(
            densenet(),
            {},
            cache,
            device=args.device,
            batch_size=args.batch_size,
            progress=False,
            precision=args.precision,
        )

        def reduced():
            with torch.inference_mode():
                return torch.cat(
                    [
                        torch.from_numpy(fast.forward(x[i : i + args.batch_size])[0])
                        for i in range(0, n, args.batch_size)
                    ]
                )

        reduced()
        h16, t16 = timed(reduced)
    report([("plain eager fp32", n / t32), (f"ours, {args.precision} autocast", n / t16)])
    print(f"  speed-up {t32 / t16:.2f}x   (target >= 3)")
    print(
        f"  max |features {args.precision} - fp32| = {(h16 - h32.cpu()).abs().max().item():.3f} "
        f"(features range 0..{h32.max().item():.2f})"
    )


if __name__ == "__main__":
    main()
