"""A model whose self-attention is exactly uniform reads as uniform, in every setting the authors run: no window,
a rolling window with sink frames (several sizes), chunks of 1 and 3 frames, both RoPE policies, and a first chunk
generated from no context; a model that attends only to its own chunk reads as such.

Uniform attention is made by a forward hook on every block's `hook_q` that returns zeros (the HookPoint sits after
the KV cache's keys are joined, so the model itself then attends uniformly over every key it is shown); own-chunk
attention by a constant query and keys that are zero but for the pass's own chunk. What a query is shown is written
out here by hand (the sinks, the most recent frames that fit the window, its chunk), not read from the toolkit.
"""

from __future__ import annotations

import math

import pytest
import torch

import probes
from analyses.rolling import distance_table, region_table
from analyses.sparsity import (
    LIT_CUT,
    attention_measures,
    context_key_nats,
    earlier_key_nats,
    excess_share,
    lit_share,
    measures_by_head,
    measures_by_step,
    per_key_ratio,
    uniform_key_nats,
)
from scd.contract import CachePolicy
from scd.wan.causal_wan import CausalWan
from tests.scd.test_rolling import window_frame_mask
from tests.wan_tiny import LATENT, latents, tiny

TIMESTEPS = [1000, 500]


def shown_by_hand(frame: int, k: int, window: int | None, sinks: int) -> list[int]:
    """The frames a query of `frame` attends to: its chunk, and of the finished frames every one (no window) or
    the first `sinks` and the most recent that fit in `window` beside them and the chunk (the frame mask written out
    by hand in tests/scd/test_rolling.py)."""
    allowed = window_frame_mask(frame - frame % k + k, k, window, sinks)[frame]
    return [j for j, shown in enumerate(allowed.tolist()) if shown]


def uniform_q(model):
    """Forward hooks making every block's attention exactly uniform over the keys it is shown."""
    return [model.hook_dict[name].register_forward_hook(lambda m, a, out: torch.zeros_like(out))
            for name in model.hook_dict if name.endswith("hook_q")]


def own_chunk_only(model, k: int, n: int):
    """Forward hooks making every block attend to its own chunk alone: a constant query, and keys zero but for the
    pass's own chunk (the last k x n keys), which carry a large copy of it (earlier keys get exp(-600) = 0)."""
    def query(m, a, out):
        return torch.full_like(out, 1.0)

    def key(m, a, out):
        keys = torch.zeros_like(out)
        keys[:, -k * n:] = 600.0 / out.shape[-1] ** 0.5
        return keys
    return [model.hook_dict[name].register_forward_hook(query if name.endswith("hook_q") else key)
            for name in model.hook_dict if name.endswith("hook_q") or name.endswith("hook_k")]


def record(model, hooks, context, frames, policy, bands=2):
    try:
        return probes.record(model, context, frames=frames, timesteps=TIMESTEPS, sampler="renoise", seed=0,
                             layers="all", capture=["attention"], bands=bands, cache_policy=policy)
    finally:
        for h in hooks:
            h.remove()


def check_uniform(rec, k: int, window: int | None, sinks: int):
    """Every layer, every probed frame, every step and head: uniform over what it is shown, and every measure at
    its uniform level."""
    frames, n, g = rec.frames, rec.manifest["tokens_per_frame"], rec.bands
    policy = rec.cache_policy
    assert (policy.window, policy.sink_frames) == (window, sinks)
    for layer in rec.attention_layers:
        mass, regions = rec.attention(layer).double(), rec.attention_regions(layer).double()
        maps, distance = rec.attention_map(layer).double(), rec.attention_by_distance(layer).double()
        for i, frame in enumerate(frames):
            shown = shown_by_hand(frame, k, window, sinks)
            expected = torch.zeros(mass.shape[-1], dtype=torch.float64)
            expected[shown] = 1 / len(shown)
            assert (mass[i] - expected).abs().max() < 1e-6, (layer, frame)  # the sampler shows what the hand says
            earlier = [f for f in shown if f < frame - frame % k]  # before the query's chunk
            one = mass[i:i + 1]
            if earlier:
                assert float(per_key_ratio(one, [frame], frames_per_block=k, policy=policy)) == pytest.approx(1, abs=1e-5)
                assert float(earlier_key_nats(one, [frame], frames_per_block=k, policy=policy)) == pytest.approx(0, abs=1e-5)
                assert float(excess_share(one, [frame], frames_per_block=k, policy=policy).abs().max()) < 1e-6
                uniform = uniform_key_nats([frame], "causal", k, n, policy)
                assert uniform.item() == pytest.approx(-math.log(len(shown) * n))
                nats = context_key_nats(maps[i:i + 1].mean(1), [frame], g, uniform, frames_per_block=k, policy=policy)
                assert nats.shape[-1] == len(earlier) * g * g and nats.abs().max() < 1e-5
                assert float(lit_share(nats, LIT_CUT).min()) == 1.0
            else:  # no earlier frame is shown: nothing to measure, not "frame-local"
                assert math.isnan(float(per_key_ratio(one, [frame], frames_per_block=k, policy=policy)))
            first = frame - frame % k
            own = [f for f in shown if first <= f < first + k]
            sink = [f for f in shown if f < sinks and f not in own]
            previous = [f for f in shown if first - k <= f < first and f not in sink]
            hand = [len(own), len(previous), len(sink), len(shown) - len(own) - len(previous) - len(sink)]
            levels = torch.tensor(hand, dtype=torch.float64) / len(shown)
            assert (regions[i] - levels).abs().max() < 1e-5, (layer, frame)
            end = first + k - 1
            by_hand = torch.zeros(mass.shape[-1], dtype=torch.float64)
            by_hand[[end - f for f in shown]] = 1 / len(shown)
            assert (distance[i] - by_hand).abs().max() < 1e-5
    table = attention_measures(rec).set_index("layer")
    assert (table.per_key_ratio - 1).abs().max() < 1e-5 and table.earlier_key_nats.abs().max() < 1e-5
    assert table.excess_share.abs().max() < 1e-6 and (table.lit_share == 1).all()
    heads = measures_by_head(rec)
    assert (heads.per_key_ratio - 1).abs().max() < 1e-5 and (heads.lit_share == 1).all()
    assert (measures_by_step(rec).per_key_ratio - 1).abs().max() < 1e-5
    regions = region_table(rec)
    for region in ("own_chunk", "previous_chunk", "sinks", "elsewhere"):
        assert (regions[region] - regions[f"{region}_uniform"]).abs().max() < 1e-5
    distances = distance_table(rec)
    for d in range(rec.manifest["num_frames"]):
        assert (distances[f"d{d}"] - distances[f"d{d}_uniform"]).abs().max() < 1e-5


SETTINGS = [  # (frames per chunk, window, sinks, rope, context frames: 0 is text-to-video, the sinks then generated)
    (1, None, 0, "absolute", 2), (1, 4, 1, "absolute", 2), (1, 5, 2, "cache", 2), (1, 3, 0, "absolute", 2),
    (1, 4, 1, "absolute", 0), (3, None, 0, "absolute", 3), (3, 7, 1, "absolute", 3), (3, 6, 3, "cache", 3),
    (3, 7, 1, "absolute", 0), (3, None, 0, "absolute", 0),
]


@pytest.mark.parametrize("family", ["wan", "skyreels"])
def test_uniform_attention_reads_uniform_in_every_setting(family):
    for k, window, sinks, rope, context in SETTINGS:
        stock = tiny(family, num_frame_per_block=k) if family == "skyreels" else tiny(family)
        model = CausalWan(stock, LATENT, frames_per_block=k)
        rec = record(model, uniform_q(model), latents(context), 3 * k * (2 if k == 1 else 1) + k,
                     CachePolicy(window, sinks, rope))
        assert rec.frames[0] == context
        check_uniform(rec, k, window, sinks)


def test_the_shipped_baseline_with_uniform_attention_reads_uniform_under_a_window():
    from scd import load_model

    model = load_model("baseline")
    context = probes.recorder.benchmark_clip(model, 0, 2, "sprites")
    rec = record(model, uniform_q(model), context, 7, CachePolicy(5, 2), bands=1)
    check_uniform(rec, 1, 5, 2)


@pytest.mark.parametrize("k", [1, 3])
def test_attention_on_the_own_chunk_alone_reads_as_such(k):
    model = CausalWan(tiny("wan"), LATENT, frames_per_block=k)
    policy = CachePolicy(2 * k + 1, 1)
    rec = record(model, own_chunk_only(model, k, model.layout.tokens_per_frame), latents(3), 2 * k, policy)
    table = attention_measures(rec).set_index("layer")
    assert (table.per_key_ratio == 0).all() and (table.lit_share == 0).all()
    assert (table.earlier_key_nats == -math.inf).all()
    regions = region_table(rec)
    assert (regions.own_chunk - 1).abs().max() < 1e-6 and (regions.own_chunk_uniform < 1).all()
