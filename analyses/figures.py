"""The paper's figures from a run: each a function returning a matplotlib Figure, used by the report and the notebooks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files and notebooks; never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analyses.pca import pca_images  # noqa: E402
from analyses.similarity import depth_curve, run_cosine  # noqa: E402
from analyses.sparsity import head_table, offset_table, sparsity_table  # noqa: E402
from probes.store import Run  # noqa: E402


def _pick(layers: list[int], most: int) -> list[int]:
    """At most `most` layers spread evenly over the probed ones (always the first and last)."""
    if len(layers) <= most:
        return layers
    return [layers[i] for i in np.linspace(0, len(layers) - 1, most).round().astype(int)]


def similarity_heatmaps(run: Run, layers: list[int] | None = None, frame: int = 0, kind: str = "token") -> Figure:
    """Step x step cosine similarity matrices of one probed frame, one heatmap per layer."""
    layers = layers or _pick(run.stepwise_layers, 6)
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 0.8, 2.8), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        matrix = run_cosine(run, layer, kind)[frame].numpy()
        sns.heatmap(matrix, ax=ax, vmin=min(0.0, matrix.min()), vmax=1.0, cmap="viridis", square=True,
                    cbar=ax is axes[0, -1], xticklabels=False, yticklabels=False)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel("step")
    fig.suptitle(f"cross-step cosine ({kind}), frame {run.manifest['frames'][frame]}", fontsize=10)
    fig.tight_layout()
    return fig


def similarity_vs_depth(runs: dict[str, Run], kind: str = "token") -> Figure:
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
    fig.tight_layout()
    return fig


def pca_strip(run: Run, layer: int, frame: int = 0, steps: int = 6) -> Figure:
    """PCA images of one layer's features at a few steps, next to the generated frame."""
    features = run.features(layer)[frame].float()
    n = run.manifest.get("tokens_per_frame", features.shape[1])
    side = int(round(n**0.5))
    images, variance = pca_images(features, (side, side), run.token_index(layer))
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
    fig.tight_layout()
    return fig


def attention_vs_depth(runs: dict[str, Run]) -> Figure:
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
    fig.tight_layout()
    return fig


def offset_heatmap(run: Run) -> Figure:
    """Layer x key-frame offset (0 = the frame itself, 1 = the previous one, ...): mean attention mass."""
    table = offset_table(run).pivot(index="layer", columns="offset", values="mass")
    fig, ax = plt.subplots(figsize=(5, max(2.5, 0.18 * len(table) + 1)))
    sns.heatmap(table, ax=ax, cmap="magma", vmin=0, vmax=1, annot=len(table) <= 8, fmt=".2f")
    ax.set_xlabel("key frame offset (0 = same frame)")
    fig.tight_layout()
    return fig


def frames_figure(run: Run) -> Figure:
    """Context, generated and ground-truth frames."""
    generated, truth = run.video()
    context = run.manifest.get("context", 0)
    rows = 2 if len(truth) else 1
    fig, axes = plt.subplots(rows, len(generated), figsize=(1.2 * len(generated), 1.3 * rows), squeeze=False)
    for t in range(len(generated)):
        axes[0, t].imshow(generated[t])
        axes[0, t].set_title(("context" if t < context else "generated") + f" {t}", fontsize=7)
        if rows == 2:
            axes[1, t].imshow(truth[t])
            axes[1, t].set_title(f"ground truth {t}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def bench_figure(speed: pd.DataFrame, ratios: pd.DataFrame, quality: pd.DataFrame) -> Figure:
    """`probe bench` at a glance: frames/s per setting and model; measured vs analytic speed-up; PSNR."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    setting = lambda t: t.steps.astype(str) + " steps, " + t.context.astype(str) + " ctx"  # noqa: E731
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
    fig.tight_layout()
    return fig
