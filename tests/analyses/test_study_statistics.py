"""The emergence study's statistics (`analyses.study_statistics`) against hand computations: the exact sign-flip
test, Holm's and Benjamini-Hochberg's corrections, the power formula; and on constructed tables, that a planted effect
in every seed is found (also where seed offsets hide it from an unpaired comparison) and a seed-only effect is not."""

import math

import numpy as np
import pandas as pd
import pytest

from analyses.emergence import welch
from analyses.study_statistics import (
    benjamini_hochberg,
    detectable,
    exact_floor,
    family_table,
    holm,
    power_table,
    seeds_needed,
    sign_flip_p,
)


def test_the_exact_sign_flip_p_by_hand():
    # |d| = (1, 2, 3), mean 2: only the all-plus and all-minus assignments reach |mean| 2: 2 of 8
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25 == exact_floor(3)
    # |d| = (1, 1, 2), mean 2/3: the 8 means are +-4/3, +-2/3 (twice each), 0 (twice): 6 of 8 reach 2/3
    assert sign_flip_p([1.0, -1.0, 2.0]) == 0.75
    assert sign_flip_p([0.0, 0.0]) == 1.0  # no difference: every assignment ties
    assert sign_flip_p([1.0] * 8) == 2 / 256 == exact_floor(8)
    with pytest.raises(ValueError, match="accepted: 1..20"):
        sign_flip_p([])


def test_holm_and_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, then non-decreasing: 0.06 last
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: p * 4 / rank = 0.02, 0.02, 0.04, 0.04 (ranks 1..4 of the sorted), then the minimum from the top
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_the_power_formula_by_hand():
    # the figure: SD 2.48 ln units, a 10x change (ln 10), two-sided 0.05, 80%: 2 (1.95996 + 0.84162)^2
    # (2.48 / 2.302585)^2 = 18.21 -> 19 seeds per arm
    assert seeds_needed(2.48, math.log(10), 0.05) == 19
    assert detectable(2.48, 19, 0.05) <= math.log(10) < detectable(2.48, 18, 0.05)


def _values(effect: float, offsets: list[float], noise: float, seed: int = 0) -> pd.DataFrame:
    """Runs of a reference and two conditions over len(offsets) seeds, measures m (where `a` has `effect`) and c
    (constant): each run's value is its seed's offset plus noise (plus the effect)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, offset in enumerate(offsets):
        for condition in ("reference", "a", "b"):
            value = offset + (effect if condition == "a" else 0.0) + noise * rng.standard_normal()
            rows += [{"condition": condition, "seed": s, "measure": "m", "value": value},
                     {"condition": condition, "seed": s, "measure": "c", "value": 1.0}]
    return pd.DataFrame(rows)


def test_a_planted_effect_in_every_seed_is_found_and_a_seed_only_effect_is_not():
    offsets = [0.0, 3.0, -2.0, 5.0, -4.0, 1.0, 6.0, -3.0]  # seeds differ far more than the effect
    values = _values(effect=0.5, offsets=offsets, noise=0.05)
    table = family_table(values, confirmatory="m").set_index("condition")
    assert list(table.measure) == ["m", "m"]  # the constant measure is left out of the family: 2 comparisons
    assert table.loc["a", "p"] == exact_floor(8) and table.loc["a", "p_holm"] == pytest.approx(2 * exact_floor(8))
    assert table.loc["a", "p_holm"] <= 0.05 and table.loc["a", "effect"] == pytest.approx(0.5, abs=0.05)
    assert table.loc["b", "p_holm"] > 0.05  # no effect planted: not found
    # unpaired, the same runs cannot show it: the seeds' offsets swamp Welch's interval
    ref = list(values[(values.condition == "reference") & (values.measure == "m")].value)
    a = list(values[(values.condition == "a") & (values.measure == "m")].value)
    _, low, high = welch(a, ref, 0.95)
    assert low < 0 < high
    # a seed-only effect (every condition of a seed shifted alike) is no effect of a condition
    seed_only = _values(effect=0.0, offsets=[10.0 * s for s in range(8)], noise=0.05, seed=1)
    assert (family_table(seed_only, confirmatory="m").p_holm > 0.05).all()
    # with 3 seeds even a planted effect cannot be found: the exact floor is 0.25
    three = family_table(_values(effect=5.0, offsets=offsets[:3], noise=0.05), confirmatory="m")
    assert three.p.min() == 0.25 and (three.p_holm > 0.05).all()
    assert list(three.p_confirmatory) == pytest.approx(holm(list(three.p)))
    power = power_table(values, table.reset_index())
    sd = float(np.std(ref, ddof=1))
    assert power.loc[0, "reference_sd"] == pytest.approx(sd)
    assert power.loc[0, "seeds_needed"] == seeds_needed(sd, 0.05, 0.05 / 2)  # a cosine-like measure: 0.05; 2 conditions
