"""Usage errors of the scripts are short (util/cli.py): one usage line and the message, exit code 2,
"did you mean" for misspelt flags, methods, datasets and choices; no abbreviations; every '-'/'_'
spelling of a flag works; --help keeps the full help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ood_eval
import precompute
import sweep

REPO = Path(__file__).resolve().parent.parent


def usage_error(script, argv, capsys) -> list[str]:
    """The stderr lines of ``script.main(argv)``, which must stop with argparse's exit code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        script.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "lien"], "did you mean 'line'?"),
        (["--p", "150"], "argument --p: 150 is outside the valid range [0, 100]"),
        (["--knn-k", "0"], "argument --knn-k: 0 is out of range; expected an integer >= 1"),
        (["--in-dataset", "cifar-1O"], "did you mean 'CIFAR-10'?"),
        (
            ["--in-dataset", "/nope"],
            "dataset folder '/nope' does not exist; check the path, or give an image",
        ),
    ],
)
def test_a_usage_error_prints_one_usage_line_and_the_message(argv, message, capsys):
    err = usage_error(ood_eval, argv, capsys)
    assert len(err) <= 3, err
    prog = Path(sys.argv[0]).name  # argparse's program name: the script's, here pytest's
    assert err[0] == f"usage: {prog} [options]; see {prog} --help"
    assert message in err[-1] and err[-1].startswith(f"{prog}: error: ")


def test_the_script_run_as_a_command_prints_at_most_three_lines_on_stderr():
    res = subprocess.run(
        [sys.executable, "ood_eval.py", "--method", "lien"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) <= 3 and "unknown method 'lien'" in lines[-1] and "did you mean 'line'?" in lines[-1]


def test_a_missing_in_dataset_folder_names_the_path_and_what_to_give_instead(capsys):
    (line,) = usage_error(ood_eval, ["--in-dataset", "/nope"], capsys)[1:]
    assert "'/nope' does not exist" in line and "train/<class>/*" in line and "CIFAR-10" in line


def test_a_misspelt_flag_suggests_the_defined_one(capsys):
    err = usage_error(ood_eval, ["--clip-treshold", "1.0"], capsys)
    assert err[-1].endswith(
        "error: unrecognized arguments: --clip-treshold 1.0; did you mean --clip-threshold?"
    )


@pytest.mark.parametrize("script", [ood_eval, precompute, sweep])
def test_an_abbreviated_flag_is_refused_with_the_full_name(script, capsys):
    err = usage_error(script, ["--max-samp", "500"], capsys)
    assert "unrecognized arguments: --max-samp 500; did you mean --max-samples?" in err[-1]


def test_a_value_outside_the_choices_suggests_the_closest(capsys):
    err = usage_error(ood_eval, ["--fpr-convention", "oodd"], capsys)
    assert "invalid choice: 'oodd'" in err[-1] and "did you mean 'ood'?" in err[-1]


@pytest.mark.parametrize(
    "underscored, dashed",
    [
        (
            ["--p_w", "90", "--p_a", "90", "--method", "line"],
            ["--p-w", "90", "--p-a", "90", "--method", "line"],
        ),
        (["--p_w=80", "--method=line"], ["--p-w", "80", "--method", "line"]),
        (
            ["--model_arch", "densenet", "--clip_threshold", "1"],
            ["--model-arch", "densenet", "--clip-threshold", "1"],
        ),
        (
            ["--max_samples", "5", "--in_dataset", "CIFAR-100"],
            ["--max-samples", "5", "--in-dataset", "CIFAR-100"],
        ),
        (["--knn_k", "7", "--fpr_convention", "ood"], ["--knn-k", "7", "--fpr-convention", "ood"]),
    ],
)
def test_every_dash_or_underscore_spelling_of_a_flag_parses_alike(underscored, dashed):
    parser = ood_eval.build_parser()
    assert vars(parser.parse_args(underscored)) == vars(parser.parse_args(dashed))


def test_sweep_and_precompute_take_underscore_spellings_too():
    assert sweep.build_parser().parse_args(["--val_fraction", "0.5"]).val_fraction == 0.5
    assert precompute.build_parser().parse_args(["--max_samples", "9"]).max_samples == 9


def test_help_still_prints_the_full_help(capsys):
    with pytest.raises(SystemExit) as exc:
        ood_eval.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith("usage: ") and "[-h]" in out.splitlines()[0] and len(out.splitlines()) > 100
    assert "--clip_threshold" in out and "--knn-k K" in out


def test_every_command_line_script_builds_its_parser_with_the_short_error_parser():
    skip = {".venv", "tests", "cache", "output", "datasets", "checkpoints"}
    scripts = [
        p for p in REPO.glob("**/*.py") if not skip & set(p.relative_to(REPO).parts) and p.name != "cli.py"
    ]
    plain = [str(p.relative_to(REPO)) for p in scripts if "argparse.ArgumentParser(" in p.read_text()]
    assert plain == [], "use util.cli.CliParser"
