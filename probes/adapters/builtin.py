"""The built-in models of `scd`: frame-major tokens, TransformerLens HookPoint names.

Layers are numbered in execution order. The baseline's layer i is `blocks.{i}`; SCD's layers
0..24 are `encoder.blocks.{i}` and 25..34 are `decoder.blocks.{i - 25}`, so `--layers all` and
relative depth mean the same on both families.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from probes.errors import ProbeError

# The HookPoints of a block in the order a forward pass reaches them (nnsight must ask in that order).
HOOKS = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "hook_attn_out", "hook_mlp_out",
         "hook_resid_post")

# What a block is to a probe:
#   causal:  runs at every denoising step; the frame's queries see keys of frames 0..frame (frame-major).
#   encoder: SCD's encoder; runs once per frame, in the pass that writes the finished frame into the
#            cache; keys as `causal`.
#   decoder: SCD's decoder; runs at every step; keys are the encoder output of frame - 1, then the frame.
#   frame-local: a baseline block under the paper's frame-diagonal mask; runs at every step; reads only the
#            frame's own keys (`BaselineConfig.frame_local_blocks`).
ROLES = ("causal", "encoder", "decoder", "frame-local")


@dataclass(frozen=True)
class Layout:
    """Where a model's blocks are and how its tokens are laid out (frame-major, a fixed count per frame)."""
    blocks: tuple[str, ...]  # module path of each probe-able block; layer i is blocks[i], in execution order
    tokens_per_frame: int    # tokens of one frame; a frame's tokens are contiguous, frames in time order
    roles: tuple[str, ...] = ()  # ROLES entry per block; empty: all "causal"
    hook_paths: dict[str, str] | None = None  # HOOKS name -> path inside the block ("" = the block's output); None: as named
    frames_per_block: int = 1  # frames denoised together in one chunk, seeing each other (chunk-causal attention)
    token_grid: tuple[int, int] | None = None  # (rows, columns) of a frame's tokens, row-major; None: not laid on a grid

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def role(self, layer: int) -> str:
        """causal, encoder, decoder or frame-local (see ROLES)."""
        return self.roles[layer] if self.roles else "causal"

    def path(self, layer: int, hook: str) -> str:
        """Module path of a block's HookPoint, e.g. `blocks.15.attn.hook_q` (or of the module read for it)."""
        inside = hook if self.hook_paths is None else self.hook_paths.get(hook)
        if inside is None:
            raise ProbeError(f"this model has no {hook!r}; accepted: {', '.join(self.hook_paths)}")
        return f"{self.blocks[layer]}.{inside}".rstrip(".")

    def order(self, layer: int, hook: str) -> tuple[int, int]:
        """Sort key giving the order in which a forward pass reaches (layer, hook)."""
        return layer, HOOKS.index(hook)

    def chunk(self, frame: int) -> range:
        """The frames denoised together with `frame` (its chunk; chunks start at frame 0)."""
        first = frame - frame % self.frames_per_block
        return range(first, first + self.frames_per_block)

    def key_frames(self, layer: int, frame: int, keys: int) -> torch.Tensor:
        """Frame index of each of the `keys` keys a query of `frame` sees at `layer`; ValueError if the
        count does not fit the layout."""
        n = self.tokens_per_frame
        if self.role(layer) == "decoder":
            if keys != 2 * n or frame < 1:
                raise ProbeError(f"decoder layer {layer} saw {keys} keys for frame {frame}; expected 2 x {n} "
                                 "(the encoder output of the frame before, then the frame)")
            return torch.tensor([frame - 1, frame]).repeat_interleave(n)
        if self.role(layer) == "frame-local":
            if keys != n:
                raise ProbeError(f"frame-local layer {layer} saw {keys} keys; expected the frame's own {n}")
            return torch.full((n,), frame)
        last = self.chunk(frame)[-1]
        if keys != (last + 1) * n:
            raise ProbeError(f"layer {layer} saw {keys} keys while denoising frame {frame}; "
                             f"expected frames 0..{last} x {n} tokens (a frame-major causal layout)")
        return torch.arange(last + 1).repeat_interleave(n)


def builtin_layout(model: nn.Module) -> Layout:
    """The layout of a `CausalVideoDiffuser` or a `SeparableCausalDiffuser`."""
    n = model.config.tokens_per_frame
    from scd.baseline import patch_grid

    grid = patch_grid(model.config)
    if hasattr(model, "encoder") and hasattr(model, "decoder"):
        encoder, decoder = len(model.encoder.blocks), len(model.decoder.blocks)
        blocks = tuple(f"encoder.blocks.{i}" for i in range(encoder)) + tuple(f"decoder.blocks.{i}" for i in range(decoder))
        return Layout(blocks, n, ("encoder",) * encoder + ("decoder",) * decoder, token_grid=grid)
    depth, local = len(model.blocks), getattr(model.config, "frame_local_blocks", 0)
    roles = ("causal",) * (depth - local) + ("frame-local",) * local if local else ()
    return Layout(tuple(f"blocks.{i}" for i in range(depth)), n, roles, token_grid=grid)
