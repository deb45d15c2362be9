"""Causal Wan / SkyReels-V2 video transformers: diffusers' modules, run chunk-causally with a KV cache.

    model = load_causal_wan("path/to/pipeline", latent_size=(60, 104), frames_per_block=3)
    video = generate(model, context_latents, frames=21, steps=50)      # the KV cache of clean context

`CausalWan` wraps a diffusers `WanTransformer3DModel` or `SkyReelsV2Transformer3DModel` behind the
built-in models' interface: `forward(latents [B, F, C, h, w], timesteps [B, F], cache, update_cache)
-> velocity`, one timestep per latent frame (diffusion forcing). Its forward is written out from the
transformer's own modules (patch embedding, condition embedder, blocks, output head) rather than
calling the transformer's forward, for three things that forward cannot do:

- absolute frame positions: the frames after a KV cache of `cache.frames` frames get RoPE frame
  indices `cache.frames..`, as the stock forward would give them inside the whole sequence;
- chunk-causal attention: latent frames are denoised `frames_per_block` at a time (CausVid's and
  SkyReels-V2 DF's causal blocks); a token sees every token of its own and earlier chunks;
- a KV cache of clean context: keys and values (after qk-norm and RoPE) of finished chunks, written by
  a pass at timestep 0 (`update_cache=True`), as Self-Forcing does, and read at every later step.

SkyReels-V2 conversions with `inject_sample_info` (the DF-1.3B) add an fps embedding to every
frame's modulation for the video's frame rate `fps` (default 24, as SkyReels-V2's pipelines): its
table has two rows, and its pipelines map 16 fps to the first and any other rate to the second.
The self-attention runs `CausalWanAttnProcessor`, which passes q and k (after qk-norm and RoPE,
cached keys included) through TransformerLens HookPoints `attn1.hook_q` / `attn1.hook_k`, so probes
compute the exact attention from them; each block's input and output pass through HookPoints
`hook_resid_pre` / `hook_resid_post`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch import nn
from transformer_lens.hook_points import HookPoint

from scd.contract import MAX_FRAMES_PER_BLOCK, CachePolicy, Layout, VideoDiffuser, latent_channels
from scd.errors import CheckpointError, ModelError
from scd.models.baseline import block_causal_mask
from scd.models.blocks import KVCache
from scd.wan.checks import HOOK_PATHS

FAMILIES = ("WanTransformer3DModel", "SkyReelsV2Transformer3DModel")
TEXT_TOKENS = 512  # Wan's text context length (its processors hard-code it too)


def chunk_causal_mask(start: int, frames: int, tokens_per_frame: int, frames_per_block: int,
                      device: torch.device | str = "cpu", cached: bool = True) -> torch.Tensor | None:
    """bool [1, 1, Lq, Lk] for `frames` frames starting at frame `start`: True where a query may attend, i.e. the
    key's chunk (frame // frames_per_block) is not after the query's. Keys: the `start` cached frames (when `cached`)
    then the query frames. None where every key is visible (one chunk after a cache): no mask needed."""
    query = torch.arange(start, start + frames, device=device)
    keys = torch.cat([torch.arange(start, device=device), query]) if cached else query
    if int(query[0]) // frames_per_block == int(query[-1]) // frames_per_block:
        return None  # one chunk: it sees all of itself and everything cached before it
    n = tokens_per_frame
    mask = block_causal_mask((query // frames_per_block).repeat_interleave(n), (keys // frames_per_block).repeat_interleave(n))
    return mask[None, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs, as its attention processor applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


@dataclass
class GuidedCache:
    """The two KV caches of classifier-free guidance: the conditional and the unconditional pass keep their own."""
    cond: KVCache
    uncond: KVCache

    @property
    def frames(self) -> int:
        return self.cond.frames

    @property
    def policy(self) -> CachePolicy:
        return self.cond.policy

    def nbytes(self) -> int:
        """Bytes held by both caches."""
        return self.cond.nbytes() + self.uncond.nbytes()


@dataclass
class _Pass:
    """What the processors of one forward pass share: the cache, whether to write it, the mask, and under the
    `cache` RoPE policy the rotation of the cached (unrotated) keys it reads."""
    cache: KVCache | None
    update: bool
    mask: torch.Tensor | None
    frames: int = 0                        # latent frames of the pass: what it may see of a rolling cache
    past_rotary: tuple | None = None       # (cos, sin) of the cached keys read; None: they are stored rotated


class CausalWanAttnProcessor(WanAttnProcessor):
    """Self-attention of a Wan / SkyReels-V2 block, chunk-causal, reading and writing a KV cache, q and k hooked.

    A subclass of Wan's processor (SkyReels-V2's is a copy of it), so that diffusers' attention-backend selection
    (`set_attention_backend`) still picks the kernel. `CausalWan.forward` sets `run` for the pass under way.
    """

    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer, self.run = layer, _Pass(None, False, None)

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb: tuple | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ModelError("CausalWanAttnProcessor is for self-attention (attn1) only")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        unrotated = key
        if rotary_emb is not None:
            query, key = rotate(query, *rotary_emb), rotate(key, *rotary_emb)
        run = self.run
        past = run.cache.layer(self.layer, run.frames) if run.cache is not None else None
        if run.update:  # this pass's own keys, as the cache keeps them (unrotated under the `cache` RoPE policy)
            run.cache.append(self.layer, key if run.cache.policy.rope == "absolute" else unrotated, value)
        if past is not None:
            past_key = past[0] if run.past_rotary is None else rotate(past[0], *run.past_rotary)
            key, value = torch.cat([past_key, key], dim=1), torch.cat([past[1], value], dim=1)
        query, key = attn.hook_q(query), attn.hook_k(key)  # [B, tokens, heads, head_dim], as the softmax sees them
        out = dispatch_attention_fn(query, key, value, attn_mask=self.run.mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))


def geometry(config, latent_size: tuple[int, int], frames_per_block: int | None = None, fps: int | None = None,
             ) -> tuple[tuple[int, int], int, int | None]:
    """(token grid, chunk size, fps) of a transformer config (a dict or diffusers' config) at a latent size, each
    refused in one line where the model cannot take it: checked from config.json before loading, and again by the
    model it makes."""
    p_t, p_h, p_w = config.get("patch_size", (1, 2, 2))
    if not isinstance(latent_size, tuple | list) or len(latent_size) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in latent_size):
        raise CheckpointError(f"latent size {latent_size!r}; accepted: two integers (rows, columns) in 1..4096")
    h, w = latent_size
    if p_t != 1:
        raise CheckpointError(f"temporal patch size {p_t}: a frame-causal layout needs 1 latent frame per token frame")
    if h % p_h or w % p_w:
        raise CheckpointError(f"latent size {h}x{w} is not a multiple of the patch size {p_h}x{p_w}; accepted: "
                              f"multiples of {p_h}x{p_w}")
    grid, rope = (h // p_h, w // p_w), config.get("rope_max_seq_len", 1024)
    if max(grid) > rope:
        raise CheckpointError(f"latent size {h}x{w} makes a {grid[0]}x{grid[1]} token grid, beyond the model's RoPE table "
                              f"(rope_max_seq_len = {rope} rows and columns); accepted: at most {rope * p_h}x{rope * p_w}")
    native = int(config.get("num_frame_per_block", 1) or 1)
    frames_per_block = native if frames_per_block is None else frames_per_block
    if not isinstance(frames_per_block, int) or isinstance(frames_per_block, bool) or \
            not 1 <= frames_per_block <= MAX_FRAMES_PER_BLOCK:
        raise CheckpointError(f"frames_per_block = {frames_per_block!r}; accepted: an integer in 1..{MAX_FRAMES_PER_BLOCK}")
    sample_info = bool(config.get("inject_sample_info", False))
    if fps is not None and not sample_info:
        raise CheckpointError(f"fps = {fps!r}; accepted: none: this model has no fps embedding (inject_sample_info)")
    if fps is not None and (not isinstance(fps, int) or isinstance(fps, bool) or not 1 <= fps <= 240):
        raise CheckpointError(f"fps = {fps!r}; accepted: frames per second, an integer in 1..240")
    return grid, frames_per_block, (24 if fps is None and sample_info else fps)


def check_embeddings(tensor: object, text_dim: int, what: str = "text embeddings") -> None:
    """Refuse text embeddings that are not a finite float tensor [tokens, text_dim] (None passes: zeros are used)."""
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or tensor.shape[1] != text_dim or \
            not 1 <= tensor.shape[0] <= 4096 or not tensor.is_floating_point() or tensor.device.type == "meta":
        shape = f"{tensor.dtype} {list(tensor.shape)} on {tensor.device}" if isinstance(tensor, torch.Tensor) else \
            type(tensor).__name__
        raise CheckpointError(f"{what} is {shape}; accepted: a float tensor [tokens (1..4096), {text_dim}]")
    if not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{what} hold NaN or infinite values; accepted: finite embeddings")


class CausalWan(VideoDiffuser, nn.Module):
    """A Wan / SkyReels-V2 transformer as a chunk-causal video diffuser over latent frames (see the module docstring)."""

    generates_from_nothing = True  # text-to-video: the first chunk from the prompt alone, as Self-Forcing and LongLive

    def __init__(self, transformer: nn.Module, latent_size: tuple[int, int], text_embeddings: torch.Tensor | None = None,
                 *, frames_per_block: int | None = None, fps: int | None = None, name: str = "diffusers",
                 flow_shift: float = 1.0) -> None:
        super().__init__()
        family = type(transformer).__name__
        if family not in FAMILIES:
            raise CheckpointError(f"cannot use a {family}; accepted: {', '.join(FAMILIES)}")
        config = transformer.config
        self.grid, frames_per_block, fps = geometry(config, latent_size, frames_per_block, fps)
        self.inject_sample_info = bool(config.get("inject_sample_info", False))
        self.transformer, self.family, self.latent_size = transformer, family, tuple(latent_size)
        self.tokens_per_frame = self.grid[0] * self.grid[1]
        self.frames_per_block, self.fps = frames_per_block, fps
        self.max_frames = config.rope_max_seq_len  # the RoPE table's frame positions
        text_dim = config.text_dim
        check_embeddings(text_embeddings, text_dim)
        if text_embeddings is None:
            text_embeddings = torch.zeros(TEXT_TOKENS, text_dim)
        self.register_buffer("text_embeddings", text_embeddings.float(), persistent=False)
        self.register_buffer("negative_embeddings", torch.zeros(TEXT_TOKENS, text_dim), persistent=False)
        self.guidance_scale = 1.0  # > 1: classifier-free guidance, uncond + s (cond - uncond), each pass its own cache
        self.guidance_pass: str | None = None  # "cond" or "uncond" while a guided pass runs (probes read it)
        self.checkpoint = {"name": name}
        self.vae = None            # the pipeline's VAE, where it has one (scd.wan.pipeline sets it): decodes previews
        self.scheduler_config: dict | None = None  # the pipeline's scheduler (scd.wan.pipeline); None: flow-matching Euler
        self.scheduler_info: dict | None = None    # what the manifest records of the scheduler
        self.pipeline_dir: Path | None = None      # the pipeline directory (text encoder, tokenizer), where loaded from one
        if not isinstance(flow_shift, int | float) or isinstance(flow_shift, bool) or not 1e-3 <= flow_shift <= 1e3:
            raise CheckpointError(f"flow_shift = {flow_shift!r}; accepted: a number in 0.001..1000")
        self.flow_shift = float(flow_shift)  # generate samples with the model's flow shift
        for i, block in enumerate(transformer.blocks):  # TransformerLens names, as the built-in blocks have
            block.hook_resid_pre, block.hook_resid_post = HookPoint(), HookPoint()
            block.attn1.hook_q, block.attn1.hook_k = HookPoint(), HookPoint()
            block.attn1.set_processor(CausalWanAttnProcessor(i))
            # The stream after the self-attention's gated update (norm2's input) and the cross-attention's output (as
            # the block adds it, ungated), through HookPoints placed by torch hooks: the block's forward is diffusers'.
            block.hook_resid_mid, block.hook_cross_out = HookPoint(), HookPoint()
            block.norm2.register_forward_pre_hook(lambda module, args, point=block.hook_resid_mid: (point(args[0]),))
            block.attn2.register_forward_hook(lambda module, args, output, point=block.hook_cross_out: point(output))

    @property
    def layout(self) -> Layout:
        """Blocks `transformer.blocks.{i}` with HookPoints for their input and output (the features) and `attn1`'s q
        and k (cached keys included); `frames_per_block` frames are denoised together and see each other."""
        blocks = tuple(f"transformer.blocks.{i}" for i in range(len(self.transformer.blocks)))
        return Layout(blocks, self.tokens_per_frame, hook_paths=dict(HOOK_PATHS), frames_per_block=self.frames_per_block,
                      token_grid=tuple(self.grid))

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(latent channels, latent rows, latent columns)."""
        return self.channels, *self.latent_size

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every HookPoint by module path, as TransformerLens' HookedRootModule lists them."""
        return {name: module for name, module in self.named_modules() if isinstance(module, HookPoint)}

    @property
    def channels(self) -> int:
        return self.transformer.config.in_channels

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def set_prompt(self, text_embeddings: torch.Tensor, negative_embeddings: torch.Tensor | None = None,
                   guidance_scale: float = 1.0) -> None:
        """Condition on text embeddings [L, text_dim]; with `guidance_scale` != 1, classifier-free guidance against
        `negative_embeddings` (default zeros: no prompt)."""
        text_dim = self.transformer.config.text_dim
        if text_embeddings is None:
            raise CheckpointError(f"text embeddings None; accepted: a float tensor [tokens, {text_dim}]")
        check_embeddings(text_embeddings, text_dim)
        check_embeddings(negative_embeddings, text_dim, "negative embeddings")
        if not isinstance(guidance_scale, int | float) or isinstance(guidance_scale, bool) or \
                not 0 <= guidance_scale <= 100 or guidance_scale != guidance_scale:
            raise CheckpointError(f"guidance scale {guidance_scale!r}; accepted: a number in 0..100 (1: no guidance)")
        where = self.text_embeddings
        self.text_embeddings = text_embeddings.to(where.device, where.dtype)
        if negative_embeddings is None:
            negative_embeddings = torch.zeros_like(self.text_embeddings)
        self.negative_embeddings = negative_embeddings.to(where.device, where.dtype)
        self.guidance_scale = float(guidance_scale)

    def new_cache(self, policy: CachePolicy | None = None) -> KVCache | GuidedCache:
        """An empty KV cache for streaming generation (keys and values of clean, finished chunks, those `policy`
        keeps); two with guidance."""
        policy, k = (policy or CachePolicy()).check(self.frames_per_block), self.frames_per_block
        if self.guided:
            return GuidedCache(KVCache(policy=policy, chunk=k), KVCache(policy=policy, chunk=k))
        return KVCache(policy=policy, chunk=k)

    def get_config(self) -> dict:
        """What a run's manifest records of the model."""
        return {"family": self.family, "latent_size": list(self.latent_size), "tokens_per_frame": self.tokens_per_frame,
                "frames_per_block": self.frames_per_block, "fps": self.fps, "flow_shift": self.flow_shift,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.transformer.config.items()
                   if not k.startswith("_")}}

    @torch.no_grad()
    def preview(self, video: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Latent frames [T, C, h, w] as images [T', 3, H, W] in [-1, 1], and what they are: decoded by the pipeline's
        VAE as one causal sequence (Wan's VAE: T' = 1 + 4 (T - 1)), or without a VAE the first three latent
        channels of each frame (T' = T), each channel scaled by its spread."""
        if self.vae is None:
            return latent_channels(video)
        from scd.wan.vae import decode_latents

        return decode_latents(self.vae, video), "decoded by the VAE as one causal sequence"

    def shown_frames(self, latent_frames: int) -> int:
        """How many images `preview` makes of `latent_frames` latent frames (Wan's VAE: 1 + 4 (T - 1))."""
        if self.vae is None or latent_frames == 0:
            return latent_frames
        from scd.wan.vae import vae_factors

        return 1 + vae_factors(self.vae)[0] * (latent_frames - 1)

    def check_frames(self, context_frames: int, frames: int, names: dict[str, str] | None = None) -> None:
        """Refuse frame counts that the chunking or the RoPE table cannot take, by the one rule for them
        (`SamplingSpec.check`'s); `names`: what the caller calls context_frames and frames (e.g. its flags)."""
        from scd.sampling_spec import PYTHON_NAMES, SamplingError, SamplingSpec

        try:
            SamplingSpec.check(context_frames=context_frames, frames=frames, frames_per_block=self.frames_per_block,
                               max_frames=self.max_frames, from_nothing=True, names={**PYTHON_NAMES, **(names or {})})
        except SamplingError as e:
            raise CheckpointError(str(e)) from None

    def _rope(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, frames * tokens, 1, head_dim] of frames at RoPE frame `positions`: Wan's table, frame-indexed."""
        rope = self.transformer.rope
        sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
        (gh, gw), frames = self.grid, len(positions)
        out = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            f, r, c = table.split(sizes, dim=1)
            f = f[torch.tensor(positions, device=f.device)]
            parts = (f.view(frames, 1, 1, -1).expand(frames, gh, gw, -1),
                     r[:gh].view(1, gh, 1, -1).expand(frames, gh, gw, -1),
                     c[:gw].view(1, 1, gw, -1).expand(frames, gh, gw, -1))
            out.append(torch.cat(parts, dim=-1).reshape(1, frames * gh * gw, 1, -1))
        return out[0], out[1]

    def _modulation(self, timesteps: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(temb, the blocks' modulation, projected text) for per-frame timesteps [B, F], in each family's layout."""
        tr, n = self.transformer, self.tokens_per_frame
        B, F = timesteps.shape
        if self.family == "WanTransformer3DModel":  # one timestep per token (Wan 2.2's layout): [B, F*n, 6, D]
            per_token = timesteps.repeat_interleave(n, dim=1)
            temb, proj, text, _ = tr.condition_embedder(per_token.flatten(), text, None, timestep_seq_len=F * n)
            return temb, proj.unflatten(2, (6, -1)), text
        temb, proj, text, _ = tr.condition_embedder(timesteps, text, None)  # SkyReels-V2 diffusion forcing
        proj = proj.unflatten(-1, (6, -1))  # [B, F, 6, D]
        if self.inject_sample_info:
            row = 0 if self.fps == 16 else 1  # SkyReels-V2's pipelines: 16 fps -> row 0, any other rate -> row 1
            fps = torch.full((B,), row, dtype=torch.long, device=timesteps.device)
            proj = proj + tr.fps_projection(tr.fps_embedding(fps)).unflatten(1, (6, -1))[:, None]
        temb = temb[:, :, None].expand(B, F, n, temb.shape[-1]).flatten(1, 2)  # [B, F*n, D]
        proj = proj[:, :, None].expand(B, F, n, 6, proj.shape[-1]).flatten(1, 2).transpose(1, 2).contiguous()
        return temb, proj, text  # proj: [B, 6, F*n, D], as SkyReels-V2's blocks take it

    def forward(self, video: torch.Tensor, timesteps: torch.Tensor, cache: KVCache | GuidedCache | None = None,
                update_cache: bool = False) -> torch.Tensor:
        """Velocity [B, F, C, h, w] of latent frames [B, F, C, h, w] at per-frame timesteps [B, F] (0..1000).

        With a `cache`, the frames come right after the cached ones and attend to them; `update_cache=True`
        appends this pass's keys and values (call it for finished, clean frames at timestep 0). With guidance,
        a conditional then an unconditional pass, each with its own cache: uncond + s (cond - uncond)."""
        if not self.guided:
            return self._velocity(video, timesteps, self.text_embeddings, cache, update_cache)
        if cache is not None and not isinstance(cache, GuidedCache):
            raise ModelError("a guided model needs its two caches: model.new_cache()")
        try:
            self.guidance_pass = "cond"
            cond = self._velocity(video, timesteps, self.text_embeddings, cache and cache.cond, update_cache)
            self.guidance_pass = "uncond"
            uncond = self._velocity(video, timesteps, self.negative_embeddings, cache and cache.uncond, update_cache)
        finally:
            self.guidance_pass = None
        return uncond + self.guidance_scale * (cond - uncond)

    def _velocity(self, video: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, cache: KVCache | None,
                  update_cache: bool) -> torch.Tensor:
        tr = self.transformer
        B, F, _, h, w = video.shape
        if (h, w) != self.latent_size:
            raise CheckpointError(f"latent frames are {h}x{w}; this model was loaded for {self.latent_size[0]}x"
                                  f"{self.latent_size[1]}")
        if update_cache and cache is None:
            raise ModelError("update_cache=True needs a cache (model.new_cache())")
        start = cache.frames if cache is not None else 0
        seen, positions = cache.positions(F) if cache is not None else ([], list(range(F)))
        if positions[-1] >= self.max_frames:
            raise CheckpointError(f"latent frame position {positions[-1]} is beyond the model's RoPE table "
                                  f"(rope_max_seq_len = {self.max_frames}); accepted: at most {self.max_frames} frames, "
                                  "or a rolling window with --rope cache")
        rotary = self._rope(positions)
        past_rotary = self._rope(seen) if cache is not None and cache.policy.rope == "cache" and seen else None
        x = tr.patch_embedding(video.transpose(1, 2)).flatten(2).transpose(1, 2).contiguous()  # [B, F*n, D]
        text = text.to(video.dtype).expand(B, -1, -1)
        temb, proj, text = self._modulation(timesteps.to(video.dtype), text)
        mask = chunk_causal_mask(start, F, self.tokens_per_frame, self.frames_per_block, video.device, cache is not None)
        run = _Pass(cache, update_cache, mask, F, past_rotary)
        try:
            for block in tr.blocks:
                block.attn1.processor.run = run
                x = block.hook_resid_pre(x)
                x = block(x, text, proj, rotary) if self.family == "WanTransformer3DModel" else \
                    block(x, text, proj, rotary, None)
                x = block.hook_resid_post(x)
        finally:
            for block in tr.blocks:
                block.attn1.processor.run = _Pass(None, False, None)
        if update_cache:
            cache.advance(F)
        shift, scale = (tr.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)  # per token
        x = (tr.norm_out(x.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x)
        x = tr.proj_out(x)  # [B, F*n, p_h * p_w * C]
        (gh, gw), (_, p_h, p_w) = self.grid, tr.config.patch_size
        x = x.reshape(B, F, gh, gw, p_h, p_w, -1).permute(0, 1, 6, 2, 4, 3, 5)
        return x.reshape(B, F, -1, h, w)
