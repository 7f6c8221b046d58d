"""Small tables for the one-shot experiments (minimax, bandit, divergence): CSV files in a
run's ``metrics/`` folder, and numbers formatted for their records' tables and captions."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_csv", "fmt"]


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts sharing the first row's keys) as CSV with a header; returns the path.

    Raises:
        ValueError: ``rows`` is empty (there would be no header).
    """
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def fmt(value: Any, digits: int = 4) -> str:
    """A number in ``digits`` significant figures (inf, nan and non-numbers as they are)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "∞" if value > 0 else ("-∞" if value < 0 else "nan")
    return f"{value:.{digits}g}"

