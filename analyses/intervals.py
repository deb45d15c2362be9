"""Means over clips with their 95% t-intervals: what every verdict and table of the report rests on."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

CONFIDENCE = 0.95  # two-sided t-interval over clips


def interval(values: list[float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the mean and its two-sided t-interval at CONFIDENCE; NaN bounds for one value."""
    from scipy import stats

    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan"), n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def table_over_clips(items: list, table: Callable[[object], pd.DataFrame], key: str, columns: list[str]) -> pd.DataFrame:
    """`table(item)` for every item of a sweep, then per `key` value each column's mean and interval over the items:
    columns "{column}", "{column}_low", "{column}_high", and "clips"."""
    frames = [table(item).set_index(key) for item in items]
    rows = []
    for value in frames[0].index:
        row = {key: value, "clips": len(frames)}
        for column in columns:
            mean, low, high, _ = interval([float(f.loc[value, column]) for f in frames])
            row |= {column: mean, f"{column}_low": low, f"{column}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)
