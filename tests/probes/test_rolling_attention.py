"""Attention over a rolling KV cache: the probe's mass by frame, by distance and by region against an explicit
softmax of raw-hooked q and k, pooled by hand; keys outside the window and the sinks get exactly zero."""

from __future__ import annotations

import math

import pytest
import torch

from probes import Probe, load_run
from scd.contract import CachePolicy
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.sampling import generate
from scd.wan.causal_wan import CausalWan
from tests.conftest import randomize
from tests.wan_tiny import LATENT, tiny

WINDOW, SINKS, CONTEXT, FRAMES = 5, 2, 2, 8
TIMESTEPS = [1000, 750, 500, 250]


def seen_frames(frame: int, k: int) -> list[int]:
    """By hand: the frames a query of `frame` attends to (its chunk, the sinks, the latest frames of the window)."""
    first = frame - frame % k
    recent = WINDOW - SINKS - k
    return sorted(set(range(min(SINKS, first))) | set(range(max(0, first - recent), first)) | set(range(first, first + k)))


def capture_raw(model, blocks, context, frames, k):
    """Per (layer, frame, step): q of the pass and k of the pass, read by plain forward hooks on the HookPoints."""
    state, seen, handles = {}, {}, []

    def on_step(frame, step, timestep):
        state["key"] = (frame, step) if step is not None else None

    def keep(name, layer):
        def hook(module, args, output):
            if state.get("key") is not None:
                seen[(name, layer, *state["key"])] = output[0].detach().clone()
        return hook
    for layer, (hq, hk) in blocks.items():
        handles += [hq.register_forward_hook(keep("q", layer)), hk.register_forward_hook(keep("k", layer))]
    try:
        generate(model, context, frames, timesteps=TIMESTEPS, sampler="renoise", seed=0, callback=on_step,
                 cache_policy=CachePolicy(WINDOW, SINKS))
    finally:
        for h in handles:
            h.remove()
    return seen


def explicit_mass(q, keys, frame, k, n, total):
    """softmax(q k^T / sqrt(d)) of the frame's queries over the pass's keys, summed per key frame: [H, total]."""
    frames_of_keys = torch.tensor(seen_frames(frame, k)).repeat_interleave(n)
    assert keys.shape[0] == len(frames_of_keys)
    position = frame % k  # the frame's place in its chunk: its queries are that slice of the pass's
    queries = q[position * n:(position + 1) * n]
    scores = torch.einsum("qhd,khd->hqk", queries.double(), keys.double()) / math.sqrt(q.shape[-1])
    per_frame = scores.softmax(-1) @ torch.nn.functional.one_hot(frames_of_keys, total).double()
    return per_frame.mean(1)


def check(probe, seen, layers, k, n, total, tmp_path):
    frames = list(range(CONTEXT, CONTEXT + FRAMES))
    assert probe.frames == frames
    for layer in layers:
        mass = probe.attention(layer)
        for i, frame in enumerate(frames):
            chunk_end = frame - frame % k + k - 1
            for step in range(len(TIMESTEPS)):
                expected = explicit_mass(seen[("q", layer, chunk_end, step)], seen[("k", layer, chunk_end, step)],
                                         frame, k, n, total)
                assert (mass[i, step].double() - expected).abs().max() <= 1e-5
                outside = [f for f in range(total) if f not in seen_frames(frame, k)]
                assert (mass[i, step][:, outside] == 0).all()  # exactly zero: not in the cache at all
                by_distance = torch.zeros_like(mass[i, step])
                for f in range(chunk_end + 1):
                    by_distance[:, chunk_end - f] = mass[i, step][:, f]
                assert torch.equal(probe.attention_by_distance(layer)[i, step], by_distance)
                first = frame - frame % k
                own = list(range(first, first + k))
                sinks = [f for f in range(SINKS) if f not in own]
                previous = [f for f in range(first - k, first) if f >= 0 and f not in sinks]
                regions = probe.attention_regions(layer)[i, step].double()
                row = mass[i, step]
                hand = [row[:, keys].sum(-1) if keys else torch.zeros(row.shape[0]) for keys in (own, previous, sinks)]
                for r, value in enumerate(hand):
                    assert (regions[:, r] - value.double()).abs().max() <= 1e-6
                assert (regions.sum(-1) - 1).abs().max() <= 1e-5
    loaded = load_run(probe.save(tmp_path / "run"))  # stored as the live recording holds them
    assert loaded.manifest["sampling"]["window"] == WINDOW and loaded.manifest["sampling"]["sink_frames"] == SINKS
    for layer in layers:
        assert torch.equal(loaded.attention_regions(layer), probe.attention_regions(layer))
        assert torch.equal(loaded.attention_by_distance(layer), probe.attention_by_distance(layer))


def test_builtin_rolling_attention_equals_an_explicit_softmax_pooled_by_hand(tmp_path):
    model = randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"]), std=0.1)
    context = torch.randn(CONTEXT, 3, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    layers = [0, 3]
    seen = capture_raw(model, {i: (model.blocks[i].attn.hook_q, model.blocks[i].attn.hook_k) for i in layers},
                       context, FRAMES, 1)
    with Probe(model, layers) as probe:
        generate(model, context, FRAMES, timesteps=TIMESTEPS, sampler="renoise", seed=0,
                 cache_policy=CachePolicy(WINDOW, SINKS))
    check(probe, seen, layers, 1, model.layout.tokens_per_frame, CONTEXT + FRAMES, tmp_path)


@pytest.mark.parametrize("family", ["wan", "skyreels"])
def test_wan_rolling_attention_equals_an_explicit_softmax_pooled_by_hand(family, tmp_path):
    k = 2
    stock = tiny(family, num_frame_per_block=k) if family == "skyreels" else tiny(family)
    model = CausalWan(stock, LATENT, frames_per_block=k)
    context = torch.randn(CONTEXT, 4, *LATENT, generator=torch.Generator().manual_seed(1))
    layers = [0, 1]
    blocks = {i: (model.transformer.blocks[i].attn1.hook_q, model.transformer.blocks[i].attn1.hook_k) for i in layers}
    seen = capture_raw(model, blocks, context, FRAMES, k)
    with Probe(model, layers) as probe:
        generate(model, context, FRAMES, timesteps=TIMESTEPS, sampler="renoise", seed=0,
                 cache_policy=CachePolicy(WINDOW, SINKS))
    check(probe, seen, layers, k, model.tokens_per_frame, CONTEXT + FRAMES, tmp_path)
