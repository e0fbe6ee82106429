"""The argument parser of every script: short usage errors, suggestions, any '-'/'_' spelling.

``CliParser`` is ``argparse.ArgumentParser`` with three changes:

- a usage error prints one line, ``usage: PROG [options]; see PROG --help``, and the message
  (never the full usage of every flag); exit code 2 as before. ``--help`` prints the full help;
- no abbreviations (``allow_abbrev=False``): ``--max-samp`` is an error suggesting ``--max-samples``
  rather than silently meaning it. An unknown flag and a value outside ``choices`` get
  "did you mean" with the closest defined spelling (``util.argtypes.closest_name``);
- every option answers to each '-'/'_' spelling of its long name: an unknown ``--p_w`` (or
  ``--p_w=90``) is read as the defined ``--p-w``, an unknown ``--max_samples`` as ``--max-samples``,
  an unknown ``--model-arch`` as a defined ``--model_arch``. A token is rewritten only when it is not
  itself defined and exactly one option has its spelling up to '-'/'_'.
"""

from __future__ import annotations

import argparse
import sys

from util.argtypes import closest_name


def _spelling_key(option: str) -> str:
    """An option string with '_' read as '-' (``--p_w`` and ``--p-w`` share one key)."""
    return option.replace("_", "-")


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with one-line usage errors, suggestions and '-'/'_' spellings."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    # -- spellings ---------------------------------------------------------------------------
    def _long_options(self) -> list[str]:
        return [o for o in self._option_string_actions if o.startswith("--")]

    def _spellings(self) -> dict[str, str | None]:
        """Spelling key (``_spelling_key``) -> the defined long option with that key; None where
        two different options share a key (a token of that key is then left alone)."""
        out: dict[str, str | None] = {}
        for option in self._long_options():
            key = _spelling_key(option)
            other = out.get(key, option)
            same = (
                other is not None
                and self._option_string_actions[other] is self._option_string_actions[option]
            )
            out[key] = option if same else None
        return out

    def normalised(self, args: list[str]) -> list[str]:
        """``args`` with each unknown '-'/'_' spelling of a defined long option (``--a_b``,
        ``--a_b=value``) replaced by the defined one; tokens after a bare ``--`` are left alone."""
        spellings, out = self._spellings(), []
        for i, token in enumerate(args):
            if token == "--":
                return out + args[i:]
            option, sep, value = token.partition("=")
            defined = None if option in self._option_string_actions else spellings.get(_spelling_key(option))
            out.append(token if defined is None or not option.startswith("--") else f"{defined}{sep}{value}")
        return out

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self.normalised(args), namespace)

    # -- errors ------------------------------------------------------------------------------
    def suggestion(self, token: str) -> str | None:
        """The defined long option closest to an unknown ``token`` (its dashed spelling), or None."""
        option = token.partition("=")[0]
        if not option.startswith("--"):
            return None
        # One spelling per option family, the dashed one where there is one.
        spellings = sorted(self._long_options(), key=lambda o: ("_" not in o, o))
        return closest_name(option, spellings)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            close = {t.partition("=")[0]: s for t in extras if (s := self.suggestion(t))}
            hint = ", ".join(s if len(close) == 1 else f"{s} (for {t})" for t, s in close.items())
            self.error(
                f"unrecognized arguments: {' '.join(extras)}" + (f"; did you mean {hint}?" if hint else "")
            )
        return namespace

    def _check_value(self, action, value):
        """A value outside ``choices``: argparse's message plus the closest choice."""
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            close = closest_name(str(value), [str(c) for c in action.choices])
            if close is None:
                raise
            raise argparse.ArgumentError(action, f"{exc.message}; did you mean {close!r}?") from None

    def short_usage(self) -> str:
        """One usage line: the program, [options], its positional arguments and where help is."""
        shown = [a for a in self._get_positional_actions() if a.help != argparse.SUPPRESS]
        names = [" ".join(m) if isinstance(m := a.metavar or a.dest, tuple) else m for a in shown]
        return f"usage: {' '.join([self.prog, '[options]', *names])}; see {self.prog} --help"

    def error(self, message: str):
        """One usage line and the message on stderr, exit code 2 (argparse's full usage only in --help)."""
        self.exit(2, f"{self.short_usage()}\n{self.prog}: error: {message}\n")
