"""Head plans: the per-head cache keeps exactly what its rule says (frames and bytes counted by hand), its attention
equals an explicit softmax with the dropped keys masked, a plan that prunes nothing is bitwise the unmodified
rollout, the rule's choice and lost mass by hand, and the command line end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from analyses.head_plan import head_keep, lost_mass
from scd.contract import CachePolicy
from scd.models.blocks import Attention, HeadKeep, HeadPrunedCache, rope_angles


def _by_hand(frame: int, written: int, rule: HeadKeep, policy: CachePolicy) -> bool:
    """Whether a head with `rule` holds `frame` once `written` frames are finished, written out without the cache."""
    in_policy = policy.window is None or frame < min(policy.sink_frames, written) or \
        frame >= written - (policy.window - policy.sink_frames)
    in_rule = rule.recent is None or frame < rule.sinks or frame >= written - rule.recent
    return in_policy and in_rule


@pytest.mark.parametrize("policy", [CachePolicy(), CachePolicy(5, 1)], ids=["every frame", "window 5, 1 sink"])
def test_the_cache_keeps_only_what_each_head_says_and_counts_its_bytes(policy):
    rules = (HeadKeep(), HeadKeep(0, 2), HeadKeep(1, 1), HeadKeep(0, 0))
    B, N, H, D = 1, 3, 4, 6
    cache = HeadPrunedCache(policy=policy.check(1), chunk=1, heads={0: rules})
    generator = torch.Generator().manual_seed(0)
    frames_k = []
    for written in range(1, 9):  # one frame per pass: append to block 0 (pruned) and block 1 (as KVCache does)
        k, v = torch.randn(2, B, N, H, D, generator=generator)
        frames_k.append(k)
        cache.append(0, k, v)
        cache.append(1, k, v)
        cache.advance(1)
        held = cache.kept_frames(0)
        for h, rule in enumerate(rules):
            assert held[h] == [f for f in range(written) if _by_hand(f, written, rule, policy)], (written, h)
        expected = sum(len(frames) for frames in held) * N * D * 2 * 4  # keys and values, float32, block 0
        expected += len(policy.kept(written)) * N * H * D * 2 * 4        # block 1: every head, the policy's frames
        assert cache.nbytes() == expected
    groups = cache.layer(0, 1).groups  # the keys a head reads are its kept frames' own keys
    for heads, keys, _ in groups:
        visible = [f for f in held[heads[0]] if f in policy.visible(8, 1)]
        assert torch.equal(keys, torch.cat([frames_k[f][:, :, heads] for f in visible], dim=1)) if visible else \
            keys.shape[1] == 0


def test_grouped_attention_equals_an_explicit_softmax_with_the_dropped_keys_masked():
    torch.manual_seed(0)
    width, heads, N, past_frames = 24, 4, 3, 5
    attention = Attention(width, heads)
    rules = (HeadKeep(), HeadKeep(0, 2), HeadKeep(1, 1), HeadKeep(2, 0))
    cache = HeadPrunedCache(chunk=1, heads={0: rules})
    D = width // heads
    keys, values = torch.randn(2, 1, past_frames * N, heads, D)
    for f in range(past_frames):
        cache.append(0, keys[:, f * N:(f + 1) * N], values[:, f * N:(f + 1) * N])
        cache.advance(1)
    x = torch.randn(1, N, width)
    angles = rope_angles(torch.tensor([past_frames]), 1, N, D)
    out, _ = attention(x, angles, None, cache.layer(0, 1))
    # explicit: every past key, with a -inf score where a head's rule drops the frame
    q, k, v = attention.qkv(x).view(1, N, 3, heads, D).unbind(2)
    from scd.models.blocks import apply_rope

    q, k = apply_rope(attention.q_norm(q), angles), apply_rope(attention.k_norm(k), angles)
    all_k, all_v = torch.cat([keys, k], 1), torch.cat([values, v], 1)
    result = torch.empty(1, N, heads, D)
    for h, rule in enumerate(rules):
        allowed = torch.tensor([rule.keeps(f, past_frames) for f in range(past_frames) for _ in range(N)] + [True] * N)
        scores = (q[0, :, h] @ all_k[0, :, h].T) / math.sqrt(D)
        scores = scores.masked_fill(~allowed, float("-inf"))
        result[0, :, h] = scores.softmax(-1) @ all_v[0, :, h]
    assert torch.allclose(out, attention.out(result.reshape(1, N, width)), atol=1e-5)


def test_a_plan_that_prunes_nothing_is_bitwise_the_unmodified_rollout_and_one_that_prunes_is_not(tiny_model):
    from probes.surgery import head_pruning
    from scd.sampling import generate

    context = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blocks, heads = tiny_model.config.depth, tiny_model.config.heads
    for policy in (None, CachePolicy(4, 1)):
        plain = generate(tiny_model, context, 4, steps=3, seed=2, cache_policy=policy)
        everything = {i: tuple(HeadKeep() for _ in range(heads)) for i in range(blocks)}  # a zero-budget plan
        grouped = {i: tuple(HeadKeep(0, 100) for _ in range(heads)) for i in range(blocks)}  # pruned path, keeps all
        for keep in (everything, grouped):
            with head_pruning(tiny_model, keep):
                assert torch.equal(generate(tiny_model, context, 4, steps=3, seed=2, cache_policy=policy), plain)
        with head_pruning(tiny_model, {i: (HeadKeep(0, 1),) + (HeadKeep(),) * (heads - 1) for i in range(blocks)}):
            assert not torch.equal(generate(tiny_model, context, 4, steps=3, seed=2, cache_policy=policy), plain)
    assert "new_cache" not in vars(tiny_model)  # the surgery removed itself


def test_the_rule_keeps_fewest_frames_within_the_budget_and_never_a_cut_unseen():
    stats = {"sinks": [0, 1], "recent": [0, 1, 2, 3],
             "drops": [[True, True, True, False], [True, True, False, False]],  # (1, 2) and r = 3 drop nothing seen
             "worst": [[  # one block, three heads: [sinks][recent]
                 [[0.5, 0.2, 0.06, 0.0], [0.3, 0.01, 0.0, 0.0]],   # 1 sink + 1 recent: 2 frames within 0.05
                 [[0.9, 0.5, 0.3, 0.0], [0.8, 0.4, 0.0, 0.0]],     # nothing within 0.05 that drops anything: all
                 [[0.02, 0.01, 0.0, 0.0], [0.02, 0.0, 0.0, 0.0]],  # r = 0 (own frame only) within 0.05
             ]]}
    assert head_keep(stats, 0.05) == [[[1, 1], [0, None], [0, 0]]]
    assert head_keep(stats, 0.0) == [[[0, None], [0, None], [0, None]]]  # a zero budget keeps every frame
    assert head_keep(stats, 1.0) == [[[0, 0], [0, 0], [0, 0]]]


def test_lost_mass_by_hand_on_a_recorded_window(tiny_model):
    import probes

    policy = CachePolicy(4, 1)
    context = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    run = probes.record(tiny_model, context, layers=[1], capture="attention", frames=4, steps=2, cache_policy=policy)
    item = run.items[0]
    lost = lost_mass(item, 1, [0, 1], [0, 1, 2])
    mass = item.attention(1).double()  # [F, S, H, T]
    for f, frame in enumerate(item.frames):
        for a, s in enumerate((0, 1)):
            for b, r in enumerate((0, 1, 2)):
                dropped = [j for j in policy.visible(frame, 1) if not (j < s or j >= frame - r)]
                assert torch.allclose(lost[a, b, f], mass[f][:, :, dropped].sum(-1) if dropped else
                                      torch.zeros_like(lost[a, b, f]))
    assert not lost[:, :, 0].any() or policy.visible(item.frames[0], 1)


def test_probe_plan_heads_and_probe_intervene_validate_a_head_plan_with_its_cache_bytes(tmp_path, capsys):
    import pandas as pd

    from probe_cli import main

    run, plan = tmp_path / "cal", tmp_path / "heads.json"
    assert main(["run", "--layers", "all", "--capture", "attention", "--clip", "0", "--context", "2", "--frames", "3",
                 "--steps", "2", "--window", "4", "--sink-frames", "1", "--quiet", "--out", str(run)]) == 0
    assert main(["plan", str(run), "--heads", "x", "--out", str(plan)]) == 2  # refused, nothing written
    assert "--heads 'x'" in capsys.readouterr().err and not plan.exists()
    assert main(["plan", str(run), "--heads", "0,1", "--out", str(plan)]) == 0
    content = json.loads(plan.read_text())
    assert content["format"] == "scd-probes-head-plan/1" and [p["budget"] for p in content["plans"]] == [0.0, 1.0]
    assert all(r is None for layer in content["plans"][0]["keep"] for _, r in layer)
    assert all(r == 0 and s == 0 for layer in content["plans"][1]["keep"] for s, r in layer)  # budget 1: own frame
    assert "heads pruned" in capsys.readouterr().out
    out = tmp_path / "v"
    common = ["intervene", "--plan", str(plan), "--steps", "2", "--clips", "1", "--context", "2", "--frames", "5",
              "--quiet", "--out", str(out)]
    assert main([*common, "--first-clip", "0"]) == 2 and not out.exists()  # clip 0 calibrated it
    assert main([*common, "--first-clip", "1"]) == 0
    table = pd.read_parquet(out / "interventions.parquet").set_index(["intervention", "layer"])
    assert table.loc[("heads", 0), "drift_max_abs"] == 0.0  # the zero budget: bitwise the unmodified rollout
    full = table.loc[("none", -1), "cache_bytes"]
    tokens, width = 64, 128
    assert full == 4 * tokens * width * 2 * 4 * 30  # the window's 4 frames, keys and values, 30 blocks, float32
    assert table.loc[("heads", 1), "cache_bytes"] == 0  # every head keeps only its own frame: nothing cached
    assert table.loc[("heads", 1), "drift_max_abs"] > 0


def test_the_head_validation_table_by_hand_on_a_constructed_validation():
    import pandas as pd
    from scipy import stats

    from analyses.head_plan import head_validation_table
    from analyses.report import _head_validation

    rows = []
    for clip in (8, 9, 10):
        for draw in (0, 1):
            base = {"clip": clip, "draw": draw, "span_end": -1, "keep_steps": -1, "tail_steps": -1}
            rows.append({**base, "intervention": "none", "layer": -1, "cache_bytes": 1000.0,
                         "seconds_per_frame": 2.0, "drift_psnr": math.inf, "drift_psnr_frames": [math.inf] * 3,
                         "ssim": 0.8})
            rows.append({**base, "intervention": "heads", "layer": 0, "cache_bytes": 500.0 + 100 * (clip - 8),
                         "seconds_per_frame": 1.0 + 0.1 * draw, "drift_psnr": 30.0 + clip + draw,
                         "drift_psnr_frames": [70.0, 30.0 + clip + draw, 20.0 + clip], "ssim": 0.78})
    table = head_validation_table(pd.DataFrame(rows))
    row = table[table.setting == "heads0"].iloc[0]
    per_clip_bytes = [0.5, 0.6, 0.7]
    half = stats.t.ppf(0.975, 2) * stats.sem(per_clip_bytes)
    assert row.bytes == pytest.approx(0.6) and row.bytes_high == pytest.approx(0.6 + half)
    assert row.speed == pytest.approx((2.0 + 2.0 / 1.1) / 2)  # a clip's two draws averaged, then over clips
    assert row.drift == pytest.approx((60 + 39.5 + 29) / 3) and row.first == pytest.approx(60.0)  # each frame capped
    assert row["last"] == pytest.approx(29.0) and row.ssim_loss == pytest.approx(0.02) and row.clips == 3
    rendered = _head_validation(pd.DataFrame(rows))
    assert rendered["rows"][0][:2] == ["heads0", f"0.600 [{0.6 - half:.3f}, {0.6 + half:.3f}]"]
