"""What a backend must know of a model family to probe it: where its blocks are and how its tokens are laid out."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from probes.adapters.builtin import HOOKS, ROLES, Layout, builtin_layout
from probes.errors import ProbeError

__all__ = ["HOOKS", "ROLES", "Layout", "layout_of", "load_model"]


def layout_of(model: nn.Module) -> Layout:
    """The layout of a model this toolkit knows how to probe; a ValueError naming the accepted kinds otherwise."""
    causal_wan = sys.modules.get("scd.causal_wan")  # imported wherever a CausalWan exists; importing it costs diffusers
    if causal_wan is not None and isinstance(model, causal_wan.CausalWan):
        from probes.adapters.diffusers import diffusers_layout

        return diffusers_layout(model)
    if hasattr(model, "hook_dict") and hasattr(model, "get_config"):
        return builtin_layout(model)
    raise ProbeError(f"cannot probe a {type(model).__name__}; accepted: the built-in models of scd (load_model) and "
                     "diffusers Wan / SkyReels-V2 transformers (load_model('diffusers:PATH'))")


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               **diffusers_options) -> nn.Module:
    """`scd.load_model` for the built-in models, and "diffusers:PATH" for a local diffusers Wan / SkyReels-V2
    model (`scd.wan_pipeline.load_causal_wan`; options: latent_size, text_embeddings, frames_per_block, fps,
    scheduler)."""
    if isinstance(name_or_path, str) and name_or_path.startswith("diffusers:"):
        from scd.devices import float_dtype, usable_device
        from scd.wan_pipeline import load_causal_wan

        device, dtype = usable_device(device), float_dtype(dtype)  # refused before anything is read or moved

        return load_causal_wan(name_or_path.removeprefix("diffusers:"), device=device, dtype=dtype, **diffusers_options)
    from scd.zoo import load_model as load_builtin

    return load_builtin(name_or_path, device=device, dtype=dtype)
