"""argparse value types: numbers in a range and names from a list, with messages that say why."""

from __future__ import annotations

import argparse
import difflib
import os


def parsed_number(text: str, convert: type, expected: str):
    """``convert(text)`` (int or float) for an argparse type; the error names what was expected."""
    try:
        return convert(text)
    except ValueError:
        kind = "an integer" if convert is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}; expected {expected}") from None


def percentile_arg(text: str) -> float:
    """A percentile in [0, 100]."""
    value = parsed_number(text, float, "a percentile in [0, 100]")
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside the valid range [0, 100]")
    return value


def open_percentile_arg(text: str) -> float:
    """A percentile in [0, 100) (at 100 nothing would be kept)."""
    value = parsed_number(text, float, "a percentile in [0, 100)")
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 100)")
    return value


def fraction_arg(text: str) -> float:
    """A fraction in (0, 1]."""
    value = parsed_number(text, float, "a fraction in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is outside (0, 1]")
    return value


def positive_int(text: str) -> int:
    value = parsed_number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected an integer >= 1")
    return value


def nonnegative_int(text: str) -> int:
    value = parsed_number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected an integer >= 0")
    return value


def nonnegative_float(text: str) -> float:
    value = parsed_number(text, float, "a value >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range; expected a value >= 0")
    return value


def positive_float(text: str) -> float:
    value = parsed_number(text, float, "a value > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range; expected a value > 0")
    return value


def closest_name(text: str, valid) -> str | None:
    """The valid name closest to ``text`` ignoring case, '-' and '_' (difflib), or None."""

    def norm(name: str) -> str:
        return name.lower().replace("-", "").replace("_", "")

    by_norm = {norm(v): v for v in valid}
    close = difflib.get_close_matches(norm(text), list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


def name_arg(choices, what: str):
    """argparse type: one of ``choices``, else an error listing them and suggesting the closest."""

    def parse(text: str) -> str:
        valid = list(choices)
        if text in valid:
            return text
        close = closest_name(text, valid)
        hint = f"; did you mean {close!r}?" if close else ""
        raise argparse.ArgumentTypeError(f"unknown {what} {text!r}: choose from {', '.join(valid)}{hint}")

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def name_or_folder_arg(choices, what: str, spellings=()):
    """argparse type: one of ``choices`` or of their other accepted ``spellings``, or an existing
    folder (any text with a path separator or naming a directory); else an error listing the names."""
    by_name = name_arg(choices, what)

    def parse(text: str) -> str:
        # A canonical name is the dataset; another spelling only when no folder has that name.
        if text in choices or (text in spellings and not os.path.isdir(text)):
            return text
        if os.path.isdir(text):
            return text
        if os.sep in text or "/" in text:
            raise argparse.ArgumentTypeError(
                f"{what} folder {text!r} does not exist; check the path, or give an image folder with "
                f"train/<class>/* and test/<class>/*, or a name: {', '.join(choices)}"
            )
        try:
            return by_name(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(
                f"{exc} (or give an image folder with train/ and test/)"
            ) from None

    parse.__name__ = what
    return parse


def three_floats(text: str) -> tuple[float, float, float]:
    """Three numbers, comma- or space-separated (per-channel mean or std)."""
    parts = text.replace(",", " ").split()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers (R,G,B), e.g. 0.5,0.5,0.5")
    return tuple(parsed_number(v, float, "three numbers (R,G,B)") for v in parts)


def three_positive_floats(text: str) -> tuple[float, float, float]:
    """Three numbers > 0 (a per-channel std)."""
    values = three_floats(text)
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each std must be > 0")
    return values
