"""Few-step samplers and rolling KV caches, each against an independent re-implementation of the upstream loop.

The re-implementations below are written from the published semantics of Self-Forcing's
`pipeline/causal_inference.py` and `wan/modules/causal_model.py` (and CausVid's), in plain code, sharing
nothing with `scd.sampling` or `scd.models.blocks.KVCache`:

- the rolling window with absolute RoPE, as a *full-sequence recompute* with an explicit frame mask (each
  chunk sees its sinks, the most recent frames of its window and itself; the clean past frames at timestep 0),
  no KV cache at all;
- the rolling window under either RoPE policy, as Self-Forcing's fixed-size buffer: `local_end_index`,
  roll-left eviction that keeps the sink tokens, writes of the chunk at every pass;
- the re-noising few-step sampler: x0 = x - sigma v, then (1 - sigma') x0 + sigma' noise.
"""

from __future__ import annotations

import pytest
import torch

from scd.contract import CachePolicy
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.sampling import SamplingError, generate, warp_timesteps
from scd.wan.causal_wan import CausalWan
from tests.conftest import randomize
from tests.wan_tiny import LATENT, tiny


def window_frame_mask(frames: int, k: int, window: int | None, sinks: int) -> torch.Tensor:
    """bool [frames, frames]: may a query of frame q attend to a key of frame j? Its own chunk, and of the earlier
    frames the first `sinks` and the latest that fit in `window` beside the sinks and its chunk."""
    allowed = torch.zeros(frames, frames, dtype=torch.bool)
    for q in range(frames):
        first = q - q % k
        for j in range(frames):
            if first <= j < first + k:
                allowed[q, j] = True
            elif j < first:
                if window is None or j < sinks:
                    allowed[q, j] = True
                else:
                    allowed[q, j] = j >= first - (window - sinks - k)
    return allowed


def upstream_loop(velocity_of, context: torch.Tensor, frames: int, k: int, timesteps: list[float], seed: int,
                  sampler: str = "renoise", finished=lambda chunk: None):
    """Self-Forcing's inference loop over chunks, in plain code: `velocity_of(past, x, t)` is the model; `renoise`
    predicts the clean chunk and noises it afresh to the next timestep, `ode` takes Euler steps to the next (then to
    0); `finished(chunk)` hears each finished chunk (a cached loop writes it back)."""
    generator = torch.Generator().manual_seed(seed)
    video = context[None]
    for _ in range(0, frames, k):
        x = torch.randn((1, k, *context.shape[1:]), generator=generator)
        for i, t in enumerate(timesteps):
            v = velocity_of(video, x, t)
            if sampler == "renoise":
                x0 = x - t / 1000 * v
                if i + 1 < len(timesteps):
                    s = timesteps[i + 1] / 1000
                    x = (1 - s) * x0 + s * torch.randn(x.shape, generator=generator)
                else:
                    x = x0
            else:
                after = timesteps[i + 1] if i + 1 < len(timesteps) else 0.0
                x = x + (after - t) / 1000 * v
        finished(x)
        video = torch.cat([video, x], dim=1)
    return video[0]


def full_sequence(model, window: int | None, sinks: int, k: int, monkeypatch, module: str, mask_name: str):
    """velocity_of for a no-cache recompute: the clean past at timestep 0 and the noisy chunk, under the window's
    frame mask (patched over the model's own chunk-causal mask)."""
    import importlib

    target = importlib.import_module(module)

    def velocity_of(past: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
        seq = torch.cat([past, x], dim=1)
        F = seq.shape[1]
        n = model.layout.tokens_per_frame
        allowed = window_frame_mask(F, k, window, sinks).repeat_interleave(n, 0).repeat_interleave(n, 1)
        shape = allowed if module.endswith("baseline") else allowed[None, None]
        times = torch.cat([torch.zeros(1, past.shape[1]), torch.full((1, k), float(t))], dim=1)
        with monkeypatch.context() as patched:
            patched.setattr(target, mask_name, lambda *args, **kwargs: shape)
            return model(seq, times)[:, -k:]
    return velocity_of


class UpstreamBuffer:
    """Self-Forcing's KV buffer, per block: `window` frames of tokens, sinks at the front, roll-left eviction, the
    chunk written at every pass (overwritten in place while it is denoised). Under `rope='cache'` it keeps keys
    unrotated and gives the positions of their place in the buffer. Speaks the KVCache interface the models call."""

    def __init__(self, window: int, sinks: int, rope: str, n: int) -> None:
        self.window, self.sinks, self.n = window, sinks, n
        self.policy = CachePolicy(window, sinks, rope)
        self.frames = 0            # global end, in frames
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.order: list[int] = []  # frame index of each buffered frame

    def _buffer_after(self, frames: int) -> list[int]:
        order = list(self.order)
        while len(order) + frames > self.window:  # evict the oldest frame after the sinks
            order.pop(self.sinks if len(order) > self.sinks else 0)
        return order

    def positions(self, frames: int):
        seen = self._buffer_after(frames)
        if self.policy.rope == "absolute":
            return seen, list(range(self.frames, self.frames + frames))
        return list(range(len(seen))), list(range(len(seen), len(seen) + frames))

    def layer(self, i: int, frames: int | None = None):
        if i not in self.k or not self.order:
            return None
        seen = self._buffer_after(frames or 0)
        rows = [self.order.index(f) for f in seen]
        if not rows:
            return None
        take = torch.cat([torch.arange(r * self.n, (r + 1) * self.n) for r in rows])
        return self.k[i][:, take], self.v[i][:, take]

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        frames = k.shape[1] // self.n
        seen = self._buffer_after(frames)
        rows = [self.order.index(f) for f in seen]
        take = torch.cat([torch.arange(r * self.n, (r + 1) * self.n) for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
        old_k = self.k.get(i, k[:, :0])[:, take] if i in self.k else k[:, :0]
        old_v = self.v.get(i, v[:, :0])[:, take] if i in self.v else v[:, :0]
        self.k[i], self.v[i] = torch.cat([old_k, k], 1), torch.cat([old_v, v], 1)

    def advance(self, frames: int) -> None:
        self.order = self._buffer_after(frames) + list(range(self.frames, self.frames + frames))
        self.frames += frames

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k.values(), *self.v.values()))


def cached_loop(model, context, frames, k, timesteps, seed, buffer, sampler="renoise"):
    """The upstream loop with the upstream buffer: the context a chunk at a time at timestep 0, each chunk denoised
    reading the buffer, then written back clean."""
    for first in range(0, context.shape[0], k):
        model(context[None, first:first + k], torch.zeros(1, k), cache=buffer, update_cache=True)
    return upstream_loop(lambda past, x, t: model(x, torch.full((1, k), float(t)), cache=buffer), context, frames, k,
                         timesteps, seed, sampler,
                         finished=lambda chunk: model(chunk, torch.zeros(1, k), cache=buffer, update_cache=True))


SELF_FORCING = [1000.0, 750.0, 500.0, 250.0]


def test_the_shift_warp_is_self_forcings_table_lookup():
    """Self-Forcing: timesteps = 1000 * shifted linspace(1, 0, 1001)[:-1] (plus a 0), indexed at 1000 - t."""
    shift = 5.0
    sigmas = torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1]
    table = torch.cat([1000 * shift * sigmas / (1 + (shift - 1) * sigmas), torch.zeros(1, dtype=torch.float64)])
    listed = [1000, 750, 500, 250, 0]
    assert warp_timesteps(listed, shift) == pytest.approx([float(table[1000 - t]) for t in listed], abs=1e-9)
    assert warp_timesteps(SELF_FORCING, 5.0)[1] == pytest.approx(937.5)


def tiny_baseline() -> CausalVideoDiffuser:
    return randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"]), std=0.1)


@pytest.mark.parametrize("sampler", ["renoise", "ode"])
@pytest.mark.parametrize("window,sinks", [(None, 0), (4, 1), (3, 0), (5, 2)])
def test_builtin_samplers_and_windows_equal_a_full_sequence_recompute_under_the_window_mask(sampler, window, sinks,
                                                                                             monkeypatch):
    model = tiny_baseline()
    context = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    policy = CachePolicy(window, sinks) if window else None
    ours = generate(model, context, 5, timesteps=SELF_FORCING, warp=True, shift=5.0, sampler=sampler, seed=3,
                    cache_policy=policy)
    steps = warp_timesteps(SELF_FORCING, 5.0)
    velocity = full_sequence(model, window, sinks, 1, monkeypatch, "scd.models.baseline", "frames_mask")
    theirs = upstream_loop(velocity, context, 5, 1, steps, 3, sampler)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    if window is not None:  # the window changes the video: the test would notice a cache that ignored it
        assert not torch.allclose(ours, generate(model, context, 5, timesteps=SELF_FORCING, warp=True, shift=5.0,
                                                 sampler=sampler, seed=3), atol=1e-4)


@pytest.mark.parametrize("rope", ["absolute", "cache"])
def test_builtin_rolling_cache_equals_the_upstream_buffer(rope):
    model = tiny_baseline()
    context = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    ours = generate(model, context, 6, timesteps=SELF_FORCING, sampler="renoise", seed=5,
                    cache_policy=CachePolicy(4, 1, rope))
    buffer = UpstreamBuffer(4, 1, rope, model.layout.tokens_per_frame)
    with torch.no_grad():
        theirs = cached_loop(model.eval(), context, 6, 1, SELF_FORCING, 5, buffer)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


CAUSVID = [1000, 757, 522]  # configs/wan_causal_dmd.yaml's 1000, 757, 522, 0 as causal_inference.py applies it: 0 dropped


def tiny_wan(family: str, k: int) -> CausalWan:
    stock = tiny(family, num_frame_per_block=k) if family == "skyreels" else tiny(family)
    return CausalWan(stock, LATENT, frames_per_block=k)


@pytest.mark.parametrize("family", ["wan", "skyreels"])
@pytest.mark.parametrize("window,sinks", [(None, 0), (6, 2), (4, 0)])
def test_wan_families_renoise_with_a_window_equal_a_full_sequence_recompute(family, window, sinks, monkeypatch):
    k = 2
    model = tiny_wan(family, k)
    context = torch.randn(4, 4, *LATENT, generator=torch.Generator().manual_seed(3))
    policy = CachePolicy(window, sinks) if window else None
    ours = generate(model, context, 6, timesteps=CAUSVID, sampler="renoise", seed=7, cache_policy=policy)
    velocity = full_sequence(model, window, sinks, k, monkeypatch, "scd.wan.causal_wan", "chunk_causal_mask")
    with torch.no_grad():
        theirs = upstream_loop(velocity, context, 6, k, [1000.0, 757.0, 522.0], 7)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["wan", "skyreels"])
@pytest.mark.parametrize("rope", ["absolute", "cache"])
def test_wan_families_rolling_cache_equals_the_upstream_buffer(family, rope):
    k = 2
    model = tiny_wan(family, k)
    context = torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(4))
    ours = generate(model, context, 8, timesteps=SELF_FORCING, warp=True, shift=5.0, sampler="renoise", seed=9,
                    cache_policy=CachePolicy(6, 2, rope))
    buffer = UpstreamBuffer(6, 2, rope, model.tokens_per_frame)
    with torch.no_grad():
        theirs = cached_loop(model, context, 8, k, warp_timesteps(SELF_FORCING, 5.0), 9, buffer)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def _cache_sizes(model, context, frames, policy, **options) -> list[int]:
    """Bytes of the KV cache at every denoising step of a rollout."""
    cache, sizes = model.new_cache(policy), []
    generate(model, context, frames, cache=cache, callback=lambda f, s, t: sizes.append(cache.nbytes()) if s == 0 else None,
             **options)
    return sizes


def test_memory_stays_flat_as_the_rollout_grows_and_grows_without_a_window():
    model = tiny_baseline()
    context = torch.zeros(2, 3, 16, 16)
    rolling = _cache_sizes(model, context, 16, CachePolicy(5, 1), steps=1)
    assert len(set(rolling[4:])) == 1 and max(rolling) == rolling[-1]  # full after the window, flat from then on
    growing = _cache_sizes(model, context, 16, None, steps=1)
    assert growing == sorted(growing) and growing[-1] > 3 * rolling[-1]


def test_a_rollout_past_the_rope_table_runs_with_cache_positions_and_is_refused_with_absolute_ones():
    model = tiny_wan("wan", 2)  # rope_max_seq_len = 32
    context = torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    video = generate(model, context, 36, timesteps=[1000, 500], sampler="renoise", cache_policy=CachePolicy(6, 2, "cache"))
    assert video.shape[0] == 38 and torch.isfinite(video).all()
    with pytest.raises(SamplingError, match="RoPE table"):
        generate(model, context, 36, timesteps=[1000, 500], cache_policy=CachePolicy(6, 2, "absolute"))


@pytest.mark.parametrize("options,message", [
    (dict(timesteps=[500, 750]), "strictly decreasing"),
    (dict(timesteps=[0]), "ends at 0"),
    (dict(timesteps=[1000, 757, 522, 0]), "ends at 0, which is no denoising step"),
    (dict(timesteps=[1000, 500], steps=3), "steps: 3 but timesteps lists 2"),
    (dict(warp=True), "explicit timestep list"),
    (dict(sampler="dmd"), "accepted: ode, renoise"),
    (dict(cache_policy=CachePolicy(2, 2)), "window = 2"),
    (dict(cache_policy=CachePolicy(None, 1)), "need a window"),
    (dict(cache_policy=CachePolicy(4, 0, "relative")), "rope = 'relative'"),
    (dict(cache_policy=CachePolicy(4), use_cache=False), "needs the KV cache"),
])
def test_bad_sampling_arguments_are_refused_in_one_line(options, message):
    model = tiny_baseline()
    with pytest.raises(SamplingError, match=message) as caught:
        generate(model, torch.zeros(2, 3, 16, 16), 2, **options)
    assert "\n" not in str(caught.value)


def test_a_given_cache_is_filled_and_one_that_is_not_empty_or_doubled_is_refused():
    model = tiny_baseline()
    context = torch.zeros(2, 3, 16, 16)
    cache = model.new_cache(CachePolicy(4, 1))
    generate(model, context, 5, steps=1, cache=cache)
    assert cache.frames == 7 and cache.cached == [0, 4, 5, 6]  # the sink, then the window's latest three
    with pytest.raises(SamplingError, match="not empty"):
        generate(model, context, 1, steps=1, cache=cache)
    with pytest.raises(SamplingError, match="its policy is the one sampled with"):
        generate(model, context, 1, steps=1, cache=model.new_cache(), cache_policy=CachePolicy(4))


def test_record_samples_as_generate_does_and_the_manifest_says_how():
    from probes import record

    model = tiny_baseline()
    context = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    rec = record(model, context, frames=3, layers=[0], timesteps=SELF_FORCING, warp=True, shift=5.0,
                 sampler="renoise", cache_policy=CachePolicy(4, 1))
    video = generate(model, context, 3, timesteps=SELF_FORCING, warp=True, shift=5.0, sampler="renoise",
                     cache_policy=CachePolicy(4, 1))
    assert rec.manifest["sampling"] == {"sampler": "renoise", "timesteps": warp_timesteps(SELF_FORCING, 5.0),
                                        "warp": True, "shift": 5.0, "window": 4, "sink_frames": 1, "rope": "absolute"}
    assert rec.manifest["generation"]["steps"] == 4 and rec.steps == [0, 1, 2, 3]
    assert torch.equal(rec._video, video)  # probing does not change what generate makes


def test_an_empty_context_is_text_to_video_for_the_wan_families_and_refused_for_the_built_in_models():
    """T = 0 context frames: the first chunk from the prompt alone (Self-Forcing's and LongLive's `initial_latent =
    None`), with the KV cache or without it (the same video); a built-in model, trained to continue clips, refuses."""
    model = tiny_wan("wan", 2)
    empty = torch.zeros(0, 4, *LATENT)
    cached = generate(model, empty, 4, timesteps=[1000, 500], sampler="renoise", seed=3)
    recomputed = generate(model, empty, 4, timesteps=[1000, 500], sampler="renoise", seed=3, use_cache=False)
    assert cached.shape == (4, 4, *LATENT)
    torch.testing.assert_close(cached, recomputed, atol=2e-5, rtol=1e-4)
    with pytest.raises(SamplingError, match="does not generate from nothing") as caught:
        generate(tiny_baseline(), torch.zeros(0, 3, 16, 16), 2, steps=1)
    assert "\n" not in str(caught.value)
