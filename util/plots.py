"""PNG figures of OOD scores (matplotlib, non-interactive Agg backend).

- ``plot_score_histograms``: ID vs OOD score histograms of one OOD set, with the 95% TPR
  threshold marked and FPR95 in the title, in either convention (``positive="id"``: the ID score
  at sorted index round(0.05 n), util/metrics.py; ``"ood"``: the smallest score below which 95%
  of OOD scores lie, OpenOOD's); scores beyond the 0.2 / 99.8 percentiles of both sets are
  counted in the edge bins.
- ``plot_roc``: ROC curve of one OOD set (``positive="id"``: TPR = fraction of ID kept, FPR =
  fraction of OOD accepted; ``"ood"``: TPR = fraction of OOD flagged, FPR = fraction of ID
  flagged), with the 95% TPR operating point marked.
- ``plot_sweep_heatmap``: average FPR95 over two axes of a sweep (LINe: p_w and p_a).
- ``plot_results``: the histogram and ROC of every OOD set of one result, into a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from util.metrics import auroc, fpr_at_95_tpr, fpr_at_95_tpr_ood_positive  # noqa: E402


def _save(fig, out_path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path


POSITIVE_NAMES = {"id": "ID positive", "ood": "OOD positive"}


def plot_score_histograms(
    id_scores, ood_scores, out_path, title: str, ood_name: str = "OOD", positive: str = "id"
) -> Path:
    """Overlaid density histograms of ID and OOD scores on shared bins; the 95% TPR threshold and
    FPR95 of the ``positive`` convention ("id" or "ood")."""
    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    both = np.r_[id_scores, ood_scores]
    lo, hi = np.percentile(both, [0.2, 99.8])
    if not hi > lo:
        lo, hi = both.min() - 0.5, both.max() + 0.5
    bins = np.linspace(lo, hi, 60)
    if positive == "id":
        threshold = np.sort(id_scores)[round(0.05 * id_scores.size)]
        fpr = fpr_at_95_tpr(id_scores, ood_scores)
    else:
        threshold = np.sort(ood_scores)[int(np.ceil(0.95 * ood_scores.size)) - 1]
        fpr = fpr_at_95_tpr_ood_positive(id_scores, ood_scores)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(
        np.clip(id_scores, lo, hi), bins=bins, density=True, alpha=0.55, label=f"ID test (n={id_scores.size})"
    )
    ax.hist(
        np.clip(ood_scores, lo, hi),
        bins=bins,
        density=True,
        alpha=0.55,
        label=f"{ood_name} (n={ood_scores.size})",
    )
    label = f"95% TPR threshold ({POSITIVE_NAMES[positive]})"
    ax.axvline(threshold, color="k", ls="--", lw=1, label=label)
    ax.set_xlabel("score (higher = more in-distribution); the edge bins hold the tails")
    ax.set_ylabel("density")
    ax.set_title(
        f"{title}\nscore histograms, ID vs {ood_name}: FPR95 {100 * fpr:.2f}% ({POSITIVE_NAMES[positive]})",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return _save(fig, out_path)


def plot_roc(
    id_scores, ood_scores, out_path, title: str, ood_name: str = "OOD", positive: str = "id"
) -> Path:
    """ROC curve with ``positive`` ("id" or "ood") as the positive class; the point at 95% TPR is
    marked. AUROC is the same number either way."""
    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    labels = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    both = np.r_[id_scores, ood_scores]
    if positive == "id":
        fpr, tpr, _ = roc_curve(labels, both)
        fpr95 = fpr_at_95_tpr(id_scores, ood_scores)
        xlabel, ylabel = f"FPR (fraction of {ood_name} accepted as ID)", "TPR (fraction of ID accepted)"
    else:
        fpr, tpr, _ = roc_curve(1 - labels, -both)
        fpr95 = fpr_at_95_tpr_ood_positive(id_scores, ood_scores)
        xlabel, ylabel = "FPR (fraction of ID flagged as OOD)", f"TPR (fraction of {ood_name} flagged)"
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot(fpr, tpr, lw=1.5, label=f"AUROC {100 * auroc(id_scores, ood_scores):.2f}%")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.scatter([fpr95], [0.95], color="k", zorder=3, s=18, label=f"FPR95 {100 * fpr95:.2f}%")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(f"{title}\nROC, {POSITIVE_NAMES[positive]}, vs {ood_name}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_path)


AXIS_LABELS = {"p_w": "p_w (weight-pruning percentile)", "p_a": "p_a (activation-pruning percentile)"}


def plot_sweep_heatmap(
    results: list[dict],
    out_path,
    title: str = "LINe sweep: average FPR95 over (p_w, p_a)",
    rows_key: str = "p_w",
    cols_key: str = "p_a",
) -> Path:
    """Heat map of average FPR95 (percent) over two swept parameters (rows, columns).

    ``results``: one dict per setting with the two parameters and ``FPR95`` (average FPR95 as a
    fraction; ``avg_FPR95`` is accepted too). Missing grid cells are left blank; the best
    (lowest) cell is outlined.
    """
    if not results:
        raise ValueError("plot_sweep_heatmap needs at least one result")

    def value(r):
        return r["FPR95"] if "FPR95" in r else r["avg_FPR95"]

    p_ws = sorted({float(r[rows_key]) for r in results})
    p_as = sorted({float(r[cols_key]) for r in results})
    grid = np.full((len(p_ws), len(p_as)), np.nan)
    for r in results:
        grid[p_ws.index(float(r[rows_key])), p_as.index(float(r[cols_key]))] = 100 * value(r)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(p_as), 1.2 + 0.6 * len(p_ws)))
    image = ax.imshow(grid, cmap="viridis_r", origin="lower", aspect="auto")
    ax.set_xticks(range(len(p_as)), [f"{v:g}" for v in p_as])
    ax.set_yticks(range(len(p_ws)), [f"{v:g}" for v in p_ws])
    ax.set_xlabel(AXIS_LABELS.get(cols_key, cols_key))
    ax.set_ylabel(AXIS_LABELS.get(rows_key, rows_key))
    finite = np.isfinite(grid)
    mid = np.nanmean(grid) if finite.any() else 0
    for i in range(len(p_ws)):
        for j in range(len(p_as)):
            if finite[i, j]:
                color = "white" if grid[i, j] > mid else "black"
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color=color)
    if finite.any():
        i, j = np.unravel_index(np.nanargmin(grid), grid.shape)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    fig.colorbar(image, ax=ax, label="average FPR95 (%, ID positive)")
    ax.set_title(title, fontsize=10)
    return _save(fig, out_path)


def safe_name(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_")


def plot_results(scores: dict, out_dir, title: str, positive: str = "id") -> list[Path]:
    """``scores``: {"in": ID scores, set name: OOD scores, ...}; writes hist_<set>.png, roc_<set>.png
    in the FPR95 convention ``positive`` ("id" or "ood")."""
    out_dir = Path(out_dir)
    written = []
    for name, ood in scores.items():
        if name == "in":
            continue
        written.append(
            plot_score_histograms(
                scores["in"], ood, out_dir / f"hist_{safe_name(name)}.png", title, name, positive
            )
        )
        written.append(
            plot_roc(scores["in"], ood, out_dir / f"roc_{safe_name(name)}.png", title, name, positive)
        )
    return written
