"""Attention over a rolling KV cache: by temporal distance and on the cache's regions (own chunk, previous chunk,
sink frames, the rest of the window), and for the Wan families the text's share of the attention update, per
layer, as means over clips and noise draws with 95% intervals.

The values are the run's stored `attention_by_distance` and `attention_regions` (exact: `probes.attention`),
averaged over probed frames, denoising steps and heads within a run; a sweep's items (clips, prompts, noise
seeds: `probe run --clip 0-7` / `--seeds N`) give the intervals, each clip's draws averaged first.
"""

from __future__ import annotations

import pandas as pd
import torch

from analyses.errors import takes_run
from analyses.intervals import table_over_clips
from probes.attention import REGIONS
from probes.recording import Recording


def sampling_of(run: Recording) -> dict:
    """The manifest's sampling (sampler, timesteps, window, sinks, RoPE policy); {} for a run recorded without one."""
    return run.manifest.get("sampling") or {}


def is_rolling(run: Recording) -> bool:
    """Was the run generated with a rolling KV window?"""
    return sampling_of(run).get("window") is not None


def _distance_of(item: Recording, distances: int) -> pd.DataFrame:
    rows = []
    for layer in item.attention_layers:
        mass = item.attention_by_distance(layer).double().mean((0, 1, 2))  # frames, steps, heads
        rows.append({"layer": layer, **{f"d{d}": float(mass[d]) if d < len(mass) else 0.0 for d in range(distances)}})
    return pd.DataFrame(rows)


@takes_run
def distance_table(run: Recording, distances: int | None = None) -> pd.DataFrame:
    """One row per layer: the mean attention mass at each temporal distance d (columns d0, d1, ...: d frames before
    the end of the query's chunk), with `_low` / `_high` 95% intervals over clips and `clips`, and (`d{d}_uniform`)
    the mass uniform attention over the keys each query sees would put there."""
    distances = distances or run.manifest["num_frames"]
    columns = [f"d{d}" for d in range(distances)]
    table = table_over_clips(run.items, lambda item: _distance_of(item, distances), "layer", columns)
    for d, value in enumerate(uniform_distance(run, distances)):
        table[f"d{d}_uniform"] = value
    return table


def _regions_of(item: Recording) -> pd.DataFrame:
    rows = []
    for layer in item.attention_layers:
        mass = item.attention_regions(layer).double().mean((0, 1, 2))
        rows.append({"layer": layer, **{region: float(mass[r]) for r, region in enumerate(REGIONS)}})
    return pd.DataFrame(rows)


def uniform_regions(run: Recording) -> dict[str, float]:
    """The mass each region would get if every key a query sees were equally attended (a region's share of the
    frames its chunk sees, averaged over the probed frames): the level against which a "sink" is read."""
    from probes.attention import mass_by_region

    shares = mass_by_region(uniform_mass(run), run.manifest["frames"], run.frames_per_block,
                            run.cache_policy.sink_frames).mean((0, 1, 2))
    return {region: float(shares[r]) for r, region in enumerate(REGIONS)}


def uniform_mass(run: Recording) -> torch.Tensor:
    """float64 [F, 1, 1, T]: each probed frame's attention mass on each frame of the clip if every key its queries
    see were equally attended (the frames `scd.contract.frames_seen` lists for a causal layer of this run)."""
    from scd.contract import frames_seen

    frames, total = run.manifest["frames"], run.manifest["num_frames"]
    uniform = torch.zeros(len(frames), 1, 1, total, dtype=torch.float64)
    for i, frame in enumerate(frames):
        seen = frames_seen(frame, "causal", run.frames_per_block, run.cache_policy)
        uniform[i, 0, 0, seen] = 1 / len(seen)
    return uniform


def uniform_distance(run: Recording, distances: int) -> list[float]:
    """The mass at each temporal distance d = 0..distances-1 under uniform attention over the keys each probed frame
    sees, averaged over the probed frames: the level against which `distance_table` is read."""
    from probes.attention import mass_by_distance

    shares = mass_by_distance(uniform_mass(run), run.manifest["frames"], run.frames_per_block).mean((0, 1, 2))
    return [float(shares[d]) if d < len(shares) else 0.0 for d in range(distances)]


@takes_run
def region_table(run: Recording) -> pd.DataFrame:
    """One row per layer: the mean attention mass on the own chunk, the previous chunk, the sink frames and the rest
    of the window (`probes.attention.REGIONS`), each with its 95% interval over clips, and (`{region}_uniform`) the
    mass it would get under uniform attention over the keys the query sees."""
    table = table_over_clips(run.items, _regions_of, "layer", list(REGIONS))
    for region, value in uniform_regions(run).items():
        table[f"{region}_uniform"] = value
    return table


def _text_of(item: Recording) -> pd.DataFrame:
    return pd.DataFrame([{"layer": layer, "text_share": float(item.attention_text_share(layer).double().mean())}
                         for layer in item.text_share_layers])


@takes_run
def text_share_table(run: Recording) -> pd.DataFrame:
    """One row per layer with cross-attention (the Wan families): the share of the block's attention update that
    comes from the text (`Recording.attention_text_share`), mean over frames and steps, with its 95% interval over
    clips / prompts."""
    return table_over_clips(run.items, _text_of, "layer", ["text_share"])
