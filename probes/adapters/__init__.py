"""What a backend must know of a model family to probe it: where its blocks are and how its tokens are laid out."""

from __future__ import annotations

from torch import nn

from probes.adapters.builtin import HOOKS, ROLES, Layout, builtin_layout

__all__ = ["HOOKS", "ROLES", "Layout", "layout_of"]


def layout_of(model: nn.Module) -> Layout:
    """The layout of a model this toolkit knows how to probe; a ValueError naming the accepted kinds otherwise."""
    if hasattr(model, "hook_dict") and hasattr(model, "get_config"):
        return builtin_layout(model)
    raise ValueError(f"cannot probe a {type(model).__name__}; accepted: the built-in models of scd (load_model)")
