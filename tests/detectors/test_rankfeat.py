"""RankFeat (detectors/rankfeat.py) against references written here: the feature map computed by
hand up to the removal point, a numpy SVD per image (float64) to remove s1 u1 v1^T, then the rest
of the network and the Energy by hand."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from detectors.rankfeat import RankFeat, remove_rank1
from models.adapter import adapt
from models.densenet import DenseNet3
from models.efficientnet_lite import EfficientNetLite0
from models.resnet import ResNet50
from models.resnetv2 import ResNetV2
from util.errors import UserError

C = 5


def logsumexp(v):
    m = max(v)
    return m + np.log(sum(np.exp(x - m) for x in v))


def without_rank1(fmap: torch.Tensor) -> np.ndarray:
    """Each image's (C, HW) matrix less s1 u1 v1^T, by numpy's SVD in float64, back as (B, C, H, W)."""
    out = []
    for x in fmap.double().numpy():
        m = x.reshape(x.shape[0], -1)
        u, s, vt = np.linalg.svd(m)
        out.append((m - s[0] * np.outer(u[:, 0], vt[0])).reshape(x.shape))
    return np.array(out)


def head_by_hand(pooled: np.ndarray, fc: nn.Linear) -> np.ndarray:
    W, b = fc.weight.detach().double().numpy(), fc.bias.detach().double().numpy()
    return np.array([W @ h + b for h in pooled])


def randomised(model: nn.Module) -> nn.Module:
    """Eval mode, with random BatchNorm statistics and affine parameters (identity BNs would hide
    whether the removal happens before or after a BN) and a random head bias."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen))
            if isinstance(m, nn.Linear):
                m.bias.copy_(0.5 * torch.randn(m.out_features, generator=gen))
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These networks are tiny: one thread is as fast, and avoids oversubscribing a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    return randomised(DenseNet3(depth=16, num_classes=C, growth_rate=6))  # 2 layers per block, D = 24


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def densenet_block2(net, x):
    with torch.no_grad():
        return net.block2(net.trans1(net.block1(net.conv1(x))))


def densenet_after_block3(net, fmap: np.ndarray) -> np.ndarray:
    """relu(bn1(.)), average pooling and the head by hand, in float64."""
    bn = net.bn1
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    scale = (gamma / np.sqrt(var + bn.eps))[:, None, None]
    act = np.maximum((fmap - mean[:, None, None]) * scale + beta[:, None, None], 0)
    return head_by_hand(act.mean(axis=(2, 3)), net.fc)


def densenet_block4_logits(net, x) -> np.ndarray:
    with torch.no_grad():
        fmap = net.block3(net.trans2(densenet_block2(net, x)))
    return densenet_after_block3(net, without_rank1(fmap))


def scored(detector, model, images, chunk=None):
    detector.fit(model, (0.2, 0.2, 0.2))
    parts = [detector.score_images(b) for b in images.split(chunk or len(images))]
    return torch.cat([s for s, _ in parts]).numpy(), torch.cat([z for _, z in parts]).numpy()


def test_densenet_scores_are_the_energy_after_removing_the_rank1_part_of_block3_before_the_final_bn(
    densenet, images
):
    logits = densenet_block4_logits(densenet, images)
    scores, _ = scored(RankFeat(), densenet, images, chunk=4)
    np.testing.assert_allclose(scores, [logsumexp(z) for z in logits], rtol=1e-5, atol=1e-5)


def test_scores_of_an_image_do_not_depend_on_the_batch(densenet, images):
    together, _ = scored(RankFeat(), densenet, images)
    alone, _ = scored(RankFeat(), densenet, images, chunk=1)
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-6)


def test_fused_score_averages_the_logits_of_removal_at_block3_and_block4_then_takes_the_energy(
    densenet, images
):
    net = densenet
    removed = torch.from_numpy(without_rank1(densenet_block2(net, images))).float()
    with torch.no_grad():
        rest = net.fc(nn.functional.relu(net.bn1(net.block3(net.trans2(removed)))).mean(dim=(2, 3)))
    logits = (rest.double().numpy() + densenet_block4_logits(net, images)) / 2
    detector = RankFeat(fuse=True)
    scores, _ = scored(detector, net, images, chunk=4)
    assert detector.run_name() == "rankfeat_fused"
    np.testing.assert_allclose(scores, [logsumexp(z) for z in logits], rtol=1e-5, atol=1e-5)


def test_power_iteration_removes_the_same_component_as_the_svd_when_s1_dominates():
    gen = torch.Generator().manual_seed(3)
    u, v = torch.randn(4, 16, 1, generator=gen), torch.randn(4, 1, 25, generator=gen)
    x = (3 * u @ v + 0.5 * torch.randn(4, 16, 25, generator=gen)).reshape(4, 16, 5, 5)
    exact = without_rank1(x)
    np.testing.assert_allclose(remove_rank1(x).double().numpy(), exact, atol=1e-5)
    np.testing.assert_allclose(remove_rank1(x, power_iterations=20).double().numpy(), exact, atol=1e-4)
    assert np.abs(remove_rank1(x, power_iterations=1).double().numpy() - exact).max() > 1e-3


def test_power_iteration_scores_match_the_svd_on_densenet_and_repeat_exactly(densenet, images):
    exact, _ = scored(RankFeat(), densenet, images)
    fast, _ = scored(RankFeat(power_iterations=20), densenet, images, chunk=4)
    again, _ = scored(RankFeat(power_iterations=20), densenet, images, chunk=1)
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast, again, rtol=1e-6, atol=1e-6)


def test_resnet50_removes_the_rank1_part_of_layer4_output_then_pools(images):
    torch.manual_seed(0)
    net = randomised(ResNet50(num_classes=C))
    x = nn.functional.interpolate(images[:2], size=64)  # layer4 map 2 x 2
    with torch.no_grad():
        fmap = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    logits = head_by_hand(without_rank1(fmap).mean(axis=(2, 3)), net.fc)
    scores, _ = scored(RankFeat(), net, x)
    np.testing.assert_allclose(scores, [logsumexp(z) for z in logits], rtol=1e-5, atol=1e-5)


def test_bit_removes_the_rank1_part_of_the_body_output_before_the_final_groupnorm(images):
    torch.manual_seed(0)
    net = ResNetV2(units=(1, 1, 1, 1), num_classes=C).eval()
    x = nn.functional.interpolate(images[:2], size=64)
    with torch.no_grad():
        removed = torch.from_numpy(without_rank1(net.body(net.root(x)))).float()
        logits = net.head.conv(nn.functional.relu(net.head.gn(removed)).mean(dim=(2, 3)))
    scores, _ = scored(RankFeat(), net, x)
    np.testing.assert_allclose(scores, torch.logsumexp(logits.double(), 1).numpy(), rtol=1e-5, atol=1e-5)


def test_efficientnet_lite0_removes_the_rank1_part_of_its_last_block_before_the_head_convolution(images):
    torch.manual_seed(0)
    net = randomised(EfficientNetLite0(num_classes=C))
    x = nn.functional.interpolate(images[:2], size=64)  # last block map 2 x 2
    with torch.no_grad():
        fmap = nn.functional.relu6(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            fmap = block(fmap)
        removed = torch.from_numpy(without_rank1(fmap)).float()
        pooled = nn.functional.relu6(net._bn1(net._conv_head(removed))).mean(dim=(2, 3))
        logits = net._fc(pooled)
    scores, _ = scored(RankFeat(), net, x)
    np.testing.assert_allclose(scores, torch.logsumexp(logits.double(), 1).numpy(), rtol=1e-5, atol=1e-5)


class PoolNet(nn.Module):
    """A user's network: convolutions, then pooling by ``pool`` (a module; None: ``mean``), a head."""

    def __init__(self, pool: nn.Module | None = None, features: int = 12):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2))
        self.pool = pool
        self.fc = nn.Linear(features, C)

    def forward(self, x):
        x = self.conv(x)
        x = x.mean(dim=(2, 3)) if self.pool is None else self.pool(x)
        return self.fc(torch.flatten(x, 1))


def test_any_other_model_gets_the_removal_at_the_input_of_its_global_pooling_module(images):
    torch.manual_seed(0)
    net = PoolNet(nn.AdaptiveAvgPool2d(1)).eval()
    model = adapt(net, 32)
    with torch.no_grad():
        fmap = net.conv(images)
    logits = head_by_hand(without_rank1(fmap).mean(axis=(2, 3)), model.get_classifier())
    scores, _ = scored(RankFeat(), model, images, chunk=4)
    np.testing.assert_allclose(scores, [logsumexp(z) for z in logits], rtol=1e-5, atol=1e-5)


def test_a_torchvision_resnet_through_the_adapter_gets_the_same_scores_as_the_resnet_itself(images):
    torch.manual_seed(0)
    net = randomised(torchvision.models.resnet18(num_classes=C))
    x = nn.functional.interpolate(images[:2], size=64)
    direct = [scored(RankFeat(fuse=fuse), net, x)[0] for fuse in (False, True)]
    model = adapt(copy.deepcopy(net), 64)  # the adapter replaces the head inside the model it gets
    for fuse, expected in zip((False, True), direct):
        np.testing.assert_allclose(scored(RankFeat(fuse=fuse), model, x)[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "pool,features,why",
    [
        (None, 12, "PoolNet has no global pooling module.*conv.2 \\(Conv2d\\)"),
        (nn.AdaptiveAvgPool2d(2), 48, "\\(1, 12, 2, 2\\)"),
    ],
    ids=["functional-mean", "2x2-pool"],
)
def test_a_model_without_a_global_pooling_module_is_refused_naming_it(images, pool, features, why):
    model = adapt(PoolNet(pool, features).eval(), 32)
    detector = RankFeat().fit(model, (0.2, 0.2, 0.2))
    with pytest.raises(UserError, match=why):
        detector.score_images(images)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_fusion_is_refused_where_block3_is_unknown():
    model = adapt(PoolNet(nn.AdaptiveAvgPool2d(1)).eval(), 32)
    with pytest.raises(UserError, match="Block 3 is known for .* not for PoolNet"):
        RankFeat(fuse=True).fit(model, (0.2, 0.2, 0.2))


def test_the_logits_returned_are_the_networks_own_and_the_model_is_left_unchanged(densenet, images):
    with torch.no_grad():
        before = densenet(images)
    for fuse in (False, True):
        _, logits = RankFeat(fuse=fuse).fit(densenet, (0.2, 0.2, 0.2)).score_images(images)
        torch.testing.assert_close(logits, before, rtol=0, atol=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in densenet.modules())
    with torch.no_grad():
        torch.testing.assert_close(densenet(images), before, rtol=0, atol=0)


def test_an_empty_batch_gives_empty_scores_and_logits(densenet, images):
    scores, logits = RankFeat(fuse=True).fit(densenet, (0.2, 0.2, 0.2)).score_images(images[:0])
    assert scores.shape == (0,) and logits.shape == (0, C)


def test_variants_and_defaults():
    assert RankFeat().run_name() == "rankfeat" and not RankFeat().fuse
    assert RankFeat().power_iterations == 0  # exact SVD, the paper's default
    assert RankFeat.variants() == {"rankfeat": {}, "rankfeat_fused": {"fuse": True}}
    assert RankFeat.search_space(342) == {}
