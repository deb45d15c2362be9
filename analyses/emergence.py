"""The emergence study: what makes deep layers stop looking at the past, measured over training seeds.

A run of the study (`scd.training.study`) is a condition (the reference's settings with one factor changed) and a
training seed. Its card holds how it was trained (command, seed, data, steps, compute, wall time,
hardware) and what the probe measured on it: quality against the truth and against copying the last
context frame, per-layer measures (the log per-key ratio of attention on an earlier-frame key to an
own-frame key, the lit share) and finding 1's numbers at the middle layer, each a mean over the val clips;
on the sprites scene (every condition's evaluation) and, for the reference and the textured condition, on
the textured scene too (the 2 x 2 table); and the same at its training snapshots.

Everything after `measure` reads cards only: the committed cards regenerate the table, figures and the
answer without the checkpoints (which stay out of git). A condition's value is the mean over its seeds
with a t interval over seeds; a factor's effect is its condition's mean minus the reference's with a
Welch interval over seeds, reported as an effect only when that interval excludes 0 (the rules of
`analyses.thresholds`, committed before the runs). Runs that do not beat copy-last as the study requires
are listed and left out of the comparisons. Beside that rule, the design's analysis (post hoc,
`analyses.study_statistics`): the effects paired by seed, exact sign-flip tests corrected over the whole family of
comparisons, and the power of the study's seeds (`family`, `family_lines`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses.claims import (
    deep_layers_local,
    items_of,
    last_layers_less_similar,
    measures_of,
    middle_layer_similarity,
    paper_layers,
    shown,
    sparse_deep_attention,
)
from analyses.errors import takes_run
from analyses.intervals import interval
from analyses.paper_figures import mean_map
from analyses.thresholds import threshold
from probes.recording import Recording
from scd.training.study import RUN_DETAILS

CARD_FORMAT = 2
SCENE = "sprites"  # every condition is evaluated on the val clips of this scene (the same clips for all)
TWO_BY_TWO = ("reference", "textured")  # conditions also evaluated on the other scene: the 2 x 2 table
# Settings that say where or how fast a run went, not what was trained.
NOT_SETTINGS = {*RUN_DETAILS, "dtype", "sha256", "seed"}


class CardError(ValueError):
    """A card or run that cannot be read; the message names the file and what is wrong."""


def _as_list(values: tuple[float, float, float, int]) -> list:
    mean, low, high, n = values
    return [float(mean), None if math.isnan(low) else float(low), None if math.isnan(high) else float(high), int(n)]


# -- measured on a probed sweep --------------------------------------------------------------------------------

def _quality(run: Recording) -> dict[str, list[float]]:
    """Per clip: PSNR / SSIM of the generated frames against the truth and of copying the last context frame, and the
    gains, from the videos the probe stored (uint8), so the numbers are of the very generations the measures are of."""
    from scd.evaluate import frame_quality

    context = min(run.manifest["frames"])
    rows: dict[str, list[float]] = {"psnr": [], "ssim": [], "copy_psnr": [], "copy_ssim": []}
    for item in items_of(run):
        generated, truth = (torch.from_numpy(v).permute(0, 3, 1, 2).double() / 127.5 - 1 for v in item.video())
        probed = slice(context, context + len(item.manifest["frames"]))
        for who, frames in (("", generated[probed]), ("copy_", truth[context - 1:context].expand_as(truth[probed]))):
            psnr, ssim = frame_quality(frames, truth[probed])
            rows[f"{who}psnr"].append(float(psnr.mean()))
            rows[f"{who}ssim"].append(float(ssim.mean()))
    for kind in ("psnr", "ssim"):
        rows[f"{kind}_gain"] = [m - c for m, c in zip(rows[kind], rows[f"copy_{kind}"], strict=True)]
    return rows


def _per_clip_f1(run: Recording) -> dict[str, list[float]]:
    """Finding 1's numbers at the middle layer, per clip (the claim's own measures, `analyses.claims`)."""
    from analyses.claims import cross_step, input_step, two_frame

    layer = paper_layers(run.depth)["middle"][0]
    rows: dict[str, list[float]] = {"f1_cross_step": [], "f1_minus_two_frames": [], "f1_minus_input": [],
                                    "f1_centred_minus_input": []}
    for item in items_of(run):
        raw = cross_step(item, layer)
        rows["f1_cross_step"].append(raw)
        rows["f1_minus_two_frames"].append(raw - two_frame(item, layer, "token"))
        rows["f1_minus_input"].append(raw - input_step(item, "token"))
        rows["f1_centred_minus_input"].append(cross_step(item, layer, "centred") - input_step(item, "centred"))
    return rows


@takes_run
def summary(run: Recording) -> dict[str, dict]:
    """Every measure of the study on one probed sweep: {measure: {"clips": per-clip values, "mean": [mean, low,
    high, n] over the clips}}. Per layer L: `log_ratio_L`, ln of the per-key ratio (earlier / own frame, all steps,
    heads and frames averaged) of each clip; `lit_share_L`; then quality and finding 1 at the middle layer."""
    items = items_of(run)
    per_clip = _quality(run)
    tables = [measures_of(item).set_index("layer") for item in items]  # the claims' own, computed once per sweep
    for layer in run.attention_layers:
        per_clip[f"log_ratio_{layer}"] = [math.log(max(float(t.loc[layer, "per_key_ratio"]), 1e-30)) for t in tables]
        per_clip[f"lit_share_{layer}"] = [float(t.loc[layer, "lit_share"]) for t in tables]
    per_clip.update(_per_clip_f1(run))
    return {name: {"clips": values, "mean": _as_list(interval(values))} for name, values in per_clip.items()}


def _claim(claim) -> dict:
    return {"name": claim.name, "verdict": claim.verdict, "measured": claim.measured}


@takes_run
def measure(run: Recording, scene: str = SCENE) -> dict:
    """A card's evaluation of a run on one scene (the one its sweep was probed on): the probe's settings, the summary,
    the claims' verdicts."""
    items = items_of(run)
    return {
        "probe": {"clips": [item.manifest["clip"] for item in items], "seeds": [item.manifest["seed"] for item in items],
                  "steps": len(run.manifest["steps"]), "frames": run.manifest["frames"],
                  "scene": scene, "split": items[0].manifest.get("split"),
                  "command": items[0].manifest.get("command")},
        "summary": summary(run),
        "claims": {c.__name__: _claim(c(run)) for c in (middle_layer_similarity, last_layers_less_similar,
                                                         deep_layers_local, sparse_deep_attention)},
    }


def snapshot_point(step: int, run: Recording, scene: str, causal_step: int | None = None) -> dict:
    """One point over training: a snapshot's summary (means over clips only), the scene it was probed on, its step
    and its causal step (after any bidirectional pretraining: where the conditions are compared)."""
    return {"step": step, "causal_step": step if causal_step is None else causal_step, "scene": scene,
            "summary": {name: value["mean"] for name, value in summary(run).items()}}


@takes_run
def maps_of(run: Recording) -> dict[str, np.ndarray]:
    """The paper's figure layers' pooled maps (heads and steps averaged, clips too), float32, keyed "layer_N"."""
    layers = [layer for layer in paper_layers(run.depth)["figure"] if layer in run.attention_layers]
    return {f"layer_{layer}": mean_map(run, layer).float().numpy() for layer in layers}


def training_record(run_dir: str | Path) -> dict:
    """How a `probe train` run was trained: its settings, command, seed, steps, compute, wall time and machines."""
    from scd.evaluate import training_command
    from scd.flops import training_flops

    run_dir = Path(run_dir)
    try:
        settings = json.loads((run_dir / "train.json").read_text())
        model = json.loads((run_dir / "config.json").read_text())
        log = pd.read_csv(run_dir / "loss.csv")
    except (OSError, ValueError) as e:
        raise CardError(f"{run_dir} is not a training directory written by probe train ({e})") from None
    sittings = (run_dir / "machines.txt").read_text().splitlines() if (run_dir / "machines.txt").exists() else []
    model = {k: v for k, v in model.items() if k not in ("dtype", "sha256")}
    per_step = training_flops(model, settings["frames"], settings["batch_size"])
    return {"command": training_command(run_dir), "settings": settings, "model": model, "seed": settings["seed"],
            "steps": int(log.step.max()), "pflop": len(log) * per_step / 1e15,
            "wall_hours": float(log.seconds.iloc[-1]) / 3600,
            "hardware": "; ".join(sorted({line.split(": ", 1)[1] for line in sittings})) or "(not recorded)",
            "final_loss": float(log.loss.tail(100).mean()), "weights": "raw (the optimised weights, not the EMA)"}


def make_card(name: str, condition: str, factor: str, source: str, record: dict, evaluations: dict[str, dict],
              over_training: list[dict] | None = None) -> dict:
    """A run's card: its condition and seed, where it came from, how it was trained, what was measured."""
    return {"format": CARD_FORMAT, "name": name, "condition": condition, "seed": record["seed"], "factor": factor,
            "source": source, "training": record, "evaluations": evaluations, "over_training": over_training or []}


# -- from cards only ----------------------------------------------------------------------------------------------

def value_text(values: list | None, digits: int = 3) -> str:
    """A card's [mean, low, high, n] as claims.shown writes it ("-" where missing; no interval where JSON holds None)."""
    if not values:
        return "-"
    mean, low, high, n = values
    return shown((mean, math.nan if low is None else low, math.nan if high is None else high, n), digits)


def depth_of(card: dict) -> int:
    return int(card["training"]["model"]["depth"])


def trained_scene(card: dict) -> str:
    return card["training"]["settings"].get("scene", SCENE)


def competence(card: dict) -> tuple[bool, str]:
    """Whether a run beats copy-last as the study requires (`STUDY_COMPETENCE_DB`, on the val clips of the scene it
    was trained on, at least 16 of them), and the numbers in words."""
    floor, scene = threshold("STUDY_COMPETENCE_DB"), trained_scene(card)
    evaluation = card["evaluations"].get(scene)
    if evaluation is None:
        return False, f"not evaluated on its own scene ({scene})"
    psnr, ssim = evaluation["summary"]["psnr_gain"]["mean"], evaluation["summary"]["ssim_gain"]["mean"]
    enough = psnr[3] >= 16 and psnr[1] is not None and ssim[1] is not None
    ok = enough and psnr[0] >= floor and psnr[1] > 0 and ssim[1] > 0
    return ok, (f"PSNR gain over copy-last {value_text(psnr, 2)} dB, SSIM gain {value_text(ssim)} on {psnr[3]} "
                f"{scene} val clips")


def settings_problems(cards: list[dict]) -> list[str]:
    """Every way the cards break "one factor at a time": a card whose training settings or model differ from its
    condition's plan (`scd.training.study.study_config`) in anything but where it ran, or two cards of one condition and seed."""
    from scd.training.study import CONDITIONS, off_plan, study_config
    from scd.training.train import model_config

    problems, seen = [], set()
    for card in cards:
        condition, seed = card.get("condition"), card.get("seed")
        if condition not in CONDITIONS:
            problems.append(f"{card['name']}: condition {condition!r} is not one of the study's")
            continue
        if (condition, seed) in seen:
            problems.append(f"{card['name']}: a second card of {condition} seed {seed}")
        seen.add((condition, seed))
        planned = study_config(condition, seed)
        wrong = off_plan(card["training"]["settings"], condition, seed)
        wrong += sorted(f"model {k}" for k, v in model_config(planned).items() if card["training"]["model"].get(k) != v)
        if wrong:
            problems.append(f"{card['name']}: differs from its condition's plan in {', '.join(wrong)}")
        if card["training"]["steps"] != planned.steps:
            problems.append(f"{card['name']}: trained {card['training']['steps']} of its {planned.steps} steps")
    return problems


def welch(a: list[float], b: list[float], level: float) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch t interval at `level` (NaN bounds with fewer than 2 values in either)."""
    from scipy import stats

    diff = float(np.mean(a) - np.mean(b)) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


def run_value(card: dict, measure: str, scene: str = SCENE) -> float | None:
    """A run's value of a measure on a scene: the mean over its clips (None where not measured)."""
    evaluation = card["evaluations"].get(scene)
    value = evaluation["summary"].get(measure) if evaluation else None
    return None if value is None else value["mean"][0]


MEASURE_NAMES = {
    "psnr_gain": "PSNR gain over copy-last (dB)", "ssim_gain": "SSIM gain over copy-last", "psnr": "PSNR vs truth (dB)",
    "ssim": "SSIM vs truth", "f1_cross_step": "finding 1: cross-step cosine, middle layer",
    "f1_minus_two_frames": "finding 1: minus the two-frame control", "f1_minus_input": "finding 1: minus the input's",
    "f1_centred_minus_input": "finding 1: centred cosine minus the input's",
}


def measure_name(measure: str, depth: int) -> str:
    """A measure's name in words, with the paper's layer beside the study's (`paper_layers`)."""
    if measure in MEASURE_NAMES:
        return MEASURE_NAMES[measure]
    kind, layer = measure.rsplit("_", 1)
    words = {"log_ratio": "ln per-key ratio (earlier / own frame)", "lit_share": "lit share of context cells"}[kind]
    return f"{words}, layer {layer} of {depth}"


def table_measures(depth: int) -> list[str]:
    """The measures of the main table: quality, finding 2 at every layer (per-key ratio) and the last (lit share),
    finding 1 at the middle layer."""
    last = depth - 1
    return (["psnr_gain", "ssim_gain"] + [f"log_ratio_{layer}" for layer in range(depth)] + [f"lit_share_{last}"]
            + ["f1_cross_step", "f1_minus_two_frames", "f1_minus_input", "f1_centred_minus_input"])


def seed_table(cards: list[dict], scene: str = SCENE, measures: list[str] | None = None) -> pd.DataFrame:
    """One row per condition and measure: the seeds (competent runs only), the mean over seeds with its t interval,
    the reference's between-seed half-width (the seed floor), and the effect against the reference: the difference
    of means with its Welch interval and what it says (`STUDY_EFFECT_LEVEL`, `STUDY_SEEDS_MIN`)."""
    from scd.training.study import CONDITIONS

    level, needed = threshold("STUDY_EFFECT_LEVEL"), int(threshold("STUDY_SEEDS_MIN"))
    kept = [c for c in cards if competence(c)[0]]
    if not kept:
        return pd.DataFrame(columns=["condition", "measure", "name", "seeds", "values", "mean", "low", "high",
                                     "effect", "effect_low", "effect_high", "verdict"])
    depth = depth_of(kept[0])
    measures = measures or table_measures(depth)
    by_condition: dict[str, list[dict]] = {}
    for card in sorted(kept, key=lambda c: c["seed"]):
        by_condition.setdefault(card["condition"], []).append(card)
    rows = []
    for condition in [c for c in CONDITIONS if c in by_condition]:
        runs = by_condition[condition]
        for measure in measures:
            values = [v for c in runs if (v := run_value(c, measure, scene)) is not None]
            reference = [v for c in by_condition.get("reference", []) if (v := run_value(c, measure, scene)) is not None]
            if not values:
                continue
            mean, low, high, n = interval(values)
            row = {"condition": condition, "measure": measure, "name": measure_name(measure, depth),
                   "seeds": ",".join(str(c["seed"]) for c in runs if run_value(c, measure, scene) is not None),
                   "values": values, "mean": mean, "low": low, "high": high}
            if condition == "reference":
                row.update(effect=math.nan, effect_low=math.nan, effect_high=math.nan, verdict="(the reference)")
            else:
                effect, e_low, e_high = welch(values, reference, level)
                if len(values) < needed or len(reference) < needed:
                    verdict = f"too few seeds ({len(values)} and {len(reference)} of {needed})"
                elif e_low > 0 or e_high < 0:
                    verdict = "higher than the reference" if e_low > 0 else "lower than the reference"
                else:
                    verdict = "no detectable effect at this scale"
                row.update(effect=effect, effect_low=e_low, effect_high=e_high, verdict=verdict)
            rows.append(row)
    return pd.DataFrame(rows)


def run_values(cards: list[dict], scene: str = SCENE) -> pd.DataFrame:
    """One row per competent run and measure of the main table: condition, seed, measure, value (the run's mean over
    the val clips of `scene`): what `analyses.study_statistics` reads."""
    kept = [c for c in cards if competence(c)[0]]
    rows = [{"condition": c["condition"], "seed": c["seed"], "measure": m, "value": v}
            for c in kept for m in table_measures(depth_of(c)) if (v := run_value(c, m, scene)) is not None]
    return pd.DataFrame(rows, columns=["condition", "seed", "measure", "value"])


def family(cards: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(the family of comparisons, the power per measure, the measures left out as constant over every run, with
    their value): `analyses.study_statistics`, on the competent runs; the confirmatory measure is the last layer's ln
    per-key ratio, the study's question."""
    from analyses.study_statistics import constant_measures, family_table, power_table

    values = run_values(cards)
    if values.empty:
        return pd.DataFrame(), pd.DataFrame(), {}
    depth = depth_of(cards[0])
    constant = constant_measures(values)
    table = family_table(values, f"log_ratio_{depth - 1}", min_seeds=int(threshold("STUDY_SEEDS_MIN")),
                         names={m: measure_name(m, depth) for m in table_measures(depth)})
    return table, (power_table(values, table) if len(table) else pd.DataFrame()), constant


def family_lines(cards: list[dict]) -> list[str]:
    """The design's analysis in words (post hoc, issue 45): the family and its size, the seed-paired exact tests
    corrected over it, the confirmatory measure, and what the study's seeds could detect."""
    from analyses.study_statistics import ALPHA, exact_floor

    table, power, constant = family(cards)
    if table.empty:
        return []
    depth = depth_of(cards[0])
    last = f"log_ratio_{depth - 1}"
    size, conditions = len(table), table.condition.nunique()
    seeds = int(table.n.min())
    left = ("; left out, constant over every run: " + ", ".join(f"{measure_name(m, depth)} ({v:.3f})"
                                                               for m, v in sorted(constant.items()))) if constant else ""
    lines = [f"The design's analysis (post hoc: `analyses.study_statistics`, written 2026-12-05 after these results; "
             f"the committed rule's verdicts stand above): the family is {conditions} conditions x "
             f"{table.measure.nunique()} measures = {size} comparisons{left}. The runs of one seed share their initial "
             "weights and data order, so each effect is the mean of the paired differences by seed (condition minus "
             f"reference), tested exactly by flipping their signs: with {seeds} paired seeds its p-value cannot go "
             f"below {exact_floor(seeds):.3g}, while the family's first Holm step needs {ALPHA / size:.2g}."]
    found = table[table.p_holm <= ALPHA]
    smallest = table.sort_values("p").iloc[0]
    if found.empty:
        ties = int((table.p == smallest.p).sum())
        lines.append(f"No effect survives correction for the {size} comparisons (Holm; Benjamini-Hochberg alike): the "
                     f"smallest exact p is {smallest.p:.3g}" + (f", the test's floor, reached by {ties} of them"
                                                                if smallest.p == exact_floor(seeds) else "")
                     + f"; the smallest adjusted p is {table.p_holm.min():.3g} (Holm) and {table.p_bh.min():.3g} "
                     "(Benjamini-Hochberg).")
    else:
        lines.append(f"Effects that survive correction for the {size} comparisons (Holm at {ALPHA}): " + "; ".join(
            f"`{r.condition}` {r.name} {r.effect:+.3f} (p {r.p:.3g}, Holm {r.p_holm:.3g})" for r in found.itertuples())
            + ".")
    confirm = table[table.confirmatory]
    if len(confirm):
        held = confirm[confirm.p_confirmatory <= ALPHA]
        lines.append(f"Confirmatory, named with the analysis: {measure_name(last, depth)}, Holm over its "
                     f"{len(confirm)} conditions: " + ("no effect (adjusted p " + ", ".join(
                         f"`{r.condition}` {r.p_confirmatory:.3g}" for r in confirm.itertuples()) + ")."
                         if held.empty else "; ".join(f"`{r.condition}` {r.effect:+.3f} (adjusted p "
                                                       f"{r.p_confirmatory:.3g})" for r in held.itertuples()) + "."))
    row = power[power.measure == last]
    if len(row):
        r = row.iloc[0]
        lines.append(f"What the study can detect (80% power, normal approximation, from the reference's between-seed "
                     f"SD {r.reference_sd:.2f}): on {measure_name(last, depth)}, at alpha {r.alpha:.3g}, with its "
                     f"{int(r.seeds)} seeds per arm only an effect beyond {r.detectable:.2f} (a ratio changed "
                     f"x{math.exp(r.detectable):.3g}); {r.effect_words} needs about {int(r.seeds_needed)} seeds per "
                     "arm. Every measure's power: `family.md`.")
    if "combination" in set(table.condition):
        lines.append("The combination was chosen by its components' effects against the same reference runs it is "
                     "compared with: its comparison is not independent of its choice.")
    return lines


def _fmt(mean: float, low: float, high: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _times(log_ratio: float) -> str:
    """A ln ratio as a factor in plain digits: 0.0071, 2.5, 224, 1,300."""
    factor = math.exp(log_ratio)
    return f"{factor:,.0f}" if factor >= 100 else f"{factor:.2g}"


def table_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """The seed table as it is shown: one row per measure and condition, numbers with their intervals."""
    if table.empty:
        return pd.DataFrame(columns=["measure", "condition", "seeds", "mean [95% over seeds]",
                                     "effect vs reference [95% Welch]", "verdict"])
    rows = []
    for _, r in table.iterrows():
        digits = 2 if "psnr" in r["measure"] else 3
        rows.append({"measure": r["name"], "condition": r["condition"], "seeds": r["seeds"],
                     "mean [95% over seeds]": _fmt(r["mean"], r["low"], r["high"], digits),
                     "effect vs reference [95% Welch]": _fmt(r["effect"], r["effect_low"], r["effect_high"], digits),
                     "verdict": r["verdict"]})
    return pd.DataFrame(rows)


def runs_table(cards: list[dict]) -> pd.DataFrame:
    """One row per run: condition, seed, steps, compute, wall time, hardware, and whether it beat copy-last.

    Compute twice: the run's (its steps x one step's FLOPs, the same for every run of a condition) and what was
    spent on it (every logged step, so a sitting cut short after its last checkpoint counts the steps it redid)."""
    from scd.flops import training_flops

    rows = []
    for card in sorted(cards, key=lambda c: (c["condition"], c["seed"])):
        t = card["training"]
        ok, words = competence(card)
        per_step = training_flops(t["model"], t["settings"]["frames"], t["settings"]["batch_size"])
        rows.append({"run": card["name"], "condition": card["condition"], "seed": card["seed"], "steps": t["steps"],
                     "PFLOP": f"{t['steps'] * per_step / 1e15:.3f}", "PFLOP spent": f"{t['pflop']:.3f}",
                     "wall h": f"{t['wall_hours']:.2f}", "hardware": t["hardware"],
                     "beats copy-last (as required)": "yes" if ok else "no", "quality": words})
    return pd.DataFrame(rows)


def two_by_two(cards: list[dict], measures: tuple[str, ...] = ("psnr_gain",)) -> pd.DataFrame:
    """Trained scene x evaluated scene (reference: sprites, textured condition: textured): the mean over seeds with its
    interval, per measure; by default quality, and the last layer's ln per-key ratio."""
    kept = [c for c in cards if c["condition"] in TWO_BY_TWO and competence(c)[0]]
    if not kept:
        return pd.DataFrame()
    measures = (*measures, f"log_ratio_{depth_of(kept[0]) - 1}")
    rows = []
    for condition in TWO_BY_TWO:
        runs = [c for c in kept if c["condition"] == condition]
        if not runs:
            continue
        row = {"trained on": f"{trained_scene(runs[0])} ({condition})"}
        for scene in ("sprites", "textured"):
            for measure in measures:
                values = [v for c in runs if (v := run_value(c, measure, scene)) is not None]
                row[f"{measure_name(measure, depth_of(runs[0]))}, on {scene}"] = (
                    _fmt(*interval(values)[:3], 2 if "psnr" in measure else 3) + f" (n={len(values)})" if values else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def over_training(cards: list[dict], measures: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Per condition and causal step (a snapshot's step after any bidirectional pretraining): each measure's mean over
    the seeds probed there, with its t interval (every run's snapshots, competent or not at that step: the point is
    when it became so)."""
    rows = []
    for card in cards:
        depth = depth_of(card)
        chosen = measures or ("psnr_gain", "ssim_gain", f"log_ratio_{depth - 1}", f"log_ratio_{paper_layers(depth)['middle'][0]}",
                              "f1_cross_step", "f1_minus_input")
        settings = card["training"]["settings"]
        final = card["evaluations"].get(trained_scene(card))
        points = list(card.get("over_training", []))
        if final is not None and all(p["step"] != card["training"]["steps"] for p in points):  # the finished run
            points.append({"step": card["training"]["steps"], "scene": trained_scene(card),
                           "causal_step": card["training"]["steps"] - settings.get("bidirectional_steps", 0),
                           "summary": {name: value["mean"] for name, value in final["summary"].items()}})
        for point in points:
            for measure in chosen:
                if measure in point["summary"]:
                    rows.append({"condition": card["condition"], "seed": card["seed"],
                                 "step": point.get("causal_step", point["step"]),
                                 "scene": point["scene"], "measure": measure, "value": point["summary"][measure][0]})
    if not rows:
        return pd.DataFrame(columns=["condition", "step", "scene", "measure", "mean", "low", "high", "n"])
    frame = pd.DataFrame(rows)
    out = []
    for (condition, step, scene, measure), group in frame.groupby(["condition", "step", "scene", "measure"]):
        mean, low, high, n = interval(list(group.value))
        out.append({"condition": condition, "step": int(step), "scene": scene, "measure": measure, "mean": mean,
                    "low": low, "high": high, "n": n})
    return pd.DataFrame(out)


def combination_choice(table: pd.DataFrame, depth: int) -> list[str]:
    """The single factors the combination joins (`STUDY_COMBINED_FACTORS`): those with the lowest mean effect on the
    last layer's ln per-key ratio (the most toward frame-local deep layers), among the candidates
    (`scd.training.study.COMBINATION_CANDIDATES`) with enough seeds."""
    from scd.training.study import COMBINATION_CANDIDATES

    count = int(threshold("STUDY_COMBINED_FACTORS"))
    rows = table[(table.measure == f"log_ratio_{depth - 1}") & table.condition.isin(COMBINATION_CANDIDATES)
                 & ~table.verdict.str.startswith("too few")]
    return list(rows.sort_values("effect").condition[:count])


def answer(cards: list[dict]) -> str:
    """The plain-words answer, generated from the seed table: what clears the seed floor, and nothing else."""
    from scd.training.study import CONDITIONS

    lines = []
    if not cards:
        return "No run of the study has been measured yet."
    cards = sorted(cards, key=lambda c: c["name"])
    depth = depth_of(cards[0])
    layers = paper_layers(depth)
    last, middle = depth - 1, layers["middle"][0]
    failed = [(c["name"], competence(c)[1]) for c in cards if not competence(c)[0]]
    kept = [c for c in cards if competence(c)[0]]
    needed = int(threshold("STUDY_SEEDS_MIN"))
    counts = {name: sum(c["condition"] == name for c in kept) for name in CONDITIONS}
    from scd.training.study import REFERENCE

    lines.append(f"Model: width {cards[0]['training']['model']['width']}, {depth} blocks, "
                 f"{REFERENCE['steps']} causal steps per run (the study size of `scd.training.study`); the paper's layers "
                 f"28-29 are its layer {last}, layer 15 its layer {middle} (by relative depth). Runs that beat "
                 "copy-last, per condition: " + (", ".join(f"{name} {n}" for name, n in counts.items() if n) or "none")
                 + f" (of {needed} seeds each).")
    if failed:
        lines.append("Left out, not beating copy-last as required: " + "; ".join(f"`{n}` ({w})" for n, w in failed) + ".")
    table = seed_table(cards)
    if table.empty:
        lines.append("No run beats copy-last yet: nothing to compare.")
        return "\n".join(lines + _over_training_lines(cards, last))
    ref = table[(table.condition == "reference") & (table.measure == f"log_ratio_{last}")]
    if len(ref):
        r = ref.iloc[0]
        lines.append(f"Reference: layer {last}'s per-key ratio (earlier / own frame) {math.exp(r['mean']):.3f} "
                     f"(geometric mean over seeds {r['seeds']}; ln {_fmt(r['mean'], r['low'], r['high'])}); the paper's "
                     f"deep layers sit below 0.1 (ln {math.log(0.1):.2f}).")
    effects, none, few = [], [], []
    for condition in [c for c in CONDITIONS if c != "reference" and counts.get(c)]:
        rows = table[table.condition == condition].set_index("measure")
        if rows.empty:
            continue
        if rows.verdict.str.startswith("too few").all():
            few.append(f"`{condition}` ({counts[condition]} of {needed} seeds)")
            continue
        clear = rows[rows.verdict.isin(["higher than the reference", "lower than the reference"])]
        if clear.empty:
            none.append(f"`{condition}`")
            continue
        parts = []
        for measure, r in clear.iterrows():
            digits = 2 if "psnr" in measure else 3
            extra = f" (x{math.exp(r['effect']):.2f})" if measure.startswith("log_ratio") else ""
            parts.append(f"{r['name']} {r['verdict'].split(' than')[0]}: "
                         f"{_fmt(r['effect'], r['effect_low'], r['effect_high'], digits)}{extra}")
        effects.append(f"- `{condition}`: " + "; ".join(parts) + ".")
    if effects:
        lines.append("Under the committed rule, each comparison read alone and uncorrected (a Welch 95% interval over "
                     "seeds excluding 0; as many such intervals exclude 0 by chance as the comparisons are many):")
        lines += effects
    lines += family_lines(cards)
    if none:
        lines.append(f"No detectable effect at this scale on any measure: {', '.join(none)}.")
    if few:
        lines.append(f"Not yet compared (too few trained seeds): {', '.join(few)}.")
    last_rows = table[table.measure == f"log_ratio_{last}"]
    deep = last_rows[(last_rows.condition != "reference") & ~last_rows.verdict.str.startswith("too few")]
    if len(deep):  # the study's question, with what its intervals cannot exclude: an absent effect is not a small one
        lines.append(f"The question, layer {last} (the paper's 28-29): each factor's effect on its ln per-key ratio "
                     "[95% Welch] and the ratios to the reference's it does not exclude: " + "; ".join(
                         f"`{r.condition}` {_fmt(r.effect, r.effect_low, r.effect_high)} (x{_times(r.effect_low)} to "
                         f"x{_times(r.effect_high)})" for r in deep.itertuples()) + ".")
    lines += _over_training_lines(cards, last)
    reached = [(r.condition, sum(v < math.log(0.1) for v in r["values"]), len(r["values"]))
               for _, r in last_rows.iterrows()]  # the seed table's runs: those that beat copy-last
    reached = [f"{n} of {runs} runs of `{c}`" for c, n, runs in reached if n]
    lines.append("Finding 2 (the last layer's per-key ratio below 0.1): " + (
        f"reached by {', '.join(reached)}." if reached else
        f"not observed in any trained run of this {depth}-block model."))
    lines.append(_combination_line(table, counts, needed, depth))
    return "\n".join(lines)


def _combination_line(table: pd.DataFrame, counts: dict[str, int], needed: int, depth: int) -> str:
    """Where the combination condition stands: the factors it joins, the ones the rule names once every candidate has
    its seeds, or the candidates still short of seeds."""
    from scd.training.study import COMBINATION_CANDIDATES, COMBINED, CONDITIONS

    left = [c for c in CONDITIONS if c not in (*COMBINATION_CANDIDATES, "reference", "combination")]
    rule = (f"the {int(threshold('STUDY_COMBINED_FACTORS'))} single factors with the lowest mean effect on layer "
            f"{depth - 1}'s ln per-key ratio, `STUDY_COMBINED_FACTORS`, among "
            f"{', '.join(f'`{c}`' for c in COMBINATION_CANDIDATES)}; "
            + (f"post hoc: {', '.join(f'`{c}`' for c in left)} left out of the candidates for its compute, "
               "after results of the others were on record; under the rule as first written, every single factor a "
               f"candidate, the combination is not chosen until {', '.join(f'`{c}`' for c in left)} has its seeds"
               if left else "committed before the runs"))
    if COMBINED:
        return f"The combination joins {', '.join(f'`{c}`' for c in COMBINED)} ({rule})."
    short = [f"`{c}` {counts.get(c, 0)} of {needed}" for c in COMBINATION_CANDIDATES if counts.get(c, 0) < needed]
    if short:
        return f"The combination ({rule}) is chosen once every candidate has its seeds; short: {', '.join(short)}."
    chosen = combination_choice(table, depth)
    return (f"The combination ({rule}): the rule names {', '.join(f'`{c}`' for c in chosen)}; not yet trained "
            "(`scd.training.study.COMBINED`).")


def _over_training_lines(cards: list[dict], last: int) -> list[str]:
    """Over training, per condition: where the mean over seeds first clears the competence bar, and the last layer's
    ln per-key ratio at each measured causal step (means over the seeds measured there; descriptive only)."""
    from scd.training.study import CONDITIONS

    table = over_training(cards)
    if table.empty:
        return []
    bar, lines = threshold("STUDY_COMPETENCE_DB"), []
    for condition in [c for c in CONDITIONS if c in set(table.condition)]:
        rows = table[table.condition == condition]
        gain = rows[rows.measure == "psnr_gain"].sort_values("step")
        ratio = rows[rows.measure == f"log_ratio_{last}"].sort_values("step")
        first = gain[gain["mean"] >= bar].step.min()
        when = (f"the mean PSNR gain first reaches {bar:g} dB at causal step {int(first)}" if not math.isnan(first)
                else f"the mean PSNR gain stays below {bar:g} dB")
        track = ", ".join(f"{int(r.step)}: {r['mean']:.2f} (n={r.n})" for _, r in ratio.iterrows())
        lines.append(f"- Over training, `{condition}` (on its own scene): {when}; layer {last}'s ln per-key ratio by "
                     f"causal step: {track}.")
    return ["Over training (descriptive; the effects above are measured at the end):"] + lines if lines else []


def read_cards(directory: str | Path) -> list[dict]:
    """Every `card-*.json` in a directory, checked for the fields the study reads."""
    cards = []
    for path in sorted(Path(directory).glob("card-*.json")):
        try:
            card = json.loads(path.read_text())
            needed = {"name", "condition", "seed", "training", "evaluations", "over_training"}
            if card.get("format") != CARD_FORMAT or not needed <= set(card):
                raise CardError(f"format {card.get('format')!r} or fields missing")
        except ValueError as e:
            raise CardError(f"{path} is not an emergence card of format {CARD_FORMAT} ({e})") from None
        cards.append(card)
    return cards


def load_study(directory: str | Path) -> dict:
    """A `probe emergence` directory: {"cards", "maps" (name -> layer -> array)}; a CardError if it is not one."""
    directory = Path(directory)
    if not (directory / "emergence.json").is_file():
        raise CardError(f"{directory} is not a directory written by probe emergence (no emergence.json)")
    cards = read_cards(directory)
    maps = {}
    for card in cards:
        path = directory / f"maps-{card['name']}.npz"
        if path.is_file():
            with np.load(path) as saved:
                maps[card["name"]] = {key: saved[key] for key in saved.files}
    return {"cards": cards, "maps": maps}
