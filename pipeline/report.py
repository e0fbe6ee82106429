"""What an evaluation reports: metrics per OOD set, results.json, per-image scores, tables, plots.

Every table names each metric as results.json does, with ``-`` for ``_`` (AUPR-IN is AUPR_IN), and
defines each in its header line. A set given as a folder goes by its short name (its base name,
``util.io.short_names``) in tables, results.json and file names; results.json's ``ood_paths`` holds
its full path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from util.errors import UserError
from util.io import atomic_write_json, short_names
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
        """results.json: each OOD set by its short name; ``ood_paths`` {short name: full path} for the
        sets given as folders."""
        label = short_names(self.ood)
        out = {
            "id_accuracy": self.id_accuracy,
            "ood": {label[n]: m for n, m in self.ood.items()},
            "average": self.average,
            "settings": self.settings,
        }
        paths = {label[n]: os.path.abspath(n) for n in self.ood if label[n] != n}
        if paths:
            out["ood_paths"] = paths
        if self.groups:
            out["groups"] = {
                g: {"sets": [label[n] for n in self.group_sets[g]], **m} for g, m in self.groups.items()
            }
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

        label = short_names(result.scores)
        by_label = {label[k]: v for k, v in result.scores.items()}
        written = plot_results(by_label, out_dir / "plots", title, fpr_convention)
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
            f"subset: `precompute.py` with {subset.split(' (')[0]} writes the files this run reads "
            "(pipeline/statistics.py: _nN names for --max-samples N) for fits on the same images"
        )
    return lines


def describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "no parameters"


AUC_LEGEND = "AUROC: area under the ROC curve; AUPR-IN: area under the precision-recall curve, ID positive"


def legend(fpr_convention: str, accuracy: bool = False) -> str:
    """The header line defining every metric of a table (FPR95 in the chosen convention)."""
    acc = f"; {ACCURACY}" if accuracy else ""
    return f"{FPR_CONVENTIONS[fpr_convention][1]}; {AUC_LEGEND}{acc}; percent"


def failure_rows(failures: dict[str, str] | None, width: int) -> list[str]:
    """``knn   failed: <reason>``: one row for each method that failed (its reason's first line)."""
    return [
        f"{method:<{width}}failed: {(str(reason).strip().splitlines() or [''])[0]}"
        for method, reason in (failures or {}).items()
    ]


def single_table(
    result: MethodResult,
    in_dataset: str,
    name: str,
    fpr_convention: str,
    failures: dict[str, str] | None = None,
) -> str:
    """One method: FPR95 / AUROC / AUPR-IN per OOD set and on average, then the ID accuracy (and a
    row for each method of ``failures`` {method: reason})."""
    fpr_key = FPR_CONVENTIONS[fpr_convention][0]
    detector = describe(result.settings["detector"])
    title = f"{result.method} on {in_dataset} ({name}), {detector}\n{legend(fpr_convention)}"
    label = short_names(result.ood)
    table = format_table({label[n]: m for n, m in result.ood.items()}, title, fpr_key=fpr_key)
    lines = [table, f"ID accuracy ({result.method} logits): {100 * result.id_accuracy:.2f}%"]
    width = max([len(result.method), *(len(m) for m in failures or {})]) + 2
    return "\n".join(lines + failure_rows(failures, width))


PAIR = 8  # width of each number column of the several-methods table: " 100.00" and a space


def methods_table(
    results: list[MethodResult],
    names: list[str],
    in_dataset: str,
    name: str,
    fpr_convention: str,
    failures: dict[str, str] | None = None,
) -> str:
    """Several methods: FPR95 and AUROC per set, AVG FPR95 / AUROC / AUPR-IN and ID accuracy, one row
    each; a method of ``failures`` ({method: one-line reason}) gets a row saying why it failed."""
    fpr_key = FPR_CONVENTIONS[fpr_convention][0]
    methods = [r.method for r in results] + list(failures or {})
    width = max(len("method"), *(len(m) for m in methods)) + 2
    label = short_names(names)
    spans = [max(2 * PAIR, len(label[n]) + 3) for n in names] + [3 * PAIR + 1]
    tops = [label[n] for n in names] + ["AVG"]
    top = "".join(f"  {t:^{w - 2}}" for t, w in zip(tops, spans))
    subs = "".join(f"{'FPR95':>{w - PAIR}}{'AUROC':>{PAIR}}" for w in spans[:-1])
    count = f"{len(results)} methods" + (f" ({len(failures)} more failed)" if failures else "")
    lines = [
        f"{count} on {in_dataset} ({name}), one feature extraction",
        legend(fpr_convention, accuracy=True),
        f"{'':<{width}}{top}{'ID':>{PAIR}}",
        f"{'method':<{width}}{subs}{'FPR95':>{PAIR}}{'AUROC':>{PAIR}}{'AUPR-IN':>{PAIR + 1}}{'acc':>{PAIR}}",
    ]
    for r in results:
        cells = "".join(
            f"{100 * r.ood[n][fpr_key]:>{w - PAIR}.2f}{100 * r.ood[n]['AUROC']:>{PAIR}.2f}"
            for n, w in zip(names, spans)
        )
        avg = r.average
        lines.append(
            f"{r.method:<{width}}{cells}{100 * avg[fpr_key]:>{PAIR}.2f}{100 * avg['AUROC']:>{PAIR}.2f}"
            f"{100 * avg['AUPR_IN']:>{PAIR + 1}.2f}{100 * r.id_accuracy:>{PAIR}.2f}"
        )
    return "\n".join(lines + failure_rows(failures, width))


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
    "FPR95 (OOD+): ID images flagged when 95% of OOD is (OpenOOD v1.5); " + AUC_LEGEND
)
ACCURACY = "acc: ID test accuracy of the method's logits"


def benchmark_table(
    result: MethodResult, label: str, name: str, failures: dict[str, str] | None = None
) -> str:
    """One method on an OpenOOD benchmark: every OOD set, then each group's average (near, far),
    in both FPR95 conventions, labelled (and a row for each method of ``failures``)."""
    groups = result.group_sets
    gw = max(len("group"), *(len(g) for g in groups)) + 2
    short = short_names(result.ood)
    width = max(len("OOD set"), *(len(v) for v in short.values()), *(len(f"{g} AVG") for g in groups)) + 2
    lines = [
        f"{result.method} on {label} ({name}), {describe(result.settings['detector'])}",
        f"{BOTH_FPR}; percent",
        f"{'group':<{gw}}{'OOD set':<{width}}{'FPR95 (ID+)':>13}{'FPR95 (OOD+)':>14}"
        f"{'AUROC':>9}{'AUPR-IN':>9}",
    ]

    def row(group: str, set_name: str, m: dict) -> str:
        return (
            f"{group:<{gw}}{set_name:<{width}}{100 * m['FPR95']:>13.2f}{100 * m['FPR95_OOD_POSITIVE']:>14.2f}"
            f"{100 * m['AUROC']:>9.2f}{100 * m['AUPR_IN']:>9.2f}"
        )

    for group, members in groups.items():
        lines += [row(group, short[n], result.ood[n]) for n in members]
        lines.append(row(group, f"{group} AVG", result.groups[group]))
    lines.append(f"ID accuracy ({result.method} logits): {100 * result.id_accuracy:.2f}%")
    return "\n".join(lines + failure_rows(failures, gw + width))


def benchmark_summary(
    results: list[MethodResult], label: str, name: str, failures: dict[str, str] | None = None
) -> str:
    """Several methods on an OpenOOD benchmark: the near and far averages, one row each; a row
    for each method of ``failures`` saying why it failed."""
    groups = results[0].group_sets
    methods = [r.method for r in results] + list(failures or {})
    width = max(len("method"), *(len(m) for m in methods)) + 2
    gw = [max(30, len(g) + 6) for g in groups]  # FPR(ID+), FPR(OOD+), AUROC: 10, 11, 9
    count = f"{len(results)} methods" + (f" ({len(failures)} more failed)" if failures else "")
    lines = [
        f"{count} on {label} ({name}), one feature extraction: group averages "
        f"({'; '.join(f'{g}: ' + ', '.join(sets) for g, sets in groups.items())})",
        f"{BOTH_FPR}; {ACCURACY}; percent",
        f"{'':<{width}}" + "".join(f"{g + ' AVG':>{w}}" for g, w in zip(groups, gw)) + f"{'ID':>8}",
        f"{'method':<{width}}"
        + "".join(f"{'FPR(ID+)':>{w - 20}}{'FPR(OOD+)':>11}{'AUROC':>9}" for w in gw)
        + f"{'acc':>8}",
    ]
    for r in results:
        cells = "".join(
            f"{100 * m['FPR95']:>{w - 20}.2f}{100 * m['FPR95_OOD_POSITIVE']:>11.2f}{100 * m['AUROC']:>9.2f}"
            for m, w in zip((r.groups[g] for g in groups), gw)
        )
        lines.append(f"{r.method:<{width}}{cells}{100 * r.id_accuracy:>8.2f}")
    return "\n".join(lines + failure_rows(failures, width))
