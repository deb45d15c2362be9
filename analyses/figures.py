"""The paper's figures from a run: each a function returning a matplotlib Figure, used by the report and the notebooks.

Every figure is returned closed (detached from pyplot): a notebook cell that ends with one shows it
once, `savefig` writes it, and no window opens nor do figures pile up in pyplot's registry.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analyses.errors import AnalysisError, takes_run
from analyses.pca import pca_images
from analyses.similarity import depth_curve, run_cosine, similarity_to_last
from analyses.sparsity import head_table, offset_table, sparsity_table, step_table
from probes.recording import Recording


def _finished(fig: Figure) -> Figure:
    """Lay the figure out and detach it from pyplot (see the module docstring)."""
    fig.tight_layout()
    plt.close(fig)
    return fig


def _pick(layers: list[int], most: int) -> list[int]:
    """At most `most` layers spread evenly over the probed ones (always the first and last)."""
    if len(layers) <= most:
        return layers
    return [layers[i] for i in np.linspace(0, len(layers) - 1, most).round().astype(int)]


@takes_run
def similarity_floor(run: Recording, layers: list[int] | None = None, frame: int | None = None,
                     kind: str = "token") -> float:
    """The lowest cosine `similarity_heatmaps` would draw, at most 0: take the minimum over several runs and pass it
    as `vmin`, so that they share one colour scale."""
    frame = run.frames.index(run.frames[0] if frame is None else frame)
    layers = layers or _pick(run.stepwise_layers, 6)
    return min([0.0, *(float(run_cosine(run, layer, kind)[frame].min()) for layer in layers)])


@takes_run
def similarity_heatmaps(run: Recording, layers: list[int] | None = None, frame: int | None = None,
                        kind: str = "token", vmin: float | None = None) -> Figure:
    """Step x step cosine similarity matrices of one probed frame (its video frame number; None: the first probed),
    one heatmap per layer, all on one colour scale from `vmin` (`similarity_floor`, shared with other runs; None:
    this run's own) to 1."""
    vmin = similarity_floor(run, layers, frame, kind) if vmin is None else vmin
    frame = run.frames.index(run.frames[0] if frame is None else frame)  # its position among the recorded frames
    layers = layers or _pick(run.stepwise_layers, 6)
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 0.8, 2.8), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        matrix = run_cosine(run, layer, kind)[frame].numpy()
        sns.heatmap(matrix, ax=ax, vmin=vmin, vmax=1.0, cmap="viridis", square=True,
                    cbar=ax is axes[0, -1], xticklabels=False, yticklabels=False)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel("step")
    fig.suptitle(f"cross-step cosine ({kind}), frame {run.manifest['frames'][frame]}", fontsize=10)
    return _finished(fig)


def similarity_vs_depth(runs: dict[str, Recording], kind: str = "token") -> Figure:
    """Mean off-diagonal cross-step cosine against depth (the minimum as a dashed line), one line per run."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, run in runs.items():
        curve = depth_curve(run, kind)
        line, = ax.plot(curve.layer, curve.mean_off_diagonal, marker="o", ms=3, label=f"{name}: mean")
        ax.plot(curve.layer, curve["min"], ls="--", color=line.get_color(), lw=1, label=f"{name}: min")
    ax.axhline(0.95, color="grey", lw=0.8, ls=":", label="0.95 (paper)")
    ax.set_xlabel("layer")
    ax.set_ylabel("cross-step cosine")
    ax.legend(fontsize=7, ncol=2)
    return _finished(fig)



@takes_run
def cosine_to_last(run: Recording, layers: list[int] | None = None) -> Figure:
    """Cosine of each step's features with the last step's, against the step (mean over probed frames),
    one line per layer: how early in denoising a layer's features settle."""
    table = similarity_to_last(run)
    layers = layers or _pick(run.stepwise_layers, 8)
    table = table[table.layer.isin(layers)].groupby(["layer", "step"]).cosine_to_last.mean().reset_index()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.lineplot(data=table, x="step", y="cosine_to_last", hue="layer", palette="viridis", legend="full", ax=ax)
    ax.set_ylabel("cosine with the last step")
    ax.set_xlabel("denoising step")
    return _finished(fig)

@takes_run
def pca_strip(run: Recording, layer: int, frame: int | None = None, steps: int = 6) -> Figure:
    """PCA images of one layer's features at a few steps, next to the generated frame (its video frame number;
    None: the first probed)."""
    frame = run.frames.index(run.frames[0] if frame is None else frame)  # its position among the recorded frames
    features = run.features(layer)[frame].float()
    grid = run.token_grid
    if grid is None:
        raise AnalysisError(f"{run.path} does not say how a frame's {run.manifest.get('tokens_per_frame')} tokens lie on "
                            "a grid (recorded before token_grid); accepted: a run recorded again")
    images, variance = pca_images(features, grid, run.token_index(layer))
    chosen = np.linspace(0, len(images) - 1, min(steps, len(images))).round().astype(int)
    generated, _ = run.video()
    fig, axes = plt.subplots(1, len(chosen) + 1, figsize=(1.5 * (len(chosen) + 1), 1.9))
    for ax, i in zip(axes[:-1], chosen, strict=True):
        ax.imshow(images[i], interpolation="nearest")
        once = run.role(layer) == "encoder"  # SCD's encoder reads each frame once
        ax.set_title("once per frame" if once else f"step {run.manifest['steps'][i]}", fontsize=8)
    axes[-1].imshow(generated[run.manifest["frames"][frame]])
    axes[-1].set_title("generated", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"layer {layer} PCA (top 3 = RGB, {variance.sum():.0%} of variance), "
                 f"frame {run.manifest['frames'][frame]}", fontsize=9)
    return _finished(fig)


def attention_vs_depth(runs: dict[str, Recording]) -> Figure:
    """Share of attention on earlier frames against depth, with the spread over heads (min to max)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, run in runs.items():
        table = sparsity_table(run)
        line, = ax.plot(table.layer, table.earlier_share, marker="o", ms=3, label=name)
        ax.fill_between(table.layer, table.head_min, table.head_max, color=line.get_color(), alpha=0.2)
        heads = head_table(run)
        ax.scatter(heads.layer, heads.earlier_share, s=4, color=line.get_color(), alpha=0.5)
    ax.axhline(0.1, color="grey", lw=0.8, ls=":", label="0.1 (claim threshold)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention on earlier frames")
    ax.legend(fontsize=7)
    return _finished(fig)



@takes_run
def head_heatmap(run: Recording) -> Figure:
    """Layer x head: each head's share of attention on earlier frames."""
    table = head_table(run).pivot(index="layer", columns="head", values="earlier_share")
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * table.shape[1], max(2.5, 0.18 * len(table) + 1)))
    sns.heatmap(table, ax=ax, cmap="magma", vmin=0, vmax=1, annot=table.size <= 64, fmt=".2f")
    ax.set_title("attention on earlier frames, per head", fontsize=9)
    return _finished(fig)


@takes_run
def attention_across_steps(run: Recording, layers: list[int] | None = None) -> Figure:
    """Share of attention on earlier frames at each denoising step, one line per layer (layers run at
    every step only)."""
    table = step_table(run)
    layers = layers or _pick(sorted(table.layer.unique().tolist()), 8)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.lineplot(data=table[table.layer.isin(layers)], x="step", y="earlier_share", hue="layer", palette="viridis",
                 legend="full", ax=ax)
    ax.set_ylim(0, 1)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("attention on earlier frames")
    return _finished(fig)

@takes_run
def offset_heatmap(run: Recording) -> Figure:
    """Layer x key-frame offset (0 = the frame itself, 1 = the previous one, ...): mean attention mass."""
    table = offset_table(run).pivot(index="layer", columns="offset", values="mass")
    fig, ax = plt.subplots(figsize=(5, max(2.5, 0.18 * len(table) + 1)))
    sns.heatmap(table, ax=ax, cmap="magma", vmin=0, vmax=1, annot=len(table) <= 8, fmt=".2f")
    ax.set_xlabel("key frame offset (0 = same frame)")
    return _finished(fig)


@takes_run
def distance_heatmap(run: Recording, most: int = 24) -> Figure:
    """Layer x temporal distance (0 = the end of the query's own chunk): mean attention mass over frames, steps,
    heads and the sweep's items (analyses.rolling.distance_table)."""
    from analyses.rolling import distance_table

    table = distance_table(run, min(most, run.manifest["num_frames"])).set_index("layer")
    mass = table[[c for c in table.columns if c.startswith("d") and c[1:].isdigit()]]
    mass.columns = [int(c[1:]) for c in mass.columns]
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * mass.shape[1] + 2), max(2.5, 0.18 * len(mass) + 1)))
    sns.heatmap(mass, ax=ax, cmap="magma", vmin=0, vmax=1, annot=mass.size <= 64, fmt=".2f")
    ax.set_xlabel("temporal distance in frames (0 = the last frame of the query's chunk)")
    ax.set_ylabel("layer")
    return _finished(fig)


@takes_run
def region_panel(run: Recording) -> Figure:
    """Per layer, the attention mass on the sink frames, the own chunk, the previous chunk and the rest of the
    window, each with its 95% interval over clips / seeds (analyses.rolling.region_table), and dotted, each region's
    mass under uniform attention over the keys seen: a sink is mass above its line."""
    from analyses.rolling import region_table
    from probes.attention import REGIONS

    table = region_table(run)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for region, marker in zip(REGIONS, "os^v", strict=True):
        low = (table[region] - table[f"{region}_low"]).fillna(0)
        high = (table[f"{region}_high"] - table[region]).fillna(0)
        line = ax.errorbar(table["layer"], table[region], yerr=[low, high], marker=marker, capsize=2,
                           label=region.replace("_", " "))
        ax.axhline(table[f"{region}_uniform"].iloc[0], color=line[0].get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention mass")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{int(table['clips'].iloc[0])} clip(s); intervals: 95% t over clips; dotted: uniform attention over "
                 "the keys seen", fontsize=8)
    return _finished(fig)


@takes_run
def text_share_figure(run: Recording) -> Figure:
    """Per layer with cross-attention, the share of its attention update that comes from the text, with its 95%
    interval over clips / prompts (analyses.rolling.text_share_table)."""
    from analyses.rolling import text_share_table

    table = text_share_table(run)
    fig, ax = plt.subplots(figsize=(6, 2.8))
    low = (table["text_share"] - table["text_share_low"]).fillna(0)
    high = (table["text_share_high"] - table["text_share"]).fillna(0)
    ax.errorbar(table["layer"], table["text_share"], yerr=[low, high], marker="o", capsize=2)
    ax.set_xlabel("layer")
    ax.set_ylabel("||cross|| / (||self|| + ||cross||)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{int(table['clips'].iloc[0])} clip(s) / prompt(s); intervals: 95% t", fontsize=8)
    return _finished(fig)


def speed_quality_figure(table: pd.DataFrame) -> Figure:
    """Every plan and baseline of a plan validation as a point (speed-up, drift PSNR against the unmodified video),
    95% intervals over clips both ways, the Pareto front joined (analyses.plan.speed_quality_table)."""
    from analyses.plan import DRIFT_CAP, speed_quality_table

    points = speed_quality_table(table)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for kind, marker in zip(("plan", "chunked", "gated", "magcache", "teacache", "skip"), "ov*sD^", strict=True):
        rows = points[points.kind == kind]
        if rows.empty:
            continue
        xerr = [(rows.speedup - rows.speedup_low).fillna(0), (rows.speedup_high - rows.speedup).fillna(0)]
        yerr = [(rows.drift_psnr - rows.drift_psnr_low).fillna(0), (rows.drift_psnr_high - rows.drift_psnr).fillna(0)]
        ax.errorbar(rows.speedup, rows.drift_psnr, xerr=xerr, yerr=yerr, marker=marker, linestyle="none", capsize=2,
                    label={"skip": "middle-span skip", "chunked": "plan, per chunk", "gated": "model-gated plan"}.get(kind, kind))
    front = points[points.pareto].sort_values("speedup")
    ax.plot(front.speedup, front.drift_psnr, color="black", linewidth=1, linestyle="--", label="Pareto front")
    ax.set_xlabel("measured speed-up (unmodified / setting, per clip)")
    ax.set_ylabel(f"drift PSNR vs unmodified (dB; identical drawn at {DRIFT_CAP:g})")
    ax.legend(fontsize=7)
    ax.set_title(f"{int(points.clips.max())} held-out clip(s); intervals: 95% t over clips", fontsize=8)
    return _finished(fig)


@takes_run
def frames_title(run: Recording) -> str:
    """What `frames_figure` shows, in words."""
    shows = run.manifest.get("video_shows")
    truth = " and ground-truth" if run.manifest.get("ground_truth") else ""
    return f"Context, generated{truth} frames" + (f" ({shows})" if shows else "")


@takes_run
def frames_figure(run: Recording, most: int = 24) -> Figure:
    """Context, generated and (where there is one) ground-truth frames; a VAE's decoded frames are counted in pixel
    frames, latent channels per latent frame. At most `most` frames, evenly spaced."""
    generated, truth = run.video()
    m = run.manifest
    context = m.get("video_context_frames", m.get("context", 0))
    unit = "frame" if m.get("video_shows") != "latent channels 0-2" else "latent"
    shown = np.unique(np.linspace(0, len(generated) - 1, min(most, len(generated))).round().astype(int))
    rows = 2 if len(truth) else 1
    fig, axes = plt.subplots(rows, len(shown), figsize=(1.2 * len(shown), 1.3 * rows), squeeze=False)
    for i, t in enumerate(shown):
        axes[0, i].imshow(generated[t])
        axes[0, i].set_title(("context" if t < context else "generated") + f" {unit} {t}", fontsize=6)
        if rows == 2:
            axes[1, i].imshow(truth[t])
            axes[1, i].set_title(f"ground truth {t}", fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    return _finished(fig)


def compare_frames(runs: dict[str, Recording]) -> Figure:
    """The generated frames of several runs of one clip, one row each, under the ground truth."""
    videos = {name: run.video() for name, run in runs.items()}
    truth = next((t for _, t in videos.values() if len(t)), None)
    rows = ([("ground truth", truth)] if truth is not None else []) + [(name, g) for name, (g, _) in videos.items()]
    context = max(run.manifest.get("context", 0) for run in runs.values())
    width = max(len(frames) for _, frames in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(1.1 * width + 1, 1.2 * len(rows)), squeeze=False)
    for r, (name, frames) in enumerate(rows):
        for t in range(width):
            axes[r, t].axis("off")
            if t < len(frames):
                axes[r, t].imshow(frames[t])
            if r == 0:
                axes[r, t].set_title(("context" if t < context else "generated") + f" {t}", fontsize=7)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    return _finished(fig)

def bench_figure(speed: pd.DataFrame, ratios: pd.DataFrame, quality: pd.DataFrame) -> Figure:
    """`probe bench` at a glance: frames/s per setting and model; measured vs analytic speed-up; PSNR."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    setting = lambda t: t.steps.astype(str) + " steps\n" + t.context.astype(str) + " context"  # noqa: E731  two lines
    sns.barplot(data=speed.assign(setting=setting(speed)), x="setting", y="frames_per_s", hue="model", ax=axes[0])
    axes[0].set_ylabel("frames/s")
    axes[0].set_xlabel("")
    long = ratios.assign(setting=setting(ratios)).melt(id_vars="setting", value_vars=["frames_per_s_ratio", "flop_ratio"],
                                                       var_name="ratio", value_name="speed-up")
    long["ratio"] = long.ratio.map({"frames_per_s_ratio": "measured frames/s", "flop_ratio": "analytic FLOPs"})
    sns.barplot(data=long, x="setting", y="speed-up", hue="ratio", ax=axes[1])
    axes[1].axhline(1, color="grey", lw=0.8)
    axes[1].set_xlabel("")
    q = quality.melt(id_vars="model", value_vars=["psnr", "psnr_best"], var_name="protocol", value_name="PSNR (dB)")
    q["protocol"] = q.protocol.map({"psnr": "one sample", "psnr_best": "best of k"})
    sns.barplot(data=q, x="model", y="PSNR (dB)", hue="protocol", ax=axes[2])
    axes[2].set_xlabel("")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    return _finished(fig)


def intervention_figure(summary: pd.DataFrame) -> Figure:
    """Drift from the unmodified generation against the layer K an intervention starts at (reuse: blocks
    0..K skipped between refreshes; knockout: blocks K.. see only the frame), next to the speed-up."""
    changed = summary[summary.intervention.isin(["reuse", "knockout"])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    sns.lineplot(data=changed, x="layer", y="drift_psnr", hue="intervention", marker="o", ax=axes[0])
    axes[0].axhline(30, color="grey", lw=0.8, ls=":", label="30 dB (claim threshold)")
    axes[0].set_ylabel("PSNR vs unmodified (dB)")
    axes[0].legend(fontsize=7)
    sns.lineplot(data=changed, x="layer", y="speedup", hue="intervention", marker="o", ax=axes[1])
    axes[1].axhline(1, color="grey", lw=0.8)
    axes[1].set_ylabel("speed-up (measured wall time)")
    for ax in axes:
        ax.set_xlabel("from layer K")
    return _finished(fig)


def surgery_figure(summary: pd.DataFrame) -> Figure:
    """The paper's surgeries: quality against the truth and the measured speed-up of the middle-span skip, with the
    unmodified model and the frame-diagonal models as lines. The x axis is what varies among the skips measured: k
    (the steps the span still runs) or, where k is one value, m (the last steps it is recomputed at)."""
    skip = summary[summary.intervention == "skip"]
    over_tail = skip.keep_steps.nunique() == 1 and skip.tail_steps.nunique() > 1
    x, xlabel = (("tail_steps", f"m: the last steps the span is recomputed at (k = {skip.keep_steps.iloc[0]})")
                 if over_tail else ("keep_steps", "k: steps the span still runs"))
    skip = skip.sort_values(x)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for (first, last), rows in skip.groupby(["layer", "span_end"]):
        axes[0].plot(rows[x], rows.psnr, marker="o", label=f"skip {first}-{last}")
        axes[1].plot(rows[x], rows.speedup, marker="o", label=f"skip {first}-{last}")
    styles = {"none": ("black", "unmodified"), "diagonal": ("tab:red", "frame-diagonal, no fine-tune"),
              "diagonal-tuned": ("tab:green", "frame-diagonal, fine-tuned")}
    for kind, (colour, label) in styles.items():
        row = summary[summary.intervention == kind]
        if not row.empty:
            axes[0].axhline(float(row.psnr.iloc[0]), color=colour, lw=1, ls="--", label=label)
    axes[0].set_ylabel("PSNR vs truth (dB)")
    axes[1].axhline(1, color="grey", lw=0.8)
    axes[1].set_ylabel("speed-up (measured wall time)")
    values = sorted(int(v) for v in skip[x].unique())
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
        if values:  # the values measured, as ticks; one value alone gets a padded range, not a zero-width axis
            pad = max(1, 0.1 * (values[-1] - values[0]))
            ax.set_xticks(values)
            ax.set_xlim(values[0] - pad, values[-1] + pad)
    return _finished(fig)


def intervention_frames(videos: dict[str, np.ndarray], context: int, rows: list[str] | None = None) -> Figure:
    """Generated frames of one clip under a few interventions (keys "reuse15", "knockout25", ...), under the
    ground truth and the unmodified generation."""
    names = ["ground_truth", "none-1"] + (rows or [k for k in videos if k not in ("ground_truth", "none-1")])
    labels = {"ground_truth": "ground truth", "none-1": "unmodified"}
    generated = {name: videos[name][context:] for name in names}
    width = max(len(v) for v in generated.values())
    fig, axes = plt.subplots(len(names), width, figsize=(1.1 * width + 1.2, 1.15 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for t in range(width):
            axes[r, t].axis("off")
            if t < len(generated[name]):
                axes[r, t].imshow(generated[name][t])
            if r == 0:
                axes[r, t].set_title(f"generated {context + t}", fontsize=7)
        label = labels.get(name, name.replace("reuse", "reuse from ").replace("knockout", "knockout from "))
        axes[r, 0].text(-0.1, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    return _finished(fig)


def position_figure(table: pd.DataFrame, index: int | None = None) -> Figure:
    """Drift along the rollout: per generated-frame position, the drift PSNR from the unmodified video (left) and the
    SSIM loss against the truth (right) of each rule at one matched share of skipped blocks (`index`; None: the
    middle one), with 95% intervals over clips (analyses.plan.position_table)."""
    from analyses.plan import DRIFT_CAP, position_table

    positions = position_table(table)
    indices = sorted({int(s[len(k):]) for s, k in zip(positions.setting, positions.kind, strict=True)
                      if k in ("plan", "gated", "magcache", "teacache") and s[len(k):].isdigit()})
    index = indices[len(indices) // 2] if index is None and indices else index
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    labels = {"plan": "per-block plan", "gated": "model-gated plan", "magcache": "MagCache-style",
              "teacache": "TeaCache-style", "chunked": "plan, per chunk"}
    for kind, label in labels.items():
        rows = positions[positions.setting == f"{kind}{index}"].sort_values("position")
        if rows.empty:
            continue
        for ax, column in zip(axes, ("drift_psnr", "ssim_loss"), strict=True):
            ax.plot(rows.position, rows[column], marker="o", label=label)
            ax.fill_between(rows.position, rows[f"{column}_low"], rows[f"{column}_high"], alpha=0.15)
    axes[0].set_ylabel(f"drift PSNR vs unmodified (dB; identical at {DRIFT_CAP:g})")
    axes[1].set_ylabel("SSIM loss vs truth (unmodified - setting)")
    axes[1].axhline(0, color="grey", lw=0.8)
    for ax in axes:
        ax.set_xlabel("generated frame (0: the first after the context)")
        ax.legend(fontsize=8)
    fig.suptitle(f"setting {index} (matched share of skipped block calls); 95% intervals over clips", fontsize=9)
    return _finished(fig)
