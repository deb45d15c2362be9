"""Feature reuse and attention knockout: no-ops where they should be, real skips, real cuts."""

from __future__ import annotations

import pytest
import torch

from analyses.interventions import (
    InterventionError,
    attention_knockout,
    feature_reuse,
    frame_diagonal,
    intervention,
    intervention_summary,
    intervention_table,
    span_skip,
)
from scd import generate
from scd.data import VideoBenchmark

STEPS, FRAMES = 5, 2


@pytest.fixture
def clip():
    return VideoBenchmark("val", frames=4, size=16).clip(0)


def test_layer_minus_one_reproduces_the_unmodified_video_bitwise(tiny_model, clip):
    plain = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    for kind in ("reuse", "knockout"):
        with intervention(tiny_model, kind, -1):
            assert torch.equal(generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3), plain)


def test_reuse_refreshed_at_every_step_equals_no_reuse_and_the_context_manager_restores_the_model(tiny_model, clip):
    plain = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    with feature_reuse(tiny_model, 2, refresh=1) as counts:
        same = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    assert torch.equal(same, plain) and counts["skipped"] == 0
    with feature_reuse(tiny_model, 2):
        changed = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    assert (changed - plain).abs().max() > 1e-3  # reusing step 0's features changes the frames
    assert all("forward" not in block.__dict__ for block in tiny_model.blocks)
    assert torch.equal(generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3), plain)


def test_reuse_really_skips_the_blocks(tiny_model, clip):
    calls = [0] * len(tiny_model.blocks)
    handles = [block.attn.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + 1))
               for k, block in enumerate(tiny_model.blocks)]
    try:
        with feature_reuse(tiny_model, 2) as counts:
            generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    finally:
        for handle in handles:
            handle.remove()
    # Blocks 0-2: the context prefill, then per frame step 0 and the cache-writing pass. Block 3: every pass.
    assert calls == [1 + 2 * FRAMES] * 3 + [1 + FRAMES * (STEPS + 1)]
    assert counts["skipped"] == 3 * FRAMES * (STEPS - 1)
    with feature_reuse(tiny_model, 2, refresh=2) as counts:  # steps 0, 2, 4 run
        generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    assert counts["skipped"] == 3 * FRAMES * 2


def test_knockout_from_block_0_makes_generated_frames_independent_of_the_context(tiny_model, clip):
    other = VideoBenchmark("val", frames=4, size=16).clip(5)
    with attention_knockout(tiny_model, 0):
        a = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
        b = generate(tiny_model, other[:2], FRAMES, steps=STEPS, seed=3)
    assert torch.equal(a[2:], b[2:])
    plain_a = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    plain_b = generate(tiny_model, other[:2], FRAMES, steps=STEPS, seed=3)
    assert (plain_a[2:] - plain_b[2:]).abs().max() > 1e-3  # without it, the context matters
    with attention_knockout(tiny_model, 3):  # from the last block only: the context still reaches the frame
        c = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
        d = generate(tiny_model, other[:2], FRAMES, steps=STEPS, seed=3)
    assert (c[2:] - d[2:]).abs().max() > 1e-3
    assert not any(b.attn.hook_k._forward_hooks or b.attn.hook_v._forward_hooks for b in tiny_model.blocks)


def test_knockout_leaves_each_frame_exactly_its_own_keys(tiny_model, clip):
    before, after = [], []  # hooks run in the order they were added, each on the output of the one before
    read = lambda seen: lambda m, i, o: seen.append(o.shape[1])  # noqa: E731
    k = tiny_model.blocks[3].attn.hook_k
    handles = [k.register_forward_hook(read(before))]
    try:
        with attention_knockout(tiny_model, 2):
            handles.append(k.register_forward_hook(read(after)))
            generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    finally:
        for handle in handles:
            handle.remove()
    n = tiny_model.config.tokens_per_frame
    # Pass 0 is the context prefill; then frame 2's steps, whose reach is frames 0-2 and whose attention gets frame 2's.
    assert before[1:1 + STEPS] == [3 * n] * STEPS and after[1:1 + STEPS] == [n] * STEPS
    assert before[1 + STEPS] == after[1 + STEPS] == 3 * n  # the cache-writing pass is left as it is


def test_bad_interventions_are_refused(tiny_model, tiny_scd):
    with pytest.raises(InterventionError, match=r"accepted: 0\.\.3"), feature_reuse(tiny_model, 4):
        pass
    with pytest.raises(InterventionError, match="refresh must be >= 1"), feature_reuse(tiny_model, 1, refresh=0):
        pass
    with pytest.raises(InterventionError, match="accepted: reuse, knockout"), intervention(tiny_model, "dropout", 1):
        pass
    with pytest.raises(InterventionError, match="SCD"), attention_knockout(tiny_scd, 1):
        pass


def test_intervention_table_measures_drift_quality_and_time(tiny_model):
    table = intervention_table(tiny_model, [("reuse", 1), ("knockout", 0)], clips=2, context=2, frames=2, steps=3,
                               progress=False)
    assert sorted(table.intervention.unique()) == ["knockout", "none", "reuse"] and len(table) == 6
    none = table[table.intervention == "none"]
    assert (none.drift_psnr == float("inf")).all() and (none.drift_max_abs == 0).all()
    changed = table[table.intervention != "none"]
    assert (changed.drift_max_abs > 0).all() and (changed.drift_psnr < 100).all()
    summary = intervention_summary(table)
    assert summary.set_index("intervention").loc["none", "speedup"] == 1.0
    assert (summary.seconds_per_frame > 0).all()


def _block_calls(model, fn):
    """How often each block's attention really ran during fn(), counted by raw forward hooks."""
    calls = [0] * len(model.blocks)
    handles = [block.attn.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + 1))
               for k, block in enumerate(model.blocks)]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def test_span_skip_at_every_step_is_the_unmodified_video_and_otherwise_skips_the_blocks(tiny_model, clip):
    plain = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    with span_skip(tiny_model, 1, 2, keep=STEPS) as counts:
        assert torch.equal(generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3), plain)
    assert counts["skipped"] == 0
    result = {}
    with span_skip(tiny_model, 1, 2, keep=2) as counts:
        calls = _block_calls(tiny_model, lambda: result.setdefault(
            "video", generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)))
    # blocks 1-2 run at the prefill, steps 0-1 and the cache-writing pass of each frame; 0 and 3 at every pass
    assert calls == [1 + FRAMES * (STEPS + 1), 1 + FRAMES * 3, 1 + FRAMES * 3, 1 + FRAMES * (STEPS + 1)]
    assert counts["skipped"] == 2 * FRAMES * (STEPS - 2)
    assert (result["video"] - plain).abs().max() > 1e-4  # the skip changes the frames, a little
    assert all("forward" not in block.__dict__ for block in tiny_model.blocks)


def test_span_skip_adds_the_span_update_to_the_current_input(tiny_model, clip):
    """At a skipped step, block 3 reads block 1's current input plus (block 2's output - block 1's input) from the last
    step the span ran: checked with raw forward hooks on the residual stream."""
    seen, state = {}, {}

    def on_step(frame, step, timestep):
        state["key"] = (frame, step)

    def keep(name, output=False):
        def hook(module, args, out):
            seen.setdefault(name, {})[state["key"]] = (out[0] if output else args[0]).detach().clone()
        return hook

    handles = [tiny_model.blocks[1].register_forward_hook(keep("in1")),
               tiny_model.blocks[2].register_forward_hook(keep("out2", output=True)),
               tiny_model.blocks[3].register_forward_hook(keep("in3"))]
    try:
        with span_skip(tiny_model, 1, 2, keep=2):
            generate(tiny_model, clip[:2], 1, steps=STEPS, seed=3, callback=on_step)
    finally:
        for handle in handles:
            handle.remove()
    update = seen["out2"][(2, 1)] - seen["in1"][(2, 1)]  # step 1: the last step the span ran
    for step in range(2, STEPS):
        torch.testing.assert_close(seen["in3"][(2, step)], seen["in1"][(2, step)] + update)
    assert not torch.equal(seen["in1"][(2, 2)], seen["in1"][(2, 3)])  # the current frame still flows through


def test_frame_diagonal_is_the_model_built_with_the_mask(tiny_model, clip):
    from scd.zoo import build_model

    masked = build_model({**tiny_model.get_config(), "frame_local_blocks": 2})
    masked.load_state_dict(tiny_model.state_dict())
    expected = generate(masked, clip[:2], FRAMES, steps=STEPS, seed=3)
    with frame_diagonal(tiny_model, 2):
        assert torch.equal(generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3), expected)
    assert tiny_model.config.frame_local_blocks == 0
    assert not torch.equal(generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3), expected)
    table = intervention_table(tiny_model, [("diagonal", 2), ("skip", 1, 2, 2)], clips=1, context=2, frames=1, steps=3,
                               progress=False, others={"diagonal-tuned": masked})
    assert set(table.intervention) == {"none", "diagonal", "skip", "diagonal-tuned"}
    same = table.set_index("intervention")
    assert same.loc["diagonal", "psnr"] == same.loc["diagonal-tuned", "psnr"]  # same weights, same mask
    with pytest.raises(InterventionError, match="first <= last"):
        intervention_table(tiny_model, [("skip", 2, 1, 2)], clips=1, progress=False)
