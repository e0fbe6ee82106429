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
