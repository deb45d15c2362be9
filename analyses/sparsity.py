"""Cross-frame attention: how much of a frame's attention lands on earlier frames, by depth, head, offset, step.

The paper's second finding: the share of attention a frame's queries put on earlier frames falls
with depth, and the last layers attend almost only within the frame. Input: a run's attention
mass [F, S, H, T] per layer (each probed frame's queries, averaged, on each frame of the clip).
On SCD, an encoder layer's S is 1 (it reads a frame once), and a decoder layer's "earlier frame" is
the encoder output of the frame before, the only past it can see.
"""

from __future__ import annotations

import pandas as pd
import torch

from probes.store import Run


def earlier_share(mass: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """[F, S, H]: share of each probed frame's attention on frames before it."""
    return torch.stack([mass[i, ..., :frame].sum(-1) for i, frame in enumerate(frames)])


def by_offset(mass: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """[F, S, H, max_offset + 1]: mass on the frame `offset` frames back (0 = the frame itself); NaN where
    a frame has no frame that far back."""
    width = max(frames) + 1
    out = mass.new_full((*mass.shape[:-1], width), float("nan"))
    for i, frame in enumerate(frames):
        out[i, ..., : frame + 1] = mass[i, ..., : frame + 1].flip(-1)
    return out


def entropy(mass: torch.Tensor) -> torch.Tensor:
    """[F, S, H]: entropy (nats) of the per-frame attention distribution."""
    p = mass.double()
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def sparsity_table(run: Run) -> pd.DataFrame:
    """Per layer: share of attention on earlier frames (mean, and spread over heads), and entropy."""
    frames, rows = run.manifest["frames"], []
    for layer in run.attention_layers:
        mass = run.attention(layer)
        share = earlier_share(mass, frames)  # [F, S, H]
        per_head = share.mean((0, 1))
        rows.append({"layer": layer, "earlier_share": float(share.mean()), "head_min": float(per_head.min()),
                     "head_max": float(per_head.max()), "head_std": float(per_head.std(unbiased=False)),
                     "entropy": float(entropy(mass).mean())})
    return pd.DataFrame(rows, columns=["layer", "earlier_share", "head_min", "head_max", "head_std", "entropy"])


def head_table(run: Run) -> pd.DataFrame:
    """One row per (layer, head): that head's share of attention on earlier frames."""
    frames, rows = run.manifest["frames"], []
    for layer in run.attention_layers:
        for head, value in enumerate(earlier_share(run.attention(layer), frames).mean((0, 1)).tolist()):
            rows.append({"layer": layer, "head": head, "earlier_share": value})
    return pd.DataFrame(rows, columns=["layer", "head", "earlier_share"])


def offset_table(run: Run) -> pd.DataFrame:
    """One row per (layer, offset): mean mass on the frame `offset` back (0 = same frame, 1 = previous, ...)."""
    frames, rows = run.manifest["frames"], []
    for layer in run.attention_layers:
        for offset, value in enumerate(by_offset(run.attention(layer), frames).nanmean((0, 1, 2)).tolist()):
            rows.append({"layer": layer, "offset": offset, "mass": value})
    return pd.DataFrame(rows, columns=["layer", "offset", "mass"])


def step_table(run: Run) -> pd.DataFrame:
    """One row per (layer, step): share of attention on earlier frames at that denoising step (layers
    run once per frame, SCD's encoder, have no steps and are left out)."""
    frames, rows = run.manifest["frames"], []
    for layer in (layer for layer in run.attention_layers if run.role(layer) != "encoder"):
        share = earlier_share(run.attention(layer), frames).mean((0, 2))
        for step, value in zip(run.manifest["steps"], share.tolist(), strict=True):
            rows.append({"layer": layer, "step": step, "earlier_share": value})
    return pd.DataFrame(rows, columns=["layer", "step", "earlier_share"])
