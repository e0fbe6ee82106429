"""detectors/iodin.py: IODIN (ODIN perturbing one input entry) against a per-image float64 reference."""

import numpy as np
import torch
from reference import softmax
from tiny_convnet import PooledConvNet

from detectors import IODIN, ODIN, registry
from detectors.iodin import top_gradient_mask

STD = (0.2, 0.25, 0.3)


def images(n=6, seed=1):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_scores(net, x, temperature, noise, only_top):
    """Per image: the gradient of CE(z / T, argmax z); ODIN steps every entry, IODIN only the one
    of largest |gradient|; max softmax of the perturbed image's logits / T."""
    out = []
    for image in x:
        xi = image[None].clone().requires_grad_(True)
        z = net(xi)
        loss = -torch.log_softmax(z / temperature, dim=1)[0, int(z.argmax())]
        (g,) = torch.autograd.grad(loss, xi)
        g = g[0].numpy()
        step = np.sign(g) / np.array(STD)[:, None, None]
        if only_top:
            keep = np.zeros(g.size)
            keep[int(np.argmax(np.abs(g).ravel()))] = 1.0
            step = step * keep.reshape(g.shape)
        perturbed = image.numpy() - noise * step
        with torch.no_grad():
            logits = net(torch.from_numpy(perturbed)[None])[0].numpy()
        out.append(max(softmax(logits / temperature)))
    return np.array(out)


def test_iodin_steps_only_the_entry_of_largest_gradient_and_scores_the_max_tempered_softmax():
    net, x = PooledConvNet(16, 4), images()
    for temperature, noise in ((1000.0, 0.0014), (10.0, 0.05)):
        detector = IODIN(temperature, noise).fit(net, STD)
        scores, logits = detector.score_images(x)
        expected = reference_scores(net, x, temperature, noise, only_top=True)
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-12)
        assert logits.shape == (len(x), 4)


def test_odin_still_steps_every_entry():
    net, x = PooledConvNet(16, 4), images()
    scores, _ = ODIN(10.0, 0.05).fit(net, STD).score_images(x)
    np.testing.assert_allclose(
        scores.numpy(), reference_scores(net, x, 10.0, 0.05, only_top=False), rtol=1e-12
    )


def test_iodin_and_odin_differ_when_the_step_is_large():
    net, x = PooledConvNet(16, 4), images()
    iodin, _ = IODIN(10.0, 0.05).fit(net, STD).score_images(x)
    odin, _ = ODIN(10.0, 0.05).fit(net, STD).score_images(x)
    assert not np.allclose(iodin.numpy(), odin.numpy())


def test_the_mask_has_one_entry_per_image_at_the_largest_absolute_gradient():
    grad = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    grad[1, 2, 3, 0] = -10.0  # the largest |g| of image 1 is negative
    mask = top_gradient_mask(grad)
    assert mask.shape == grad.shape
    assert mask.flatten(1).sum(dim=1).tolist() == [1.0] * 5
    assert mask[1, 2, 3, 0] == 1.0
    picked = (grad.abs() * mask).flatten(1).sum(dim=1)
    assert torch.equal(picked, grad.abs().flatten(1).max(dim=1).values)


def test_iodin_defaults_and_search_space_are_openoods():
    detector = registry.build("iodin", "CIFAR-10")
    assert (detector.temperature, detector.noise) == (1000.0, 0.0014)
    assert IODIN.search_space(342) == {"temperature": (1.0, 10.0, 100.0, 1000.0), "noise": (0.0014, 0.0028)}
    assert [p.flags[0] for p in IODIN.params] == ["--iodin-temperature", "--iodin-noise"]
    assert registry.family_of("iodin") == "network"
