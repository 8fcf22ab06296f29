"""``FMBENCH_*`` settings read from the environment (they reach Ray tasks with every task)."""

from __future__ import annotations

import os

from harness.errors import HarnessError


def env_seconds(name: str, default: float, *, error: type[HarnessError] = HarnessError,
                allow_zero: bool = False) -> float:
    """Seconds from ``$name`` (``default`` when unset or empty); a value that is not a number, or
    not > 0 (>= 0 with ``allow_zero``), raises ``error`` in one line naming the variable."""
    text = os.environ.get(name, "")
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        raise error(f"{name} must be a number of seconds, got {text!r}") from None
    if not (value >= 0 if allow_zero else value > 0):
        raise error(f"{name} must be {'>=' if allow_zero else '>'} 0, got {text!r}")
    return value
