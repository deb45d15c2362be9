"""Diffusers video transformers (Wan, SkyReels-V2) as causal video diffusers that `generate` samples and
the probes read, in latent space.

    model = load_diffusers("path/to/transformer")      # a local diffusers directory; never the network
    video = generate(model, latents[:4], frames=4, steps=50, use_cache=False)

`DiffusersVideoModel` wraps the transformer behind the built-in models' interface: `forward(video
[B, F, C, h, w], timesteps [B, F]) -> velocity`, one timestep per latent frame (SkyReels-V2's
diffusion forcing; Wan's per-token timesteps, repeated over a frame's tokens). Its self-attention
runs `FrameCausalAttnProcessor`: block-causal over latent frames (SkyReels-V2 builds its own mask,
but only when its causal block size `num_frame_per_block` is > 1; otherwise, and always for Wan,
the processor adds one), with q and k, after qk-norm and rotary embedding, passed through
TransformerLens HookPoints `attn1.hook_q` / `attn1.hook_k` so that the probes compute the exact
per-frame attention mass from them, as for the built-in models. The attention output is still
computed by diffusers' attention dispatch (the fused kernel), from the same q, k, v.

Tokens are frame-major, (h / p_h) x (w / p_w) per latent frame; the latent size is fixed when the
model is loaded (`latent_size`), because a layout has a fixed token count per frame. There is no
KV cache: every denoising step recomputes the clean past frames (`generate(..., use_cache=False)`).
Text conditioning is a supplied embedding [L, text_dim] or zeros (512 tokens, as Wan pads its text).
From a pipeline directory (`transformer/`, optionally `vae/` and `scheduler/`), the scheduler's
flow shift is used for sampling (with the flow-matching Euler scheduler of `generate`), and the VAE,
when there is one, decodes each latent frame for the report; without one the report shows three
latent channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch import nn
from transformer_lens.hook_points import HookPoint

from probes.adapters.builtin import Layout
from scd.baseline import block_causal_mask
from scd.zoo import CheckpointError

FAMILIES = ("WanTransformer3DModel", "SkyReelsV2Transformer3DModel")
TEXT_TOKENS = 512  # Wan's text context length (its processor hard-codes it too)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs (as its attention processor applies it)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def frame_causal_mask(tokens: int, tokens_per_frame: int, device: torch.device) -> torch.Tensor:
    """bool [1, 1, tokens, tokens]: a token sees every token of its own and earlier latent frames."""
    frame = torch.arange(tokens, device=device) // tokens_per_frame
    return block_causal_mask(frame, frame)[None, None]


class FrameCausalAttnProcessor(WanAttnProcessor):
    """Self-attention of a Wan / SkyReels-V2 block, block-causal over latent frames, q and k through HookPoints.

    A subclass of Wan's processor (SkyReels-V2's is a copy of it), so that diffusers' attention-backend
    selection (`set_attention_backend`) still picks the kernel; only the self-attention path is written
    out, to pass q and k through the HookPoints and to add the frame mask.
    """

    def __init__(self, tokens_per_frame: int) -> None:
        super().__init__()
        self.tokens_per_frame = tokens_per_frame

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb: tuple | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("FrameCausalAttnProcessor is for self-attention (attn1) only")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        query, key = attn.hook_q(query), attn.hook_k(key)  # [B, tokens, heads, head_dim], as the softmax sees them
        if attention_mask is None:  # SkyReels-V2 passes its own only when its causal block size is > 1
            attention_mask = frame_causal_mask(query.shape[1], self.tokens_per_frame, query.device)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class DiffusersVideoModel(nn.Module):
    """A Wan / SkyReels-V2 transformer as a causal video diffuser over latent frames (see the module docstring)."""

    def __init__(self, transformer: nn.Module, latent_size: tuple[int, int], text_embeddings: torch.Tensor | None = None,
                 name: str = "diffusers", vae: nn.Module | None = None, flow_shift: float = 1.0) -> None:
        super().__init__()
        family = type(transformer).__name__
        if family not in FAMILIES:
            raise CheckpointError(f"cannot use a {family}; accepted: {', '.join(FAMILIES)}")
        p_t, p_h, p_w = transformer.config.patch_size
        h, w = latent_size
        if p_t != 1:
            raise CheckpointError(f"temporal patch size {p_t}: a frame-causal layout needs 1 latent frame per token frame")
        if h % p_h or w % p_w:
            raise CheckpointError(f"latent size {h}x{w} is not a multiple of the patch size {p_h}x{p_w}")
        self.transformer, self.family, self.latent_size = transformer, family, (h, w)
        self.tokens_per_frame = (h // p_h) * (w // p_w)
        text_dim = transformer.config.text_dim
        if text_embeddings is None:
            text_embeddings = torch.zeros(TEXT_TOKENS, text_dim)
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != text_dim:
            raise CheckpointError(f"text embeddings must be [tokens, {text_dim}], got {tuple(text_embeddings.shape)}")
        self.register_buffer("text_embeddings", text_embeddings.float(), persistent=False)
        self.checkpoint = {"name": name}
        self.vae, self.flow_shift = vae, flow_shift  # generate samples with the model's flow shift
        for block in transformer.blocks:
            block.attn1.hook_q, block.attn1.hook_k = HookPoint(), HookPoint()
            block.attn1.set_processor(FrameCausalAttnProcessor(self.tokens_per_frame))

    @property
    def channels(self) -> int:
        return self.transformer.config.in_channels

    def get_config(self) -> dict:
        """What a run's manifest records of the model."""
        return {"family": self.family, "latent_size": list(self.latent_size), "tokens_per_frame": self.tokens_per_frame,
                "flow_shift": self.flow_shift, "vae": self.vae is not None,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.transformer.config.items()
                   if not k.startswith("_")}}

    def forward(self, video: torch.Tensor, timesteps: torch.Tensor, cache: object = None, update_cache: bool = False
                ) -> torch.Tensor:
        """Velocity [B, F, C, h, w] of latent frames [B, F, C, h, w] at per-frame timesteps [B, F] (0..1000)."""
        if cache is not None or update_cache:
            raise ValueError("diffusers video models have no KV cache here; call generate(..., use_cache=False)")
        B, F = video.shape[:2]
        x = video.transpose(1, 2)  # diffusers: [B, C, F, h, w]
        text = self.text_embeddings.to(video.dtype).expand(B, -1, -1)
        if self.family == "SkyReelsV2Transformer3DModel":
            out = self.transformer(x, timesteps, text, enable_diffusion_forcing=True, return_dict=False)[0]
        else:  # Wan takes one timestep per token
            out = self.transformer(x, timesteps.repeat_interleave(self.tokens_per_frame, dim=1), text, return_dict=False)[0]
        return out.transpose(1, 2)

    @torch.no_grad()
    def preview(self, video: torch.Tensor) -> torch.Tensor:
        """Latent frames [T, C, h, w] as images [T, 3, H, W] in [-1, 1]: each frame decoded by the VAE on its
        own (as a one-frame video), or without a VAE the first three channels, each scaled by its spread."""
        if self.vae is None:
            rgb = video[:, :3].float()
            return (rgb / (3 * rgb.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))).clamp(-1, 1)
        config = self.vae.config
        param = next(self.vae.parameters())
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
        z = (video[:, :, None].float() * std + mean).to(param.device, param.dtype)  # un-normalised, as Wan's pipelines do
        return self.vae.decode(z).sample[:, :, 0].float().cpu().clamp(-1, 1)


def diffusers_layout(model: DiffusersVideoModel) -> Layout:
    """Blocks `transformer.blocks.{i}`; the block's output is its features, q and k come from `attn1`'s HookPoints."""
    blocks = tuple(f"transformer.blocks.{i}" for i in range(len(model.transformer.blocks)))
    return Layout(blocks, model.tokens_per_frame, hook_paths={"hook_resid_post": "", "attn.hook_q": "attn1.hook_q",
                                                              "attn.hook_k": "attn1.hook_k"})


def load_diffusers(path: str | Path, latent_size: tuple[int, int] = (8, 8), text_embeddings: torch.Tensor | None = None,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiffusersVideoModel:
    """Load a local diffusers transformer directory (`config.json` + weights), or a pipeline directory's
    `transformer/` (with its `vae/` and `scheduler/` when there), with `from_pretrained` and no network access."""
    import diffusers

    root = Path(path)
    pipeline = (root / "transformer" / "config.json").is_file()
    directory = root / "transformer" if pipeline else root
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a diffusers model directory: no config.json")
    try:
        family = json.loads(config_path.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{config_path} is not valid JSON") from None
    if family not in FAMILIES:
        raise CheckpointError(f"{config_path} describes a {family}; accepted: {', '.join(FAMILIES)}")
    if not any(directory.glob("*.safetensors")):
        raise CheckpointError(f"{directory} has no .safetensors weights")
    try:
        transformer = getattr(diffusers, family).from_pretrained(directory, local_files_only=True, torch_dtype=dtype,
                                                                 use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load {directory}: {str(e).splitlines()[0]}") from None
    vae, flow_shift = None, 1.0
    if pipeline and (root / "vae" / "config.json").is_file():
        try:
            vae = diffusers.AutoencoderKLWan.from_pretrained(root / "vae", local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot load the VAE in {root / 'vae'}: {str(e).splitlines()[0]}") from None
    scheduler = root / "scheduler" / "scheduler_config.json"
    if pipeline and scheduler.is_file():
        settings = json.loads(scheduler.read_text())
        flow_shift = float(settings.get("flow_shift") or settings.get("shift") or 1.0)
    model = DiffusersVideoModel(transformer, latent_size, text_embeddings, name=f"diffusers:{path}", vae=vae,
                                flow_shift=flow_shift)
    return model.to(device=device, dtype=dtype).eval()
