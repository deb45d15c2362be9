"""The emergence study's figures and files, drawn from cards (and their saved maps) only.

- `maps_figure`: the paper's figure layers' log maps, one row per condition (its trained seeds' maps averaged).
- `effects_figure`: every factor's effect on each layer's ln per-key ratio, with its Welch interval over seeds.
- `curve_figure`: quality, the last layer's ratio and finding 1 over training, per condition, intervals over seeds.
- `write_emergence`: README.md, table.md / table.csv, runs.md, two_by_two.md, over_training.csv, card-NAME.md
  and the figures, into a directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from analyses.emergence import (
    SCENE,
    answer,
    competence,
    depth_of,
    measure_name,
    over_training,
    runs_table,
    seed_table,
    table_markdown,
    trained_scene,
    two_by_two,
    value_text,
)
from analyses.paper_figures import draw_map
from analyses.sparsity import colour_range, context_cells
from analyses.thresholds import THRESHOLDS, threshold

REGENERATE = "probe emergence --out reports/emergence --force"  # rebuilds everything below from the committed cards


def _seeds(n: int) -> str:
    """'1 seed', '3 seeds': a figure's count of training seeds."""
    return f"{n} seed{'' if n == 1 else 's'}"


def _conditions(cards: list[dict]) -> list[str]:
    from scd.training.study import CONDITIONS

    present = {c["condition"] for c in cards}
    return [c for c in CONDITIONS if c in present]


def maps_figure(cards: list[dict], maps: dict[str, dict[str, np.ndarray]]) -> Figure:
    """ln p per pooled cell (heads, steps and clips averaged, then the condition's trained seeds): a row per
    condition, a column per layer, one colour range for all panels."""
    rows = []
    for condition in _conditions(cards):
        runs = [c for c in cards if c["condition"] == condition and c["name"] in maps and competence(c)[0]]
        if runs:
            keys = sorted(set.intersection(*(set(maps[c["name"]]) for c in runs)), key=lambda k: int(k.split("_")[1]))
            rows.append((condition, len(runs), runs[0]["evaluations"][SCENE]["probe"]["frames"],
                         {k: np.mean([maps[c["name"]][k] for c in runs], axis=0) for k in keys}))
    layers = sorted({k for *_, m in rows for k in m}, key=lambda k: int(k.split("_")[1]))
    cells = [context_cells(torch.from_numpy(a)[:, None], frames, a.shape[1]) for _, _, frames, m in rows for a in m.values()]
    low, high = colour_range(cells) if cells else (float("nan"), float("nan"))
    fig, axes = plt.subplots(max(1, len(rows)), max(1, len(layers)), squeeze=False,
                             figsize=(2.2 * max(1, len(layers)) + 1.4, 2.3 * max(1, len(rows)) + 0.8))
    image = None
    for ax_row, (condition, n, frames, chosen) in zip(axes, rows, strict=False):
        for ax, key in zip(ax_row, layers, strict=True):
            array = chosen.get(key)
            if array is None:
                ax.axis("off")
                continue
            image = draw_map(ax, array, frames, array.shape[1], array.shape[2] // array.shape[1], low, high)
            ax.set_title(f"{condition} ({_seeds(n)})\nlayer {key.split('_')[1]}", fontsize=9)  # two lines: legible, no overlap
    if not rows:
        axes[0][0].text(0.5, 0.5, "no trained run measured yet", ha="center", va="center")
        axes[0][0].axis("off")
    fig.subplots_adjust(hspace=0.9, wspace=0.45, right=0.9)
    if image is not None and math.isfinite(low):
        fig.colorbar(image, cax=fig.add_axes((0.92, 0.15, 0.012, 0.7)), label="ln p (one key)")
    fig.suptitle("Attention of each frame's queries on every key, per condition, sprites val clips (grey: own frame, "
                 "left out; one colour range for all panels)", fontsize=9)
    plt.close(fig)
    return fig


def effects_figure(table: pd.DataFrame, depth: int) -> Figure:
    """Each factor's effect on each layer's ln per-key ratio (condition minus reference), Welch 95% intervals over
    seeds; the reference's own seed interval around 0 shows the floor."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ratios = table[table.measure.str.startswith("log_ratio_")] if not table.empty else table
    conditions = [c for c in dict.fromkeys(ratios.condition) if c != "reference"] if not ratios.empty else []
    ref = ratios[ratios.condition == "reference"] if not ratios.empty else ratios
    if len(ref):
        layers = [int(m.rsplit("_", 1)[1]) for m in ref.measure]
        ax.fill_between(layers, list(ref.low - ref["mean"]), list(ref.high - ref["mean"]), color="grey", alpha=0.25,
                        label="reference: its mean's 95% interval over seeds, centred")
    for i, condition in enumerate(conditions):
        rows = ratios[ratios.condition == condition]
        layers = np.array([int(m.rsplit("_", 1)[1]) for m in rows.measure]) + (i - len(conditions) / 2) * 0.08
        effect = rows.effect.to_numpy()
        low = np.nan_to_num(effect - rows.effect_low.to_numpy())
        high = np.nan_to_num(rows.effect_high.to_numpy() - effect)
        few = rows.verdict.str.startswith("too few").any()  # no Welch interval yet: hollow, and said so
        ax.errorbar(layers, effect, yerr=[low, high], marker="o", ms=4, capsize=2, ls="none", color=f"C{i}",
                    mfc="none" if few else f"C{i}", label=f"{condition} ({_seeds(len(rows.iloc[0]['values']))}"
                    + (": too few, no interval)" if few else ")"))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(f"layer (of {depth})")
    ax.set_ylabel("effect on ln per-key ratio")
    ax.set_title("Each factor's effect on how much a layer attends to an earlier-frame key (negative: less)", fontsize=9)
    if not conditions:
        ax.text(0.5, 0.5, "no factor compared yet", ha="center", va="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    plt.close(fig)
    return fig


def curve_figure(cards: list[dict]) -> Figure:
    """Over training, per condition (the mean over its seeds at each snapshot, 95% interval over seeds): quality gain
    over copy-last, the last layer's ln per-key ratio and finding 1's margin over the input at the middle layer."""
    table = over_training(cards)
    depth = depth_of(cards[0]) if cards else 8
    from analyses.claims import paper_layers

    panels = [("psnr_gain", threshold("STUDY_COMPETENCE_DB"), "competence (the study's bar)"),
              (f"log_ratio_{depth - 1}", math.log(0.1), "the paper's bound (ratio 0.1)"),
              (f"log_ratio_{paper_layers(depth)['middle'][0]}", math.log(0.1), "ratio 0.1"),
              ("f1_minus_input", None, "")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (measure, line, label) in zip(axes[0], panels, strict=True):
        rows = table[table.measure == measure] if not table.empty else table
        for i, condition in enumerate(_conditions(cards)):
            part = rows[rows.condition == condition].sort_values("step") if len(rows) else rows
            if part.empty:
                continue
            mean, low, high = part["mean"].to_numpy(), part.low.to_numpy(), part.high.to_numpy()
            ax.plot(part.step, mean, marker="o", ms=3, color=f"C{i}", label=f"{condition} (n={part.n.max()})")
            ax.fill_between(part.step, np.where(np.isnan(low), mean, low), np.where(np.isnan(high), mean, high),
                            color=f"C{i}", alpha=0.15)
        if line is not None:
            ax.axhline(line, color="red", lw=0.8, ls="--", label=label)
        ax.set_xlabel("causal training step (after any bidirectional pretraining)")
        ax.set_title(measure_name(measure, depth), fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5)
    fig.suptitle("Over training (each run's snapshots, probed on the scene it was trained on)", fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def readme(cards: list[dict]) -> str:
    """README.md of the directory: the answer, the study's design, what each file holds, the commands."""
    from scd.training.study import CONDITIONS, REFERENCE, SEEDS, STUDY_STEPS

    conditions = "\n".join(f"- `{name}`: {words}" for name, (words, _) in CONDITIONS.items())
    settings = ", ".join(f"{k} {v}" for k, v in REFERENCE.items())
    return f"""# What makes deep layers stop looking at the past? (the emergence study)

{answer(cards)}

## Design (fixed in `scd/training/study.py` and `analyses/thresholds.py` before the runs; commit 67b1955)
Every run is a condition and a training seed ({', '.join(map(str, SEEDS))}); every condition is the reference's
settings with one factor changed, and nothing else (`probe emergence` refuses a card that differs from its
condition's plan; `tests/analyses/test_emergence.py` checks the committed cards). Reference: {settings}
({STUDY_STEPS} steps).
{conditions}

Sizing (a pilot before the study, quality only, not a study run): width 64, 8 blocks, lr 2e-3, 1500 steps, one
thread (0.48 s a step): PSNR gain over copy-last on 16 sprites val clips -0.91 dB at step 750, +0.21 at 1000 and
1250, -0.00 at 1500, SSIM below copy-last throughout: it does not learn the task. Hence width 128 (2.5M parameters,
1.1 s a step alone on one core of the Intel Xeon it was sized on, ~55 min a run; 2.25 s on the AMD EPYC of later runs)
for twice the steps; the runs table gives each run's wall time, machine and threads.

A run enters the comparisons only when it beats copy-last on the val clips of its own scene (PSNR gain at
least {threshold('STUDY_COMPETENCE_DB'):g} dB with its 95% interval over 16 clips above 0, and a higher SSIM). A condition's
value is the mean over its seeds of each run's mean over the 16 sprites val clips, with a t interval over seeds; a factor's
effect is the difference from the reference with a Welch 95% interval over seeds, an effect only when that
interval excludes 0 (so the between-seed spread is the floor every effect must clear).

The combination joins the {threshold('STUDY_COMBINED_FACTORS'):g} single factors with the lowest mean effect on the
last layer's ln per-key ratio. {_capital(THRESHOLDS['STUDY_COMBINED_FACTORS'].provenance())}.

## Files
- `table.md` / `table.csv`: per measure and condition: the seeds, the mean over seeds [95%], the effect against
  the reference [95% Welch], and the verdict. Measures: quality gain over copy-last; ln per-key ratio (attention on
  one earlier-frame key / one own-frame key, all 50 steps) at every layer; the last layer's lit share; finding 1 at
  the middle layer (cross-step cosine, minus the two-frame control, minus the blocks' input, centred minus input).
- `runs.md`: one row per run: condition, seed, steps, compute (the run's, and what was spent: steps redone after a
  sitting cut short count), wall time, hardware, whether it beat copy-last.
- `two_by_two.md`: the reference and the textured condition, each evaluated on both scenes.
- `family.md`: the design's analysis (post hoc, `analyses.study_statistics`): every comparison of the family with its
  paired seeds, the mean paired difference, the exact sign-flip p, Holm's and Benjamini-Hochberg's adjusted p over
  the family (and Holm over the confirmatory measure's conditions); then each measure's power.
- `over_training.csv`, `curve.png`: the measures at every snapshot, mean and interval over seeds.
- `effects.png`: every factor's effect per layer; `maps.png`: the figure layers' log maps per condition.
- `card-NAME.json` / `card-NAME.md`: each run's card; `maps-NAME.npz`: its pooled maps.

## Commands
- Train (resumable; one worker per core): `probe study train` (`probe study status` lists each run's steps);
  `probe study train --threads 2`: one worker on both cores, for a run that must end sooner (recorded in its card).
- Measure finished runs into cards: `probe emergence runs/study/NAME ... --snapshot-steps 0,500,1000,2000 --out
  reports/emergence --force` (causal steps; 0 is the end of the bidirectional pretraining).
- Rebuild everything here from the cards alone: `{REGENERATE}`.
"""


def card_markdown(card: dict) -> str:
    """A run's card in words: condition, seed, training, data, compute, hardware, quality, verdicts."""
    t, s = card["training"], card["training"]["settings"]
    ok, words = competence(card)
    evaluations = []
    for scene, evaluation in card["evaluations"].items():
        q = evaluation["summary"]
        claims = "; ".join(f"{c['name']}: {c['verdict']}" for c in evaluation["claims"].values())
        evaluations.append(f"- {scene} ({len(evaluation['probe']['clips'])} val clips, {evaluation['probe']['steps']} "
                           f"steps): PSNR {value_text(q['psnr']['mean'], 2)} dB (copy-last "
                           f"{value_text(q['copy_psnr']['mean'], 2)}), SSIM {value_text(q['ssim']['mean'])} (copy-last "
                           f"{value_text(q['copy_ssim']['mean'])}); claims: {claims}.\n"
                           f"  Probe: `{evaluation['probe']['command']}`")
    newline = "\n"
    return f"""# Run card: `{card['name']}`

Condition `{card['condition']}` ({card['factor']}), training seed {card['seed']}.

## Training
- Command: `{t['command']}`
- Data: the {trained_scene(card)} scene of the procedural benchmark, train split, clips of {s['frames']} frames,
  batch {s['batch_size']}; clean-context ratio {s['clean_context_ratio']}; bidirectional steps {s.get('bidirectional_steps', 0)}.
- Model: width {t['model']['width']}, {t['model']['depth']} blocks, patch {t['model']['patch_size']}.
- Steps: {t['steps']}; compute {t['pflop']:.3f} PFLOP (`scd.flops.training_flops`); wall time {t['wall_hours']:.2f} h on
  {t['hardware']}; final loss {t['final_loss']:.4f}; weights probed: {t['weights']}.

## Quality
Beats copy-last as the study requires: **{'yes' if ok else 'no'}** ({words}).
{newline.join(evaluations)}

Snapshots measured: {', '.join(str(p['step']) for p in card['over_training']) or 'none'}.
"""


def family_markdown(cards: list[dict]) -> str:
    """`family.md`: the family of comparisons and the power per measure (`analyses.emergence.family`)."""
    from analyses.emergence import family
    from analyses.study_statistics import ALPHA

    table, power, constant = family(cards)
    if table.empty:
        return "# The family of comparisons\n\nNo condition has enough paired seeds yet.\n"
    shown = table.assign(effect=table.effect.map("{:+.4f}".format), sd=table.sd.map("{:.4f}".format),
                         p=table.p.map("{:.3g}".format), p_holm=table.p_holm.map("{:.3g}".format),
                         p_bh=table.p_bh.map("{:.3g}".format),
                         p_confirmatory=table.p_confirmatory.map(lambda v: "" if math.isnan(v) else f"{v:.3g}"))
    shown = shown.rename(columns={"effect": "effect (mean paired difference)", "sd": "SD of the differences",
                                  "p": "exact p (sign flips)", "p_holm": f"Holm over {len(table)}",
                                  "p_bh": f"BH over {len(table)}", "p_confirmatory": "Holm, confirmatory"})
    powered = power.assign(reference_sd=power.reference_sd.map("{:.4f}".format), alpha=power.alpha.map("{:.3g}".format),
                           detectable=power.detectable.map("{:.4f}".format)).drop(columns=["effect"])
    powered = powered.rename(columns={"reference_sd": "reference SD over seeds", "effect_words": "effect of interest",
                                      "seeds_needed": "seeds per arm needed", "seeds": "seeds per arm now",
                                      "detectable": "detectable now"})
    left = ", ".join(sorted(constant)) or "none"
    return (f"# The family of comparisons (post hoc: `analyses.study_statistics`, 2026-12-05)\n\n"
            f"{table.condition.nunique()} conditions x {table.measure.nunique()} measures = {len(table)} comparisons; "
            f"left out as constant over every run: {left}. Each effect is the mean of the paired differences by seed "
            f"(condition - reference); p is exact (every sign assignment); an effect holds at {ALPHA} only after "
            "correction.\n\n" + shown.to_markdown(index=False) + "\n\n## Power per measure (80%, normal "
            "approximation, unpaired; at the family's first Holm level, the confirmatory measure at alpha over its "
            "conditions)\n\n" + powered.to_markdown(index=False) + "\n")


def write_emergence(out: Path, cards: list[dict], maps: dict[str, dict[str, np.ndarray]]) -> None:
    """Every file of the study into `out` (an existing directory), from the cards and their maps."""
    from analyses.emergence import settings_problems
    from scd.files import GENERATOR

    cards = sorted(cards, key=lambda c: c["name"])  # as read_cards gives them: a rebuild writes the same bytes
    problems = settings_problems(cards)
    if problems:
        from analyses.emergence import CardError

        raise CardError("the cards break one factor at a time: " + "; ".join(problems))
    table = seed_table(cards)
    table.drop(columns=["values"]).to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(table_markdown(table).to_markdown(index=False) + "\n")
    (out / "runs.md").write_text(runs_table(cards).to_markdown(index=False) + "\n")
    (out / "two_by_two.md").write_text(two_by_two(cards).to_markdown(index=False) + "\n")
    (out / "family.md").write_text(family_markdown(cards))
    over_training(cards).to_csv(out / "over_training.csv", index=False)
    for card in cards:
        (out / f"card-{card['name']}.md").write_text(card_markdown(card))
    depth = depth_of(cards[0]) if cards else 8
    for name, fig in (("maps.png", maps_figure(cards, maps)), ("curve.png", curve_figure(cards)),
                      ("effects.png", effects_figure(table, depth))):
        fig.savefig(out / name, dpi=90, metadata={"Software": GENERATOR})
    (out / "README.md").write_text(readme(cards))


def _capital(text: str) -> str:
    """A sentence's first letter upper case (str.capitalize would lower the rest)."""
    return text[:1].upper() + text[1:]
