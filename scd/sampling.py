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
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn
from torch.utils.hooks import RemovableHandle

from scd.contract import ACCEPTED_MODELS, CachePolicy, is_video_diffuser, latent_channels  # noqa: F401  (latent_channels: re-exported)
from scd.devices import Placement, placed
from scd.sampling_spec import SAMPLERS, SamplingError, SamplingSpec  # noqa: F401  (SAMPLERS: re-exported)

# callback(frame, step, timestep): called before every forward pass. `frame` is the index in the
# output video of the frame being computed (of a chunk, its last frame); `step` is the denoising step
# (0..steps-1), or None for the pass that writes the finished frame into the KV cache (timestep 0).
StepCallback = Callable[[int, "int | None", float], None]


class SamplingObserver(Protocol):
    """What `observe_sampling` accepts: told of every step and of the finished video."""

    def on_step(self, frame: int, step: int | None, timestep: float) -> None: ...  # as StepCallback
    def on_video(self, video: torch.Tensor) -> None: ...  # what `generate` returns, before it returns it
    # Optional: on_start(context, frames, steps, policy=CachePolicy, sampling=dict), before any work.


_observers: weakref.WeakKeyDictionary[nn.Module, OrderedDict] = weakref.WeakKeyDictionary()


def observe_sampling(model: nn.Module, observer: SamplingObserver) -> RemovableHandle:
    """Have `observer` hear every `generate` call on `model` until `handle.remove()` (as torch's hooks)."""
    observers = _observers.setdefault(model, OrderedDict())
    handle = RemovableHandle(observers)
    observers[handle.id] = observer
    return handle


def check_model(model: nn.Module) -> None:
    """Refuse a model that does not implement the contract (scd.contract.VideoDiffuser)."""
    if not isinstance(model, nn.Module) or not is_video_diffuser(model):
        raise SamplingError(f"cannot sample a {type(model).__name__}; accepted: {ACCEPTED_MODELS}")


def check_context(model: nn.Module, context: torch.Tensor) -> None:
    """Refuse, before anything moves or runs, a context that is not a finite float tensor [T, C, H, W] (or
    [B, T, C, H, W]) of the model's frame shape (its frame counts are checked by SamplingSpec)."""
    if not isinstance(context, torch.Tensor):
        raise SamplingError(f"context is a {type(context).__name__}; accepted: a float tensor [T, C, H, W] or "
                            "[B, T, C, H, W]")
    if context.dim() not in (4, 5) or (context.numel() == 0 and context.shape[-4] != 0):
        raise SamplingError(f"context has shape {list(context.shape)}; accepted: [T, C, H, W] or [B, T, C, H, W] with "
                            "T >= 0 context frames")
    if not context.is_floating_point():
        raise SamplingError(f"context is {context.dtype}; accepted: a floating-point tensor (frames in [-1, 1])")
    if not torch.isfinite(context).all():
        raise SamplingError("context holds NaN or infinite values; accepted: finite frames in [-1, 1]")
    frame = tuple(model.frame_shape)
    if tuple(context.shape[-3:]) != frame:
        raise SamplingError(f"context frames are {list(context.shape[-3:])}; this model takes {list(frame)} (C, H, W)")


def make_scheduler(shift: float = 1.0, config: dict | None = None):
    """The flow-matching Euler scheduler the built-in models sample with (sigma = timestep / 1000), or, from a
    pipeline's `scheduler_config.json` (e.g. Wan's `UniPCMultistepScheduler` with its flow shift), that one."""
    if config is None:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    import diffusers

    return getattr(diffusers, config["_class_name"]).from_config(config)


def warp_timesteps(timesteps: Sequence[float], shift: float) -> list[float]:
    """The shift warp of a few-step list, as Self-Forcing's `warp_denoising_step`: timestep t is replaced by the
    timestep of its place on a 1000-step flow-matching schedule shifted by `shift`, 1000 s' with
    s' = shift s / (1 + (shift - 1) s), s = t / 1000 (so 1000 stays 1000 and 0 stays 0)."""
    return [1000.0 * shift * (t / 1000) / (1 + (shift - 1) * (t / 1000)) for t in timesteps]


def noise_generator(seed: int) -> torch.Generator:
    """The CPU generator of a run's noise. torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so
    seed s and s + 2^32 would draw the same noise (a sweep's draw 2, seed + c + 2 x 2^31, would repeat draw 0). A seed
    below 2^32 is used as it is (every run made before stays the same); a larger one is mixed into 32 bits first
    (splitmix64's finaliser), so that seeds that differ only above bit 31 draw different noise (two given seeds still
    meet with probability 2^-32)."""
    if seed >= 2**32:
        z = (seed + 0x9E3779B97F4A7C15) % 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        seed = (z ^ (z >> 31)) % 2**32
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def generate(
    model: nn.Module,
    context: torch.Tensor,
    frames: int,
    *,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device | Placement = "cpu",
    dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
    use_cache: bool | None = None,
    shift: float | None = None,
    timesteps: Sequence[float] | None = None,
    warp: bool = False,
    sampler: str = "ode",
    cache_policy: CachePolicy | None = None,
    cache=None,
    sampling: SamplingSpec | None = None,
) -> torch.Tensor:
    """Generate `frames` new frames after `context` [T, C, H, W] (or batched [B, T, C, H, W]).

    Returns the context followed by the generated frames, on the CPU in float32, with the same
    rank as `context`. The same `seed` gives the same video. The model is moved to `device` and
    `dtype` (None: float32; or one checked `scd.devices.Placement` as `device`, trusted) in place (as a
    diffusers pipeline's `.to()` would be) and put in eval mode. `use_cache`
    defaults to whether the model has a KV cache (`new_cache`), `shift` (the scheduler's timestep
    shift) to the model's `flow_shift`, or 1.

    Timesteps: `steps` (default 50) of the model's ODE scheduler, or an explicit list `timesteps` (e.g.
    Self-Forcing's 1000, 750, 500, 250; `warp=True` maps it through the shift warp as Self-Forcing's
    `warp_denoising_step` does). `sampler`: `ode` steps the scheduler (an explicit list: Euler steps from
    each timestep to the next, then to 0); `renoise` is the few-step sampler of Self-Forcing and CausVid: at
    each timestep t the model's velocity gives a clean estimate x0 = x - (t / 1000) v, which is noised afresh
    to the next timestep t' as (1 - t'/1000) x0 + (t'/1000) noise (the noise drawn from the seeded generator),
    and the last estimate is the frame. `cache_policy`: which finished frames a chunk attends to (a rolling
    window with sink frames, `scd.contract.CachePolicy`); under a window the context is written into the cache
    one chunk at a time, as the upstream pipelines do. `cache`: an empty cache to fill (`model.new_cache(policy)`),
    to read afterwards (e.g. its `nbytes()`); its policy is the one sampled with. `sampling`: all of the above
    (steps, timesteps, warp, shift, sampler, cache_policy, seed) checked once already (`SamplingSpec.check`, as
    `probes.record` and `probe run` do): trusted, in place of those arguments.
    """
    given = (steps, timesteps, warp, shift, sampler, cache_policy, seed) != (None, None, False, None, "ode", None, 0)
    if cache is not None:
        if use_cache is False or cache_policy is not None:
            raise SamplingError("a cache is given: its policy is the one sampled with; accepted: cache alone, or "
                                "cache_policy (and use_cache) without it")
        if cache.frames != 0:
            raise SamplingError("the cache given is not empty; accepted: a new one, model.new_cache(policy)")
        cache_policy = cache.policy
    check_model(model)
    check_context(model, context)
    k, T = model.frames_per_block, context.shape[-4]
    if sampling is None:
        sampling = SamplingSpec.check(steps=steps, timesteps=timesteps, warp=warp, shift=shift, sampler=sampler,
                                      cache_policy=cache_policy, seed=seed, context_frames=T, frames=frames,
                                      frames_per_block=k, max_frames=model.max_frames,
                                      from_nothing=model.generates_from_nothing)
    else:
        if given:
            raise SamplingError("sampling is given: it holds the steps, timesteps, warp, shift, sampler, cache policy "
                                "and seed; accepted: sampling alone, or those arguments without it")
        if sampling.frames_per_block != k:
            raise SamplingError(f"sampling was checked for chunks of {sampling.frames_per_block} frames; this model "
                                f"denoises {k} together; accepted: SamplingSpec.check(..., frames_per_block={k})")
        if (sampling.context_frames, sampling.frames) != (T, frames):
            raise SamplingError(f"sampling was checked for {sampling.context_frames} context + {sampling.frames} frames; "
                                f"this call gives {T} + {frames}; accepted: the counts it was checked for")
        if cache is not None and cache.policy != sampling.cache_policy:
            raise SamplingError("the cache given keeps another policy than sampling's; accepted: "
                                "model.new_cache(sampling.cache_policy)")
    policy, seed, shift, sampler = sampling.cache_policy, sampling.seed, sampling.shift, sampling.sampler
    where = placed(device, dtype)  # a checked Placement (probe run's, record's) is trusted
    device, dtype = where.device, where.dtype
    batched = context.dim() == 5
    video = (context if batched else context[None]).to(device=device, dtype=dtype)
    first = next(model.parameters(), None)
    where = (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)
    try:
        model = model.to(device=device, dtype=dtype).eval()
    except RuntimeError:  # out of memory half way: a failed move leaves the model where it was
        model.to(device=where[0], dtype=where[1])
        raise
    if cache is None:
        cache = model.new_cache(policy) if use_cache is not False else None
    if use_cache and cache is None:
        raise SamplingError(f"{type(model).__name__} has no KV cache; call generate with use_cache=False")
    if cache is None and policy.rolling:
        raise SamplingError("a rolling window needs the KV cache; accepted: use_cache=True (or None) with a window")
    use_cache = cache is not None
    B = video.shape[0]
    frame_shape = video.shape[2:]
    generator = noise_generator(seed)  # noise drawn on the CPU: the same on every device
    shift = model.flow_shift if shift is None else shift
    schedule = model.scheduler_config
    clean = torch.zeros(B, 1, device=device, dtype=dtype)
    explicit = None
    if sampling.timesteps is not None:
        explicit = warp_timesteps(sampling.timesteps, shift) if sampling.warp else list(sampling.timesteps)
    count = sampling.steps

    observers = list(_observers.get(model, {}).values())
    described = {"sampler": sampler, "timesteps": explicit, "warp": sampling.warp, "shift": float(shift),
                 **policy.describe()}
    for o in observers:  # before any work: an observer may refuse this call (a Probe asked for frames it will not make)
        if hasattr(o, "on_start"):
            o.on_start(T, frames, count, policy=policy, sampling=described)
    callbacks = [o.on_step for o in observers] + ([callback] if callback is not None else [])

    def announce(frame: int, step: int | None, timestep: float) -> None:
        for fn in callbacks:
            fn(frame, step, timestep)

    if use_cache and T:  # the context, written at the clean timestep: at once, or a chunk at a time under a window
        size = k if policy.rolling else T
        for first in range(0, T, size):
            for f in range(first, first + size):
                announce(f, None, 0.0)
            model(video[:, first:first + size], clean.expand(B, size), cache=cache, update_cache=True)

    for first in range(T, T + frames, k):  # one chunk of k frames (k = 1: one frame) at a time
        last = first + k - 1
        x = torch.randn((B, k, *frame_shape), generator=generator).to(device=device, dtype=dtype)
        if explicit is None:
            scheduler = make_scheduler(shift, schedule)  # a fresh one per chunk: multistep schedulers keep a history
            scheduler.set_timesteps(count, device=device)
            chunk_timesteps = list(scheduler.timesteps)
        else:
            scheduler, chunk_timesteps = None, [torch.tensor(t) for t in explicit]
        for step, t in enumerate(chunk_timesteps):
            announce(last, step, float(t))
            t_frame = t.to(device=device, dtype=dtype).expand(B, k)
            if use_cache:
                velocity = model(x, t_frame, cache=cache)
            else:  # the full causal sequence: clean past frames, then the noisy current chunk
                velocity = model(torch.cat([video, x], dim=1), torch.cat([clean.expand(B, first), t_frame], dim=1))[:, -k:]
            if sampler == "renoise":
                estimate = x - (float(t) / 1000) * velocity  # the clean frame this step predicts
                if step + 1 < len(chunk_timesteps):
                    sigma = float(chunk_timesteps[step + 1]) / 1000
                    noise = torch.randn(x.shape, generator=generator).to(device=device, dtype=dtype)
                    x = ((1 - sigma) * estimate + sigma * noise).to(dtype)
                else:
                    x = estimate.to(dtype)
            elif scheduler is not None:
                x = scheduler.step(velocity, t, x).prev_sample.to(dtype)
            else:  # Euler from this timestep to the next (to 0 after the last)
                after = float(chunk_timesteps[step + 1]) if step + 1 < len(chunk_timesteps) else 0.0
                x = (x + (after - float(t)) / 1000 * velocity).to(dtype)
        video = torch.cat([video, x], dim=1)
        if use_cache:
            announce(last, None, 0.0)
            model(x, clean.expand(B, k), cache=cache, update_cache=True)
    video = video.float().cpu()
    video = video if batched else video[0]
    for o in observers:
        o.on_video(video)
    return video
