"""Feature reuse and attention knockout: no-ops where they should be, real skips, real cuts."""

from __future__ import annotations

import pytest
import torch

from analyses.interventions import intervention_summary, intervention_table
from probes.surgery import InterventionError, attention_knockout, feature_reuse, frame_diagonal, intervention, span_skip
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
    with pytest.raises(InterventionError, match="accepted: reuse, knockout, knockout-layer"), \
            intervention(tiny_model, "dropout", 1):
        pass
    with pytest.raises(InterventionError, match="SCD"), attention_knockout(tiny_scd, 1):
        pass


def test_intervention_table_measures_drift_quality_and_time(tiny_model):
    table = intervention_table(tiny_model, [("reuse", 1), ("knockout", 0)], clips=2, context=2, frames=2, steps=3,
                               progress=False)
    assert sorted(table.intervention.unique()) == ["knockout", "none", "redraw", "reuse"] and len(table) == 8
    none = table[table.intervention == "none"]
    assert (none.drift_psnr == float("inf")).all() and (none.drift_max_abs == 0).all()
    # each clip its own noise (seed + clip); the redraw is the unmodified model from a second draw: it differs
    assert none.noise_seed.tolist() == [0, 1]
    assert table[table.intervention == "redraw"].noise_seed.tolist() == [2**31, 2**31 + 1]
    assert (table[table.intervention == "redraw"].drift_max_abs > 0).all()
    assert (table[table.intervention == "reuse"].noise_seed.tolist() == [0, 1])
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
    assert set(table.intervention) == {"none", "diagonal", "skip", "diagonal-tuned", "redraw"}
    same = table.set_index("intervention")
    assert same.loc["diagonal", "psnr"] == same.loc["diagonal-tuned", "psnr"]  # same weights, same mask
    with pytest.raises(InterventionError, match="first <= last"):
        intervention_table(tiny_model, [("skip", 2, 1, 2)], clips=1, progress=False)


def test_single_layer_knockout_cuts_only_that_layer(tiny_model, clip):
    """knockout-layer 2: block 2's attention reads only the frame's own keys at each denoising step; block 3 still
    reads every visible frame (counted with raw hooks after the knockout's own)."""
    n = tiny_model.config.tokens_per_frame
    seen = {2: [], 3: []}
    handles = []
    try:
        with intervention(tiny_model, "knockout-layer", 2):
            for layer in (2, 3):
                handles.append(tiny_model.blocks[layer].attn.hook_k.register_forward_hook(
                    lambda m, i, o, layer=layer: seen[layer].append(o.shape[1])))
            generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    finally:
        for handle in handles:
            handle.remove()
    assert seen[2][1:1 + STEPS] == [n] * STEPS and seen[3][1:1 + STEPS] == [3 * n] * STEPS


def test_span_skip_recomputed_at_the_last_steps(tiny_model, clip):
    """keep 2, tail 2 of 5 steps: the span runs at steps 0, 1, 3, 4 (and the prefill and cache passes), skips step 2;
    keep 2 with a tail reaching step 2 runs at every step: the unmodified video, bit for bit."""
    plain = generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3)
    with span_skip(tiny_model, 1, 2, keep=2, tail=2, steps=STEPS) as counts:
        calls = _block_calls(tiny_model, lambda: generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3))
    assert calls[1:3] == [1 + FRAMES * 5] * 2 and counts["skipped"] == 2 * FRAMES
    with span_skip(tiny_model, 1, 2, keep=2, tail=3, steps=STEPS) as counts:
        assert torch.equal(generate(tiny_model, clip[:2], FRAMES, steps=STEPS, seed=3), plain)
    assert counts["skipped"] == 0
    with pytest.raises(InterventionError, match="accepted: 0..steps"):
        with span_skip(tiny_model, 1, 2, keep=2, tail=9, steps=STEPS):
            pass


def test_intervention_claims_use_the_noise_floor_and_the_compute_matched_control():
    """Constructed tables: a surgery within 0.1 dB of the unmodified model is reproduced only when the noise floor is
    below the threshold and the compute-matched control is measured and matched too."""
    import pandas as pd

    from analyses.claims import INCONCLUSIVE, NOT_OBSERVED, REPRODUCED, diagonal_tune_recovers, skip_loss_in_last_steps

    def rows(kind, psnr, ssim, clips=8, **extra):
        return [{"intervention": kind, "layer": extra.get("layer", 25), "span_end": extra.get("span_end", -1),
                 "keep_steps": extra.get("keep", -1), "tail_steps": extra.get("tail", -1), "clip": c,
                 "psnr": psnr + 0.01 * c, "ssim": ssim, "drift_psnr": 30.0, "seconds_per_frame": 1.0} for c in range(8)]

    def table(redraw_jitter, control_psnr, untuned=(15.0, 0.60)):  # untuned: a resolvable loss, 2 dB and 0.1
        out = rows("none", 17.0, 0.70) + rows("diagonal-tuned", 16.95, 0.70) + rows("finetuned", control_psnr, 0.70)
        out += rows("diagonal", *untuned) if untuned else []
        redraw = rows("redraw", 17.0, 0.70)
        for r in redraw:  # a second noise draw: quality moves by +-jitter per clip
            r["psnr"] += redraw_jitter * (1 if r["clip"] % 2 else -1)
        return pd.DataFrame(out + redraw)

    assert diagonal_tune_recovers(table(0.05, 16.98), 30).verdict == REPRODUCED
    noisy = diagonal_tune_recovers(table(2.0, 16.98), 30)  # a floor wider than the 0.5 dB threshold
    assert noisy.verdict == INCONCLUSIVE and "cannot be resolved" in noisy.measured
    worse = diagonal_tune_recovers(table(0.05, 18.5), 30)  # the control without the mask is better by 1.5 dB
    assert worse.verdict == NOT_OBSERVED and "against the control" in worse.measured
    no_control = diagonal_tune_recovers(table(0.05, 16.98)[lambda t: t.intervention != "finetuned"], 30)
    assert no_control.verdict == INCONCLUSIVE and "--tuned-control" in no_control.measured
    assert "post hoc" in no_control.provenance and "reproduced (PSNR alone" in no_control.original
    # a recovery needs a loss first: an untuned mask that already keeps quality leaves nothing to recover
    kept = diagonal_tune_recovers(table(0.05, 16.98, untuned=(16.9, 0.70)), 30)
    assert kept.verdict == INCONCLUSIVE and "nothing to recover" in kept.measured
    assert kept.original.startswith("reproduced (without the loss-first clause)") and "post hoc" in kept.threshold
    unknown = diagonal_tune_recovers(table(0.05, 16.98, untuned=None), 30)
    assert unknown.verdict == INCONCLUSIVE and "the untuned mask was not measured" in unknown.measured
    recompute = pd.DataFrame(rows("none", 17.0, 0.70) + rows("skip", 17.5, 0.40, layer=8, span_end=22, keep=5, tail=0)
                             + rows("skip", 17.2, 0.68, layer=8, span_end=22, keep=5, tail=10))
    assert skip_loss_in_last_steps(recompute, 30).verdict == REPRODUCED
