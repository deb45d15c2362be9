"""How `generate` samples, checked once: `SamplingSpec.check` is the one place where the sampler, the timesteps, the
flow shift, the noise seed, the KV cache policy and the frame counts (context and generated, against the model's
chunks and frame positions) are validated, for `generate`, `probes.record` and `probe run` alike; `generate` trusts
a spec it is given. No torch: `probe run` checks its sampling flags before importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scd.contract import CachePolicy, CachePolicyError

SAMPLERS = ("ode", "renoise")  # the scheduler's ODE steps; the few-step re-noising sampler (Self-Forcing, CausVid)
PYTHON_NAMES = {name: name for name in ("steps", "timesteps", "warp", "shift", "sampler", "cache_policy", "seed",
                                        "frames", "context_frames")}
MAX_FRAMES = 100_000  # frames of context, and generated, that one generation takes (a bound, not a model's limit)


class SamplingError(ValueError):
    """A `generate` call that cannot run as asked; the message names the accepted values."""


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingSpec:
    """The sampling of a `generate` call, checked (SamplingSpec.check) for chunks of `frames_per_block` frames."""
    steps: int                              # denoising steps per chunk (the length of `timesteps` when given)
    timesteps: tuple[float, ...] | None     # an explicit timestep list (None: the scheduler's `steps` steps)
    warp: bool                              # map `timesteps` through the shift warp (Self-Forcing)
    shift: float | None                     # the flow shift (None: the model's)
    sampler: str                            # SAMPLERS
    cache_policy: CachePolicy               # which finished frames a chunk attends to, checked for the chunk size
    seed: int                               # the noise seed
    frames_per_block: int                   # the chunk size the policy and the frame counts were checked for
    context_frames: int                     # frames of context given (0: from nothing, text-to-video)
    frames: int                             # frames generated

    @classmethod
    def check(cls, *, steps: object = None, timesteps: object = None, warp: object = False, shift: object = None,
              sampler: object = "ode", cache_policy: object = None, seed: object = 0, context_frames: object,
              frames: object, frames_per_block: int = 1, max_frames: int | None = None, from_nothing: bool = False,
              names: dict[str, str] = PYTHON_NAMES) -> SamplingSpec:
        """Every sampling value validated, once (SamplingError naming the value as `names` calls it, and the accepted
        values). `steps` defaults to 50, or to the length of `timesteps`. The model's facts: `frames_per_block` (its
        chunk), `max_frames` (its frame positions, e.g. Wan's RoPE table; None: any), `from_nothing` (whether it makes
        its first chunk from no context frame, `scd.contract.VideoDiffuser.generates_from_nothing`)."""
        def refuse(name: str, text: str) -> SamplingError:
            return SamplingError(f"{names[name]}: {text}")

        if sampler not in SAMPLERS:
            raise refuse("sampler", f"unknown sampler {sampler!r}; accepted: {', '.join(SAMPLERS)}")
        if shift is not None and (not isinstance(shift, int | float) or isinstance(shift, bool) or
                                  not 0.001 <= shift <= 1000):  # NaN fails this too
            raise refuse("shift", f"{shift!r} is not accepted; accepted: a number in [0.001, 1000] (the flow shift; "
                                  "None: the model's)")
        if not isinstance(warp, bool):
            raise refuse("warp", f"{warp!r} is not accepted; accepted: True or False")
        if not _int(seed) or not 0 <= seed < 2**63:
            raise refuse("seed", f"{seed!r} is not accepted; accepted: an integer in 0..2**63-1")
        listed = None
        if timesteps is None:
            if warp:
                raise refuse("warp", f"maps an explicit timestep list; accepted: with {names['timesteps']}, or neither")
        else:
            values = list(timesteps) if isinstance(timesteps, Sequence) and not isinstance(timesteps, str) else None
            if not values or len(values) > 1000 or not all(isinstance(t, int | float) and not isinstance(t, bool) and
                                                           0 <= t <= 1000 for t in values):
                raise refuse("timesteps", f"{timesteps!r} is not accepted; accepted: a list of 1..1000 numbers in "
                                          "0..1000")
            if any(b >= a for a, b in zip(values, values[1:], strict=False)):
                raise refuse("timesteps", f"{values} is not strictly decreasing; accepted: strictly decreasing (e.g. "
                                          "1000,750,500,250)")
            if values[-1] <= 0:  # the model would be told its frame is clean: upstream lists end in 0 and drop it
                raise refuse("timesteps", f"{values} ends at 0, which is no denoising step (CausVid's list "
                                          "1000,757,522,0 drops its 0 at inference); accepted: every timestep above "
                                          "0, e.g. 1000,757,522")
            if steps is not None and steps != len(values):
                raise refuse("steps", f"{steps!r} but {names['timesteps']} lists {len(values)}; accepted: one of "
                                      "them, or equal counts")
            listed = tuple(float(t) for t in values)
        count = len(listed) if listed is not None else 50 if steps is None else steps
        if not _int(count) or not 1 <= count <= 10_000:
            raise refuse("steps", f"{count!r} is not accepted; accepted: an integer in 1..10000")
        policy = CachePolicy() if cache_policy is None else cache_policy
        if not isinstance(policy, CachePolicy):
            raise refuse("cache_policy", f"a {type(policy).__name__} is not accepted; accepted: a "
                                         "scd.contract.CachePolicy")
        try:
            policy = policy.check(frames_per_block)
        except CachePolicyError as e:
            raise refuse("cache_policy", str(e)) from None
        if max_frames is not None and policy.window is not None and policy.window > max_frames:
            raise refuse("cache_policy", f"a window of {policy.window} frames is beyond the model's {max_frames} frame "
                                         f"positions (its RoPE table); accepted: at most {max_frames}")
        lowest = 0 if from_nothing else 1
        for name, value, low in (("context_frames", context_frames, lowest), ("frames", frames, 1)):
            if value == 0 and name == "context_frames" and not from_nothing:
                raise refuse(name, f"0: this model does not generate from nothing (no context frame); accepted: 1.."
                                   f"{MAX_FRAMES} (0, text-to-video from the prompt alone: the Wan families)")
            if not _int(value) or not low <= value <= MAX_FRAMES:
                raise refuse(name, f"{value!r} is not accepted; accepted: an integer in {low}..{MAX_FRAMES}")
            if value % frames_per_block:
                raise refuse(name, f"{value} is not a multiple of the model's chunk of {frames_per_block} frames "
                                   f"(frames_per_block); accepted: multiples of {frames_per_block}")
        limit = None if policy.rope == "cache" else max_frames  # under `cache`, positions stay below the window
        if limit is not None and context_frames + frames > limit:
            raise refuse("frames", f"{context_frames} context + {frames} frames exceed the model's {limit} frame "
                                   f"positions (its RoPE table, rope_max_seq_len); accepted: at most {limit} frames in "
                                   "all, or a window with the cache RoPE policy")
        return cls(count, listed, warp, None if shift is None else float(shift), sampler, policy, seed,
                   frames_per_block, context_frames, frames)
