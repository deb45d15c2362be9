"""The built-in models of `scd`: blocks under `blocks.{i}`, frame-major tokens, TransformerLens HookPoint names."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# The HookPoints of a block in the order a forward pass reaches them (nnsight must ask in that order).
HOOKS = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "hook_attn_out", "hook_mlp_out",
         "hook_resid_post")


@dataclass(frozen=True)
class Layout:
    """Where a model's blocks are and how its tokens are laid out (frame-major, a fixed count per frame)."""
    depth: int              # probe-able blocks, numbered 0..depth-1 in execution order
    tokens_per_frame: int   # tokens of one frame; a frame's tokens are contiguous, frames in time order
    prefix: str = "blocks"  # module path of the block list

    def path(self, layer: int, hook: str) -> str:
        """Module path of a block's HookPoint, e.g. `blocks.15.attn.hook_q`."""
        return f"{self.prefix}.{layer}.{hook}"

    def order(self, layer: int, hook: str) -> tuple[int, int]:
        """Sort key giving the order in which a forward pass reaches (layer, hook)."""
        return layer, HOOKS.index(hook)


def builtin_layout(model: nn.Module) -> Layout:
    """The layout of a `CausalVideoDiffuser` (or a model with the same `blocks` / `config` structure)."""
    return Layout(depth=len(model.blocks), tokens_per_frame=model.config.tokens_per_frame)
