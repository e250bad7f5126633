"""Claim checking: is that claim even possible? Each row of a claim table becomes the predict() call a user
would write, and each claimed figure is compared with a physical bound or an exact value (judge.py).

    from kvsim.check import check, read
    verdicts = check(read("examples/claims/vllm_paper.csv"))

Verdicts: consistent, impossible (beats a physical bound), inconsistent (differs from an exact value, or, with
a calibrated profile, is faster than its prediction allows by the profile's own held-out error), unverifiable (says what is missing), invalid (a configuration that cannot exist).
"""

from __future__ import annotations

from ..profile import Profile
from .judge import VERDICTS, Checker, Verdict
from .table import CLAIMS, Table, parse, read

FAILING = ("impossible", "inconsistent", "invalid")


def check(table: Table, profile: Profile | None = None, tolerance: float = 0.02) -> list[Verdict]:
    """Every claim of `table` judged against the datasheet roofline (or `profile`), `tolerance` relative."""
    return Checker(table, profile, tolerance).run()


def exit_code(verdicts: list[Verdict]) -> int:
    """0 when every claim is consistent or unverifiable, 1 when any is impossible, inconsistent or invalid."""
    return 1 if any(v.verdict in FAILING for v in verdicts) else 0


__all__ = ["CLAIMS", "FAILING", "VERDICTS", "Checker", "Table", "Verdict", "check", "exit_code", "parse", "read"]
