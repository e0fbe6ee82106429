"""What an evaluation reports: metrics per OOD set, results.json, per-image scores, tables, plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from util.errors import UserError
from util.io import atomic_write_json
from util.metrics import FPR_CONVENTIONS, METRIC_CONVENTIONS, average_metrics, format_table, ood_metrics


@dataclass
class MethodResult:
    """One method's evaluation: what results.json holds, plus the per-image scores."""

    method: str
    id_accuracy: float
    ood: dict[str, dict[str, float]]
    average: dict[str, float]
    settings: dict
    scores: dict[str, np.ndarray]
    # OpenOOD benchmarks: group name (near, far) -> its OOD sets, and the metrics averaged over them
    group_sets: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_json(self) -> dict:
        out = {
            "id_accuracy": self.id_accuracy,
            "ood": self.ood,
            "average": self.average,
            "settings": self.settings,
        }
        if self.groups:
            out["groups"] = {g: {"sets": self.group_sets[g], **m} for g, m in self.groups.items()}
        return out


def check_scores(scores: dict) -> None:
    """Every set scored, every score finite: else an error naming the set and the count (nothing
    is written for such a run)."""
    for key, values in scores.items():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        which = "the ID test set" if key == "in" else f"OOD set {key}"
        if len(values) == 0:
            raise UserError(f"no image of {which} could be scored (all were skipped as unreadable)")
        if bad:
            raise UserError(
                f"{bad} of {len(values)} scores of {which} are NaN or infinite (the model's features "
                "or logits overflowed, or the checkpoint holds NaN/inf weights); metrics are undefined, "
                "nothing was written"
            )


def set_metrics(scores: dict, name: str) -> dict:
    """ood_metrics of OOD set ``name`` against the ID set ``in`` (both FPR95 conventions);
    empty or non-finite scores are an error naming the set and the count."""
    check_scores({"in": scores["in"], name: scores[name]})
    return ood_metrics(scores["in"], scores[name], with_ood_positive=True)


def write_result(
    out_dir: Path, result: MethodResult, plots: bool, title: str, fpr_convention: str = "id"
) -> list[Path]:
    """results.json (and with ``plots`` the histograms and ROC curves, in the FPR95 convention
    asked for) into ``out_dir``; returns the plot files."""
    written = []
    if plots:
        from util.plots import plot_results  # matplotlib only when plots are asked for

        written = plot_results(result.scores, out_dir / "plots", title, fpr_convention)
    atomic_write_json(out_dir / "results.json", result.as_json())
    return written


def training_notes(fits: dict[str, dict | None], max_samples: int | None) -> list[str]:
    """Lines saying which training images each fit used, when the fits of one table differ or do
    not follow --max-samples (a table never mixes training subsets silently)."""
    counts = {m: f["count"] for m, f in fits.items() if f is not None}
    if not counts:
        return []
    differ = len(set(counts.values())) > 1
    # a fit on a training subset other than this run's (precompute.py --max-samples, or none)
    stale = any(f is not None and f.get("max_samples", max_samples) != max_samples for f in fits.values())
    if not (differ or stale):
        return []
    lines = [
        "note: these fits used different training images:" if differ else "note: training images of the fit:"
    ]
    for method, fit in fits.items():
        if fit is not None:
            count = "an unknown number of" if fit["count"] is None else fit["count"]
            lines.append(f"  {method}: {count} training images ({fit['source']})")
    if stale:
        subset = f"--max-samples {max_samples}" if max_samples else "no --max-samples (all images)"
        lines.append(
            f"  this run has {subset}; the statistics files come from a precompute.py run with another "
            "subset: rerun precompute.py with the same --max-samples for fits on the same images"
        )
    return lines


def describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "no parameters"


def single_table(result: MethodResult, in_dataset: str, name: str, fpr_convention: str) -> str:
    """One method: FPR95 / AUROC / AUIN per OOD set and on average, then the ID accuracy."""
    fpr_key, header = FPR_CONVENTIONS[fpr_convention]
    detector = describe(result.settings["detector"])
    title = f"{result.method} on {in_dataset} ({name}), {detector}\n{header}, percent"
    table = format_table(result.ood, title, fpr_key=fpr_key)
    return f"{table}\nID accuracy ({result.method} logits): {100 * result.id_accuracy:.2f}%"


def methods_table(
    results: list[MethodResult], names: list[str], in_dataset: str, name: str, fpr_convention: str
) -> str:
    """Several methods: FPR95/AUROC per set, AVG FPR95/AUROC/AUIN and ID accuracy, one row each."""
    fpr_key, header = FPR_CONVENTIONS[fpr_convention]
    width = max(len("method"), *(len(r.method) for r in results)) + 2
    cols = [*names, "AVG"]
    cw = [max(15, len(c) + 2) for c in cols]
    lines = [
        f"{len(results)} methods on {in_dataset} ({name}), one feature extraction",
        f"{header}; AUROC, AUIN (ID positive) and ID accuracy, percent",
        f"{'':<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cols, cw)) + f"{'AVG':>8}{'ID':>8}",
        f"{'method':<{width}}" + "".join(f"{'FPR95 AUROC':>{w}}" for w in cw) + f"{'AUIN':>8}{'acc':>8}",
    ]
    for r in results:
        cells = [r.ood[n] for n in names] + [r.average]
        pairs = [f"{100 * c[fpr_key]:.2f} {100 * c['AUROC']:.2f}" for c in cells]
        line = f"{r.method:<{width}}" + "".join(f"{pair:>{w}}" for pair, w in zip(pairs, cw))
        lines.append(line + f"{100 * r.average['AUPR_IN']:>8.2f}{100 * r.id_accuracy:>8.2f}")
    return "\n".join(lines)


def method_result(
    method: str, scores: dict, accuracy: float, names: list[str], settings: dict, groups: dict | None = None
):
    """Metrics of every OOD set ``names``, their average, and the ID accuracy of the method's logits;
    with ``groups`` (OpenOOD's near / far sets) also the average over each group's sets."""
    per_set = {n: set_metrics(scores, n) for n in names}
    settings = {**settings, "metric_conventions": METRIC_CONVENTIONS}
    group_sets = {g: list(members) for g, members in (groups or {}).items()}
    averages = {g: average_metrics({n: per_set[n] for n in members}) for g, members in group_sets.items()}
    return MethodResult(
        method, accuracy, per_set, average_metrics(per_set), settings, scores, group_sets, averages
    )


BOTH_FPR = (
    "FPR95 (ID+): OOD images above the threshold keeping 95% of ID (DICE/LINe papers); "
    "FPR95 (OOD+): ID images flagged when 95% of OOD is (OpenOOD v1.5); AUROC; AUIN (ID positive); percent"
)


def benchmark_table(result: MethodResult, label: str, name: str) -> str:
    """One method on an OpenOOD benchmark: every OOD set, then each group's average (near, far),
    in both FPR95 conventions, labelled."""
    width = max(len("near AVG"), *(len(n) for n in result.ood)) + 2
    lines = [
        f"{result.method} on {label} ({name}), {describe(result.settings['detector'])}",
        BOTH_FPR,
        f"{'group':<7}{'OOD set':<{width}}{'FPR95 (ID+)':>13}{'FPR95 (OOD+)':>14}{'AUROC':>9}{'AUIN':>9}",
    ]

    def row(group: str, set_name: str, m: dict) -> str:
        return (
            f"{group:<7}{set_name:<{width}}{100 * m['FPR95']:>13.2f}{100 * m['FPR95_OOD_POSITIVE']:>14.2f}"
            f"{100 * m['AUROC']:>9.2f}{100 * m['AUPR_IN']:>9.2f}"
        )

    for group, members in result.group_sets.items():
        lines += [row(group, n, result.ood[n]) for n in members]
        lines.append(row(group, f"{group} AVG", result.groups[group]))
    lines.append(f"ID accuracy ({result.method} logits): {100 * result.id_accuracy:.2f}%")
    return "\n".join(lines)


def benchmark_summary(results: list[MethodResult], label: str, name: str) -> str:
    """Several methods on an OpenOOD benchmark: the near and far averages, one row each."""
    groups = results[0].group_sets
    width = max(len("method"), *(len(r.method) for r in results)) + 2
    lines = [
        f"{len(results)} methods on {label} ({name}), one feature extraction: group averages "
        f"({'; '.join(f'{g}: ' + ', '.join(sets) for g, sets in groups.items())})",
        BOTH_FPR,
        f"{'':<{width}}" + "".join(f"{g + ' AVG':>27}" for g in groups) + f"{'ID':>8}",
        f"{'method':<{width}}"
        + f"{'FPR(ID+)':>9}{'FPR(OOD+)':>10}{'AUROC':>8}" * len(groups)
        + f"{'acc':>8}",
    ]
    for r in results:
        cells = "".join(
            f"{100 * m['FPR95']:>9.2f}{100 * m['FPR95_OOD_POSITIVE']:>10.2f}{100 * m['AUROC']:>8.2f}"
            for m in (r.groups[g] for g in groups)
        )
        lines.append(f"{r.method:<{width}}{cells}{100 * r.id_accuracy:>8.2f}")
    return "\n".join(lines)
