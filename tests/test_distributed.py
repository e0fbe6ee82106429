"""torch.distributed extraction (util/distributed.py): 2 real processes (gloo) equal 1 process.

One test spawns 2 processes with torch.multiprocessing and runs FeatureExtractor in each; the
other runs precompute.py and ood_eval.py under torchrun (2 processes) on a tiny CIFAR-10 image
folder with a random DenseNet checkpoint and compares every output file with a 1-process run.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from util import distributed
from util.distributed import shard_batches
from util.features import FeatureExtractor

REPO = Path(__file__).resolve().parent.parent
N_IMAGES, BATCH = 37, 4  # 10 batches, the last one short: ranks get unequal numbers of rows


class TinyNet(nn.Module):
    """conv -> relu -> global average pool (D = 6) -> linear (C = 5)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6, 5)

    def forward_features(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.forward_features(x))


class SeededImages(Dataset):
    """Image i is drawn from a generator seeded with i; label i % 5."""

    transform = None

    def __len__(self):
        return N_IMAGES

    def __getitem__(self, i):
        return torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(i)), i % 5

    def fingerprint(self):
        return {"kind": "seeded", "n": N_IMAGES}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    device = distributed.setup("cpu")
    assert distributed.active() and distributed.world_size() == world
    ex = FeatureExtractor(TinyNet(), {"arch": "tiny"}, cache, device=device, batch_size=BATCH, num_workers=0)
    fs = ex.extract(SeededImages(), "seeded")
    info = {"rank": rank, "pid": os.getpid(), "forwarded": ex.images_forwarded, "got_set": fs is not None}
    if fs is not None:
        np.savez(Path(out) / "features.npz", features=fs.features, logits=fs.logits, labels=fs.labels)
    distributed.leave()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(info))


def test_shards_cover_every_batch_once_in_round_robin_order():
    batches = [b for r in range(3) for b in shard_batches(5, 37, 4, 3, r)]
    assert sorted(batches) == [(lo, min(lo + 4, 37)) for lo in range(5, 37, 4)]
    assert shard_batches(5, 37, 4, 3, 1)[:2] == [(9, 13), (21, 25)]


def test_two_gloo_processes_extract_exactly_what_one_process_does(tmp_path):
    single = FeatureExtractor(TinyNet(), {"arch": "tiny"}, tmp_path / "c1", device="cpu", batch_size=BATCH)
    ref = single.extract(SeededImages(), "seeded")

    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "c2"), str(out)), nprocs=2, join=True)
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert len({i["pid"] for i in infos} | {os.getpid()}) == 3  # two separate processes
    assert [i["got_set"] for i in infos] == [True, False]  # the result lives on rank 0
    # 10 batches (the last has 1 image): rank 0 forwards batches 0, 2, 4, 6, 8 (20 images),
    # rank 1 batches 1, 3, 5, 7, 9 (17).
    assert [i["forwarded"] for i in infos] == [20, 17]
    got = np.load(out / "features.npz")
    np.testing.assert_allclose(got["features"], ref.features, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["logits"], ref.logits, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["labels"], ref.labels)
    # The 2-process run wrote a normal cache entry: one process now loads it without any forward pass.
    again = FeatureExtractor(TinyNet(), {"arch": "tiny"}, tmp_path / "c2", device="cpu", batch_size=BATCH)
    fs = again.extract(SeededImages(), "seeded")
    assert fs.from_cache and again.images_forwarded == 0


def _tiny_cifar(root: Path) -> None:
    """CIFAR-10 as image folders: 10 classes x 2 train, 10 x 1 test, random 32x32 images."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 2), ("test", 1)):
        for c in range(10):
            d = root / "CIFAR-10" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")


def _run(args: list[str], torchrun: bool, cwd: Path) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = (launcher if torchrun else [sys.executable]) + args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def test_torchrun_precompute_and_ood_eval_equal_a_single_process_run(tmp_path):
    from models.densenet import DenseNet3

    _tiny_cifar(tmp_path / "data")
    torch.manual_seed(0)
    ckpt = tmp_path / "random.pth"
    torch.save({"state_dict": DenseNet3(100, 10).state_dict()}, ckpt)
    outputs = {}
    for mode in ("single", "torchrun"):
        common = [
            "--in-dataset", "CIFAR-10", "--data-root", str(tmp_path / "data"), "--checkpoint", str(ckpt),
            "--cache-dir", str(tmp_path / mode / "cache"), "--device", "cpu", "-b", "4", "--no-progress",
        ]  # fmt: skip
        log = _run([str(REPO / "precompute.py"), *common], mode == "torchrun", tmp_path)
        if mode == "torchrun":
            assert "distributed: 2 processes, backend gloo" in log
        ood = [
            str(REPO / "ood_eval.py"), *common, "--method", "taylor", "--out-datasets", "gaussian",
            "--max-samples", "12", "--base-dir", str(tmp_path / mode / "out"),
        ]  # fmt: skip
        _run(ood, mode == "torchrun", tmp_path)
        outputs[mode] = tmp_path / mode
    cache1, cache2 = outputs["single"] / "cache", outputs["torchrun"] / "cache"
    for name in ("CIFAR-10_densenet_taylor_mean_class.npy", "CIFAR-10_densenet_feat_stat.npy"):
        np.testing.assert_allclose(np.load(cache2 / name), np.load(cache1 / name), rtol=0, atol=1e-6)
    scores = "CIFAR-10/line/densenet/scores"
    for name in ("in.npy", "gaussian.npy"):
        a, b = (np.load(outputs[m] / "out" / scores / name) for m in ("single", "torchrun"))
        assert len(a) == 10  # the noise set has as many images as the ID test set
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
