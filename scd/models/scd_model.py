"""Separable Causal Diffusion (SCD): a causal encoder run once per frame, a light decoder run at every step.

The paper's finding, built in: early and middle layers compute nearly the same thing at every
denoising step, so they become an **encoder** that reads each clean frame once (block-causal over
frames, KV-cached, always at the clean-context timestep); deep layers barely look at past frames, so
they become a **decoder** that denoises frame i from the encoder's output at frame i-1 alone. The
decoder's sequence is that encoder output concatenated on the token axis with the noisy frame i,
both halves on the same RoPE positions, with full attention inside the pair; the velocity is read
from the noisy half. Encoder and decoder are made of the baseline's `Block`, at the baseline's width.

Frame 0 has no earlier frame: its decoder reads a learned `start_context` in place of an encoder output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from scd.contract import CachePolicy, Layout, builtin_roles
from scd.errors import ModelError
from scd.models.baseline import (
    WAN_1_3B,
    WAN_TINY,
    BuiltinFrames,
    CausalVideoDiffuser,
    FrameShape,
    cache_positions,
    frame_shape,
    frames_mask,
    patch_grid,
)
from scd.models.blocks import Block, KVCache, modulate, rope_angles


@dataclass
class SCDConfig(FrameShape):
    frame_size: int = 32         # frame height in pixels (latent rows for latent models), and its width unless frame_width
    patch_size: int = 4          # pixels per side of a patch: (32 / 4)^2 = 64 tokens per frame
    channels: int = 3            # RGB (16 for Wan's latents)
    width: int = 128             # residual stream width, the baseline's
    encoder_depth: int = 25      # causal encoder blocks; the paper's 1.3B split is 25 + 10
    decoder_depth: int = 10      # decoder blocks, run at every denoising step
    heads: int = 4               # attention heads
    mlp_ratio: float = 4.0       # MLP hidden width / width
    rope_theta: float = 10000.0  # RoPE base
    encoder_noise: float = 0.05  # std of the Gaussian noise added to the encoder output in training
    frame_width: int = 0         # frame width in pixels; 0: square (frame_size)

    @property
    def depth(self) -> int:
        return self.encoder_depth + self.decoder_depth


SCD_SIZES: dict[str, SCDConfig] = {
    "tiny": SCDConfig(frame_size=16, width=32, encoder_depth=3, decoder_depth=2, heads=2),
    "scd": SCDConfig(width=128, encoder_depth=25, decoder_depth=10, heads=4),
    # The paper's SCD 1.6B: a 25-block encoder, a 10-block decoder (its T2V model starts the decoder from Wan's first
    # and last 5 blocks: the same architecture, other weights), Wan-1.3B's width at 480p.
    "wan1.3b": SCDConfig(encoder_depth=25, decoder_depth=10, **WAN_1_3B),
    "wan-tiny": SCDConfig(encoder_depth=25, decoder_depth=10, **WAN_TINY),
}


@dataclass
class SCDCache(KVCache):
    """The encoder's KV cache, plus its output at the last cached frame: the next frame's decoder context."""
    context: torch.Tensor | None = field(default=None)  # [B, N, W]


class _Stack(nn.Module):
    """A named list of blocks, so that hook names read `encoder.blocks.3.hook_resid_post`."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class SeparableCausalDiffuser(BuiltinFrames, HookedRootModule):
    """SCD; `forward` has the baseline's signature, so the same `generate` samples both."""

    encodes_finished_frames = True  # the encoder runs only in the pass that caches a finished frame
    takes_surgeries = True          # analyses.interventions patches its decoder blocks

    def __init__(self, config: SCDConfig) -> None:
        super().__init__()
        if any(side % config.patch_size for side in frame_shape(config)[1:]):
            raise ModelError(f"frame {frame_shape(config)[1:]} is not a multiple of patch_size {config.patch_size}")
        self.config = config
        c, p, w, n = config.channels, config.patch_size, config.width, config.tokens_per_frame
        self.patch_embed = nn.Linear(c * p * p, w)  # shared: clean frames into the encoder, noisy ones into the decoder
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, w)
        self.encoder = _Stack([Block(w, config.heads, config.mlp_ratio) for _ in range(config.encoder_depth)])
        self.encoder_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.start_context = nn.Parameter(torch.zeros(n, w))
        self.context_proj = nn.Linear(w, w)  # its bias also tells the decoder which half is context
        self.decoder = _Stack([Block(w, config.heads, config.mlp_ratio) for _ in range(config.decoder_depth)])
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(w, 2 * w)
        self.unpatch = nn.Linear(w, c * p * p)
        for layer in (self.modulation_out, self.unpatch):  # the model starts by predicting zero velocity
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.hook_embed = HookPoint()        # [B, F*N, W] patch embeddings of the encoder's clean frames
        self.hook_encoder_out = HookPoint()  # [B, F*N, W] encoder output (before the training noise)
        self.setup()

    def new_cache(self, policy: CachePolicy | None = None) -> SCDCache:
        """An empty encoder cache for streaming generation, keeping what `policy` says (default: every frame)."""
        return SCDCache(policy=(policy or CachePolicy()).check(self.frames_per_block), chunk=self.frames_per_block)

    @property
    def layout(self) -> Layout:
        """Layers 0..E-1 are `encoder.blocks.{i}` (role encoder), then `decoder.blocks.{i}` (role decoder)."""
        e, d = self.config.encoder_depth, self.config.decoder_depth
        blocks = tuple(f"encoder.blocks.{i}" for i in range(e)) + tuple(f"decoder.blocks.{i}" for i in range(d))
        return Layout(blocks, self.config.tokens_per_frame, builtin_roles({"family": "scd", **asdict(self.config)}),
                      token_grid=patch_grid(self.config))

    def decoder_parameters(self) -> list[nn.Parameter]:
        """What the paper trains at twice the learning rate: decoder blocks, its context input and output head."""
        parts = (self.decoder, self.context_proj, self.norm_out, self.modulation_out, self.unpatch)
        return [self.start_context, *(p for part in parts for p in part.parameters())]

    # Same token layout as the baseline (frame-major, row-major patches): the same functions.
    patchify = CausalVideoDiffuser.patchify
    unpatchify = CausalVideoDiffuser.unpatchify

    def _angles(self, frame_index: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return rope_angles(frame_index, *patch_grid(cfg), cfg.width // cfg.heads, cfg.rope_theta)

    def encode(self, frames: torch.Tensor, cache: SCDCache | None = None) -> torch.Tensor:
        """Encoder output [B, F*N, W] of clean `frames` [B, F, C, H, W]; with a `cache`, after the cached
        frames, and appended to it (the encoder only ever reads clean frames, so everything it sees is cacheable)."""
        B, Fr = frames.shape[:2]
        n = self.config.tokens_per_frame
        past_angles, (start, positions) = cache_positions(cache, Fr, self.config)
        mask = frames_mask(start, Fr, n, frames.device)
        angles = self._angles(torch.tensor(positions, device=frames.device))
        x = self.hook_embed(self.patch_embed(self.patchify(frames)))
        clean = torch.zeros(B * Fr, device=frames.device)  # the fixed clean-context timestep
        cond = self.time_embed(self.time_proj(clean).to(x.dtype)).view(B, Fr, -1)
        for i, block in enumerate(self.encoder.blocks):
            x, (k, v) = block(x, cond, angles, mask, cache.layer(i, Fr) if cache is not None else None, past_angles)
            if cache is not None:
                cache.append(i, k, v)
        out = self.hook_encoder_out(self.encoder_norm(x))
        if self.training and self.config.encoder_noise > 0:  # so the decoder does not rely on exact features
            out = out + self.config.encoder_noise * torch.randn_like(out)
        if cache is not None:
            cache.advance(Fr)
            cache.context = out[:, -n:]
        return out

    def decode(self, context: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Velocity [B, F, C, H, W] of each noisy frame [B, F, C, H, W] at `timesteps` [B, F], given the
        encoder output of the frame before it, `context` [B, F, N, W]. Frames are decoded independently
        (one sequence of 2N tokens each): a frame's decoder sees nothing else."""
        B, Fr = noisy.shape[:2]
        n, w = self.config.tokens_per_frame, self.config.width
        ctx = self.context_proj(context.reshape(B * Fr, n, w))
        x = self.patch_embed(self.patchify(noisy)).reshape(B * Fr, n, w)
        x = torch.cat([ctx, x], dim=1)
        # Both halves at the same positions; the frame axis of RoPE is then constant within a sequence
        # and cancels in q.k, so frame index 0 serves every frame.
        half = self._angles(torch.zeros(1, dtype=torch.long, device=noisy.device))
        angles = torch.cat([half, half])
        cond = self.time_embed(self.time_proj(timesteps.flatten()).to(x.dtype)).view(B * Fr, 1, -1)
        for block in self.decoder.blocks:
            x, _ = block(x, cond, angles)
        shift, scale = self.modulation_out(nn.functional.silu(cond)).chunk(2, dim=-1)
        x = modulate(self.norm_out(x[:, n:]), shift, scale)
        return self.unpatchify(self.unpatch(x).reshape(B, Fr * n, -1), Fr)

    def forward(
        self, video: torch.Tensor, timesteps: torch.Tensor, cache: SCDCache | None = None, update_cache: bool = False,
        clean: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Velocity [B, F, C, H, W] of noisy frames `video` at `timesteps` [B, F] in [0, 1000], as the baseline's.

        Without a cache, frame i is decoded from the encoder's output on frame i-1 of `clean` (default:
        `video` itself; in training the clean clip while `video` is noised). With a `cache`, `video`
        is the one frame after the cached ones; `update_cache=True` instead encodes the (clean) frames
        into the cache and returns None: that is the encoder's once-per-frame pass.
        """
        B, Fr = video.shape[:2]
        if timesteps.shape != (B, Fr):
            raise ModelError(f"timesteps must be [batch, frames] = {(B, Fr)}, got {tuple(timesteps.shape)}")
        n, w = self.config.tokens_per_frame, self.config.width
        start = self.start_context.to(video.dtype).expand(B, 1, n, w)
        if cache is not None:
            if update_cache:
                self.encode(video, cache)
                return None
            if Fr != 1:
                raise ModelError(f"with a cache, SCD denoises one frame at a time, got {Fr} frames")
            context = start if cache.context is None else cache.context[:, None]
            return self.decode(context, video, timesteps)
        clean = video if clean is None else clean
        if clean.shape != video.shape:
            raise ModelError(f"clean must have the shape of video {tuple(video.shape)}, got {tuple(clean.shape)}")
        context = start
        if Fr > 1:
            context = torch.cat([start, self.encode(clean[:, :-1]).view(B, Fr - 1, n, w)], dim=1)
        return self.decode(context, video, timesteps)

    def get_config(self) -> dict:
        """The config as a JSON-able dict (with the family name, for `load_model`)."""
        return {"family": "scd", **asdict(self.config)}
