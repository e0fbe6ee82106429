"""The README is a guide: short, names every detector, defines its metrics, shows real output, and
every piece of reference material it links lives in docs/."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

from detectors import registry

README = REPO / "README.md"


def text() -> str:
    return README.read_text()


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M)


def words(s: str) -> str:
    return " ".join(s.split())


def relative_links(path: Path) -> list[Path]:
    """The files the relative links of a markdown file point to (anchors dropped)."""
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text())
    return [(path.parent / t).resolve() for t in targets]


def test_readme_has_at_most_250_lines():
    assert len(text().splitlines()) <= 250


def test_readme_names_every_method_of_the_registry_with_its_paper():
    readme = words(text())
    for name in registry.method_names() + list(registry.aliases()):
        assert f"`{name}`" in readme, name
    for cls in registry.DETECTORS:
        assert cls.paper in readme, (cls.name, cls.paper)


def test_readme_defines_aupr_in_and_aupr_out():
    readme = words(text())
    assert re.search(r"AUPR-IN\*\*.{0,80}precision-recall curve with \*\*ID as the positive class", readme)
    assert re.search(r"AUPR-OUT\*\*.{0,30}is the same with OOD as the positive class", readme)
    assert "`AUPR_IN`" in readme and "`AUPR_OUT`" in readme  # the names in results.json


def test_readme_gives_both_fpr95_conventions_and_auroc():
    readme = words(text())
    assert "**ID is the positive class**" in readme and "**OOD as the positive class**" in readme
    assert "OpenOOD and pytorch-ood" in readme and "--fpr-convention ood" in readme
    assert "**AUROC**" in readme


def test_readme_says_why_id_accuracy_can_be_below_the_papers():
    readme = words(text())
    assert "94.5%" in readme and "JPEG" in readme and "preprocessing" in readme


def test_readme_output_blocks_hold_real_lines_not_placeholders():
    for lang, body in code_blocks(text()):
        if lang in ("python", "bash"):
            continue
        for line in body.splitlines():
            assert "..." not in line and "…" not in line, line
    assert "QUICK_" not in text()  # no unfilled marker of this guide's own drafts


def test_readme_shows_the_quick_demo_with_its_output_and_measured_duration():
    readme = text()
    assert "bash demo-cifar.sh --quick" in readme
    output = readme[
        readme.index("<!-- quick-demo-output:start -->") : readme.index("<!-- quick-demo-output:end -->")
    ]
    ((_, body),) = code_blocks(output)
    assert re.search(r"^AVG\s+\d+\.\d\d\s+\d+\.\d\d", body, re.M)  # a real average row
    assert re.search(r"ID accuracy.*\d+\.\d\d%", body)
    row = next(line for line in readme.splitlines() if line.startswith("| `bash demo-cifar.sh --quick` |"))
    assert re.search(r"\d+ s", row)  # a measured duration
    assert re.search(r"\| `bash demo-cifar.sh` \|.*1,047 s", readme)


def test_readme_keeps_the_two_commands():
    readme = text()
    assert "bash run_tests.sh" in readme and "bash run_tests.sh" in (REPO / ".ci" / "run").read_text()
    assert "## Two commands" in readme


def test_every_relative_link_in_readme_and_docs_points_to_an_existing_file():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for target in relative_links(page):
            assert target.exists(), f"{page.name} links to missing {target}"
    linked = {t.name for t in relative_links(README)}
    assert {p.name for p in (REPO / "docs").glob("*.md")} <= linked  # every doc reachable from README


def test_reference_material_moved_out_of_the_readme_lives_in_docs():
    docs = words(" ".join(p.read_text() for p in (REPO / "docs").glob("*.md")))
    for moved in (
        "--cal-metric",  # the original commands (reproducing.md)
        "torchrun --standalone --nproc_per_node=8",  # several GPUs (imagenet.md)
        "resnet50-0676ba61.pth",  # ImageNet weights (imagenet.md)
        "benchmark_imglist/cifar10",  # OpenOOD's protocol (openood.md)
        "{in_dataset}_{name}_taylor_mean_class.npy",  # file formats (files.md)
        "bench_extraction.py",  # performance (performance.md)
        "LINE_SHARED_DIR",  # the development data (development-data.md)
        "--class-map FILE",  # your own data (own-model.md)
        "tests/test_imports.py",  # the code's organisation (architecture.md)
    ):
        assert moved in docs, moved


def test_docs_name_every_flag_of_the_three_scripts():
    """docs/usage.md (with its sibling pages) is the flag reference: every option string appears."""
    import ood_eval
    import precompute
    import sweep

    docs = " ".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    for script in (ood_eval, precompute, sweep):
        for action in script.build_parser()._actions:
            spelled = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
            if spelled:
                assert any(re.search(re.escape(o) + r"(?![\w-])", docs) for o in spelled), (script, spelled)
