"""One memory budget for work whose intermediate grows with the data.

The budget is scikit-learn's ``working_memory`` (MiB; 1,024 by default; set it with
``sklearn.set_config(working_memory=...)`` or ``sklearn.config_context``), so one setting
bounds our chunked work and scikit-learn's alike.
"""

from __future__ import annotations

from sklearn import get_config


def budget_bytes() -> int:
    """The working-memory budget in bytes."""
    return int(get_config()["working_memory"] * 2**20)


def chunk_rows(row_bytes: int, budget: int | None = None) -> int:
    """How many rows of ``row_bytes`` each fit the budget (at least one)."""
    if row_bytes <= 0:
        raise ValueError(f"row_bytes must be positive, got {row_bytes}")
    return max(1, (budget_bytes() if budget is None else budget) // row_bytes)
