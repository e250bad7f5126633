"""Command-line values, read in one place for every kvsim subcommand: the argument parser (one-line errors,
defaults shown, no empty strings), the list and range syntax, and bounded whole numbers.

A value that cannot be read, is not finite, is out of range or would make a range repeat or never end is
refused here with one line, so no subcommand meets a NaN, a silent default or a duplicate point.
"""

from __future__ import annotations

import argparse
import math

from .errors import UsageError
from .limits import INPUT_MAX

RANGE_HELP = """\
Numbers: a value (1024, 1e6), a comma list (512,1024,4096), or a range with its end included:
  a..b*k   geometric: a, a*k, a*k*k, ... up to b   (1024..32768*2 -> 1024,2048,...,32768)
  a..b+k   arithmetic: a, a+k, a+2k, ... up to b   (0..100+25 -> 0,25,50,75,100)
Lists and ranges mix (1,2,4..64*2); a value given twice is evaluated once."""

MAX_VALUES = 10_000_000


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends '(default: X)' to a flag's help when it has a default
    its help text does not already state."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if d is None or d is False or d == [] or d is argparse.SUPPRESS or "default" in text.lower() \
                or action.option_strings == [] or isinstance(action, argparse._HelpAction):
            return text
        return f"{text} (default: {d})" if text else f"default: {d}"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (UsageError, exit 2 via kvsim.cli) and no empty values: `--model ''`
    is refused rather than read as 'not given' and silently replaced by a default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message)

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(ns, action.dest, None) if action.option_strings else None
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and not v.strip() for v in items) and value != action.default:
                raise UsageError(f"{'/'.join(action.option_strings)}: empty value")
        return ns, rest


def whole(flag: str, lo: int = 0, hi: int = INPUT_MAX):
    """An argparse type: a whole number in [lo, hi] (1e3 accepted, 1.5 and nan refused)."""
    def read(text: str) -> int:
        try:
            v = parse_values(text, flag, lo=lo, hi=hi)
        except UsageError as e:  # argparse would replace a ValueError's text with "invalid ... value"
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{flag}: ").removeprefix(f"{flag} ")) from None
        if len(v) != 1:
            raise argparse.ArgumentTypeError(f"takes one value, got {text!r}")
        return v[0]
    read.__name__ = "whole number"
    return read


def _finite(text: str, flag: str, item: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise UsageError(f"{flag}: cannot read {item!r} as a number") from None
    if not math.isfinite(x):
        raise UsageError(f"{flag}: cannot read {item!r}: not a finite number")
    return x


def _range(item: str, flag: str, integer: bool, limit: int) -> list:
    start_s, rest = item.split("..", 1)
    if "*" in rest:
        stop_s, by_s = rest.split("*", 1)
        mult = True
    elif "+" in rest:
        stop_s, by_s = rest.rsplit("+", 1)  # rsplit: the stop may be written 1e+5
        mult = False
    else:
        raise UsageError(f"{flag}: range {item!r} needs *factor or +step (see --help)")
    start, stop, by = (_finite(s, flag, item) for s in (start_s, stop_s, by_s))
    if start > stop:
        raise UsageError(f"{flag}: range {item!r} runs backwards")
    if (mult and (by <= 1 or start <= 0)) or (not mult and by <= 0):
        raise UsageError(f"{flag}: range {item!r} never reaches its end")
    if integer and not (start.is_integer() and stop.is_integer()):
        raise UsageError(f"{flag}: range {item!r} must start and stop at whole numbers")
    if integer and not mult and not by.is_integer():  # 1..10+0.5 would round to repeated rows
        raise UsageError(f"{flag}: range {item!r} needs a whole step")
    count = math.floor(math.log(stop / start, by) + 1e-9) + 1 if mult else math.floor((stop - start) / by + 1e-9) + 1
    if count > limit:
        raise UsageError(f"{flag}: range {item!r} has {count:,} values, more than {limit:,}")
    vals = []
    for i in range(count):
        v = start * by ** i if mult else start + by * i
        vals.append(int(round(v)) if integer else v)
    return vals


def parse_values(text: str, flag: str, integer: bool = True, limit: int = MAX_VALUES,
                 lo: float | None = None, hi: float | None = INPUT_MAX) -> list:
    """'1,2,4' | '1024..32768*2' | '0..100+10' (stop included) | mixtures separated by commas (RANGE_HELP).
    Each value is finite, whole when `integer`, within [lo, hi]; repeats are dropped, first one kept."""
    out: list = []
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        if ".." in item:
            out.extend(_range(item, flag, integer, limit))
        else:
            f = _finite(item, flag, item)
            if integer and not f.is_integer():
                raise UsageError(f"{flag}: {item!r} is not a whole number")
            out.append(int(f) if integer else f)
        if len(out) > limit:
            raise UsageError(f"{flag}: more than {limit:,} values")
    if not out:
        raise UsageError(f"{flag}: no values")
    for v in out:
        if lo is not None and v < lo:
            raise UsageError(f"{flag} must be at least {lo:,}, got {v:,}")
        if hi is not None and v > hi:
            bound = "2**53" if hi == INPUT_MAX else f"{hi:,}"
            raise UsageError(f"{flag} must be at most {bound}, got {v:,.6g}")
    return list(dict.fromkeys(out))
