"""Per-frame attention mass from q and k, exactly, without ever holding the full N x N matrix.

For each query token, the share of its softmax attention that lands on each frame of the clip:
per chunk of queries, scores against all keys, then the softmax numerators summed within each key
frame and divided by their total. Memory is O(chunk x keys); the result equals an explicit softmax
to float tolerance. The default chunk keeps one chunk's scores (heads x queries x keys, float32)
within `SCORES_BUDGET` elements, so memory is bounded for any context length.
"""

from __future__ import annotations

import math

import torch

SCORES_BUDGET = 2**25  # float32 elements of one chunk's scores: 128 MiB

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
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q and k must be [B, L, H, D] with matching B, H, D; got {tuple(q.shape)}, {tuple(k.shape)}")
    if query_frames.shape != (q.shape[1],) or key_frames.shape != (k.shape[1],):
        raise ValueError("query_frames / key_frames must give one frame index per query / key token")
    if int(key_frames.max()) >= num_frames or int(key_frames.min()) < 0:
        raise ValueError(f"key frame indices must lie in [0, {num_frames})")
    B, Lq, H, D = q.shape
    if chunk_size is None:
        chunk_size = max(1, SCORES_BUDGET // (B * H * k.shape[1]))
    keys = k.float().permute(0, 2, 3, 1)  # [B, H, D, Lk]
    key_frames = key_frames.to(q.device)
    out = []
    for start in range(0, Lq, chunk_size):
        qc = q[:, start:start + chunk_size].float().transpose(1, 2)  # [B, H, c, D]
        scores = qc @ keys / math.sqrt(D)  # [B, H, c, Lk]
        if causal:
            later = key_frames[None, :] > query_frames[start:start + chunk_size, None].to(q.device)
            scores.masked_fill_(later, float("-inf"))
        weights = scores.sub_(scores.amax(-1, keepdim=True)).exp_()  # softmax numerators, each <= 1; in place
        per_frame = weights.new_zeros(*weights.shape[:-1], num_frames).index_add_(-1, key_frames, weights)
        del scores, weights
        out.append(per_frame / per_frame.sum(-1, keepdim=True))
    return torch.cat(out, dim=2)


def mean_over_query_frames(mass: torch.Tensor, query_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average [B, H, Lq, T] over the query tokens of each frame: ([B, Fq, H, T], the Fq frame indices)."""
    frames = torch.unique(query_frames)
    means = [mass[:, :, (query_frames == f).to(mass.device)].mean(2) for f in frames.tolist()]
    return torch.stack(means, dim=1), frames
