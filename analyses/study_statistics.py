"""The emergence study's statistics, as its design is (issue 45; post hoc: written 2026-12-05, after the study's results
were on record, and reported beside the committed rule, never in place of it).

The design: every training seed fixes the initial weights and the order of the training data in every condition, so
the runs of one seed are paired across conditions (a seed that makes the last layer low does so in several
conditions). So an effect is measured on the paired differences by seed, condition minus reference, and tested by an
exact sign-flip permutation test: under no effect each difference is as likely to have either sign, and the p-value is
the share of the 2^n sign assignments whose mean is at least as far from 0 as the observed one (two-sided). With n
seeds it cannot go below 2^(1 - n): 0.25 with the study's 3.

The family: every condition compared with the reference (those with enough paired seeds) x every measure of the main
table, less a measure that is constant over every run (it can show no effect). Every p-value is corrected over the
whole family, by Holm (the family-wise error) and, beside it, by Benjamini-Hochberg (the false discovery rate). One
measure is confirmatory, named here: the last layer's ln per-key ratio, the study's question (do deep layers stop
looking at the past); Holm over the conditions for it alone. The rest are exploratory.

Power: from the reference's between-seed standard deviation of each measure, the seeds per arm a two-sided test at the
family's first Holm level (alpha / N) needs to detect an effect of the size named in EFFECT_OF_INTEREST with 80% power
(normal approximation, unpaired: a conservative bound for the paired design when the pairing's correlation is
unknown), and the smallest effect the study's seeds could detect so.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

ALPHA = 0.05            # the family-wise error (Holm) and the false discovery rate (Benjamini-Hochberg)
POWER = 0.8             # the power of the power statement
MAX_EXACT_SEEDS = 20    # 2^20 sign assignments: the exact test's bound


def effect_of_interest(measure: str) -> tuple[float, str]:
    """The effect size the power statement is stated for, per kind of measure, in the measure's units (with words):
    a 10x change of a per-key ratio (the paper's deep layers sit 10x below the study's reference), 1 dB of PSNR, 0.02
    of SSIM, 0.05 of a cosine. Named 2026-12-05 with the statistics (post hoc: not a verdict's criterion)."""
    if measure.startswith("log_ratio"):
        return math.log(10), "a 10x change of the ratio (ln 10)"
    if measure.startswith("lit_share"):
        return 0.1, "0.1 of the lit share"
    if measure.startswith("psnr"):
        return 1.0, "1 dB"
    if measure.startswith("ssim"):
        return 0.02, "0.02 of SSIM"
    return 0.05, "0.05 of the cosine"


def sign_flip_p(differences: list[float]) -> float:
    """The exact two-sided sign-flip permutation p-value of paired differences: the share of the 2^n sign assignments
    of their magnitudes whose mean is at least as far from 0 as the observed mean's (ties count, with a tolerance of
    1e-12 relative to the largest magnitude, so that the observed assignment always counts)."""
    n = len(differences)
    if not 1 <= n <= MAX_EXACT_SEEDS:
        raise ValueError(f"{n} differences; accepted: 1..{MAX_EXACT_SEEDS} for the exact test")
    magnitudes = np.abs(np.asarray(differences, dtype=float))
    observed = abs(float(np.mean(differences)))
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n]
    means = np.abs(signs @ magnitudes) / n
    tolerance = 1e-12 * max(float(magnitudes.max()), 1e-300)
    return float(np.mean(means >= observed - tolerance))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given: the k-th smallest p times (m - k + 1),
    made non-decreasing in that order, at most 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the order given (scipy's)."""
    from scipy.stats import false_discovery_control

    return [float(p) for p in false_discovery_control(np.asarray(p_values, dtype=float), method="bh")] if p_values else []


def seeds_needed(sd: float, effect: float, alpha: float, power: float = POWER) -> int:
    """Seeds per arm for a two-sided unpaired comparison of two means at level `alpha` to detect `effect` with `power`,
    when the runs' standard deviation is `sd` (normal approximation: n = 2 (z_{1-alpha/2} + z_power)^2 sd^2 / effect^2,
    rounded up)."""
    from scipy.stats import norm

    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return max(2, math.ceil(2 * (z * sd / effect) ** 2))


def detectable(sd: float, seeds: int, alpha: float, power: float = POWER) -> float:
    """The smallest effect the same comparison detects with `power` at `seeds` per arm."""
    from scipy.stats import norm

    return (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd * math.sqrt(2 / seeds)


def constant_measures(values: pd.DataFrame) -> dict[str, float]:
    """The measures whose value is the same in every run (measure -> that value): they can show no effect and are left
    out of the family."""
    return {m: float(v.iloc[0]) for m, v in values.groupby("measure").value if np.ptp(v.to_numpy(dtype=float)) == 0}


def family_table(values: pd.DataFrame, confirmatory: str, reference: str = "reference", min_seeds: int = 3,
                 names: dict[str, str] | None = None) -> pd.DataFrame:
    """The family of comparisons of a study: `values` holds one row per run and measure (condition, seed, measure,
    value). One row per (condition other than the reference, measure) with at least `min_seeds` seeds paired with the
    reference's, and a measure that is not constant over every run: the paired seeds, n, the effect (the mean of the
    differences condition - reference by seed) and their SD, the exact sign-flip p, Holm's and Benjamini-Hochberg's
    adjusted p over the whole family, and, for the `confirmatory` measure, Holm over the conditions alone."""
    columns = ["condition", "measure", "name", "confirmatory", "seeds", "n", "effect", "sd", "p", "p_holm", "p_bh",
               "p_confirmatory"]
    constant = constant_measures(values)
    ref = values[values.condition == reference].set_index(["measure", "seed"]).value
    rows = []
    for (condition, measure), group in values[values.condition != reference].groupby(["condition", "measure"],
                                                                                       sort=False):
        if measure in constant:
            continue
        pairs = [(int(s), float(v) - float(ref[(measure, s)])) for s, v in zip(group.seed, group.value, strict=True)
                 if (measure, s) in ref.index]
        pairs.sort()
        if len(pairs) < min_seeds:
            continue
        differences = [d for _, d in pairs]
        rows.append({"condition": condition, "measure": measure, "name": (names or {}).get(measure, measure),
                     "confirmatory": measure == confirmatory, "seeds": ",".join(str(s) for s, _ in pairs),
                     "n": len(pairs), "effect": float(np.mean(differences)),
                     "sd": float(np.std(differences, ddof=1)) if len(pairs) > 1 else math.nan,
                     "p": sign_flip_p(differences)})
    table = pd.DataFrame(rows, columns=columns[:10])
    if table.empty:
        return pd.DataFrame(columns=columns)
    table["p_holm"] = holm(list(table.p))
    table["p_bh"] = benjamini_hochberg(list(table.p))
    table["p_confirmatory"] = math.nan
    chosen = table.confirmatory.to_numpy()
    table.loc[chosen, "p_confirmatory"] = holm(list(table.p[chosen]))
    return table


def power_table(values: pd.DataFrame, family: pd.DataFrame, reference: str = "reference") -> pd.DataFrame:
    """Per measure of the family: the reference's between-seed SD, the effect of interest, the seeds per arm needed to
    detect it at the family's first Holm level (alpha / N) and, for the confirmatory measure, at alpha / (its
    conditions), and the smallest effect the study's seeds detect at alpha / N."""
    size = len(family)
    rows = []
    for measure in dict.fromkeys(family.measure):
        ref = values[(values.condition == reference) & (values.measure == measure)].value.to_numpy(dtype=float)
        if len(ref) < 2:
            continue
        sd = float(np.std(ref, ddof=1))
        effect, words = effect_of_interest(measure)
        seeds = int(family[family.measure == measure].n.min())
        confirmatory = bool(family[family.measure == measure].confirmatory.any())
        alpha = ALPHA / (int((family.measure == measure).sum()) if confirmatory else size)
        rows.append({"measure": measure, "reference_sd": sd, "effect": effect, "effect_words": words,
                     "alpha": alpha, "seeds_needed": seeds_needed(sd, effect, alpha) if sd > 0 else 2,
                     "seeds": seeds, "detectable": detectable(sd, seeds, alpha)})
    return pd.DataFrame(rows, columns=["measure", "reference_sd", "effect", "effect_words", "alpha", "seeds_needed",
                                       "seeds", "detectable"])


def exact_floor(seeds: int) -> float:
    """The smallest two-sided p-value the exact sign-flip test reaches with `seeds` paired seeds."""
    return 2.0 ** (1 - seeds)
