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


def clip_groups(items: list) -> dict:
    """The items of a sweep grouped by clip (several noise draws of one clip are one unit of the intervals), in the
    order of their clips; an item without a recorded clip is its own group."""
    groups: dict = {}
    for i, item in enumerate(items):
        clip = item.manifest.get("clip")
        groups.setdefault(clip if clip is not None else f"item {i}", []).append(item)
    return groups


def over_clips(items: list, measure: Callable[[object], float]) -> tuple[float, float, float, int]:
    """`measure(item)` averaged over each clip's draws, then the mean and interval over clips."""
    return interval([math.fsum(measure(item) for item in draws) / len(draws) for draws in clip_groups(items).values()])


def table_over_clips(items: list, table: Callable[[object], pd.DataFrame], key: str, columns: list[str]) -> pd.DataFrame:
    """`table(item)` for every item of a sweep, averaged over each clip's noise draws, then per `key` value each
    column's mean and interval over the clips: columns "{column}", "{column}_low", "{column}_high", and "clips"."""
    groups = [[table(item).set_index(key) for item in draws] for draws in clip_groups(items).values()]
    rows = []
    for value in groups[0][0].index:
        row = {key: value, "clips": len(groups)}
        for column in columns:
            per_clip = [math.fsum(float(f.loc[value, column]) for f in draws) / len(draws) for draws in groups]
            mean, low, high, _ = interval(per_clip)
            row |= {column: mean, f"{column}_low": low, f"{column}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)
