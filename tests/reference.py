"""Plain, obviously-correct reference implementations of the papers' definitions, for the tests only.

Loops over samples and classes, numpy.percentile, float64 everywhere.
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
