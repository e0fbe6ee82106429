"""Plain, obviously-correct reference implementations of the papers' definitions, for the tests only.

Loops over samples and classes, numpy.percentile, float64 everywhere. Also the synthetic problems
the detector tests share (non-negative continuous features like post-ReLU ones, no ties, and a random
head) and the helpers that fit a detector on them and score their test features.
"""

import numpy as np


def logsumexp(v):
    m = max(v)
    return m + np.log(sum(np.exp(x - m) for x in v))


def energy_scores(h, W, b, tau=None):
    out = []
    for x in h:
        x = np.minimum(x, tau) if tau is not None else x
        out.append(logsumexp(W @ x + b))
    return np.array(out)


def dice_logits(h, W, b, mean_feature, p, tau=None):
    V = mean_feature[None, :] * W
    thresh = np.percentile(V, p)
    Wm = np.where(V > thresh, W, 0.0)
    rows = []
    for x in h:
        x = np.minimum(x, tau) if tau is not None else x
        rows.append(Wm @ x + b)
    return np.array(rows)


def line_logits(h, W, b, contrib, p_w, p_a, tau):
    C, D = W.shape
    rows = []
    for x in h:
        x = np.minimum(x, tau)
        c = int(np.argmax(W @ x + b))
        ap = contrib[c] > np.percentile(contrib[c], p_a)
        R = np.abs(contrib[c])[None, :] * W
        wp = R > np.percentile(R, p_w)
        logits = np.zeros(C)
        for k in range(C):
            logits[k] = sum(W[k, j] * x[j] for j in range(D) if wp[k, j] and ap[j]) + b[k]
        rows.append(logits)
    return np.array(rows)


def synthetic_problem(seed=0, num_classes=5, dim=24, n_train=400, n_test=60, train=True, labels=False):
    """A head and features for detector tests: W ~ N(0, 0.5), b ~ N(0, 0.3) (the head in float32),
    non-negative continuous features like post-ReLU ones (no ties). Draws, in order: W, b, then the
    training features, the labels (every class present) and the test features, each when asked.

    Returns a dict: fc (float32 nn.Linear), W, b (float64 arrays), train, labels, test.
    """
    import torch

    rng = np.random.default_rng(seed)
    fc = torch.nn.Linear(dim, num_classes).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(rng.normal(0, 0.5, (num_classes, dim))))
        fc.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, num_classes)))
    fc = fc.float()

    def features(n, spread):
        relu = np.maximum(rng.normal(0.3, spread, (n, dim)), 0).astype(np.float32)
        return relu + rng.uniform(0, 1e-3, (n, dim)).astype(np.float32)

    out = dict(fc=fc, W=fc.weight.detach().double().numpy(), b=fc.bias.detach().double().numpy())
    if train:
        out["train"] = features(n_train, 1.0)
    if labels:
        out["labels"] = rng.integers(0, num_classes, n_train)
        out["labels"][:num_classes] = np.arange(num_classes)
    out["test"] = features(n_test, 1.2)
    return out


def problem_with_statistics(seed=0, num_classes=5, dim=24):
    """``synthetic_problem`` with labels, plus ``contrib`` (the class means of h * W[c] over the
    training features h of class c) and ``stats``: the training statistics a detector's ``fit`` may ask
    for (train_features, train_labels, contributions)."""
    s = synthetic_problem(seed=seed, num_classes=num_classes, dim=dim, labels=True)
    train, labels, W = s["train"], s["labels"], s["W"]
    s["contrib"] = np.array([(train[labels == c] * W[c]).mean(0) for c in range(num_classes)])
    s["stats"] = dict(train_features=train, train_labels=labels, contributions=s["contrib"])
    return s


def fitted(detector, s, fc=None):
    """``detector`` fitted on the head and the statistics its ``fit`` asks for."""
    return detector.fit(fc if fc is not None else s["fc"], **{k: s["stats"][k] for k in detector.needs()})


def scores_and_predictions(detector, s):
    """The scores and predicted classes of ``s["test"]`` by ``detector`` fitted on ``s``
    (a ``problem_with_statistics``), scored in chunks of 17 rows."""
    from detectors.base import score_features

    fitted(detector, s)
    return score_features(detector, s["test"], chunk=17)


def fitted_scores(detector, s, **stats):
    """The scores of ``s["test"]`` by ``detector`` fitted on the training features and labels of ``s``
    (a ``synthetic_problem`` with labels) and the given ``stats``, scored in chunks of 17 rows."""
    from detectors.base import score_features

    given = {"train_features": s["train"], "train_labels": s["labels"], **stats}
    detector.fit(s["fc"], **{k: given[k] for k in detector.needs()})
    return score_features(detector, s["test"], chunk=17)[0]


def energy_ref(rows, W, b):
    """The energy logsumexp(W x + b) of each row x."""
    return np.array([logsumexp(W @ x + b) for x in rows])


def logits(x, s):
    """The head's logits W x + b of the problem ``s``, in float64."""
    return s["W"] @ np.asarray(x, np.float64) + s["b"]


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def eval_config(argv):
    """The EvalConfig that ``ood_eval.py ARGV`` runs, parsed as the script parses it."""
    import ood_eval

    return ood_eval.config_of(ood_eval.build_parser().parse_args(argv))


def random_images(folder, n: int, rng, size: int = 32) -> None:
    """``n`` random RGB images of ``size`` pixels as PNG files 000.png, 001.png, ... in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def pets_folder(root, n_train: int, n_test: int, checkpoint: str = "r18.pth") -> None:
    """An image-folder ID dataset ``root/pets/{train,test}/{a,b,c}`` (``n_train`` and ``n_test``
    random 32-px images per class, seed 0) and a random 3-class torchvision ResNet-18 saved as
    ``root/checkpoint`` (seed 0): the folder + own-network case of the run-level tests."""
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    for c in "abc":
        random_images(root / "pets" / "train" / c, n_train, rng)
        random_images(root / "pets" / "test" / c, n_test, rng)
    torch.manual_seed(0)
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=3).state_dict()}, root / checkpoint)
