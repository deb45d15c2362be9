"""The one transformer block of every model here: the baseline, the SCD encoder and the SCD decoder.

Wan-style DiT block: adaLN-zero modulation from a per-frame timestep, RMS qk-norm, 3-axis RoPE
over (frame, row, col), self-attention that can read a KV cache of earlier frames, and an MLP.
HookPoints follow TransformerLens names; q and k are hooked after qk-norm and RoPE (what the
softmax sees) and k, v include the cached keys and values of earlier frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from scd.contract import CachePolicy
from scd.errors import ModelError


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """How a head's dims are split between (frame, row, col) rotations; Wan-2.1's split."""
    if head_dim % 2:
        raise ModelError(f"head_dim must be even for RoPE, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(frames: torch.Tensor, rows: int, cols: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles [len(frames) * rows * cols, head_dim // 2] for frame-major tokens at absolute frame indices."""
    device = frames.device
    f, r, c = torch.meshgrid(
        frames.to(torch.float64), torch.arange(rows, device=device, dtype=torch.float64),
        torch.arange(cols, device=device, dtype=torch.float64), indexing="ij",
    )
    angles = []
    for pos, dim in zip((f, r, c), rope_axes(head_dim), strict=True):
        freqs = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
        angles.append(pos.reshape(-1, 1) * freqs)
    return torch.cat(angles, dim=1).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x [B, L, H, D] by angles [L, D // 2]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


def _token_index(slots: list[int], tokens_per_frame: int, device: torch.device) -> torch.Tensor:
    """The token positions [len(slots) * n] of the cached frames in `slots` (frame-major, n tokens each)."""
    n = tokens_per_frame
    return (torch.tensor(slots, device=device, dtype=torch.long)[:, None] * n + torch.arange(n, device=device)).flatten()


@dataclass
class KVCache:
    """Keys and values of finished frames, per block: [B, L_cached, H, D] each, frame-major.

    Under a rolling `policy` (`scd.contract.CachePolicy`) it keeps only the sink frames and the most recent
    ones, and a pass reads only what its chunk may see (`layer(i, frames)`); `cached` lists the frames held,
    in cache order. Keys are stored as the softmax sees them (RoPE'd at their frame's index) under the
    `absolute` RoPE policy, and unrotated under `cache` (the model rotates them at each read, `positions`).
    """
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    frames: int = 0  # frames written so far: the index in the video of the next frame
    policy: CachePolicy = field(default_factory=CachePolicy)
    cached: list[int] = field(default_factory=list)  # the video frame of each cached frame, in cache order
    chunk: int = 1   # frames per pass under a rolling policy (the model's frames_per_block): its window is a chunk's

    def visible(self, frames: int) -> list[int]:
        """The cached frames (video indices) that the next `frames` frames attend to."""
        return self.policy.visible(self.frames, frames)

    def positions(self, frames: int) -> tuple[list[int], list[int]]:
        """RoPE frame positions of (the visible cached frames, the next `frames` frames): their video indices under
        the `absolute` policy; their places in the cache, then after it, under `cache`. A rolling cache takes one
        chunk per pass (ModelError otherwise)."""
        if self.policy.rolling and frames != self.chunk:
            raise ModelError(f"a rolling KV cache takes one chunk per pass, got {frames} frames; accepted: chunks of "
                             f"{self.chunk}")
        seen = self.visible(frames)
        if self.policy.rope == "absolute":
            return seen, list(range(self.frames, self.frames + frames))
        return list(range(len(seen))), list(range(len(seen), len(seen) + frames))

    def layer(self, i: int, frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Block i's cached (keys, values); with `frames` (the size of the pass), only those it may see."""
        if i >= len(self.keys) or self.keys[i] is None:
            return None
        k, v = self.keys[i], self.values[i]
        if frames is None or not self.policy.rolling:
            return k, v
        where = {frame: slot for slot, frame in enumerate(self.cached)}
        slots = [where[f] for f in self.visible(frames)]
        if slots == list(range(len(self.cached))):
            return k, v
        index = _token_index(slots, k.shape[1] // len(self.cached), k.device)
        return k.index_select(1, index), v.index_select(1, index)

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add block i's keys and values of the frames of this pass (they are cached once `advance` is called)."""
        while len(self.keys) <= i:
            self.keys.append(None)
            self.values.append(None)
        past = self.layer(i)
        self.keys[i] = k if past is None else torch.cat([past[0], k], dim=1)
        self.values[i] = v if past is None else torch.cat([past[1], v], dim=1)

    def advance(self, frames: int) -> None:
        """The pass that appended `frames` finished frames is over: count them, and evict what the policy drops."""
        written = list(range(self.frames, self.frames + frames))
        self.frames += frames
        held = self.cached + written
        kept = self.policy.kept(self.frames)
        self.cached = kept
        if held == kept:
            return
        slots = [held.index(f) for f in kept]
        for i, k in enumerate(self.keys):
            if k is None:
                continue
            index = _token_index(slots, k.shape[1] // len(held), k.device)
            self.keys[i], self.values[i] = k.index_select(1, index), self.values[i].index_select(1, index)

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)


@dataclass(frozen=True)
class HeadKeep:
    """Which finished frames one attention head keeps in its cache: the first `sinks` frames of the video and the
    `recent` most recent finished frames; `recent=None` keeps every frame (the head is not pruned). A head plan
    (`analyses.head_plan`) gives one per (block, head); a rolling `CachePolicy` still bounds what any head holds."""
    sinks: int = 0              # the first frames of the video, kept for ever (attention sinks)
    recent: int | None = None   # the most recent finished frames kept; None: all

    def keeps(self, frame: int, written: int) -> bool:
        """Whether this head keeps video frame `frame` once `written` frames are finished."""
        return self.recent is None or frame < self.sinks or frame >= written - self.recent


@dataclass
class HeadGroups:
    """What a pruned block reads from a `HeadPrunedCache`: per group of heads that keep the same frames, the heads'
    indices and their visible cached (keys, values) [B, L_group, H_group, D]. `Attention` attends group by group."""
    groups: list[tuple[list[int], torch.Tensor, torch.Tensor]]


@dataclass
class HeadPrunedCache(KVCache):
    """A KV cache whose blocks keep, head by head, only the frames a head plan says (`HeadKeep`), as Forcing-KV
    prunes the cache per head: the frames a head drops are never stored, so `nbytes` counts what is really held.

    Blocks not in `heads` (or whose heads all keep every frame) are cached as `KVCache` caches them, so a plan that
    prunes nothing runs the unmodified code path. Keys must be stored rotated (the `absolute` RoPE policy): a head's
    kept frames are then attended at their own positions."""
    heads: dict[int, tuple[HeadKeep, ...]] = field(default_factory=dict)
    # per pruned block: [heads, keys, values, cached frames] per group of heads that keep the same frames
    grouped: dict[int, list[list]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy.rope != "absolute":
            raise ModelError(f"a head-pruned cache needs keys rotated when written (rope = 'absolute'); got rope = "
                             f"{self.policy.rope!r}")
        self.heads = {i: keep for i, keep in self.heads.items() if any(k.recent is not None for k in keep)}
        for i, keep in self.heads.items():
            order: dict[HeadKeep, list[int]] = {}
            for head, rule in enumerate(keep):
                order.setdefault(rule, []).append(head)
            self.grouped[i] = [[heads, None, None, [], rule] for rule, heads in order.items()]

    def layer(self, i: int, frames: int | None = None):
        """As `KVCache.layer`; for a pruned block, a `HeadGroups` of what each group of heads may see."""
        if i not in self.grouped:
            return super().layer(i, frames)
        if self.grouped[i][0][1] is None:
            return None
        visible = set(self.visible(frames)) if frames is not None else None
        groups = []
        for heads, k, v, cached, _ in self.grouped[i]:
            slots = list(range(len(cached))) if visible is None else [s for s, f in enumerate(cached) if f in visible]
            if len(slots) < len(cached):
                index = _token_index(slots, k.shape[1] // len(cached), k.device)
                k, v = k.index_select(1, index), v.index_select(1, index)
            groups.append((heads, k, v))
        return HeadGroups(groups)

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if i not in self.grouped:
            return super().append(i, k, v)
        for group in self.grouped[i]:
            heads = group[0]
            new_k, new_v = k[:, :, heads], v[:, :, heads]
            group[1] = new_k if group[1] is None else torch.cat([group[1], new_k], dim=1)
            group[2] = new_v if group[2] is None else torch.cat([group[2], new_v], dim=1)

    def advance(self, frames: int) -> None:
        written = list(range(self.frames, self.frames + frames))
        total = self.frames + frames
        allowed = set(self.policy.kept(total))
        for groups in self.grouped.values():
            for group in groups:
                if group[1] is None:
                    continue
                held, rule = group[3] + written, group[4]
                kept = [f for f in held if f in allowed and rule.keeps(f, total)]
                if kept != held:
                    index = _token_index([held.index(f) for f in kept], group[1].shape[1] // len(held),
                                         group[1].device)
                    group[1], group[2] = group[1].index_select(1, index), group[2].index_select(1, index)
                group[3] = kept
        super().advance(frames)

    def kept_frames(self, i: int) -> list[list[int]]:
        """Per head of block i, the video frames it holds now (in cache order)."""
        if i not in self.grouped:
            return [list(self.cached)] * (0 if self.layer(i) is None else self.keys[i].shape[2])
        held: dict[int, list[int]] = {}
        for heads, _, _, cached, _ in self.grouped[i]:
            held.update({h: list(cached) for h in heads})
        return [held[h] for h in sorted(held)]

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values, every head's what it keeps."""
        pruned = sum(t.numel() * t.element_size() for groups in self.grouped.values() for g in groups
                     for t in g[1:3] if t is not None)
        return super().nbytes() + pruned


class Attention(nn.Module):
    """Multi-head self-attention with RMS qk-norm, RoPE and an optional KV cache."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ModelError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(width, width)
        self.hook_q = HookPoint()  # [B, L_query, H, D] after qk-norm and RoPE
        self.hook_k = HookPoint()  # [B, L_past + L_query, H, D] after qk-norm and RoPE
        self.hook_v = HookPoint()  # [B, L_past + L_query, H, D]

    def forward(
        self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None, past_angles: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, L, W] -> (output [B, L, W], this call's own (k, v) [B, L, H, D] for a cache).

        `past_angles`: the cached keys are unrotated (the `cache` RoPE policy); rotate them by these angles, and
        return this call's keys unrotated too."""
        B, L, W = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).unbind(2)
        q = apply_rope(self.q_norm(q), angles)
        unrotated = self.k_norm(k)
        k = apply_rope(unrotated, angles)
        own = (k if past_angles is None else unrotated, v)
        if isinstance(past, HeadGroups):  # a head-pruned cache: each group of heads attends to what it kept
            return self.out(self._grouped(self.hook_q(q), k, v, mask, past).transpose(1, 2).reshape(B, L, W)), own
        if past is not None:
            past_keys = past[0] if past_angles is None else apply_rope(past[0], past_angles)
            k, v = torch.cat([past_keys, k], dim=1), torch.cat([past[1], v], dim=1)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(B, L, W)), own


    @staticmethod
    def _grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 past: HeadGroups) -> torch.Tensor:
        """Attention [B, H, L, D] of q, k, v [B, L, H, D] (this pass's tokens) over each head group's own cached keys
        and values. A pass's mask covers the policy's visible past (all allowed) and its own frames (block-causal):
        each group keeps the own part and allows all of what it kept. (k and v are not hooked here: a group's keys
        are not one tensor.)"""
        B, L, H, D = q.shape
        out = q.new_empty(B, H, L, D)
        for heads, past_k, past_v in past.groups:
            keys = torch.cat([past_k, k[:, :, heads]], dim=1).transpose(1, 2)
            values = torch.cat([past_v, v[:, :, heads]], dim=1).transpose(1, 2)
            own = None if mask is None else torch.cat([mask.new_ones(L, past_k.shape[1]), mask[:, -L:]], dim=1)
            out[:, heads] = F.scaled_dot_product_attention(q[:, :, heads].transpose(1, 2), keys, values, attn_mask=own)
        return out


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, F, N, W] with per-frame shift, scale [B, F, 1, W]."""
    return x * (1 + scale) + shift


class Block(nn.Module):
    """adaLN-zero DiT block; its residual gates start at zero so a deep stack starts as the identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.hook_resid_pre = HookPoint()   # [B, L, W]
        self.hook_attn_out = HookPoint()    # [B, L, W] gated attention output, as added to the residual
        self.hook_mlp_out = HookPoint()     # [B, L, W] gated MLP output, as added to the residual
        self.hook_resid_post = HookPoint()  # [B, L, W]

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None, past_angles: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, F*N, W] frame-major tokens, cond [B, F, W] per-frame timestep embedding (`past_angles`: as
        `Attention`'s)."""
        B, L, W = x.shape
        frames = cond.shape[1]
        x = self.hook_resid_pre(x)
        mod = self.modulation(F.silu(cond))[:, :, None]  # [B, F, 1, 6W]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = modulate(self.norm1(x).view(B, frames, -1, W), shift1, scale1).view(B, L, W)
        a, kv = self.attn(h, angles, mask, past, past_angles)
        x = x + self.hook_attn_out((gate1 * a.view(B, frames, -1, W)).view(B, L, W))
        h = modulate(self.norm2(x).view(B, frames, -1, W), shift2, scale2)
        x = x + self.hook_mlp_out((gate2 * self.mlp(h)).view(B, L, W))
        return self.hook_resid_post(x), kv
