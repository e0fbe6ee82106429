"""LINe as a layer, batch by batch, against the plain head on the same batches (C = 1,000, D = 2,048).

``RouteLINe.forward`` (what ``SparsifiedClassifier`` and a user's own evaluation loop call) scores
--samples random non-negative features (p_w = p_a = 10, tau = 0.8, the ImageNet settings) in
batches of each --batch-sizes, and so does the plain head W h' + b; the ratio is the cost of
LINe per batch. The floor is one (N x D) x (D x C) matrix product over all samples at once. The
first --check rows are compared with the straightforward per-sample formula (numpy, float64; the
masks' thresholds are numpy.percentile, linear interpolation, with ``>``, as in models/route.py).

    python benchmarks/bench_line_batches.py                    # 20,000 features, batches 64, 256, 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

P_W, P_A, TAU = 10.0, 10.0, 0.8


def reference_logits(W, b, contrib, h):
    """LINe logits of one clipped feature vector h, straight from the definitions."""
    W, contrib, h = W.astype(np.float64), contrib.astype(np.float64), h.astype(np.float64)
    c = int(np.argmax(W @ h + b))
    ap = contrib[c] > np.percentile(contrib[c], P_A)
    relevance = np.abs(contrib[c])[None, :] * W
    wp = relevance > np.percentile(relevance, P_W)
    return (W * wp) @ (h * ap) + b


def timed(fn, batches) -> float:
    """Seconds for fn over all batches, waiting for the GPU's queued work when there is one."""
    import torch

    sync = torch.cuda.synchronize if batches[0].is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for batch in batches:
        fn(batch)
    sync()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    import torch
    import torch.nn.functional as F
    from common import line_problem

    from models.route import RouteLINe

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch-sizes", default="64,256,1024")
    parser.add_argument("--check", type=int, default=32, help="rows checked against the reference")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = parser.parse_args(argv)

    W, b, contrib, features = line_problem(args.samples)
    fc = torch.nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(W))
        fc.bias.copy_(torch.from_numpy(b))
    route = RouteLINe(fc, contrib, P_W, P_A).to(args.device)
    h = torch.from_numpy(np.minimum(features, np.float32(TAU))).to(args.device)
    with torch.inference_mode():
        got = route(h[: args.check]).double().cpu().numpy()
        want = np.stack(
            [reference_logits(W, b.astype(np.float64), contrib, x) for x in h[: args.check].cpu().numpy()]
        )
        err = float(np.abs(got - want).max())
        floor = timed(lambda x: F.linear(x, route.weight, route.bias), [h])
        print(
            f"{args.samples:,} features on {args.device}, C = {W.shape[0]}, D = {W.shape[1]}, "
            "p_w = p_a = 10, tau = 0.8"
        )
        print(f"max |LINe - reference| over {args.check} rows: {err:.2e}")
        print(f"floor, one {args.samples} x {W.shape[1]} x {W.shape[0]} product: {floor:.3f} s")
        print(f"{'batch':>6}{'plain s':>10}{'LINe s':>10}{'LINe/plain':>12}{'LINe samples/s':>16}")
        for size in [int(x) for x in args.batch_sizes.split(",")]:
            batches = [h[s : s + size] for s in range(0, len(h), size)]
            plain = timed(lambda x: F.linear(x, route.weight, route.bias), batches)
            line = timed(route, batches)
            print(f"{size:>6}{plain:>10.2f}{line:>10.2f}{line / plain:>12.1f}{args.samples / line:>16.0f}")


if __name__ == "__main__":
    main()
