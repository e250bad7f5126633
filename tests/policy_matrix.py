"""The policy matrix generic tests run over (it lives with the policies so `kvsim validate` shares it)."""

from kvsim.policies.examples import COMPOSITIONS, SMALL as POLICIES

__all__ = ["COMPOSITIONS", "POLICIES"]
