"""Wan's causal 3D VAE as the pipelines use it: latents normalised by the VAE's `latents_mean` / `latents_std`,
a video decoded and encoded as one causal sequence."""

from __future__ import annotations

import torch


def vae_factors(vae) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE: 2 per temporal downsample, 2 per level after the first."""
    return 2 ** sum(bool(d) for d in vae.config.temperal_downsample), 2 ** (len(vae.config.dim_mult) - 1)


def _moments(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
    return mean, std


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latent frames [T, C, h, w] (normalised, as the transformer sees them) -> video [T', 3, H, W] in [-1, 1],
    decoded as one causal sequence (Wan's 3D VAE: T' = 1 + temporal x (T - 1))."""
    param = next(vae.parameters())
    z = latents.permute(1, 0, 2, 3)[None].to(param.device, param.dtype)
    mean, std = _moments(vae, z)
    return vae.decode(z * std + mean).sample[0].transpose(0, 1).float().cpu().clamp(-1, 1)


@torch.no_grad()
def encode_video(vae, video: torch.Tensor) -> torch.Tensor:
    """Video [T', 3, H, W] in [-1, 1] -> normalised latent frames [T, C, h, w] (the posterior's mode), as Wan's
    pipelines encode a conditioning video."""
    param = next(vae.parameters())
    x = video.transpose(0, 1)[None].to(param.device, param.dtype)
    z = vae.encode(x).latent_dist.mode()
    mean, std = _moments(vae, z)
    return ((z - mean) / std)[0].transpose(0, 1).float().cpu()
