"""The emergence study's figures and files, drawn from cards (and their saved maps) only.

- `maps_figure`: the paper's 8-layer log maps, one row per variant, one colour range for all rows.
- `curve_figure`: the deep layers' per-key ratio at each training snapshot, with 95% intervals.
- `write_emergence`: table.md / table.csv / layers.md / maps.png / curve.png / README.md in a directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from analyses.claims import DEEP_RATIO_MAX
from analyses.emergence import (
    answer,
    deep_layers,
    emergence_table,
    factor_text,
    layer_table,
    observed,
    order,
    value_text,
)
from analyses.paper_figures import draw_map
from analyses.sparsity import colour_range, context_cells

REGENERATE = "probe emergence --out reports/emergence --force"  # rebuilds everything below from the committed cards


def maps_figure(cards: list[dict], maps: dict[str, dict[str, np.ndarray]], reference: str) -> Figure:
    """ln p per pooled cell, heads, steps and clips averaged: a row per variant, a column per layer."""
    shown = [c for c in order(cards, reference) if c["name"] in maps]
    layers = sorted({key for c in shown for key in maps[c["name"]]}, key=lambda k: int(k.split("_")[1]))
    cells = []
    for card in shown:
        frames = card["probe"]["frames"]
        for array in maps[card["name"]].values():
            cells.append(context_cells(torch.from_numpy(array)[:, None], frames, array.shape[1]))
    low, high = colour_range(cells) if cells else (float("nan"), float("nan"))
    fig, axes = plt.subplots(max(1, len(shown)), max(1, len(layers)), squeeze=False,
                             figsize=(2.2 * len(layers) + 1.4, 2.0 * len(shown) + 0.8))
    image = None
    for row, card in zip(axes, shown, strict=False):
        for ax, key in zip(row, layers, strict=True):
            array = maps[card["name"]].get(key)
            if array is None:
                ax.axis("off")
                continue
            image = draw_map(ax, array, card["probe"]["frames"], array.shape[1], array.shape[2] // array.shape[1], low, high)
            ax.set_title(f"{card['name']}: layer {key.split('_')[1]}", fontsize=7)
    fig.subplots_adjust(hspace=0.7, wspace=0.45, right=0.9)
    if image is not None and math.isfinite(low):
        fig.colorbar(image, cax=fig.add_axes((0.92, 0.15, 0.012, 0.7)), label="ln p (one key)")
    fig.suptitle("Attention of each frame's queries on every key, per variant (grey: own frame, left out; one colour "
                 "range for all panels)", fontsize=9)
    plt.close(fig)
    return fig


def curve_figure(cards: list[dict]) -> Figure:
    """Per-key ratio (earlier / own frame) of the deep layers at each training snapshot: all steps and the last 10."""
    traced = [c for c in cards if c.get("over_training")]
    fig, axes = plt.subplots(1, max(1, len(traced)), figsize=(5.2 * max(1, len(traced)), 3.6), squeeze=False)
    for ax, card in zip(axes[0], traced, strict=False):
        points = sorted(card["over_training"], key=lambda p: p["step"])
        steps = [p["step"] for p in points]
        for i, layer in enumerate(deep_layers(card)):
            for which, style in (("all", "-"), ("last10", ":")):
                values = [p["per_key_ratio"][f"{layer}_{which}"] for p in points]
                mean = np.array([v[0] for v in values])
                low = np.array([v[1] if v[1] is not None else v[0] for v in values])
                high = np.array([v[2] if v[2] is not None else v[0] for v in values])
                ax.errorbar(steps, mean, yerr=[mean - low, high - mean], ls=style, marker="o", ms=3, capsize=2,
                            color=f"C{i}", label=f"layer {layer}, {'all steps' if which == 'all' else 'last 10 steps'}")
        ax.axhline(1.0, color="grey", lw=0.8, label="uniform attention")
        ax.axhline(DEEP_RATIO_MAX, color="red", lw=0.8, ls="--", label=f"the claim's bound ({DEEP_RATIO_MAX})")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("per-key ratio, earlier / own frame")
        ax.set_title(f"{card['name']}: deep layers over training", fontsize=9)
        ax.legend(fontsize=6)
    if not traced:
        axes[0][0].text(0.5, 0.5, "no variant was probed at its snapshots", ha="center", va="center")
        axes[0][0].axis("off")
    fig.tight_layout()
    plt.close(fig)
    return fig


def readme(cards: list[dict], reference: str) -> str:
    """README.md of the directory: the answer, what each file holds, and the command that rebuilds it."""
    return f"""# When does temporal sparsity emerge?

{answer(cards, reference)}

- `table.md` / `table.csv`: one row per variant: what differs from the reference, training steps, compute,
  wall time and hardware, quality against the truth and against copying the last context frame, finding 1 at
  layer 15 with its control (two frames, same layer), and the deep layers' per-key ratio by step range, with
  95% intervals over the probed clips.
- `layers.md`: every layer's per-key ratio per variant and step range (first 10, last 10, all 50 steps).
- `maps.png`: the paper's 8-layer log maps, side by side; `curve.png`: the deep layers' ratio over training.
- `card-NAME.json` / `card-NAME.md`: each variant's card; `maps-NAME.npz`: its pooled maps.

Regenerate from the cards (no checkpoints needed): `{REGENERATE}`.
Measure a trained run into a card (needs its checkpoints, `runs/` is not in git):
`probe emergence runs/emergence/NAME [--snapshots] --out reports/emergence --force`.
"""


def card_markdown(card: dict, reference: dict) -> str:
    """A variant's card in words: training, data, compute, hardware, quality, the claims' verdicts."""
    t, q = card["training"], {k: value_text(v, 2 if "psnr" in k else 3) for k, v in card["quality"].items()}
    claims = "\n".join(f"- {c['name']}: **{observed(c['verdict'])}** ({c['measured']})" for c in card["claims"].values())
    return f"""# Variant card: `{card['name']}`

Differs from the reference (`{reference['name']}`): {factor_text(card, reference)}.

## Training
- Command: `{t['command']}`
- Data: the {t['settings'].get('scene', 'sprites')} scene of the procedural benchmark, train split, clips of
  {t['settings']['frames']} frames, batch {t['settings']['batch_size']}; clean-context ratio
  {t['settings']['clean_context_ratio']}; bidirectional steps {t['settings'].get('bidirectional_steps', 0)}.
- Steps: {t['steps']}; compute {t['pflop']:.2f} PFLOP (`scd.flops.training_flops`); wall time {t['wall_hours']:.2f} h on
  {t['hardware']}; final loss {t['final_loss']:.4f}; weights probed: {t['weights']}.

## Validation (the probed generations: {len(card['probe']['clips'])} val clips, {card['probe']['steps']} steps)
- PSNR vs truth {q['model_psnr']} dB; copy-last {q['copy_psnr']} dB; gain {q['gain_psnr']} dB.
- SSIM vs truth {q['model_ssim']}; copy-last {q['copy_ssim']}.

## Claims
{claims}

Probe command: `{card['probe'].get('command')}`.
"""


def write_emergence(out: Path, cards: list[dict], maps: dict[str, dict[str, np.ndarray]], reference: str) -> None:
    """Every file of the study into `out` (an existing directory), from the cards and their maps."""
    from scd.outputs import GENERATOR

    table = emergence_table(cards, reference)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(table.to_markdown(index=False) + "\n")
    (out / "layers.md").write_text(layer_table(cards, reference).to_markdown() + "\n")
    ref = next(c for c in cards if c["name"] == reference)
    for card in cards:
        (out / f"card-{card['name']}.md").write_text(card_markdown(card, ref))
    for name, fig in (("maps.png", maps_figure(cards, maps, reference)), ("curve.png", curve_figure(cards))):
        fig.savefig(out / name, dpi=90, metadata={"Software": GENERATOR})
    (out / "README.md").write_text(readme(cards, reference))
