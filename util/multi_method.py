"""Several detectors from one feature extraction, one table (``ood_eval.py --methods a,b,c``).

Every set's features are extracted (or loaded from the cache) once; each method is then fitted
and scored from them, writes its own ``{base_dir}/{in_dataset}/{method}/{name}/results.json``
(the single-method layout) and scores, and becomes one row of the printed table: FPR95 and
AUROC per OOD set, then the averages and the ID accuracy of the method's logits.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from detectors import score_sets
from detectors.registry import BASELINE_METHODS, line_parts
from util.errors import UserError
from util.io import atomic_write_json, save_scores
from util.metrics import FPR_CONVENTIONS, average_metrics, ood_metrics

ORIGINAL_METHODS = ("msp", "energy", "react", "dice", "odin")
METRIC_CONVENTIONS = {
    "FPR95": "fraction of OOD scores above the ID threshold at 95% ID TPR (ID positive; DICE/LINe papers)",
    "FPR95_OOD_POSITIVE": "fraction of ID samples flagged when 95% of OOD is flagged (OOD positive; OpenOOD)",
    "AUROC": "ID positive (the same number with OOD positive on negated scores)",
    "AUPR_IN": "average precision, ID positive",
    "AUPR_OUT": "average precision, OOD positive, negated scores",
}


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods evaluated from one feature extraction into one table, e.g. "
        "energy,react,dice,line,ash_s,knn; LINe ablations: line_ac, line_ap_wp, line_none, ...",
    )
    parser.add_argument(
        "--fpr-convention",
        choices=sorted(FPR_CONVENTIONS),
        default="id",
        help="FPR95 printed in the table: id = ID positive (the papers, default), ood = OOD positive "
        "(OpenOOD, pytorch-ood); results.json always holds both",
    )
    parser.add_argument(
        "--plots",
        action="store_true",
        help="write score histograms and ROC curves (PNG) to {result dir}/plots/",
    )


def parse_methods(text: str) -> list[str]:
    """Method names of --methods, validated, duplicates removed (order kept)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    known = ORIGINAL_METHODS + BASELINE_METHODS
    bad = [t for t in tokens if t not in known and line_parts(t) is None]
    if bad or not tokens:
        raise UserError(
            f"--methods: unknown method(s) {', '.join(bad) or '(none given)'}; choose from "
            f"{', '.join(known)}, line, taylor or a LINe ablation line_<ac|ap|wp joined by _> / line_none"
        )
    return list(dict.fromkeys(tokens))


def method_args(args: argparse.Namespace, token: str) -> argparse.Namespace:
    """A copy of the flags that makes ``ood_eval.resolve_detector`` build ``token``."""
    a = copy.copy(args)
    parts = line_parts(token)
    if parts is not None:
        a.method = "line"
        a.no_clip, a.no_ap, a.no_wp = (not on for on in parts)
        return a
    a.method = token
    if token in ("energy", "msp"):
        a.p, a.clip_threshold = None, None
    return a


def format_methods_table(rows: list[tuple], names: list[str], title: str, fpr_key: str) -> str:
    """rows: (method, accuracy, per_set, average); FPR95/AUROC per set, AVG FPR95/AUROC/AUIN, ID acc."""
    width = max(len("method"), *(len(r[0]) for r in rows)) + 2
    cols = [*names, "AVG"]
    cw = [max(15, len(c) + 2) for c in cols]
    head1 = f"{'':<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cols, cw)) + f"{'AVG':>8}{'ID':>8}"
    head2 = f"{'method':<{width}}" + "".join(f"{'FPR95 AUROC':>{w}}" for w in cw) + f"{'AUIN':>8}{'acc':>8}"
    lines = [title, head1, head2]
    for method, accuracy, per_set, avg in rows:
        cells = [per_set[n] for n in names] + [avg]
        line = f"{method:<{width}}"
        pairs = [f"{100 * r[fpr_key]:.2f} {100 * r['AUROC']:.2f}" for r in cells]
        line += "".join(f"{pair:>{w}}" for pair, w in zip(pairs, cw))
        line += f"{100 * avg['AUPR_IN']:>8.2f}{100 * accuracy:>8.2f}"
        lines.append(line)
    return "\n".join(lines)


def run_methods(
    args,
    tokens,
    *,
    fc,
    stats,
    features,
    datasets,
    names,
    files_used,
    resolve,
    odin,
    extractor,
    base_settings,
    set_metrics=None,
):
    """Evaluate every method in ``tokens`` from the already extracted ``features`` (set -> FeatureSet).

    ``set_metrics(scores, name)`` gives one OOD set's metrics (default: ``ood_metrics`` with both
    FPR95 conventions); ``resolve(args, stats)`` and ``odin(args, extractor, datasets)`` are
    ood_eval.py's.
    """
    if set_metrics is None:

        def set_metrics(scores, name):
            return ood_metrics(scores["in"], scores[name], with_ood_positive=True)

    from util.plots import plot_results

    labels = features["in"].labels
    fpr_key, fpr_header = FPR_CONVENTIONS[args.fpr_convention]
    rows = []
    for token in tokens:
        t0 = time.time()
        targs = method_args(args, token)
        for key in [k for k in files_used if k != "checkpoint"]:
            del files_used[key]
        method, detector = resolve(targs, stats)
        if method == "odin":
            scores, preds, _ = odin(targs, extractor, datasets)
            settings_detector = {"temperature": args.temperature, "noise": args.noise}
        else:
            detector.fit(fc, stats)
            settings_detector = detector.settings()
            scores, preds = score_sets(detector, {key: fs.features for key, fs in features.items()})
        accuracy = float(np.mean(preds["in"] == labels))
        per_set = {n: set_metrics(scores, n) for n in names}
        average = average_metrics(per_set)
        out_dir = Path(args.base_dir) / args.in_dataset / method / args.name
        save_scores(out_dir, scores)
        settings = {
            **vars(targs),
            **base_settings,
            "method": method,
            "method_flag": token,
            "methods_run": ",".join(tokens),
            "detector": settings_detector,
            "files": dict(files_used),
            "fpr_convention": args.fpr_convention,
            "metric_conventions": METRIC_CONVENTIONS,
            "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(
            out_dir / "results.json",
            {"id_accuracy": accuracy, "ood": per_set, "average": average, "settings": settings},
        )
        if args.plots:
            plot_results(scores, out_dir / "plots", f"{method} on {args.in_dataset} ({args.name})")
        rows.append((method, accuracy, per_set, average))
        print(f"{method}: AVG FPR95 {100 * average[fpr_key]:.2f}  ({time.time() - t0:.1f} s) -> {out_dir}")
    title = (
        f"{len(rows)} methods on {args.in_dataset} ({args.name}), one feature extraction\n"
        f"{fpr_header}; AUROC, AUIN (ID positive) and ID accuracy, percent"
    )
    print(format_methods_table(rows, names, title, fpr_key))
    return rows
