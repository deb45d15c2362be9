"""The streaming autoregressive sampler: frame after frame, an unrolled flow-matching loop per frame.

Context frames are encoded once into a KV cache (timestep 0). Each new frame starts from seeded
noise and is denoised by an explicit loop over a diffusers `FlowMatchEulerDiscreteScheduler` (or the
model's own pipeline scheduler, `model.scheduler_config`), reading the cache; the finished frame is
then passed once more at timestep 0 to write its clean keys and values into the cache, as
Self-Forcing does. `use_cache=False` instead recomputes the whole causal sequence at every step:
slower, the same numbers, kept as the reference. Models with `frames_per_block` k > 1 (CausVid's and
SkyReels-V2's chunks) denoise k frames together, as one chunk, and cache them together.

Besides the `callback` argument, observers registered on a model with `observe_sampling` hear every
step and the finished video of any `generate` call on it: that is how a `Probe` knows which frame
and denoising step each forward pass belongs to without the caller wiring a callback.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn
from torch.utils.hooks import RemovableHandle

from scd.contract import ACCEPTED_MODELS, is_video_diffuser, latent_channels  # noqa: F401  (latent_channels: re-exported)
from scd.devices import float_dtype, usable_device

# callback(frame, step, timestep): called before every forward pass. `frame` is the index in the
# output video of the frame being computed (of a chunk, its last frame); `step` is the denoising step
# (0..steps-1), or None for the pass that writes the finished frame into the KV cache (timestep 0).
StepCallback = Callable[[int, "int | None", float], None]


class SamplingObserver(Protocol):
    """What `observe_sampling` accepts: told of every step and of the finished video."""

    def on_step(self, frame: int, step: int | None, timestep: float) -> None: ...  # as StepCallback
    def on_video(self, video: torch.Tensor) -> None: ...  # what `generate` returns, before it returns it


_observers: weakref.WeakKeyDictionary[nn.Module, OrderedDict] = weakref.WeakKeyDictionary()


def observe_sampling(model: nn.Module, observer: SamplingObserver) -> RemovableHandle:
    """Have `observer` hear every `generate` call on `model` until `handle.remove()` (as torch's hooks)."""
    observers = _observers.setdefault(model, OrderedDict())
    handle = RemovableHandle(observers)
    observers[handle.id] = observer
    return handle


class SamplingError(ValueError):
    """A `generate` call that cannot run as asked; the message names the accepted values."""


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_generate_args(model: nn.Module, context: torch.Tensor, frames: int, steps: int, seed: int) -> None:
    """Refuse, before anything moves or runs, what `generate` cannot do: a context that is not a finite float
    tensor [T, C, H, W] (or [B, T, C, H, W]) of the model's frame shape, counts out of range, a seed beyond 64 bits."""
    if not isinstance(model, nn.Module) or not is_video_diffuser(model):
        raise SamplingError(f"cannot sample a {type(model).__name__}; accepted: {ACCEPTED_MODELS}")
    if not isinstance(context, torch.Tensor):
        raise SamplingError(f"context is a {type(context).__name__}; accepted: a float tensor [T, C, H, W] or "
                            "[B, T, C, H, W]")
    if context.dim() not in (4, 5) or context.shape[-4] < 1 or context.numel() == 0:
        raise SamplingError(f"context has shape {list(context.shape)}; accepted: [T, C, H, W] or [B, T, C, H, W] with "
                            "T >= 1 context frames")
    if not context.is_floating_point():
        raise SamplingError(f"context is {context.dtype}; accepted: a floating-point tensor (frames in [-1, 1])")
    if not torch.isfinite(context).all():
        raise SamplingError("context holds NaN or infinite values; accepted: finite frames in [-1, 1]")
    frame = tuple(model.frame_shape)
    if tuple(context.shape[-3:]) != frame:
        raise SamplingError(f"context frames are {list(context.shape[-3:])}; this model takes {list(frame)} (C, H, W)")
    if not _int(frames) or not 0 <= frames <= 100_000:
        raise SamplingError(f"frames = {frames!r}; accepted: an integer in 0..100000")
    if not _int(steps) or not 1 <= steps <= 10_000:
        raise SamplingError(f"steps = {steps!r}; accepted: an integer in 1..10000")
    if not _int(seed) or not 0 <= seed < 2**63:
        raise SamplingError(f"seed = {seed!r}; accepted: an integer in 0..2**63-1")
    k, T = model.frames_per_block, context.shape[-4]
    for what, count in (("context frames", T), ("frames", frames)):
        if count % k:
            raise SamplingError(f"{what} = {count} is not a multiple of the model's chunk size {k} (frames_per_block); "
                                f"accepted: multiples of {k}")
    limit = model.max_frames
    if limit is not None and T + frames > limit:
        raise SamplingError(f"{T} context + {frames} frames exceed the model's {limit} frame positions (its RoPE "
                            f"table, rope_max_seq_len); accepted: at most {limit} frames in all")


def make_scheduler(shift: float = 1.0, config: dict | None = None):
    """The flow-matching Euler scheduler the built-in models sample with (sigma = timestep / 1000), or, from a
    pipeline's `scheduler_config.json` (e.g. Wan's `UniPCMultistepScheduler` with its flow shift), that one."""
    if config is None:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    import diffusers

    return getattr(diffusers, config["_class_name"]).from_config(config)


@torch.no_grad()
def generate(
    model: nn.Module,
    context: torch.Tensor,
    frames: int,
    *,
    steps: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: StepCallback | None = None,
    use_cache: bool | None = None,
    shift: float | None = None,
) -> torch.Tensor:
    """Generate `frames` new frames after `context` [T, C, H, W] (or batched [B, T, C, H, W]).

    Returns the context followed by the generated frames, on the CPU in float32, with the same
    rank as `context`. The same `seed` gives the same video. The model is moved to `device` and
    `dtype` in place (as a diffusers pipeline's `.to()` would be) and put in eval mode. `use_cache`
    defaults to whether the model has a KV cache (`new_cache`), `shift` (the scheduler's timestep
    shift) to the model's `flow_shift`, or 1.
    """
    check_generate_args(model, context, frames, steps, seed)
    device, dtype = usable_device(device), float_dtype(dtype)
    batched = context.dim() == 5
    video = (context if batched else context[None]).to(device=device, dtype=dtype)
    first = next(model.parameters(), None)
    where = (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)
    try:
        model = model.to(device=device, dtype=dtype).eval()
    except RuntimeError:  # out of memory half way: a failed move leaves the model where it was
        model.to(device=where[0], dtype=where[1])
        raise
    cache = model.new_cache() if use_cache is not False else None
    if use_cache and cache is None:
        raise SamplingError(f"{type(model).__name__} has no KV cache; call generate with use_cache=False")
    use_cache = cache is not None
    B, T = video.shape[:2]
    frame_shape = video.shape[2:]
    generator = torch.Generator().manual_seed(seed)  # noise drawn on the CPU: the same on every device
    shift = model.flow_shift if shift is None else shift
    schedule = model.scheduler_config
    k = model.frames_per_block
    clean = torch.zeros(B, 1, device=device, dtype=dtype)

    observers = list(_observers.get(model, {}).values())
    for o in observers:  # before any work: an observer may refuse this call (a Probe asked for frames it will not make)
        if hasattr(o, "on_start"):
            o.on_start(T, frames, steps)
    callbacks = [o.on_step for o in observers] + ([callback] if callback is not None else [])

    def announce(frame: int, step: int | None, timestep: float) -> None:
        for fn in callbacks:
            fn(frame, step, timestep)

    if use_cache:
        for f in range(T):
            announce(f, None, 0.0)
        model(video, clean.expand(B, T), cache=cache, update_cache=True)

    for first in range(T, T + frames, k):  # one chunk of k frames (k = 1: one frame) at a time
        last = first + k - 1
        x = torch.randn((B, k, *frame_shape), generator=generator).to(device=device, dtype=dtype)
        scheduler = make_scheduler(shift, schedule)  # a fresh one per chunk: multistep schedulers keep a history
        scheduler.set_timesteps(steps, device=device)
        for step, t in enumerate(scheduler.timesteps):
            announce(last, step, float(t))
            t_frame = t.to(dtype).expand(B, k)
            if use_cache:
                velocity = model(x, t_frame, cache=cache)
            else:  # the full causal sequence: clean past frames, then the noisy current chunk
                velocity = model(torch.cat([video, x], dim=1), torch.cat([clean.expand(B, first), t_frame], dim=1))[:, -k:]
            x = scheduler.step(velocity, t, x).prev_sample.to(dtype)
        video = torch.cat([video, x], dim=1)
        if use_cache:
            announce(last, None, 0.0)
            model(x, clean.expand(B, k), cache=cache, update_cache=True)
    video = video.float().cpu()
    video = video if batched else video[0]
    for o in observers:
        o.on_video(video)
    return video
