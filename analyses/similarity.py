"""Cross-step cosine similarity: how much a layer's features for one frame change over the denoising steps.

The paper's first finding: at layer 15 the step x step similarity matrix of a frame's features is
near 1 everywhere. Per-token cosine averaged over tokens is the default; the flattened cosine (the
whole frame as one vector) is the option. Both come from the reductions every run stores
(`layer{L}.token_cosine`, `layer{L}.gram`), so full and stream runs are analysed alike. Layers
run once per frame (SCD's encoder) have no steps to compare and are left out of the tables.
"""

from __future__ import annotations

import pandas as pd
import torch

from analyses.errors import AnalysisError, takes_run
from probes.reductions import cosine_from_gram, off_diagonal
from probes.store import Run

KINDS = ("token", "flat")


def cosine_matrix(features: torch.Tensor, kind: str = "token") -> torch.Tensor:
    """Step x step cosine [..., S, S] of features [..., S, N, D]: per-token averaged over tokens, or flattened."""
    x = features.double()
    if kind == "token":
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.einsum("...snd,...tnd->...st", x, x) / x.shape[-2]
    if kind == "flat":
        flat = x.flatten(-2)
        return cosine_from_gram(flat @ flat.transpose(-1, -2))
    raise AnalysisError(f"unknown similarity kind {kind!r}; accepted: {', '.join(KINDS)}")


@takes_run
def run_cosine(run: Run, layer: int, kind: str = "token") -> torch.Tensor:
    """float64 [F, S, S]: the step x step cosine of each probed frame's features at `layer`."""
    if kind == "token":
        return run.token_cosine(layer)
    if kind == "flat":
        return cosine_from_gram(run.gram(layer))
    raise AnalysisError(f"unknown similarity kind {kind!r}; accepted: {', '.join(KINDS)}")


def summarize(matrices: torch.Tensor) -> dict[str, float]:
    """Mean and minimum of the off-diagonal entries of [..., S, S] matrices (all frames pooled)."""
    values = off_diagonal(matrices)
    return {"mean_off_diagonal": float(values.mean()), "min": float(values.min())}


@takes_run
def similarity_table(run: Run, kind: str = "token") -> pd.DataFrame:
    """One row per (layer, frame): mean off-diagonal cross-step cosine and its minimum."""
    rows = []
    for layer in run.stepwise_layers:
        for frame, matrix in zip(run.manifest["frames"], run_cosine(run, layer, kind), strict=True):
            rows.append({"layer": layer, "frame": frame, **summarize(matrix)})
    return pd.DataFrame(rows, columns=["layer", "frame", "mean_off_diagonal", "min"])


@takes_run
def depth_curve(run: Run, kind: str = "token") -> pd.DataFrame:
    """Similarity vs depth: per layer, the mean off-diagonal cosine (mean over frames) and the minimum."""
    table = similarity_table(run, kind)
    return table.groupby("layer").agg(mean_off_diagonal=("mean_off_diagonal", "mean"), min=("min", "min")).reset_index()


@takes_run
def similarity_to_last(run: Run, kind: str = "token") -> pd.DataFrame:
    """One row per (layer, frame, step): cosine of that step's features with the last step's."""
    rows = []
    for layer in run.stepwise_layers:
        for frame, matrix in zip(run.manifest["frames"], run_cosine(run, layer, kind), strict=True):
            for step, value in zip(run.manifest["steps"], matrix[:, -1].tolist(), strict=True):
                rows.append({"layer": layer, "frame": frame, "step": step, "cosine_to_last": value})
    return pd.DataFrame(rows, columns=["layer", "frame", "step", "cosine_to_last"])


@takes_run
def cross_frame_cosine(run: Run, layer: int) -> torch.Tensor:
    """float64 [F - 1, S, S]: the paper's control, per-token cosine between probed frame i at step s and frame i + 1 at
    step t at the same layer (m1 vs m2), averaged over tokens (stream mode: over the kept tokens)."""
    x = run.features(layer).double()
    if x.shape[0] < 2:
        raise AnalysisError(f"the control needs two probed frames; the run probed {x.shape[0]}")
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("fsnd,ftnd->fst", x[:-1], x[1:]) / x.shape[-2]


@takes_run
def finding1_panels(run: Run, layer: int) -> dict[str, torch.Tensor]:
    """The paper's three panels, float64 [S, S] each: m1 vs m1, m1 vs m2 (the control), m2 vs m2, for the first
    two probed frames (a sweep: averaged over its items)."""
    items = getattr(run, "items", None) or [run]
    within = torch.stack([item.token_cosine(layer)[:2] for item in items]).mean(0)
    across = torch.stack([cross_frame_cosine(item, layer)[0] for item in items]).mean(0)
    return {"m1 vs m1": within[0], "m1 vs m2 (control)": across, "m2 vs m2": within[1]}
