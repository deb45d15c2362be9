"""The paper's two figures, drawn the paper's way from a run or a sweep (which averages its clips).

- `attention_maps`: finding 2's log-scale maps, one panel per layer (default the paper's 0, 1, 5, 10,
  20, 25, 28, 29, mapped by relative depth): rows the probed frames' queries, columns every key of the
  clip, `bands` cells per frame, each cell the mean probability of one of its keys (averaged over
  heads and steps). One colour range for all panels, from the context cells; the own frame is set
  apart (hatched grey, outside the colour range), as the paper leaves it out; later frames are blank.
- `step_heatmap`: the per-key ratio (earlier / own frame) by layer and denoising step, on a log scale
  centred on uniform attention (1).
- `finding1_panels_figure`: finding 1's three step x step panels at layer 15 (m1 vs m1, the control
  m1 vs m2, m2 vs m2) and each step's similarity to the last step.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from analyses.claims import memoized, paper_layers
from analyses.errors import takes_run
from analyses.figures import _finished
from analyses.similarity import finding1_panels, similarity_to_last
from analyses.sparsity import (
    SPARSITY_FRACTION,
    colour_range,
    context_cells,
    earlier_seen,
    frames_visible,
    measures_by_step,
    step_slice,
)
from probes.recording import Recording


@takes_run
def mean_map(run: Recording, layer: int, head: int | None = None, steps: str = "all") -> torch.Tensor:
    """float64 [F, g, T*g]: the pooled map averaged over the chosen steps ("all", "first10", "last10") and over heads,
    or of one head (a sweep: over its clips too)."""
    maps = run.attention_map(layer).double()
    if run.role(layer) != "encoder":
        maps = maps[:, step_slice(run, steps)]
    maps = maps.mean(1)
    return maps.mean(1) if head is None else maps[:, head]


def draw_map(ax, pooled: torch.Tensor, frames: list[int], g: int, T: int, low: float, high: float,
             earlier: list[list[int]] | None = None):
    """One panel of the paper's attention figure: ln p of the pooled map [F, g, T*g], the context cells in the
    colour range [low, high], the own frame hatched grey (left out, as the paper); later frames, and earlier frames
    the query does not see (`earlier`: the earlier frames each probed frame sees; default all), blank."""
    log_p = torch.as_tensor(pooled).double().clamp_min(1e-300).log().numpy()
    grid = np.full((len(frames) * g, T * g), np.nan)
    own = np.zeros_like(grid, dtype=bool)
    earlier = earlier if earlier is not None else [list(range(frame)) for frame in frames]
    for i, (frame, shown) in enumerate(zip(frames, earlier, strict=True)):
        for f in shown:
            grid[i * g:(i + 1) * g, f * g:(f + 1) * g] = log_p[i, :, f * g:(f + 1) * g]
        own[i * g:(i + 1) * g, frame * g:(frame + 1) * g] = True
    image = ax.imshow(grid, cmap="magma", vmin=low, vmax=high, aspect="auto", interpolation="nearest")
    ax.imshow(np.where(own, 1.0, np.nan), cmap="Greys", vmin=0, vmax=2.5, aspect="auto", interpolation="nearest")
    every = max(1, math.ceil(max(T, len(frames)) / 10))  # at most ~10 labels an axis: legible at the report's 9 pt
    ax.set_xticks([f * g + (g - 1) / 2 for f in range(0, T, every)], range(0, T, every), fontsize=9)
    ax.set_yticks([i * g + (g - 1) / 2 for i in range(0, len(frames), every)], frames[::every], fontsize=9)
    ax.set_xlabel("key frame", fontsize=7)
    ax.set_ylabel("query frame", fontsize=7)
    return image


def _figure_maps(run: Recording, layers: list[int] | None, head: int | None, steps: str) -> dict:
    """The pooled maps the attention figure draws: the paper's figure layers that were probed (else the first 8)."""
    probed = run.attention_layers
    layers = [layer for layer in (layers or paper_layers(run.depth)["figure"]) if layer in probed] or probed[:8]
    return memoized(run, ("figure maps", tuple(layers), head, steps),  # the shared range and the figure read them
                    lambda: {layer: mean_map(run, layer, head, steps) for layer in layers})


def _context_range(run: Recording, maps: dict) -> tuple[float, float]:
    frames, g, k, policy = run.manifest["frames"], run.bands, run.frames_per_block, run.cache_policy
    return colour_range([context_cells(m[:, None], frames, g, run.role(layer), k, policy) for layer, m in maps.items()])


@takes_run
def attention_map_range(run: Recording, layers: list[int] | None = None, head: int | None = None,
                        steps: str = "all") -> tuple[float, float]:
    """The (low, high) ln p of the context cells `attention_maps` would draw: take the union over several runs and
    pass it as `value_range`, so that a model and its control share one colour scale."""
    return _context_range(run, _figure_maps(run, layers, head, steps))


@takes_run
def attention_maps(run: Recording, layers: list[int] | None = None, head: int | None = None, steps: str = "all",
                   value_range: tuple[float, float] | None = None) -> Figure:
    """The paper's attention figure: ln p per pooled cell, one panel per layer, one colour range; averaged over heads
    (or one `head`) and over the chosen `steps` ("all", "first10", "last10"). `value_range`: the colour range
    (`attention_map_range`, shared with other runs); None: this run's own."""
    frames, g, T = run.manifest["frames"], run.bands, run.manifest["num_frames"]
    maps = _figure_maps(run, layers, head, steps)
    layers = list(maps)
    k, policy = run.frames_per_block, run.cache_policy
    earlier = {layer: earlier_seen(frames, run.role(layer), k, policy) for layer in layers}
    low, high = value_range if value_range is not None else _context_range(run, maps)
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols + 1.2, 2.6 * rows + 0.6), squeeze=False)
    image = None
    for ax, layer in zip(axes.flat, layers, strict=False):
        image = draw_map(ax, maps[layer], frames, g, T, low, high, earlier[layer])
        ax.set_title(f"layer {layer}" + ("" if run.depth == 30 else f" (paper {round(layer * 29 / (run.depth - 1))})"),
                     fontsize=9)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.subplots_adjust(hspace=0.5, wspace=0.35, right=0.88)
    if image is not None and math.isfinite(low):
        bar = fig.colorbar(image, cax=fig.add_axes((0.9, 0.15, 0.015, 0.7)), label="ln p (one key)")
        n = run.manifest["tokens_per_frame"]
        for visible in frames_visible(frames, "causal", k, policy):  # uniform over the keys a frame sees
            bar.ax.axhline(-math.log(visible * n), color="cyan", lw=0.8)
        bar.ax.axhline(low + SPARSITY_FRACTION * (high - low), color="white", lw=0.8, ls="--")
    which = f"head {head}" if head is not None else "heads averaged"
    fig.suptitle(f"{which}, steps {steps}: attention of each frame's queries on every key ({g} x {g} cells per frame "
                 f"pair; grey: own frame, "
                 f"left out; cyan: uniform; dashed: the sparsity cut at {SPARSITY_FRACTION:.0%} of the range)", fontsize=8)
    plt.close(fig)
    return fig


@takes_run
def ratio_span(run: Recording) -> float:
    """The largest |log10 per-key ratio| of `step_heatmap`'s cells: take the maximum over several runs and pass it as
    `span`, so that they share one colour scale."""
    values = memoized(run, ("measures by step",), lambda: measures_by_step(run))["per_key_ratio"].to_numpy()
    return max(1e-3, float(np.nanmax(np.abs(np.log10(np.clip(values, 1e-6, None))))))


@takes_run
def step_heatmap(run: Recording, measure: str = "per_key_ratio", span: float | None = None) -> Figure:
    """Layer x denoising step heatmap of an attention measure (`measures_by_step`); the per-key ratio on a log10
    scale centred on uniform attention, +-`span` (`ratio_span`, shared with other runs; None: this run's own)."""
    table = memoized(run, ("measures by step",), lambda: measures_by_step(run))  # ratio_span read it for the scale
    pivot = table.pivot(index="layer", columns="step", values=measure)
    values = pivot.to_numpy()
    fig, ax = plt.subplots(figsize=(7, 0.16 * len(pivot) + 1.6))
    if measure == "per_key_ratio":
        values = np.log10(np.clip(values, 1e-6, None))
        span = span if span is not None else max(1e-3, float(np.nanmax(np.abs(values))))
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -span, span),
                          interpolation="nearest")
        label = "log10 per-key ratio, earlier / own frame (0: uniform)"
    else:
        image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
        label = measure.replace("_", " ")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_yticks(range(len(pivot)), pivot.index, fontsize=6)
    ax.set_xticks(range(0, len(pivot.columns), 5), pivot.columns[::5], fontsize=7)
    ax.set_xlabel("denoising step (0: pure noise)")
    ax.set_ylabel("layer")
    return _finished(fig)


@takes_run
def finding1_panels_figure(run: Recording, layer: int | None = None) -> Figure:
    """m1 vs m1, m1 vs m2 (the control: two frames, same layer), m2 vs m2, and the cosine of each step to the last."""
    layer = paper_layers(run.depth)["middle"][0] if layer is None else layer
    panels = finding1_panels(run, layer)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.3))
    image = None
    for ax, (title, matrix) in zip(axes[:3], panels.items(), strict=True):
        image = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{title}: median {float(matrix.median()):.2f}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("step")
    fig.colorbar(image, ax=axes[:3], shrink=0.8, label="per-token cosine")
    items = run.items
    tables = [similarity_to_last(item) for item in items]
    last = [table[table.layer == layer].groupby("step").cosine_to_last.mean() for table in tables]
    for curve in last:
        axes[3].plot(curve.index, curve.values, color="tab:blue", alpha=0.3, lw=0.8)
    mean = sum(last) / len(last)
    axes[3].plot(mean.index, mean.values, color="tab:blue", lw=2, label="mean over clips")
    axes[3].set_ylim(0, 1.02)
    axes[3].set_xlabel("denoising step")
    axes[3].set_ylabel("cosine with the last step")
    axes[3].set_title(f"layer {layer}: how early the features settle", fontsize=9)
    axes[3].legend(fontsize=7)
    plt.close(fig)
    return fig
