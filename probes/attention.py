"""Attention from q and k pooled on a grid of key cells, exactly, without ever holding the full N x N matrix.

For each query token, the share of its softmax attention that lands on each key cell: a frame of
the clip, or a band of a frame's tokens (the paper's attention figure draws each frame as a few
bands). Per chunk of queries: scores against all keys, then the softmax numerators summed within
each cell and divided by their total. Memory is O(chunk x keys); the result equals an explicit softmax
to float tolerance. The default chunk keeps one chunk's scores (heads x queries x keys, float32)
within `SCORES_BUDGET` elements, so memory is bounded for any context length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from probes.errors import ProbeError

SCORES_BUDGET = 2**25  # float32 elements of one chunk's scores: 128 MiB

def token_bands(tokens_per_frame: int, bands: int) -> torch.Tensor:
    """Band (0..bands-1) of each token of a frame: contiguous runs of the frame-major, row-major tokens, as even
    as the count allows (bands = tokens_per_frame: one token per band, the unpooled map)."""
    if not 1 <= bands <= tokens_per_frame:
        raise ProbeError(f"bands = {bands}; accepted: 1..{tokens_per_frame} (the tokens of a frame)")
    starts = torch.tensor([b * tokens_per_frame // bands for b in range(1, bands)])  # band b: [b n // g, (b+1) n // g)
    return torch.bucketize(torch.arange(tokens_per_frame), starts, right=True)


def attention_mass_by_cell(
    q: torch.Tensor, k: torch.Tensor, query_frames: torch.Tensor, key_frames: torch.Tensor, key_cells: torch.Tensor,
    num_cells: int, *, causal: bool = True, chunk_size: int | None = None,
) -> torch.Tensor:
    """Share of each query's attention on each key cell: [B, H, Lq, num_cells], summing to 1 over cells.

    As `attention_mass_by_frame`, with `key_cells` [Lk] the cell (0..num_cells-1) of each key; the
    block-causal mask still goes by `key_frames`.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ProbeError(f"q and k must be [B, L, H, D] with matching B, H, D; got {tuple(q.shape)}, {tuple(k.shape)}")
    if query_frames.shape != (q.shape[1],) or key_frames.shape != (k.shape[1],) or key_cells.shape != (k.shape[1],):
        raise ProbeError("query_frames / key_frames / key_cells must give one frame index / cell per query / key token")
    if int(key_cells.max()) >= num_cells or int(key_cells.min()) < 0:
        raise ProbeError(f"key cell indices must lie in [0, {num_cells})")
    B, Lq, H, D = q.shape
    if chunk_size is None:
        chunk_size = max(1, SCORES_BUDGET // (B * H * k.shape[1]))
    keys = k.float().permute(0, 2, 3, 1)  # [B, H, D, Lk]
    key_frames, key_cells = key_frames.to(q.device), key_cells.to(q.device)
    out = []
    for start in range(0, Lq, chunk_size):
        qc = q[:, start:start + chunk_size].float().transpose(1, 2)  # [B, H, c, D]
        scores = qc @ keys / math.sqrt(D)  # [B, H, c, Lk]
        if causal:
            later = key_frames[None, :] > query_frames[start:start + chunk_size, None].to(q.device)
            scores.masked_fill_(later, float("-inf"))
        weights = scores.sub_(scores.amax(-1, keepdim=True)).exp_()  # softmax numerators, each <= 1; in place
        per_cell = weights.new_zeros(*weights.shape[:-1], num_cells).index_add_(-1, key_cells, weights)
        del scores, weights
        out.append(per_cell / per_cell.sum(-1, keepdim=True))
    return torch.cat(out, dim=2)


def attention_mass_by_frame(
    q: torch.Tensor, k: torch.Tensor, query_frames: torch.Tensor, key_frames: torch.Tensor, num_frames: int,
    *, causal: bool = True, chunk_size: int | None = None,
) -> torch.Tensor:
    """Share of each query's attention on each frame: [B, H, Lq, num_frames], summing to 1 over frames.

    q [B, Lq, H, D] and k [B, Lk, H, D] as the softmax sees them (after qk-norm and RoPE; the layout
    of the `hook_q` / `hook_k` HookPoints); `query_frames` [Lq] and `key_frames` [Lk] the frame index
    of each token. With `causal`, a query ignores keys of later frames (the block-causal mask).
    `chunk_size` queries are scored at a time; None picks it from `SCORES_BUDGET`.
    """
    if key_frames.numel() and (int(key_frames.max()) >= num_frames or int(key_frames.min()) < 0):
        raise ProbeError(f"key frame indices must lie in [0, {num_frames})")
    return attention_mass_by_cell(q, k, query_frames, key_frames, key_frames, num_frames, causal=causal,
                                  chunk_size=chunk_size)


def pooled_attention(
    q: torch.Tensor, k: torch.Tensor, key_cells: torch.Tensor, num_cells: int, query_bands: torch.Tensor, bands: int,
    *, chunk_size: int | None = None,
) -> torch.Tensor:
    """Per band of queries, the mean share of their attention on each key cell: [B, H, bands, num_cells].

    q [B, Lq, H, D] and k [B, Lk, H, D] as the softmax sees them, every query seeing every key (a probed
    frame's queries and the keys of their pass: none is later than the frame's chunk, so no mask);
    `key_cells` [Lk] the cell of each key, `query_bands` [Lq] the band of each query. The batch may hold
    several layers that see the same keys. The shares are attention itself with one-hot cells for values:
    softmax(q k^T / sqrt(D)) @ onehot(cells), so PyTorch's fused attention computes them (float32, exact
    softmax, the probabilities never held), D cells per call (the fused kernels want values as wide as
    queries); `chunk_size` queries per call (None: from `SCORES_BUDGET`, bounding memory on any backend).
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ProbeError(f"q and k must be [B, L, H, D] with matching B, H, D; got {tuple(q.shape)}, {tuple(k.shape)}")
    if key_cells.shape != (k.shape[1],) or query_bands.shape != (q.shape[1],):
        raise ProbeError("key_cells / query_bands must give one cell / band per key / query token")
    B, Lq, H, D = q.shape
    if chunk_size is None:
        chunk_size = max(1, SCORES_BUDGET // (B * H * k.shape[1]))
    band_mean = torch.nn.functional.one_hot(query_bands.to(q.device), bands).T.float()  # [bands, Lq]
    band_mean /= band_mean.sum(1, keepdim=True).clamp_min(1)
    cell_of_key = torch.nn.functional.one_hot(key_cells.to(q.device), num_cells).float()  # [Lk, cells]
    queries, keys = q.transpose(1, 2).float(), k.transpose(1, 2).float()  # [B, H, L, D]
    columns = []
    for first in range(0, num_cells, D):
        width = min(D, num_cells - first)
        values = torch.nn.functional.pad(cell_of_key[:, first:first + width], (0, D - width)).expand(B, H, -1, D)
        mass = torch.cat([F.scaled_dot_product_attention(queries[:, :, start:start + chunk_size], keys, values)
                          for start in range(0, Lq, chunk_size)], dim=2)  # [B, H, Lq, D]
        columns.append(band_mean @ mass[..., :width])
    return torch.cat(columns, dim=-1)


def mean_over_query_frames(mass: torch.Tensor, query_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average [B, H, Lq, T] over the query tokens of each frame: ([B, Fq, H, T], the Fq frame indices)."""
    frames = torch.unique(query_frames)
    means = [mass[:, :, (query_frames == f).to(mass.device)].mean(2) for f in frames.tolist()]
    return torch.stack(means, dim=1), frames


REGIONS = ("own_chunk", "previous_chunk", "sinks", "elsewhere")  # a partition of the keys a chunk's queries see


def mass_by_distance(mass: torch.Tensor, frames: Sequence[int], frames_per_block: int = 1) -> torch.Tensor:
    """Attention mass by temporal distance: [F, S, H, T] from per-frame mass [F, S, H, T] of the probed `frames`.

    Entry d of probed frame f is its queries' mass on the frame d frames before the end of f's chunk (chunks of
    `frames_per_block` frames; d = 0 is the chunk's last frame, so with one frame per chunk d = 0 is the frame
    itself and d = 1 the frame before). Distances beyond the first frame hold 0; each row still sums to 1."""
    out = torch.zeros_like(mass)
    for i, frame in enumerate(frames):
        end = frame - frame % frames_per_block + frames_per_block - 1  # the last frame of the query's chunk
        end = min(end, mass.shape[-1] - 1)
        out[i, ..., : end + 1] = mass[i, ..., : end + 1].flip(-1)
    return out


def mass_by_region(mass: torch.Tensor, frames: Sequence[int], frames_per_block: int = 1,
                   sink_frames: int = 0) -> torch.Tensor:
    """Attention mass on the regions of a rolling cache: [F, S, H, 4] in the order of `REGIONS`: the query's own
    chunk, the chunk before it (less any sink frame in it), the sink frames (the first `sink_frames`, less any of
    the own chunk), and everything else it sees (the rest of the window). Each row sums to 1."""
    T = mass.shape[-1]
    out = mass.new_zeros(*mass.shape[:-1], len(REGIONS))
    for i, frame in enumerate(frames):
        first = frame - frame % frames_per_block
        own = set(range(first, min(first + frames_per_block, T)))
        sinks = set(range(min(sink_frames, T))) - own
        previous = set(range(max(0, first - frames_per_block), first)) - sinks
        for r, keys in enumerate((own, previous, sinks)):
            if keys:
                out[i, ..., r] = mass[i, ..., sorted(keys)].sum(-1)
        out[i, ..., 3] = mass[i].sum(-1) - out[i, ..., :3].sum(-1)
    return out.clamp_min(0)


def derived_entries(attention: dict[str, torch.Tensor], frames: Sequence[int], frames_per_block: int = 1,
                    sink_frames: int = 0) -> dict[str, torch.Tensor]:
    """For each layer's mass "layer{L}" [F, S, H, T] of a run's attention entries that lacks them, its
    "layer{L}.distance" and "layer{L}.regions" (`mass_by_distance`, `mass_by_region`): what a Probe holds and
    `probes.store.write_run` writes, computed in one place."""
    out = {}
    for key, mass in attention.items():
        if not key.startswith("layer") or not key[5:].isdigit() or mass.shape[0] != len(frames):
            continue
        if f"{key}.distance" not in attention:
            out[f"{key}.distance"] = mass_by_distance(mass.float(), frames, frames_per_block)
        if f"{key}.regions" not in attention:
            out[f"{key}.regions"] = mass_by_region(mass.float(), frames, frames_per_block, sink_frames)
    return out
