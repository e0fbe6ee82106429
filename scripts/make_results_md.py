"""Write docs/results.md from the results.json files that ood_eval.py wrote.

Reads ``{base_dir}/{in_dataset}/*/{name}/results.json`` (one per method), and writes one table of
every method (FPR95 / AUROC per OOD set, averages, ID accuracy, the OpenOOD-convention FPR95),
a LINe ablation table when ablation variants are present, and the commands that regenerate it.

    python scripts/make_results_md.py --base-dir /tmp/results6 --out docs/results.md
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detectors.line import line_parts  # noqa: E402
from detectors.registry import FAMILIES, family_of, order_key, paper_of  # noqa: E402
from util.cli import CliParser  # noqa: E402
from util.errors import UserError  # noqa: E402
from util.io import atomic_write_text  # noqa: E402
from util.runtime import run_cli  # noqa: E402

JPEG_NOTE = """\
**About the data.** The CIFAR-10 images in `../shared/data/CIFAR-10` are JPEG copies of the
original (lossless) CIFAR-10 images, read as an image folder; their quantisation tables are the
standard quality-75 ones (PIL's default, chroma subsampled), so at 32x32 the colour detail is
halved and 8x8 block artefacts are visible. That is a distribution shift of its own: the
plain classifier's ID test accuracy here is {accuracy:.2f}%, while DenseNet-BC-100 (k = 12) has
4.51% error on the original augmented CIFAR-10 (Huang et al., CVPR 2017), about 95.5%. The
original images are not available offline, so the loss cannot be measured directly here. The
re-encoding experiment below (when given) measures the sensitivity instead: one more pass with
the same quality-75 tables is nearly idempotent, but coarser quantisation shows how steeply the
accuracy falls, which makes the JPEG encoding the likely cause of the gap (not proven without
the originals). Every number above is for the JPEG copies: the training-set statistics (ReAct
threshold, DICE mean, LINe contributions, KNN bank, Mahalanobis and ViM fits) come from the JPEG
training images too, and the OOD sets differ from the papers' (no SVHN, LSUN, iSUN, Places365
here), so these are not the papers' tables. dtd and FashionMNIST are real images; gaussian and
uniform are synthetic noise sets (10,000 images each, fixed seed)."""


def load_results(base_dir: Path, in_dataset: str, name: str) -> dict[str, dict]:
    found = {}
    for path in sorted((base_dir / in_dataset).glob(f"*/{name}/results.json")):
        found[path.parent.parent.name] = json.loads(path.read_text())
    if not found:
        raise UserError(
            f"no results.json under {base_dir / in_dataset}/*/{name}/: run ood_eval.py with "
            f"--base-dir {base_dir} first"
        )
    return found


def method_order(methods) -> list[str]:
    """Grouped logit-based, feature-based, network-level; within a group the registry's order
    (LINe's ablations by how many parts they keep)."""
    groups = list(FAMILIES)
    return sorted(methods, key=lambda m: (groups.index(family_of(m)), order_key(m), m))


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def main_table(results: dict[str, dict], sets: list[str]) -> list[str]:
    head = ["Method", *(f"{s} FPR95↓ / AUROC↑" for s in sets), "AVG FPR95↓", "AVG AUROC↑", "AVG AUPR-IN↑"]
    head += ["AVG FPR95 (OOD+)", "ID acc."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = min(r["average"]["FPR95"] for r in results.values())
    family = None
    for method in method_order(results):
        if family_of(method) != family:  # a heading row per group: logit-based, feature-based, network
            family = family_of(method)
            lines.append(f"| **{FAMILIES[family]}** |" + " |" * (len(head) - 1))
        r = results[method]
        cells = [f"`{method}`"]
        cells += [
            f"{pct(r['ood'][s]['FPR95'])} / {pct(r['ood'][s]['AUROC'])}" if s in r["ood"] else "–"
            for s in sets
        ]
        avg = pct(r["average"]["FPR95"])
        cells += [f"**{avg}**" if r["average"]["FPR95"] == best else avg]
        cells += [pct(r["average"]["AUROC"]), pct(r["average"]["AUPR_IN"])]
        cells += [pct(r["average"].get("FPR95_OOD_POSITIVE", float("nan"))), pct(r["id_accuracy"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ablation_table(results: dict[str, dict]) -> list[str]:
    variants = [m for m in method_order(results) if line_parts(m) is not None]
    if len(variants) < 2:
        return []
    lines = [
        "| AC | AP | WP | method | AVG FPR95↓ | AVG AUROC↑ | ID acc. |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in variants:
        ac, ap, wp = line_parts(m)
        r = results[m]
        marks = ["✓" if on else "" for on in (ac, ap, wp)]
        lines.append(
            f"| {' | '.join(marks)} | `{m}` | {pct(r['average']['FPR95'])} | {pct(r['average']['AUROC'])} "
            f"| {pct(r['id_accuracy'])} |"
        )
    return lines


def settings_lines(results: dict[str, dict]) -> list[str]:
    lines = []
    for method in method_order(results):
        detector = results[method]["settings"].get("detector", {})
        text = ", ".join(f"{k}={v}" for k, v in detector.items()) or "no parameters"
        lines.append(f"- `{method}` ({paper_of(method)}): {text}")
    return lines


def regenerate_command(results: dict[str, dict]) -> str:
    """The ood_eval.py command, rebuilt from the settings the results recorded."""
    # methods_run: a list (a comma-joined string in results.json files of earlier versions)
    runs = [r["settings"]["methods_run"] for r in results.values()]
    runs = [run.split(",") if isinstance(run, str) else run for run in runs]
    s = next(iter(results.values()))["settings"]
    methods = ",".join(dict.fromkeys(m for run in runs for m in run))
    cmd = ["python", "ood_eval.py", "--in-dataset", s["in_dataset"], "--methods", methods]
    for flag, key in (
        ("--data-root", "data_root"),
        ("--cache-dir", "cache_dir"),
        ("--checkpoint", "checkpoint"),
    ):
        if s.get(key):
            cmd += [flag, str(s[key])]
    if s.get("out_datasets"):
        cmd += ["--out-datasets", *s["out_datasets"]]
    if s.get("max_samples"):
        cmd += ["--max-samples", str(s["max_samples"])]
    cmd += ["--base-dir", s["base_dir"]]
    return shlex.join(cmd)


def jpeg_lines(path: Path | None) -> list[str]:
    """Table of benchmarks/jpeg_sensitivity.py's JSON output, or nothing."""
    if path is None:
        return []
    data = json.loads(Path(path).read_text())
    lines = [
        f"Re-encoding experiment (`benchmarks/jpeg_sensitivity.py`, {data['images']} class-balanced",
        "test images, plain classifier):",
        "",
        "| images | ID accuracy |",
        "|---|---|",
    ]
    lines += [f"| {name} | {pct(acc)} |" for name, acc in data["accuracy"].items()]
    return [*lines, ""]


def network_section(network: dict[str, dict]) -> list[str]:
    """The network-level detectors' table: a run on an image subset (they cannot use the cache)."""
    if not network:
        return []
    s = next(iter(network.values()))["settings"]
    n_images = s.get("num_images", {})
    sets = list(dict.fromkeys(name for r in network.values() for name in r["ood"]))
    return [
        "## Network-level detectors (an image subset)",
        "",
        "Network-level detectors run the network on every image (ODIN a forward and a backward pass",
        "and a second forward; RankFeat an SVD inside the network; AdaSCALE, IODIN, Mahalanobis with",
        "input pre-processing and the MDS ensemble likewise), so they cannot read the feature cache.",
        "On this 2-core CPU a full run would take hours, so they ran with `--max-samples",
        f"{s.get('max_samples')}` (images spread evenly over each set: ID test {n_images.get('in', '?')}, "
        + ", ".join(f"{k} {v}" for k, v in n_images.items() if k != "in")
        + "),",
        "with "
        + (
            ", ".join(f"`{m}`" for m in method_order(network) if family_of(m) != "network")
            or "no other method"
        )
        + " scored from the cache on the same images for reference.",
        *forward_note(s),
        "",
        *main_table(network, sets),
        "",
        *settings_lines(network),
        "",
    ]


def forward_note(settings: dict) -> list[str]:
    """How many images the run put through the network for its feature cache (each once; the
    multi-layer detectors' statistics in the same pass)."""
    n = settings.get("images_forwarded")
    if not n:
        return []
    return [
        f"The run put {n:,} images through the network for the feature cache, each once (the other",
        "sets were read from it), before the network-level detectors ran the network on their own.",
    ]


def render(
    results: dict[str, dict],
    base_dir: Path,
    out: Path,
    jpeg: Path | None = None,
    network: dict[str, dict] | None = None,
    network_dir: Path | None = None,
) -> str:
    """docs/results.md: the header, the table with its caveats, the network-level and ablation
    tables, the settings, the data note and the commands that regenerate it."""
    plain = results.get("energy") or results.get("msp") or next(iter(results.values()))
    lines = [*header_lines(results), *caveat_lines(results, network)]
    lines += network_section(network or {})
    ablation = ablation_table(results)
    if ablation:
        lines += [
            "## LINe ablation (activation clipping AC, activation pruning AP, weight pruning WP)",
            "",
            *ablation,
            "",
        ]
    lines += [
        "## Settings",
        "",
        *settings_lines(results),
        "",
        JPEG_NOTE.format(accuracy=100 * plain["id_accuracy"]),
        "",
        *jpeg_lines(jpeg),
        *regenerate_lines(results, base_dir, out, jpeg, network, network_dir),
    ]
    return "\n".join(lines)


def header_lines(results: dict[str, dict]) -> list[str]:
    """Title, how to read the numbers, the set sizes and the main table."""
    s = next(iter(results.values()))["settings"]
    sets = list(dict.fromkeys(name for r in results.values() for name in r["ood"]))  # every set, in order
    n_images = {}
    for r in results.values():
        n_images.update(r["settings"].get("num_images", {}))
    return [
        f"# Results: {s['in_dataset']}, {s['name']} (DenseNet-101)",
        "",
        "Generated by `scripts/make_results_md.py` from the `results.json` files of `ood_eval.py`; do not",
        "edit by hand. All scores are computed from one cached feature extraction (the multi-layer",
        "detectors' statistics of intermediate layers in the same forward pass); percentages.",
        "",
        "FPR95 is the papers' convention (ID is the positive class: the fraction of OOD images above the",
        "threshold that keeps 95% of ID test images). `AVG FPR95 (OOD+)` is OpenOOD's / pytorch-ood's",
        "FPR95 (OOD positive: the fraction of ID images flagged when 95% of OOD images are flagged), a",
        "different number. AUROC and AUPR-IN take ID as positive. The lowest average FPR95 is in bold.",
        "",
        f"ID test images: {n_images.get('in', '?')}; OOD: "
        + ", ".join(f"{k} {v}" for k, v in n_images.items() if k != "in")
        + ".",
        "",
        *main_table(results, sets),
        "",
    ]


def caveat_lines(results: dict[str, dict], network: dict | None) -> list[str]:
    """Paragraphs on rows that used other images or other sets, and on ODIN's absence."""
    sets = list(dict.fromkeys(name for r in results.values() for name in r["ood"]))
    partial = sorted(m for m, r in results.items() if set(r["ood"]) != set(sets))
    subsets = {m: r["settings"].get("max_samples") for m, r in results.items()}
    fits = {m: (r["settings"].get("training_images") or {}).get("count") for m, r in results.items()}
    lines = []
    if len(set(subsets.values())) > 1 or len({c for c in fits.values() if c is not None}) > 1:
        lines += [
            "These runs differ in the images they used, so the rows are not directly comparable: "
            + "; ".join(
                f"`{m}` {'all images' if not subsets[m] else f'--max-samples {subsets[m]}'}"
                + (f", fitted on {fits[m]} training images" if fits[m] is not None else "")
                for m in method_order(results)
            )
            + ".",
            "",
        ]
    if partial:
        lines += [
            f"Not every method was run on every OOD set (– marks a set a method's latest run did not "
            f"score: {', '.join(f'`{m}`' for m in partial)}); their averages are over their own sets, so "
            "compare them with care.",
            "",
        ]
    if "odin" not in results and not network:
        lines += [
            "ODIN is not in this table: it needs a forward and a backward pass of the network per image",
            "(input perturbation), not cached features; add `odin` to `--methods` to include it.",
            "",
        ]
    return lines


def regenerate_lines(results, base_dir: Path, out: Path, jpeg, network, network_dir) -> list[str]:
    """The commands that regenerate the tables, and the code version they came from."""
    s = next(iter(results.values()))["settings"]
    jpeg_command = (
        [f"python benchmarks/jpeg_sensitivity.py --n {json.loads(jpeg.read_text())['images']} --out {jpeg}"]
        if jpeg
        else []
    )
    return [
        "## Regenerate",
        "",
        "```",
        regenerate_command(results),
        *([regenerate_command(network)] if network else []),
        *jpeg_command,
        f"python scripts/make_results_md.py --base-dir {base_dir} --in-dataset {s['in_dataset']} --out {out}"
        + (f" --jpeg-sensitivity {jpeg}" if jpeg else "")
        + (f" --network-base-dir {network_dir}" if network else ""),
        "```",
        "",
        f"Code version of the results: `{s.get('code_version', 'unknown')}`; device: {s.get('device', '?')}.",
        "",
    ]


def main(argv=None) -> None:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-dir", default="output/ood_scores", help="ood_eval.py --base-dir")
    parser.add_argument("--in-dataset", default="CIFAR-10")
    parser.add_argument("--name", default="densenet")
    parser.add_argument("--out", default=str(REPO / "docs" / "results.md"))
    parser.add_argument(
        "--jpeg-sensitivity", default=None, help="JSON from benchmarks/jpeg_sensitivity.py --out"
    )
    parser.add_argument(
        "--network-base-dir",
        default=None,
        help="ood_eval.py --base-dir of a run of the network-level detectors on an image subset "
        "(--max-samples): their own table",
    )
    args = parser.parse_args(argv)
    results = load_results(Path(args.base_dir), args.in_dataset, args.name)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jpeg = Path(args.jpeg_sensitivity) if args.jpeg_sensitivity else None
    network_dir = Path(args.network_base_dir) if args.network_base_dir else None
    network = load_results(network_dir, args.in_dataset, args.name) if network_dir else None
    atomic_write_text(out, render(results, Path(args.base_dir), Path(args.out), jpeg, network, network_dir))
    print(f"wrote {out} ({len(results)} methods)")


if __name__ == "__main__":
    run_cli(main)
