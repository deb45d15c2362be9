"""Cross-frame attention: how much of a frame's attention lands on earlier frames, by depth, head, offset, step.

The paper's second finding: deep layers barely attend to past frames. Input: a run's attention mass
[F, S, H, T] per layer (each probed frame's queries, averaged, on each frame of the clip) and its
pooled map [F, S, H, g, T*g] (per-key probability, g bands per frame).

Every measure and its uniform level read one definition of what a query may see (`seen_frames`, i.e.
`scd.contract.frames_seen` under the run's cache policy and chunking): its own chunk, the earlier frames the
cache keeps for it (every one without a window; the sink frames and the frames inside the window with one),
the frame before for SCD's decoder. A frame hidden from the query is neither attended nor ignored: it is not
there, and a model whose attention is exactly uniform reads as uniform in every setting (tested on tiny Wan,
SkyReels-V2 and the shipped baseline with windows, sinks and chunks). A probed frame that sees no earlier frame
(the first chunk of a video generated from no context) has no per-key ratio: it is left out of the means. Measures:

"Earlier" means before the query's chunk (a chunk of frames denoised together is the query's own, as the paper
leaves the current block out of its maps; with one frame per chunk, the frame itself).

- `earlier_share`: the share on the earlier frames seen. It grows with their number (uniform attention gives
  earlier / seen), so it is kept as a row, not tested;
- `per_key_ratio`: mean attention on one earlier-frame key / on one key of the own chunk (1 for uniform
  attention, 0 for attention within the chunk), whatever the context length, window or sinks;
- `excess_share`: the share on earlier frames minus uniform's, earlier frames seen / frames seen;
- `earlier_key_nats`: ln of the mean attention on one earlier-frame key over uniform's per key (1 / the
  keys the query sees): 0 for uniform attention, the paper's deep layers sit about 7 nats below;
- `lit_share`: the share of the pooled map's context cells (queries of frame f, keys of the earlier frames it
  sees) whose per-key ln p is at most `cut` nats below uniform's (the paper's cut, 30% of its colour
  range -21..-9, sits 7.0 nats below its uniform -10.4). Defined on each layer's own map and the
  run's token count alone, so a layer's value never depends on which other layers were probed;
  per head too (`measures_by_head`).
- `context_sparsity` (kept for the emergence cards made before issue 26, and the figure's colour
  bar): the share of context cells above `SPARSITY_FRACTION` of one colour range over the layers
  compared. It depends on which layers were probed: the claims do not use it.

On SCD, an encoder layer's S is 1 (it reads a frame once), and a decoder layer's "earlier frame" is
the encoder output of the frame before, the only past it can see. A frame-local layer (the paper's
frame-diagonal mask) sees no earlier key: its share and ratio are 0.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from analyses.errors import AnalysisError, takes_run
from analyses.thresholds import threshold
from probes.recording import Recording
from scd.contract import MAX_FRAMES_PER_BLOCK, ROLES, CachePolicy, frames_seen

SPARSITY_FRACTION = 0.3            # a context cell counts when ln p is above 30% of the colour range (the paper's Fig. 3)
SPARSITY_MIN_RANGE = math.log(10)  # ... and the range spans at least a factor 10; else the map is flat: not measured
LIT_CUT = threshold("LIT_CUT_NATS")  # a context cell is lit when at most this many nats below uniform (the paper's cut)


def seen_frames(frames: list[int], role: str = "causal", frames_per_block: int = 1,
                policy: CachePolicy | None = None) -> list[list[int]]:
    """For each probed frame, the frames whose keys its queries see at a layer of this `role`, under the sampler's
    cache `policy` (`scd.contract.frames_seen`: one definition for the sampler and every measure here)."""
    if not isinstance(frames_per_block, int) or isinstance(frames_per_block, bool) or \
            not 1 <= frames_per_block <= MAX_FRAMES_PER_BLOCK:
        raise AnalysisError(f"frames_per_block = {frames_per_block!r}; accepted: an integer in 1..{MAX_FRAMES_PER_BLOCK}")
    if role not in ROLES:
        raise AnalysisError(f"role = {role!r}; accepted: one of {', '.join(ROLES)}")
    if not isinstance(frames, list | tuple) or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0
                                                        for f in frames):
        raise AnalysisError(f"frames = {frames!r}; accepted: a list of frame indices, integers >= 0")
    return [frames_seen(frame, role, frames_per_block, policy) for frame in frames]


def earlier_seen(frames: list[int], role: str = "causal", frames_per_block: int = 1,
                 policy: CachePolicy | None = None) -> list[list[int]]:
    """For each probed frame, the earlier frames its queries see: those of `seen_frames` before its chunk (the
    chunk is denoised together and is the query's own, as the paper leaves the current block out of its maps)."""
    return [[f for f in seen if f < frame - frame % frames_per_block]
            for frame, seen in zip(frames, seen_frames(frames, role, frames_per_block, policy), strict=True)]


def earlier_frames_seen(frames: list[int], role: str, frames_per_block: int = 1,
                        policy: CachePolicy | None = None) -> list[int]:
    """How many earlier frames each probed frame's queries can see at a layer of this role."""
    return [len(e) for e in earlier_seen(frames, role, frames_per_block, policy)]


def frames_visible(frames: list[int], role: str, frames_per_block: int = 1, policy: CachePolicy | None = None) -> list[int]:
    """How many frames each probed frame's queries see under the mask and the cache policy applied: the earlier
    frames it is shown, its own, and, when chunks of `frames_per_block` frames are denoised together, the later
    frames of its chunk. The uniform level of every share is taken over these."""
    return [len(seen) for seen in seen_frames(frames, role, frames_per_block, policy)]


def earlier_share(mass: torch.Tensor, frames: list[int], role: str = "causal", frames_per_block: int = 1,
                  policy: CachePolicy | None = None) -> torch.Tensor:
    """[F, S, H]: share of each probed frame's attention on the earlier frames it sees."""
    earlier = earlier_seen(frames, role, frames_per_block, policy)
    return torch.stack([mass[i, ..., e].sum(-1) for i, e in enumerate(earlier)])


def _rows_with_earlier(earlier: list[list[int]], role: str) -> list[int]:
    """The probed frames whose queries see some earlier key. A frame-local layer keeps every frame: the mask
    forbids the past, and that reads as attention 0 on it (the convention of the paper's frame-diagonal mask)."""
    return list(range(len(earlier))) if role == "frame-local" else [i for i, e in enumerate(earlier) if e]


def _mean_where_seeing(values: torch.Tensor, rows: list[int], dims) -> torch.Tensor:
    """The mean over `dims` of [F, S, H] `values`, over the probed frames `rows` (`_rows_with_earlier`); NaN where
    no probed frame sees an earlier frame."""
    if not rows:
        return torch.full([n for d, n in enumerate(values.shape) if d not in dims], float("nan"), dtype=torch.float64)
    return values[rows].mean(dims)


def per_key(mass: torch.Tensor, frames: list[int], role: str = "causal", frames_per_block: int = 1,
            policy: CachePolicy | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[F, S, H] each: (attention on one earlier-frame key the query sees, on one key of its own chunk), in units
    of a frame's token count (the count cancels in their ratio); NaN on the first where the query sees no earlier
    frame (the first chunk of a video generated from no context, a window of one chunk): no earlier key is
    there to be attended or ignored."""
    earlier = earlier_seen(frames, role, frames_per_block, policy)
    seen = seen_frames(frames, role, frames_per_block, policy)
    keys = torch.stack([mass[i, ..., e].sum(-1) / len(e) if e else
                        mass.new_full(mass.shape[1:-1], 0.0 if role == "frame-local" else float("nan"))
                        for i, e in enumerate(earlier)])
    own = [[f for f in s if f not in e] for s, e in zip(seen, earlier, strict=True)]  # the chunk (the frame alone
    own = torch.stack([mass[i, ..., o].sum(-1) / len(o) for i, o in enumerate(own)])  # for SCD's decoder)
    return keys.double(), own.double()


def per_key_ratio(mass: torch.Tensor, frames: list[int], role: str = "causal", dims=(0, 1, 2),
                  frames_per_block: int = 1, policy: CachePolicy | None = None) -> torch.Tensor:
    """Mean attention on one earlier-frame key / on one key of the own chunk, the means taken over `dims` of [F, S, H]
    over the probed frames that see an earlier frame (NaN if none does): 1 for uniform attention over the keys
    shown, whatever the window, the sinks or the chunk; 0 for attention within the chunk."""
    keys, own = per_key(mass, frames, role, frames_per_block, policy)
    rows = _rows_with_earlier(earlier_seen(frames, role, frames_per_block, policy), role)
    return _mean_where_seeing(keys, rows, dims) / _mean_where_seeing(own, rows, dims).clamp_min(1e-30)


def excess_share(mass: torch.Tensor, frames: list[int], role: str = "causal", frames_per_block: int = 1,
                 policy: CachePolicy | None = None) -> torch.Tensor:
    """[F, S, H]: share on earlier frames minus the share uniform attention over the keys shown would give (the
    frames `seen_frames` lists: the window's, the sinks, the whole chunk); NaN where the query sees no earlier
    frame (average with nanmean)."""
    earlier = earlier_seen(frames, role, frames_per_block, policy)
    seen = frames_visible(frames, role, frames_per_block, policy)
    uniform = torch.tensor([len(e) / v for e, v in zip(earlier, seen, strict=True)], dtype=torch.float64)
    excess = earlier_share(mass, frames, role, frames_per_block, policy).double() - uniform[:, None, None]
    seeing = set(_rows_with_earlier(earlier, role))
    excess[[i for i in range(len(frames)) if i not in seeing]] = float("nan")
    return excess


def uniform_key_nats(frames: list[int], role: str, frames_per_block: int, tokens: int,
                     policy: CachePolicy | None = None) -> torch.Tensor:
    """[F]: ln of the per-key probability uniform attention gives each probed frame's queries (1 / keys shown)."""
    visible = frames_visible(frames, role, frames_per_block, policy)
    return -torch.log(torch.tensor(visible, dtype=torch.float64) * tokens)


def context_key_nats(maps: torch.Tensor, frames: list[int], bands: int, uniform: torch.Tensor,
                     role: str = "causal", frames_per_block: int = 1, policy: CachePolicy | None = None) -> torch.Tensor:
    """Per-key ln p of the context cells of pooled maps [F, ..., g, T*g] minus uniform's for the query's frame
    (`uniform_key_nats`): [..., cells], flattened over frames; -inf where a key gets nothing. Context cells are the
    cells of the earlier frames the query sees (`earlier_seen`: under a window, the sinks and the frames inside it;
    the frame before for SCD's decoder; none for a frame-local layer): a frame the mask or the window hides is no
    evidence of sparse attention."""
    earlier = earlier_seen(frames, role, frames_per_block, policy)
    parts = [maps[i, ..., _cells(e, bands)].flatten(-2).double().log() - uniform[i] for i, e in enumerate(earlier)]
    return torch.cat(parts, dim=-1)


def _cells(frames: list[int], bands: int) -> list[int]:
    """The pooled map's key cells of these frames (g bands per frame, frame-major)."""
    return [frame * bands + b for frame in frames for b in range(bands)]


def lit_share(nats: torch.Tensor, cut: float) -> torch.Tensor:
    """[...]: share of context cells [..., cells] (ln p relative to uniform) at most `cut` nats below uniform; NaN
    where there is no context cell."""
    if nats.shape[-1] == 0:
        return torch.full(nats.shape[:-1], float("nan"), dtype=torch.float64)
    return (nats >= -cut).double().mean(-1)


def earlier_key_nats(mass: torch.Tensor, frames: list[int], role: str = "causal", frames_per_block: int = 1,
                     dims=(0, 1, 2), policy: CachePolicy | None = None) -> torch.Tensor:
    """ln(mean attention on one earlier-frame key / uniform's per key), the means over `dims` of [F, S, H] over
    the probed frames that see an earlier frame: 0 for uniform attention over the keys shown, -inf within the
    chunk. Per frame the keys a query sees are `frames_visible` frames of tokens; in units of a frame's tokens the
    count cancels."""
    keys, _ = per_key(mass, frames, role, frames_per_block, policy)
    rows = _rows_with_earlier(earlier_seen(frames, role, frames_per_block, policy), role)
    visible = frames_visible(frames, role, frames_per_block, policy)
    uniform = torch.tensor([1 / v for v in visible], dtype=torch.float64)[:, None, None].expand_as(keys)
    return (_mean_where_seeing(keys, rows, dims) / _mean_where_seeing(uniform, rows, dims)).log()


def context_cells(maps: torch.Tensor, frames: list[int], bands: int, role: str = "causal", frames_per_block: int = 1,
                  policy: CachePolicy | None = None) -> torch.Tensor:
    """ln p of the context cells of pooled maps [F, ..., g, T*g] (queries of each probed frame, keys of the earlier
    frames it sees), flattened over frames and cells: [..., cells]; -inf where a key gets nothing."""
    earlier = earlier_seen(frames, role, frames_per_block, policy)
    parts = [maps[i, ..., _cells(e, bands)].flatten(-2) for i, e in enumerate(earlier)]
    return torch.cat(parts, dim=-1).double().log()


def colour_range(values: list[torch.Tensor]) -> tuple[float, float]:
    """(min, max) of the finite ln p values of several maps' context cells: one colour bar for all."""
    finite = torch.cat([v[torch.isfinite(v)].flatten() for v in values])
    return (float(finite.min()), float(finite.max())) if finite.numel() else (float("nan"), float("nan"))


def context_sparsity(cells: torch.Tensor, low: float, high: float, fraction: float = SPARSITY_FRACTION) -> torch.Tensor:
    """[...]: share of context cells above `fraction` of the colour range [low, high] (NaN if the range is flatter
    than SPARSITY_MIN_RANGE)."""
    if not high - low >= SPARSITY_MIN_RANGE:
        return torch.full(cells.shape[:-1], float("nan"), dtype=torch.float64)
    return (cells > low + fraction * (high - low)).double().mean(-1)


def by_offset(mass: torch.Tensor, frames: list[int], role: str = "causal", frames_per_block: int = 1,
              policy: CachePolicy | None = None) -> torch.Tensor:
    """[F, S, H, max_offset + 1]: mass on the frame `offset` frames back (0 = the frame itself); NaN where a frame
    has no frame that far back, or where that frame is hidden from its queries (outside the window)."""
    width = max(frames) + 1
    out = mass.new_full((*mass.shape[:-1], width), float("nan"))
    for i, (frame, seen) in enumerate(zip(frames, seen_frames(frames, role, frames_per_block, policy), strict=True)):
        shown = [f for f in seen if f <= frame]
        out[i, ..., [frame - f for f in shown]] = mass[i, ..., shown]
    return out


def entropy(mass: torch.Tensor) -> torch.Tensor:
    """[F, S, H]: entropy (nats) of the per-frame attention distribution."""
    p = mass.double()
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


@takes_run
def sparsity_table(run: Recording) -> pd.DataFrame:
    """Per layer: share of attention on earlier frames (mean, and spread over heads), and entropy."""
    frames, rows = run.manifest["frames"], []
    for layer in run.attention_layers:
        mass = run.attention(layer)
        share = earlier_share(mass, frames, *_seeing(run, layer))  # [F, S, H]
        per_head = share.mean((0, 1))
        rows.append({"layer": layer, "earlier_share": float(share.mean()), "head_min": float(per_head.min()),
                     "head_max": float(per_head.max()), "head_std": float(per_head.std(unbiased=False)),
                     "entropy": float(entropy(mass).mean())})
    return pd.DataFrame(rows, columns=["layer", "earlier_share", "head_min", "head_max", "head_std", "entropy"])


@takes_run
def head_table(run: Recording) -> pd.DataFrame:
    """One row per (layer, head): that head's share of attention on earlier frames."""
    frames, rows = run.manifest["frames"], []
    for layer in run.attention_layers:
        for head, value in enumerate(earlier_share(run.attention(layer), frames, *_seeing(run, layer)).mean((0, 1)).tolist()):
            rows.append({"layer": layer, "head": head, "earlier_share": value})
    return pd.DataFrame(rows, columns=["layer", "head", "earlier_share"])


@takes_run
def offset_table(run: Recording) -> pd.DataFrame:
    """One row per (layer, offset): mean mass on the frame `offset` back (0 = same frame, 1 = previous, ...)."""
    frames, rows = run.manifest["frames"], []
    for layer in run.attention_layers:
        for offset, value in enumerate(by_offset(run.attention(layer), frames, *_seeing(run, layer)).nanmean((0, 1, 2)).tolist()):
            rows.append({"layer": layer, "offset": offset, "mass": value})
    return pd.DataFrame(rows, columns=["layer", "offset", "mass"])


@takes_run
def step_table(run: Recording) -> pd.DataFrame:
    """One row per (layer, step): share of attention on earlier frames at that denoising step (layers
    run once per frame, SCD's encoder, have no steps and are left out)."""
    frames, rows = run.manifest["frames"], []
    for layer in (layer for layer in run.attention_layers if run.role(layer) != "encoder"):
        share = earlier_share(run.attention(layer), frames, *_seeing(run, layer)).mean((0, 2))
        for step, value in zip(run.manifest["steps"], share.tolist(), strict=True):
            rows.append({"layer": layer, "step": step, "earlier_share": value})
    return pd.DataFrame(rows, columns=["layer", "step", "earlier_share"])


def _frames(run: Recording) -> list[int]:
    return run.manifest["frames"]


def _seeing(run: Recording, layer: int) -> tuple[str, int, CachePolicy]:
    """(role, frames per chunk, cache policy): what decides which frames a layer's queries see in this run."""
    return run.role(layer), run.frames_per_block, run.cache_policy


@takes_run
def step_slice(run: Recording, steps: str) -> slice:
    """Which recorded steps: "all", "first10" or "last10" (the paper's high- and low-noise ends)."""
    count = len(run.manifest["steps"])
    return {"all": slice(None), "first10": slice(0, min(10, count)), "last10": slice(max(0, count - 10), None)}[steps]


STEP_RANGES = ("all", "first10", "last10")


@takes_run
def attention_measures(run: Recording, steps: str = "all", cut: float = LIT_CUT) -> pd.DataFrame:
    """Per layer, over the chosen steps (averaged over frames, steps and heads): share on earlier frames, its
    excess over uniform, the per-key ratio, ln of the per-key attention on earlier frames over uniform's
    (`earlier_key_nats`), and the lit share of the pooled map's context cells (heads averaged, as the paper's
    figure; `cut` nats below uniform) with its darkest cell (`darkest_nats`, ln p relative to uniform: how far the
    map ever falls toward the cut), each computed from that layer's tensors alone. `sparsity` is the old
    convention (one colour range over the run's layers; kept for the emergence cards, not used by the claims).
    On a sweep, run it on each item (`run.items`) for intervals."""
    frames, chosen = _frames(run), step_slice(run, steps)
    layers = run.attention_layers
    rows, cells = [], {}
    for layer in layers:
        role, k, policy = _seeing(run, layer)
        mass = run.attention(layer) if role == "encoder" else run.attention(layer)[:, chosen]
        maps = run.attention_map(layer).mean(2)  # over heads, as the paper's figure
        maps = maps if role == "encoder" else maps[:, chosen]
        cells[layer] = context_cells(maps.mean(1, keepdim=True), frames, run.bands, role, k, policy)
        uniform = uniform_key_nats(frames, role, k, run.manifest["tokens_per_frame"], policy)
        nats = context_key_nats(maps.mean(1), frames, run.bands, uniform, role, k, policy)
        lit = lit_share(nats, cut)
        rows.append({"layer": layer, "role": role, "earlier_share": float(earlier_share(mass, frames, role, k, policy).mean()),
                     "excess_share": float(excess_share(mass, frames, role, k, policy).nanmean()),
                     "per_key_ratio": float(per_key_ratio(mass, frames, role, frames_per_block=k, policy=policy)),
                     "earlier_key_nats": float(earlier_key_nats(mass, frames, role, k, policy=policy)),
                     "lit_share": float(lit), "darkest_nats": float(nats.min()) if nats.numel() else float("nan")})
    low, high = colour_range(list(cells.values())) if cells else (float("nan"), float("nan"))
    for row in rows:
        row["sparsity"] = float(context_sparsity(cells[row["layer"]].flatten(), low, high))
        row["range_nats"] = high - low
    return pd.DataFrame(rows, columns=["layer", "role", "earlier_share", "excess_share", "per_key_ratio",
                                       "earlier_key_nats", "lit_share", "darkest_nats", "sparsity", "range_nats"])


@takes_run
def measures_by_step(run: Recording) -> pd.DataFrame:
    """One row per (layer, step): per-key ratio, excess share and share on earlier frames (averaged over frames
    and heads), and the pooled map's sparsity at that step (one colour range over every layer and step).
    Layers run once per frame (SCD's encoder) are left out."""
    frames, rows, cells = _frames(run), [], {}
    for layer in (layer for layer in run.attention_layers if run.role(layer) != "encoder"):
        mass, (role, k, policy) = run.attention(layer), _seeing(run, layer)
        ratio = per_key_ratio(mass, frames, role, dims=(0, 2), frames_per_block=k, policy=policy)
        excess = excess_share(mass, frames, role, k, policy).nanmean(2).nanmean(0)
        share = earlier_share(mass, frames, role, k, policy).mean((0, 2))
        cells[layer] = context_cells(run.attention_map(layer).mean(2), frames, run.bands, role, k, policy)  # [S, cells]
        for i, step in enumerate(run.manifest["steps"]):
            rows.append({"layer": layer, "step": step, "per_key_ratio": float(ratio[i]), "excess_share": float(excess[i]),
                         "earlier_share": float(share[i])})
    table = pd.DataFrame(rows, columns=["layer", "step", "per_key_ratio", "excess_share", "earlier_share"])
    if cells:
        low, high = colour_range(list(cells.values()))
        table["sparsity"] = torch.cat([context_sparsity(c, low, high) for c in cells.values()]).tolist()
    return table


@takes_run
def measures_by_head(run: Recording, steps: str = "all", cut: float = LIT_CUT) -> pd.DataFrame:
    """One row per (layer, head): per-key ratio, excess share, ln per-key attention on earlier frames over uniform's,
    and the lit share of that head's pooled map (steps averaged), over the chosen steps."""
    frames, chosen, rows = _frames(run), step_slice(run, steps), []
    for layer in run.attention_layers:
        role, k, policy = _seeing(run, layer)
        mass = run.attention(layer) if role == "encoder" else run.attention(layer)[:, chosen]
        maps = run.attention_map(layer) if role == "encoder" else run.attention_map(layer)[:, chosen]
        uniform = uniform_key_nats(frames, role, k, run.manifest["tokens_per_frame"], policy)
        lit = lit_share(context_key_nats(maps.mean(1), frames, run.bands, uniform, role, k, policy), cut)  # [H]
        ratio = per_key_ratio(mass, frames, role, dims=(0, 1), frames_per_block=k, policy=policy)
        excess = excess_share(mass, frames, role, k, policy).nanmean(1).nanmean(0)
        nats = earlier_key_nats(mass, frames, role, k, dims=(0, 1), policy=policy)
        for head in range(mass.shape[2]):
            rows.append({"layer": layer, "head": head, "per_key_ratio": float(ratio[head]),
                         "excess_share": float(excess[head]), "earlier_key_nats": float(nats[head]),
                         "lit_share": float(lit[head])})
    return pd.DataFrame(rows, columns=["layer", "head", "per_key_ratio", "excess_share", "earlier_key_nats",
                                       "lit_share"])
