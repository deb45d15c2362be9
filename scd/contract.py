"""The contract every model family of this toolkit implements: `VideoDiffuser`, and its `Layout`.

A family (the built-in `CausalVideoDiffuser` and `SeparableCausalDiffuser`, a causal Wan / SkyReels-V2
`CausalWan`) subclasses `VideoDiffuser` and says, once, what the sampler, the probes, the surgeries and
the analyses need of it: where its blocks are and what each is (`layout`), the shape of a frame, how
it is sampled (chunk size, KV cache, flow shift, scheduler, guidance), what a manifest records of it,
and how its frames are shown. Nothing outside a family's own file asks a model what it is by
`hasattr`: it asks this contract (`tests/test_layout.py` fails otherwise).

Layers are numbered in execution order. The baseline's layer i is `blocks.{i}`; SCD's layers
0..24 are `encoder.blocks.{i}` and 25..34 are `decoder.blocks.{i - 25}`, so `--layers all` and
relative depth mean the same on every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a tensor is made: the command's argument checks import this file
    import torch

# The HookPoints of a block in the order a forward pass reaches them (nnsight must ask in that order).
HOOKS = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "hook_attn_out", "hook_resid_mid",
         "hook_cross_out", "hook_mlp_out", "hook_resid_post")
# Of these, the two that only blocks with cross-attention to a text have (the Wan families): the stream after the
# self-attention's update, and the cross-attention's output as added to it.
CROSS_ATTENTION_HOOKS = ("hook_resid_mid", "hook_cross_out")
# The HookPoints of every block of a built-in model (a layout without hook_paths): all but the cross-attention's.
BUILTIN_HOOKS = tuple(h for h in HOOKS if h not in CROSS_ATTENTION_HOOKS)

# What a block is to a probe:
#   causal:  runs at every denoising step; the frame's queries see keys of frames 0..frame (frame-major).
#   encoder: SCD's encoder; runs once per frame, in the pass that writes the finished frame into the
#            cache; keys as `causal`.
#   decoder: SCD's decoder; runs at every step; keys are the encoder output of frame - 1, then the frame.
#   frame-local: a baseline block under the paper's frame-diagonal mask; runs at every step; reads only the
#            frame's own keys (`BaselineConfig.frame_local_blocks`).
ROLES = ("causal", "encoder", "decoder", "frame-local")

MAX_FRAMES_PER_BLOCK = 64  # frames one chunk may hold (the Wan families denoise 1-3; bounds every chunk argument)
PAPER_DEPTH = 30  # blocks of Wan-2.1-1.3B, the model the paper's layer numbers refer to


class LayoutError(ValueError):
    """A question the model's layout cannot answer (a hook it lacks, a key count it cannot give); one line."""


def paper_layer(layer: int, depth: int) -> int:
    """The layer at the same relative depth in a `depth`-block model as the paper's `layer` in its 30 blocks."""
    return round(layer * (depth - 1) / (PAPER_DEPTH - 1))


ROPE_POLICIES = ("absolute", "cache")


class CachePolicyError(ValueError):
    """A window, sink count or RoPE policy the sampler cannot run; one line naming the accepted values."""


@dataclass(frozen=True)
class CachePolicy:
    """Which finished frames a chunk attends to: all of them (the paper's setting), or a rolling window with sinks.

    As Self-Forcing's `local_attn_size` / `sink_size` (LongLive: window 12, 3 sinks): a chunk of k frames
    attends to at most `window` latent frames, namely the first `sink_frames` frames ever written (kept for
    ever), the most recent `window - sink_frames - k` finished frames, and its own k frames; the cache keeps at
    most `window` frames. RoPE: `absolute` rotates every key at its frame's index in the video when it is
    written (Self-Forcing's `causal_rope_apply(start_frame=...)`, LongLive): the positions grow with the video;
    `cache` keeps keys unrotated and rotates them at each pass at their place in the cache (sinks 0..M-1, then
    the window in order, then the chunk), so positions stay below `window` and a rollout can outrun a RoPE table.
    """
    window: int | None = None  # latent frames a chunk attends to, sinks and itself included; None: every finished frame
    sink_frames: int = 0       # the first frames written, attended to for ever
    rope: str = "absolute"     # ROPE_POLICIES: where keys are rotated (see the class docstring)
    # The chunk size this policy was checked for (`check`): a checked policy is trusted, not checked again.
    checked_for: int | None = field(default=None, compare=False, repr=False)

    def check(self, frames_per_block: int = 1) -> CachePolicy:
        """Refuse, in one line, a policy that cannot run with chunks of `frames_per_block`; return it, checked (the
        returned policy says so, and checking it again for the same chunk is free)."""
        k = frames_per_block
        if self.checked_for == k:
            return self
        if self.rope not in ROPE_POLICIES:
            raise CachePolicyError(f"rope = {self.rope!r}; accepted: {', '.join(ROPE_POLICIES)}")
        if not isinstance(self.sink_frames, int) or isinstance(self.sink_frames, bool) or \
                not 0 <= self.sink_frames <= 100_000:
            raise CachePolicyError(f"sink frames = {self.sink_frames!r}; accepted: an integer in 0..100000")
        if self.window is None:
            if self.sink_frames or self.rope != "absolute":
                raise CachePolicyError("sink frames and rope = 'cache' need a window; accepted: a window (--window N) "
                                       "with them, or neither")
            return replace(self, checked_for=k)
        if not isinstance(self.window, int) or isinstance(self.window, bool) or \
                not self.sink_frames + k <= self.window <= 100_000:
            raise CachePolicyError(f"window = {self.window!r}; accepted: an integer in {self.sink_frames + k}..100000 "
                                   f"(the {self.sink_frames} sink frames plus a chunk of {k}, at least)")
        return replace(self, checked_for=k)

    @property
    def rolling(self) -> bool:
        return self.window is not None

    def visible(self, start: int, frames: int) -> list[int]:
        """The finished frames (indices in the video) that a chunk of `frames` frames starting at frame `start`
        attends to, in cache order: the sinks, then the most recent frames that fit the window."""
        if self.window is None:
            return list(range(start))
        sinks = min(self.sink_frames, start)
        recent = max(0, self.window - self.sink_frames - frames)
        return list(range(sinks)) + list(range(max(sinks, start - recent), start))

    def kept(self, written: int) -> list[int]:
        """The frames a cache holds once `written` frames have been written: the sinks and the last ones that fit."""
        if self.window is None:
            return list(range(written))
        sinks = min(self.sink_frames, written)
        return list(range(sinks)) + list(range(max(sinks, written - (self.window - self.sink_frames)), written))

    def describe(self) -> dict:
        """What a manifest records of the policy."""
        return {"window": self.window, "sink_frames": self.sink_frames, "rope": self.rope}


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
            raise LayoutError(f"this model has no {hook!r}; accepted: {', '.join(self.hook_paths)}")
        return f"{self.blocks[layer]}.{inside}".rstrip(".")

    def has_hook(self, hook: str) -> bool:
        """Does every block offer this HookPoint?"""
        return hook in BUILTIN_HOOKS if self.hook_paths is None else hook in self.hook_paths

    def order(self, layer: int, hook: str) -> tuple[int, int]:
        """Sort key giving the order in which a forward pass reaches (layer, hook)."""
        return layer, HOOKS.index(hook)

    def chunk(self, frame: int) -> range:
        """The frames denoised together with `frame` (its chunk; chunks start at frame 0)."""
        first = frame - frame % self.frames_per_block
        return range(first, first + self.frames_per_block)

    def key_frames(self, layer: int, frame: int, keys: int, policy: CachePolicy | None = None) -> torch.Tensor:
        """Frame index of each of the `keys` keys a query of `frame` sees at `layer` (under the sampler's cache
        `policy`: a rolling window shows only some earlier frames); LayoutError if the count does not fit."""
        import torch

        n = self.tokens_per_frame
        if self.role(layer) == "decoder":
            if keys != 2 * n or frame < 1:
                raise LayoutError(f"decoder layer {layer} saw {keys} keys for frame {frame}; expected 2 x {n} "
                                  "(the encoder output of the frame before, then the frame)")
            return torch.tensor([frame - 1, frame]).repeat_interleave(n)
        if self.role(layer) == "frame-local":
            if keys != n:
                raise LayoutError(f"frame-local layer {layer} saw {keys} keys; expected the frame's own {n}")
            return torch.full((n,), frame)
        seen = self.frames_seen(layer, frame, policy)
        if keys != len(seen) * n:
            where = f"the {len(seen)} frames of its window" if policy is not None and policy.rolling else \
                f"frames 0..{seen[-1]}"
            raise LayoutError(f"layer {layer} saw {keys} keys while denoising frame {frame}; expected {where} x {n} "
                              "tokens (a frame-major causal layout)")
        return torch.tensor(seen).repeat_interleave(n)

    def frames_seen(self, layer: int, frame: int, policy: CachePolicy | None = None) -> list[int]:
        """The frames whose keys a query of `frame` sees at `layer` (`frames_seen`, with this layout's role and
        chunk)."""
        return frames_seen(frame, self.role(layer), self.frames_per_block, policy)


def builtin_roles(config: dict) -> tuple[str, ...]:
    """The role of every block of a built-in model (scd.models), in execution order, from its config's fields: the
    baseline's blocks are causal but the last `frame_local_blocks` (frame-local); SCD's `encoder_depth` encoder blocks
    come before its `decoder_depth` decoder blocks. The models' layouts and the command's checks read this one rule."""
    def count(name: str) -> int:
        value = config.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4096:
            raise LayoutError(f"{name} = {value!r}; accepted: an integer in 0..4096")
        return value

    family = config.get("family")
    if family == "scd":
        return ("encoder",) * count("encoder_depth") + ("decoder",) * count("decoder_depth")
    if family == "baseline":
        depth, local = count("depth"), count("frame_local_blocks")
        if local > depth:
            raise LayoutError(f"frame_local_blocks {local} exceeds depth {depth}; accepted: 0..{depth}")
        return ("causal",) * (depth - local) + ("frame-local",) * local
    raise LayoutError(f"family {family!r}; accepted: baseline, scd")


def frames_seen(frame: int, role: str = "causal", frames_per_block: int = 1,
                policy: CachePolicy | None = None) -> list[int]:
    """The frames (video indices, ascending) whose keys the queries of `frame` see at a block of `role`: the one
    definition the sampler's key layout and every attention measure and its uniform level read.

    causal / encoder: the finished frames the cache `policy` keeps for the frame's chunk (every earlier frame
    without a window; with one, the sink frames and the most recent frames that fit), then every frame of its
    chunk (chunks of `frames_per_block` frames see each other); decoder (SCD): the frame before, then the frame;
    frame-local (the frame-diagonal mask): the frame alone. A frame not listed is hidden from the query: neither
    attended nor ignored, it is not there."""
    if role == "frame-local":
        return [frame]
    if role == "decoder":
        return [frame - 1, frame] if frame >= 1 else [frame]
    first = frame - frame % frames_per_block
    finished = (policy or CachePolicy()).visible(first, frames_per_block)
    return finished + list(range(first, first + frames_per_block))


class VideoDiffuser:
    """What every model family implements (a mixin beside `torch.nn.Module`; see the module docstring).

    Families override `layout`, `frame_shape` and `get_config`; the sampling attributes below are class
    defaults that a family (or a loader) sets where it differs.
    """

    frames_per_block: int = 1              # frames denoised together in one chunk (Wan families: their chunk)
    max_frames: int | None = None          # frame positions the model can take (Wan: its RoPE table); None: any
    flow_shift: float = 1.0                # the flow-matching timestep shift `generate` samples with
    scheduler_config: dict | None = None   # a pipeline's scheduler_config.json (Wan); None: flow-matching Euler
    scheduler_info: dict | None = None     # what a run's manifest records of that scheduler; None: the Euler one
    fps: int | None = None                 # the frame rate a model with an fps embedding is told (SkyReels-V2)
    guidance_scale: float = 1.0            # classifier-free guidance scale (1: none)
    guidance_pass: str | None = None       # "cond" or "uncond" while a guided pass runs (a probe records one of them)
    checkpoint: dict | None = None         # name, files and sha256 of the weights it was loaded from
    has_hookpoints: bool = True            # TransformerLens HookPoints (`hook_dict`) on every block's hooks
    encodes_finished_frames: bool = False  # SCD: its encoder runs only in the pass that caches a finished frame
    takes_surgeries: bool = False          # its blocks take the toolkit's surgeries (reuse, knockout, skip, masks)
    generates_from_nothing: bool = False   # makes its first chunk from no context frame (text-to-video: Wan families)

    @property
    def layout(self) -> Layout:
        """Where the blocks are, what each is, and how a frame's tokens are laid out."""
        raise NotImplementedError(f"{type(self).__name__} must give its layout")

    @property
    def depth(self) -> int:
        """Blocks, in execution order (SCD: encoder and decoder together)."""
        return self.layout.depth

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one frame the model takes (pixels, or latents for latent models)."""
        raise NotImplementedError(f"{type(self).__name__} must give its frame shape")

    @property
    def name(self) -> str:
        """The checkpoint's name, else the class's."""
        return (self.checkpoint or {}).get("name", type(self).__name__)

    def get_config(self) -> dict:
        """What a run's manifest records of the model (its size and family)."""
        raise NotImplementedError(f"{type(self).__name__} must give its config")

    def new_cache(self, policy: CachePolicy | None = None):
        """An empty KV cache for streaming generation, keeping the frames `policy` says (default: all), whose
        `nbytes()` counts the bytes it holds; None: the model recomputes the whole sequence each pass (and takes no
        rolling window)."""
        return None

    def decoder_parameters(self) -> list | None:
        """Parameters trained at `decoder_lr_scale` (SCD's decoder); None: one learning rate for all."""
        return None

    def preview(self, video: torch.Tensor) -> tuple[torch.Tensor, str] | None:
        """Frames [T, C, H, W] as images [T', 3, H', W'] and what they are; None: the frames are RGB images already."""
        return None

    def shown_frames(self, latent_frames: int) -> int:
        """How many images `preview` makes of `latent_frames` frames."""
        return latent_frames


def latent_channels(video: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Latent frames [T, C, h, w] shown as images [T, 3, h, w] in [-1, 1]: the first three channels, each scaled by
    its spread over the video; and what they are."""
    rgb = video[:, :3].float()
    return (rgb / (3 * rgb.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))).clamp(-1, 1), "latent channels 0-2"


def is_video_diffuser(model: object) -> bool:
    """Does `model` implement the contract (a built-in model, or `load_model('diffusers:DIR')`)?"""
    return isinstance(model, VideoDiffuser)


ACCEPTED_MODELS = ("the built-in models of scd (scd.load_model) and causal Wan / SkyReels-V2 transformers "
                   "(scd.load_model('diffusers:DIR'))")
