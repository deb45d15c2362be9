"""The baseline: a Wan-style causal video diffuser (block-causal attention over frames).

Frames are patchified into frame-major tokens; every frame carries its own timestep (diffusion
forcing), which modulates every block through adaLN-zero; a frame attends to itself and to earlier
frames. 30 blocks by default, the depth of Wan-2.1-1.3B, so that "layer 15" and "layers 28-29"
mean what they mean in the paper. The model knows nothing of schedulers: it maps noisy frames and
their timesteps to a flow-matching velocity (noise - data).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from scd.contract import CachePolicy, Layout, VideoDiffuser, builtin_roles, latent_channels
from scd.errors import ModelError
from scd.models.blocks import Block, KVCache, modulate, rope_angles


class FrameShape:
    """The frame of a baseline or SCD config (`frame_size`, `frame_width`, `patch_size`, `channels`)."""

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one frame."""
        return frame_shape(self)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches down and across a frame."""
        return patch_grid(self)

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = patch_grid(self)
        return rows * cols


@dataclass
class BaselineConfig(FrameShape):
    frame_size: int = 32        # frame height in pixels (latent rows for latent models), and its width unless frame_width
    patch_size: int = 4         # pixels per side of a patch: (32 / 4)^2 = 64 tokens per frame
    channels: int = 3           # RGB (16 for Wan's latents)
    width: int = 128            # residual stream width
    depth: int = 30             # blocks; Wan-2.1-1.3B has 30
    heads: int = 4              # attention heads (head dim = width / heads, split over 3 RoPE axes)
    mlp_ratio: float = 4.0      # MLP hidden width / width
    rope_theta: float = 10000.0  # RoPE base
    frame_local_blocks: int = 0  # the last n blocks attend only within the frame (the paper's frame-diagonal mask)
    frame_width: int = 0        # frame width in pixels; 0: square (frame_size)


def frame_shape(config) -> tuple[int, int, int]:
    """(channels, height, width) of a frame of a baseline or SCD config."""
    return config.channels, config.frame_size, config.frame_width or config.frame_size


def patch_grid(config) -> tuple[int, int]:
    """Patches down and across a frame of a baseline or SCD config."""
    _, height, width = frame_shape(config)
    return height // config.patch_size, width // config.patch_size


# Wan-2.1-1.3B's transformer at 480p: 16-channel 60x104 latents in 2x2 patches (1,560 tokens per frame), width 1536,
# 12 heads, MLP 8960, 30 blocks. Random weights only (`scd.zoo.random_model`): for speed and memory at the paper's scale.
WAN_1_3B = dict(frame_size=60, frame_width=104, patch_size=2, channels=16, width=1536, heads=12, mlp_ratio=8960 / 1536)
# The same layout (16-channel latents, 2x2 patches, Wan's block counts) at a width a CPU runs in seconds: the GPU check's
# reduced run (benchmarks/gpu_check.sh --reduced) exercises every step of the real one with it.
WAN_TINY = {**WAN_1_3B, "width": 48, "heads": 2, "mlp_ratio": 4.0}

# Named sizes, as DiT's DiT_models: "tiny" for tests, "baseline" for the shipped checkpoint.
BASELINE_SIZES: dict[str, BaselineConfig] = {
    "tiny": BaselineConfig(frame_size=16, width=32, depth=4, heads=2),
    "baseline": BaselineConfig(width=128, depth=30, heads=4),
    # The emergence study's size (reports/emergence): small enough that a run beats copy-last within about an hour
    # on one core, so that every condition can be trained from several seeds; the paper's layers map onto it by relative depth.
    "study": BaselineConfig(width=128, depth=8, heads=4),
    "study-p2": BaselineConfig(width=128, depth=8, heads=4, patch_size=2),  # its 256-tokens-per-frame condition
    "wan1.3b": BaselineConfig(depth=30, **WAN_1_3B),
    "wan-tiny": BaselineConfig(depth=30, **WAN_TINY),
}


def block_causal_mask(query_frames: torch.Tensor, key_frames: torch.Tensor) -> torch.Tensor:
    """Boolean [Lq, Lk]: True where a query token may attend (key frame <= query frame)."""
    return key_frames[None, :] <= query_frames[:, None]


def frame_diagonal_mask(frames: int, tokens_per_frame: int, device: torch.device) -> torch.Tensor | None:
    """Boolean [F*N, F*N]: True where query and key are of the same frame; None for one frame (no mask needed)."""
    if frames == 1:
        return None
    index = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
    return index[:, None] == index[None, :]


def frames_mask(start: int, frames: int, tokens_per_frame: int, device: torch.device) -> torch.Tensor | None:
    """The block-causal mask of `frames` frames after `start` cached ones, or None for one frame (it sees
    all of the earlier cache: no mask needed)."""
    if frames == 1:
        return None
    query_frames = torch.arange(start, start + frames, device=device).repeat_interleave(tokens_per_frame)
    key_frames = torch.cat([torch.arange(start, device=device).repeat_interleave(tokens_per_frame), query_frames])
    return block_causal_mask(query_frames, key_frames)


def cache_positions(cache: KVCache | None, frames: int, config) -> tuple[torch.Tensor | None, tuple[int, list[int]]]:
    """For a pass of `frames` frames after `cache`: the RoPE angles of the cached keys it reads when they are kept
    unrotated (the `cache` RoPE policy; else None), the number of cached frames it reads, and its own frames' RoPE
    positions (`KVCache.positions`, which refuses more than a chunk per pass under a rolling policy)."""
    if cache is None:
        return None, (0, list(range(frames)))
    seen, positions = cache.positions(frames)
    past = None
    if cache.policy.rope == "cache" and seen:
        past = rope_angles(torch.tensor(seen), *patch_grid(config), config.width // config.heads, config.rope_theta)
    return past, (len(seen), positions)


class BuiltinFrames(VideoDiffuser):
    """The contract's frame methods as both built-in families have them: frames of their config's shape, shown as
    they are (RGB) or, for a latent-sized model (e.g. a random "wan1.3b"), as three latent channels."""

    config: FrameShape  # a BaselineConfig or an SCDConfig

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return frame_shape(self.config)

    def preview(self, video: torch.Tensor) -> tuple[torch.Tensor, str] | None:
        return None if self.config.channels == 3 else latent_channels(video)


class CausalVideoDiffuser(BuiltinFrames, HookedRootModule):
    """The baseline causal video diffuser; forward maps noisy frames and timesteps to velocity."""

    takes_surgeries = True  # analyses.interventions patches its blocks

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        if any(side % config.patch_size for side in frame_shape(config)[1:]):
            raise ModelError(f"frame {frame_shape(config)[1:]} is not a multiple of patch_size {config.patch_size}")
        if not 0 <= config.frame_local_blocks <= config.depth:
            raise ModelError(f"frame_local_blocks {config.frame_local_blocks} is not accepted; accepted: 0..{config.depth}")
        self.config = config
        c, p, w = config.channels, config.patch_size, config.width
        self.patch_embed = nn.Linear(c * p * p, w)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, w)
        self.blocks = nn.ModuleList([Block(w, config.heads, config.mlp_ratio) for _ in range(config.depth)])
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(w, 2 * w)
        self.unpatch = nn.Linear(w, c * p * p)
        for layer in (self.modulation_out, self.unpatch):  # the model starts by predicting zero velocity
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.hook_embed = HookPoint()  # [B, F*N, W] patch embeddings
        self.setup()

    def new_cache(self, policy: CachePolicy | None = None) -> KVCache:
        """An empty KV cache for streaming generation, keeping what `policy` says (default: every finished frame)."""
        return KVCache(policy=(policy or CachePolicy()).check(self.frames_per_block), chunk=self.frames_per_block)

    @property
    def layout(self) -> Layout:
        """Blocks `blocks.{i}`, all causal but the last `frame_local_blocks` (frame-local)."""
        roles = builtin_roles({"family": "baseline", **asdict(self.config)})
        return Layout(tuple(f"blocks.{i}" for i in range(self.config.depth)), self.config.tokens_per_frame, roles,
                      token_grid=patch_grid(self.config))

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """[B, F, C, H, W] -> frame-major tokens [B, F*N, C*p*p] (row-major patches within a frame)."""
        B, Fr, C, H, W = video.shape
        p = self.config.patch_size
        x = video.reshape(B, Fr, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(B, Fr * (H // p) * (W // p), C * p * p)

    def unpatchify(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """Inverse of `patchify`."""
        B = tokens.shape[0]
        p, (C, H, W) = self.config.patch_size, frame_shape(self.config)
        x = tokens.reshape(B, frames, H // p, W // p, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, frames, C, H, W)

    def forward(
        self, video: torch.Tensor, timesteps: torch.Tensor, cache: KVCache | None = None, update_cache: bool = False,
        bidirectional: bool = False,
    ) -> torch.Tensor:
        """Velocity [B, F, C, H, W] for noisy frames `video` [B, F, C, H, W] at `timesteps` [B, F] in [0, 1000].

        With a `cache`, the frames are the ones right after the cached frames and also attend to
        them; `update_cache=True` appends this call's keys and values (for finished, clean frames).
        `bidirectional=True` lets every frame attend to every frame of the call (bidirectional
        pretraining, as Wan before it was made causal); it takes no cache.
        """
        B, Fr = video.shape[:2]
        if timesteps.shape != (B, Fr):
            raise ModelError(f"timesteps must be [batch, frames] = {(B, Fr)}, got {tuple(timesteps.shape)}")
        cfg, n = self.config, self.config.tokens_per_frame
        if bidirectional and cache is not None:
            raise ModelError("bidirectional attention takes no KV cache (a cache holds only earlier frames); accepted: "
                             "cache=None, or bidirectional=False")
        past_angles, (start, positions) = cache_positions(cache, Fr, cfg)
        angles = rope_angles(torch.tensor(positions, device=video.device), *patch_grid(cfg), cfg.width // cfg.heads,
                             cfg.rope_theta)
        mask = None if bidirectional else frames_mask(start, Fr, n, video.device)
        local_mask = frame_diagonal_mask(Fr, n, video.device) if cfg.frame_local_blocks else None
        first_local = cfg.depth - cfg.frame_local_blocks
        x = self.hook_embed(self.patch_embed(self.patchify(video)))
        cond = self.time_embed(self.time_proj(timesteps.flatten()).to(x.dtype)).view(B, Fr, -1)
        for i, block in enumerate(self.blocks):
            if i >= first_local:  # frame-diagonal: no past keys, and frames of one call do not see each other
                x, _ = block(x, cond, angles, local_mask, None)
                continue
            x, (k, v) = block(x, cond, angles, mask, cache.layer(i, Fr) if cache is not None else None, past_angles)
            if update_cache:
                cache.append(i, k, v)
        if update_cache:
            cache.advance(Fr)
        shift, scale = self.modulation_out(nn.functional.silu(cond))[:, :, None].chunk(2, dim=-1)
        x = modulate(self.norm_out(x).view(B, Fr, n, -1), shift, scale).view(B, Fr * n, -1)
        return self.unpatchify(self.unpatch(x), Fr)

    def get_config(self) -> dict:
        """The config as a JSON-able dict (with the family name, for `load_model`)."""
        return {"family": "baseline", **asdict(self.config)}
