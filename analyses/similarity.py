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
from probes.recording import Recording
from probes.reductions import cosine_from_gram, off_diagonal

KINDS = ("token", "flat", "centred", "cka")  # per-token cosine, flattened cosine, token-centred cosine, linear CKA
PAIRED_KINDS = ("token", "centred", "cka")     # those the controls compare between two frames or two noise draws


def cosine_matrix(features: torch.Tensor, kind: str = "token") -> torch.Tensor:
    """Step x step cosine [..., S, S] of features [..., S, N, D]: per-token averaged over tokens, or flattened."""
    x = features.double()
    if kind == "token":
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.einsum("...snd,...tnd->...st", x, x) / x.shape[-2]
    if kind == "flat":
        flat = x.flatten(-2)
        return cosine_from_gram(flat @ flat.transpose(-1, -2))
    if kind in ("centred", "cka"):
        return paired_similarity(features, features, kind)
    raise AnalysisError(f"unknown similarity kind {kind!r}; accepted: {', '.join(KINDS)}")


def paired_similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "token") -> torch.Tensor:
    """[..., S, S]: similarity of a's step s with b's step t, for features [..., S, N, D] of the same tokens (two
    frames, or one frame from two noise draws): per-token cosine averaged over tokens ("token"), the same after each
    step's token mean is removed ("centred"), or linear CKA of the token-centred features ("cka")."""
    if kind not in PAIRED_KINDS:
        raise AnalysisError(f"unknown paired similarity kind {kind!r}; accepted: {', '.join(PAIRED_KINDS)}")
    return paired_similarities(a, b, (kind,))[kind]


def paired_similarities(a: torch.Tensor, b: torch.Tensor, kinds=PAIRED_KINDS) -> dict[str, torch.Tensor]:
    """`paired_similarity` of several kinds at once, sharing the conversion and centring of the features."""
    x, y = a.double(), b.double()
    out = {}

    def token_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
        y = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(1e-12)
        # per token n: [S, D] @ [D, S], then the mean over tokens (one batched product, not an einsum over n)
        return (x.transpose(-3, -2) @ y.transpose(-3, -2).transpose(-1, -2)).mean(-3)

    if "token" in kinds:
        out["token"] = token_cosine(x, y)
    if "centred" in kinds or "cka" in kinds:
        x, y = x - x.mean(-2, keepdim=True), y - y.mean(-2, keepdim=True)
        if "centred" in kinds:
            out["centred"] = token_cosine(x, y)
        if "cka" in kinds:
            kx = (x @ x.transpose(-1, -2)).flatten(-2)  # [..., S, N*N]: token Gram of each step
            ky = (y @ y.transpose(-1, -2)).flatten(-2)
            nx, ny = torch.linalg.vector_norm(kx, dim=-1), torch.linalg.vector_norm(ky, dim=-1)
            out["cka"] = (kx @ ky.transpose(-1, -2)) / (nx[..., :, None] * ny[..., None, :]).clamp_min(1e-300)
    return out


@takes_run
def run_cosine(run: Recording, layer: int, kind: str = "token") -> torch.Tensor:
    """float64 [F, S, S]: the step x step similarity of each probed frame's features at `layer` (`KINDS`), from
    the reductions the probe computed over every token."""
    if kind == "token":
        return run.token_cosine(layer)
    if kind == "flat":
        return cosine_from_gram(run.gram(layer))
    if kind == "centred":
        return run.centred_cosine(layer)
    if kind == "cka":
        return run.cka(layer)
    raise AnalysisError(f"unknown similarity kind {kind!r}; accepted: {', '.join(KINDS)}")


@takes_run
def input_similarity(run: Recording, kind: str = "token") -> torch.Tensor | None:
    """float64 [F, S, S]: the same step x step similarity of the frame's input to the blocks (the noise floor);
    None where the run did not record it."""
    names = {"token": "token_cosine", "centred": "centred_cosine", "cka": "cka"}
    if kind not in names:
        raise AnalysisError(f"unknown input similarity kind {kind!r}; accepted: {', '.join(names)}")
    return run.input_cosine(names[kind])


def summarize(matrices: torch.Tensor) -> dict[str, float]:
    """Mean and minimum of the off-diagonal entries of [..., S, S] matrices (all frames pooled)."""
    values = off_diagonal(matrices)
    return {"mean_off_diagonal": float(values.mean()), "min": float(values.min())}


@takes_run
def similarity_table(run: Recording, kind: str = "token") -> pd.DataFrame:
    """One row per (layer, frame): mean off-diagonal cross-step cosine and its minimum."""
    rows = []
    for layer in run.stepwise_layers:
        for frame, matrix in zip(run.manifest["frames"], run_cosine(run, layer, kind), strict=True):
            rows.append({"layer": layer, "frame": frame, **summarize(matrix)})
    return pd.DataFrame(rows, columns=["layer", "frame", "mean_off_diagonal", "min"])


@takes_run
def depth_curve(run: Recording, kind: str = "token") -> pd.DataFrame:
    """Similarity vs depth: per layer, the mean off-diagonal cosine (mean over frames) and the minimum."""
    table = similarity_table(run, kind)
    return table.groupby("layer").agg(mean_off_diagonal=("mean_off_diagonal", "mean"), min=("min", "min")).reset_index()


@takes_run
def similarity_to_last(run: Recording, kind: str = "token") -> pd.DataFrame:
    """One row per (layer, frame, step): cosine of that step's features with the last step's."""
    rows = []
    for layer in run.stepwise_layers:
        for frame, matrix in zip(run.manifest["frames"], run_cosine(run, layer, kind), strict=True):
            for step, value in zip(run.manifest["steps"], matrix[:, -1].tolist(), strict=True):
                rows.append({"layer": layer, "frame": frame, "step": step, "cosine_to_last": value})
    return pd.DataFrame(rows, columns=["layer", "frame", "step", "cosine_to_last"])


@takes_run
def cross_frame_cosine(run: Recording, layer: int, kind: str = "token") -> torch.Tensor:
    """float64 [F - 1, S, S]: the paper's control, the similarity (`PAIRED_KINDS`) between probed frame i at step s and
    frame i + 1 at step t at the same layer (m1 vs m2) (stream mode: over the kept tokens)."""
    return cross_frame_similarities(run, layer, (kind,))[kind]


@takes_run
def cross_frame_similarities(run: Recording, layer: int, kinds=PAIRED_KINDS) -> dict[str, torch.Tensor]:
    """`cross_frame_cosine` of several kinds at once."""
    x = run.features(layer)
    if x.shape[0] < 2:
        raise AnalysisError(f"the control needs two probed frames; the run probed {x.shape[0]}")
    return paired_similarities(x[:-1], x[1:], kinds)


def cross_noise_similarity(draws: list[Recording], layer: int, kind: str = "token") -> torch.Tensor:
    """The different-noise control of one kind (`cross_noise_similarities`)."""
    return cross_noise_similarities(draws, layer, (kind,))[kind]


def cross_noise_similarities(draws: list[Recording], layer: int, kinds=PAIRED_KINDS) -> dict[str, torch.Tensor]:
    """float64 [pairs, F, S, S]: the different-noise control, the similarity of each probed frame at step s in one
    noise draw with the same frame at step t in another draw of the same clip (every pair of draws), same layer.
    High values say the layer's features follow what every draw shares (the clip's context, the timestep), not
    the noise trajectory of one denoising."""
    if len(draws) < 2:
        raise AnalysisError(f"the different-noise control needs two draws of a clip; got {len(draws)} "
                            "(probe run --seeds 2)")
    clips = {run.manifest.get("clip") for run in draws}
    if len(clips) != 1 or len({run.manifest.get("seed") for run in draws}) != len(draws):
        raise AnalysisError("the different-noise control compares draws of one clip with different seeds; got clips "
                            f"{sorted(clips, key=str)}")
    features = [run.features(layer) for run in draws]
    pairs = [paired_similarities(features[i], features[j], kinds)
             for i in range(len(draws)) for j in range(i + 1, len(draws))]
    return {kind: torch.stack([p[kind] for p in pairs]) for kind in kinds}


@takes_run
def finding1_panels(run: Recording, layer: int) -> dict[str, torch.Tensor]:
    """The paper's three panels, float64 [S, S] each: m1 vs m1, m1 vs m2 (the control), m2 vs m2, for the first
    two probed frames (a sweep: averaged over its items)."""
    items = run.items
    within = torch.stack([item.token_cosine(layer)[:2] for item in items]).mean(0)
    across = torch.stack([cross_frame_cosine(item, layer)[0] for item in items]).mean(0)
    return {"m1 vs m1": within[0], "m1 vs m2 (control)": across, "m2 vs m2": within[1]}
