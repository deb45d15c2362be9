"""Caching plans (`analyses.plan`, `probe plan`): the statistics on constructed features give their known values, the
skip rule is MagCache's (and diffusers' own MagCache hook makes the same decisions from the exported ratios on the
tiny Wan configuration), and the command writes a plan from a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analyses.plan import (
    PlanError,
    mag_ratios,
    magcache_skips,
    relative_l1,
    skip_schedule,
    update_drift,
)
from probe_cli import main
from tests.conftest import file_tree


def test_constant_features_give_ratio_one_and_no_change():
    x = torch.randn(2, 1, 5, 8).expand(2, 4, 5, 8)  # every step the same
    y = torch.randn(2, 1, 5, 8).expand(2, 4, 5, 8)
    torch.testing.assert_close(mag_ratios(x, y), torch.ones(4, dtype=torch.float64), atol=1e-7, rtol=0)  # MagCache's 1e-8 guard
    assert torch.equal(relative_l1(x), torch.zeros(2, 4, dtype=torch.float64))
    assert torch.equal(update_drift(x, y), torch.zeros(2, 4, dtype=torch.float64))


def test_the_statistics_by_hand():
    first = torch.zeros(1, 3, 2, 2)
    residual = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # token norms 1 and 3
    last = torch.stack([residual * s for s in (1.0, 2.0, 3.0)])[None]  # the residual doubles, then x1.5
    ratios = mag_ratios(first, last)
    assert ratios.tolist() == pytest.approx([1.0, 2.0, 1.5], abs=1e-7)
    change = relative_l1(last)
    assert change[0].tolist() == pytest.approx([0.0, 1.0, 0.5])  # sum |x_t - x_t-1| / sum |x_t-1|
    drift = update_drift(first, last)
    assert drift[0].tolist() == pytest.approx([0.0, 0.5, 1 / 3])  # ||u_t - u_t-1|| / ||u_t||


def test_the_skip_schedule_accumulates_drift_as_magcache_does():
    drift = [[0.0, 0.05, 0.05, 0.05, 0.3, 0.01]]
    assert skip_schedule(drift, 0.0) == [[False] * 6]  # a zero budget computes everything
    assert skip_schedule(drift, 0.12) == [[False, True, True, False, False, True]]
    assert skip_schedule(drift, 1e6) == [[False] + [True] * 5]
    with pytest.raises(PlanError, match="budget"):
        skip_schedule(drift, -1.0)


def test_teacache_fit_recovers_a_known_polynomial():
    coefficients = [3.0, -2.0, 0.5, 1.2, 0.01]
    x = np.linspace(0.01, 0.5, 40)
    assert np.polyfit(x, np.polyval(coefficients, x), 4) == pytest.approx(coefficients, rel=1e-6, abs=1e-8)


def hook_skips(ratios: list[float], steps: int, threshold: float, max_skip: int, retention: float) -> list[bool]:
    """The steps diffusers' own MagCache hook skips on the tiny Wan transformer with these ratios (a step is skipped
    when its first block's attention does not run)."""
    from diffusers.hooks import MagCacheConfig

    computed = _computed_steps(MagCacheConfig(threshold=threshold, max_skip_steps=max_skip, retention_ratio=retention,
                                              num_inference_steps=steps, mag_ratios=ratios), steps)
    return [step not in computed for step in range(steps)]


@pytest.mark.parametrize("threshold,retention,max_skip", [(0.06, 0.2, 3), (0.3, 0.0, 2), (0.02, 0.5, 1)])
def test_diffusers_magcache_hook_makes_the_same_decisions_from_the_exported_ratios(threshold, retention, max_skip):


    steps = 10
    ratios = [1.0, 1.02, 0.99, 1.01, 1.0, 0.97, 1.03, 0.98, 1.05, 0.9]
    assert hook_skips(ratios, steps, threshold, max_skip, retention) == magcache_skips(ratios, steps, threshold, max_skip,
                                                                                     retention)


@pytest.mark.slow
def test_probe_plan_writes_a_plan_from_a_run_and_refuses_what_it_cannot_use(tmp_path, capsys):
    from probe_cli import main

    run = tmp_path / "cal"
    assert main(["run", "--layers", "all", "--mode", "full", "--context", "2", "--frames", "2", "--steps", "6",
                 "--quiet", "--out", str(run)]) == 0
    assert main(["plan", str(run), "--budget", "0", "--out", str(tmp_path / "zero.json")]) == 0
    zero = json.loads((tmp_path / "zero.json").read_text())
    assert zero["format"] == "scd-probes-plan/1" and zero["blocks"]["skipped_share"] == 0.0
    assert len(zero["magcache"]["mag_ratios"]) == 6 and zero["magcache"]["mag_ratios"][0] == 1.0
    assert len(zero["teacache"]["coefficients"]) == 5 and len(zero["blocks"]["update_drift"]) == 30
    assert zero["split"]["decoder_from"] == len(zero["split"]["encoder_blocks"])
    capsys.readouterr()
    assert main(["plan", str(run), "--budget", "10", "--out", str(tmp_path / "all.json"), "--export", "diffusers"]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["blocks"]["skipped_share"] == pytest.approx(5 / 6)
    exported = json.loads((tmp_path / "all.diffusers.json").read_text())  # beside the plan, its stem + .diffusers
    from analyses.plan import cache_config

    assert cache_config(exported, "MagCacheConfig").num_inference_steps == 6 and exported["matched_share"] == \
        pytest.approx(5 / 6)
    printed = capsys.readouterr().out  # the plan's summary, from the file just written
    assert "all.diffusers.json" in printed and "calibrated on 1 generation x 6 steps" in printed
    assert "skips 83.3% of the block calls (30 blocks x 6 steps)" in printed and "probe intervene --plan" in printed
    capsys.readouterr()
    assert main(["plan", str(run), "--out", str(tmp_path / "zero.json")]) == 2  # exists, no --force
    stream = tmp_path / "stream"
    assert main(["run", "--layers", "all", "--mode", "stream", "--context", "2", "--frames", "1", "--steps", "3",
                 "--quiet", "--out", str(stream)]) == 0
    capsys.readouterr()
    assert main(["plan", str(stream), "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "--mode full" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "s.json").exists()


def test_a_zero_budget_plan_reproduces_the_unmodified_video_bitwise_and_a_skipping_one_runs_fewer_blocks(tiny_model):
    from probes.surgery import block_skip
    from scd.sampling import generate

    context = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    depth, steps = tiny_model.config.depth, 5
    plain = generate(tiny_model, context, 2, steps=steps, seed=3)
    drift = [[0.0] + [0.02] * (steps - 1) for _ in range(depth)]
    with block_skip(tiny_model, skip_schedule(drift, 0.0)) as counts:
        same = generate(tiny_model, context, 2, steps=steps, seed=3)
    assert torch.equal(same, plain) and counts["skipped"] == 0
    computed = counts["run"]
    with block_skip(tiny_model, skip_schedule(drift, 0.05)) as counts:  # every other step after step 0 skipped
        faster = generate(tiny_model, context, 2, steps=steps, seed=3)
    assert counts["skipped"] > 0 and counts["run"] == computed - counts["skipped"]
    assert not torch.equal(faster, plain)
    with pytest.raises(Exception, match="step 0"):
        with block_skip(tiny_model, [[True] * steps] * depth):
            pass


@pytest.mark.slow
def test_probe_intervene_validates_a_plan_on_held_out_clips_against_the_model_level_baselines(tmp_path, capsys):
    import pandas as pd

    from probe_cli import main

    run, plan = tmp_path / "cal", tmp_path / "plan.json"
    assert main(["run", "--layers", "all", "--mode", "full", "--clip", "0", "--context", "2", "--frames", "2",
                 "--steps", "6", "--quiet", "--out", str(run)]) == 0
    assert main(["plan", str(run), "--budget", "0.2", "--out", str(plan)]) == 0
    capsys.readouterr()
    common = ["intervene", "--plan", str(plan), "--steps", "6", "--clips", "1", "--context", "2", "--frames", "2",
              "--quiet"]
    assert main([*common, "--out", str(tmp_path / "overlap")]) == 2  # clip 0 calibrated the plan
    err = capsys.readouterr().err
    assert "in the plan's calibration set" in err and not (tmp_path / "overlap").exists()
    assert main([*common, "--steps", "5", "--first-clip", "1", "--out", str(tmp_path / "steps")]) == 2
    assert "calibrated at 6 steps" in capsys.readouterr().err
    assert main([*common, "--first-clip", "1", "--budget", "0,0.2", "--out", str(tmp_path / "v")]) == 0
    table = pd.read_parquet(tmp_path / "v" / "interventions.parquet")
    assert set(table.intervention) >= {"none", "plan", "magcache", "teacache", "skip", "redraw"}
    assert set(table["clip"]) == {1}
    zero = table[(table.intervention == "plan") & (table.layer == 0)]
    assert (zero.drift_max_abs == 0).all()  # a zero budget reproduces the unmodified video bitwise
    info = json.loads((tmp_path / "v" / "interventions.json").read_text())
    assert info["plan"]["budgets"] == [0.0, 0.2] and info["first_clip"] == 1
    assert info["plan"]["settings"]["plan0"]["skipped_share"] == 0.0
    assert main(["report", str(run), "--interventions", str(tmp_path / "v"), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()  # the plan's points with intervals, beside the frames of the clip
    assert "speed-up [95% interval]" in html and "plan1" in html and "generated frames under" in html


def test_the_speed_quality_table_marks_the_pareto_front():
    import pandas as pd

    from analyses.plan import DRIFT_CAP, speed_quality_table

    rows = []
    for clip in (0, 1):
        rows.append(("none", -1, -1, -1, clip, float("inf"), 1.0))
        for kind, layer, seconds, drift in (("plan", 0, 0.5, 30.0), ("magcache", 0, 0.5, 20.0), ("teacache", 0, 0.25, 15.0),
                                            ("skip", 8, 0.9, float("inf"))):
            rows.append((kind, layer, 22 if kind == "skip" else -1, 3 if kind == "skip" else -1, clip, drift + clip,
                         seconds))
    table = pd.DataFrame(rows, columns=["intervention", "layer", "span_end", "keep_steps", "clip", "drift_psnr",
                                        "seconds_per_frame"])
    points = speed_quality_table(table).set_index("setting")
    assert points.loc["plan0", "speedup"] == pytest.approx(2.0) and points.loc["teacache0", "speedup"] == pytest.approx(4.0)
    assert points.loc["plan0", "drift_psnr"] == pytest.approx(30.5) and points.loc["skip8-22k3", "drift_psnr"] == DRIFT_CAP
    assert points.pareto.to_dict() == {"plan0": True, "magcache0": False, "teacache0": True, "skip8-22k3": True}


@pytest.mark.parametrize("family", ["wan", "skyreels"])
def test_a_plan_calibrates_on_a_wan_family_run(family, tmp_path):
    from analyses.plan import plan
    from probes import Probe, load_run
    from scd.sampling import generate
    from scd.wan.causal_wan import CausalWan
    from tests.wan_tiny import LATENT, tiny

    model = CausalWan(tiny(family), LATENT, frames_per_block=1)
    with Probe(model, "all", mode="full") as probe:
        generate(model, torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(0)), 2, steps=6)
    run = load_run(probe.save(tmp_path / "run", clip=0, seed=0))
    content = plan([run], 0.0)
    first = run.input_features().float()
    last = run.features(run.depth - 1).float()
    assert content["magcache"]["mag_ratios"] == pytest.approx(mag_ratios(first, last).tolist())
    assert content["blocks"]["skipped_share"] == 0.0 and len(content["blocks"]["skip"]) == run.depth


@pytest.mark.parametrize("family", ["wan", "skyreels"])
def test_a_plan_runs_on_a_wan_family_model_and_a_zero_budget_is_bitwise(family):
    from probes.surgery import block_skip
    from scd.sampling import generate
    from scd.wan.causal_wan import CausalWan
    from tests.wan_tiny import LATENT, tiny

    model = CausalWan(tiny(family), LATENT, frames_per_block=1)
    model.set_prompt(torch.randn(5, 16, generator=torch.Generator().manual_seed(2)), guidance_scale=3.0)
    context = torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    plain = generate(model, context, 2, steps=4, seed=1)
    depth = len(model.transformer.blocks)
    drift = [[0.0, 0.02, 0.02, 0.02] for _ in range(depth)]
    with block_skip(model, skip_schedule(drift, 0.0)) as counts:
        same = generate(model, context, 2, steps=4, seed=1)
    assert torch.equal(same, plain) and counts["skipped"] == 0
    with block_skip(model, skip_schedule(drift, 0.03)) as counts:
        faster = generate(model, context, 2, steps=4, seed=1)
    assert counts["skipped"] > 0 and not torch.equal(faster, plain)
    assert torch.equal(generate(model, context, 2, steps=4, seed=1), plain)  # the blocks restored


@pytest.mark.parametrize("family", ["wan", "skyreels"])
def test_the_middle_span_skip_runs_on_a_wan_family_and_equals_the_span_as_a_block_schedule(family):
    """The paper's span skip on a Wan transformer: k = steps is bitwise the unmodified video; otherwise the span's
    residual from the last computed step equals the sum of its blocks' updates from that step, so the same skip as a
    block schedule (every block of the span reusing its own update) gives the same video up to float summation."""
    from probes.surgery import block_skip, span_skip
    from scd.sampling import generate
    from scd.wan.causal_wan import CausalWan
    from tests.wan_tiny import LATENT, tiny

    model = CausalWan(tiny(family, num_layers=3), LATENT, frames_per_block=1)
    model.set_prompt(torch.randn(5, 16, generator=torch.Generator().manual_seed(2)), guidance_scale=3.0)
    context = torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    plain = generate(model, context, 2, steps=5, seed=1)
    with span_skip(model, 0, 1, keep=5) as counts:
        assert torch.equal(generate(model, context, 2, steps=5, seed=1), plain) and counts["skipped"] == 0
    with span_skip(model, 0, 1, keep=2) as counts:
        skipped = generate(model, context, 2, steps=5, seed=1)
    assert counts["skipped"] == 2 * 2 * 3 * 2  # 2 passes (guidance) x 2 blocks x 3 steps x 2 frames
    schedule = [[step >= 2 for step in range(5)] if block <= 1 else [False] * 5 for block in range(3)]
    with block_skip(model, schedule):
        scheduled = generate(model, context, 2, steps=5, seed=1)
    assert (skipped - plain).abs().max() > 1e-4
    torch.testing.assert_close(scheduled, skipped, atol=1e-5, rtol=1e-5)
    assert torch.equal(generate(model, context, 2, steps=5, seed=1), plain)  # the blocks restored


def test_a_per_chunk_schedule_runs_each_chunk_its_own_schedule(tiny_model):
    from probes.surgery import InterventionError, block_skip
    from scd.sampling import generate

    context = torch.zeros(2, *tiny_model.frame_shape)
    depth = len(tiny_model.blocks)
    plain = generate(tiny_model, context, 3, steps=4, seed=1)
    skip_all = [[False] + [True] * 3 for _ in range(depth)]
    run_all = [[False] * 4 for _ in range(depth)]
    with block_skip(tiny_model, {0: skip_all, 1: skip_all}) as counts:  # one schedule for every chunk, as a dict
        same = generate(tiny_model, context, 3, steps=4, seed=1)
    with block_skip(tiny_model, skip_all) as shared:
        assert torch.equal(generate(tiny_model, context, 3, steps=4, seed=1), same)
    assert counts == shared
    with block_skip(tiny_model, {0: run_all, 1: skip_all}) as counts:  # the first chunk computed; the later ones
        generate(tiny_model, context, 3, steps=4, seed=1)            # take position 1's schedule
    assert counts["skipped"] == 2 * depth * 3
    with block_skip(tiny_model, {0: run_all}) as counts:
        assert torch.equal(generate(tiny_model, context, 3, steps=4, seed=1), plain) and counts["skipped"] == 0
    with pytest.raises(InterventionError, match="chunk positions"), block_skip(tiny_model, {-1: run_all}):
        pass


def test_the_plan_holds_the_drift_per_chunk_position(tmp_path):
    """The per-chunk drift of a one-item run is each frame's own update drift (frames_per_block 1), the pooled drift
    their mean; a chunk schedule is offered for validation only where it differs from the pooled one."""
    from analyses.plan import chunk_schedules, plan
    from probes import Probe, load_run
    from scd.sampling import generate
    from scd.wan.causal_wan import CausalWan
    from tests.wan_tiny import LATENT, tiny

    model = CausalWan(tiny("wan"), LATENT, frames_per_block=1)
    with Probe(model, "all", mode="full") as probe:
        generate(model, torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(0)), 3, steps=5)
    run = load_run(probe.save(tmp_path / "run", clip=0, seed=0))
    content = plan([run], 0.05)
    chunks = content["blocks"]["per_chunk"]
    assert chunks["positions"] == [0, 1, 2]
    first = run.input_features().float()
    own = update_drift(first, run.features(0).float())  # block 0, [frames, steps]
    for position in range(3):
        assert chunks["update_drift"][position][0] == pytest.approx(own[position].tolist())
    assert content["blocks"]["update_drift"][0] == pytest.approx(own.mean(0).tolist())
    assert chunks["differs"] == (chunk_schedules(content, 0.05) is not None)
    content["blocks"]["per_chunk"]["update_drift"][1] = [[0.0] * 5 for _ in range(run.depth)]  # chunk 1 never drifts
    differing = chunk_schedules(content, 0.05)
    assert differing is not None and all(all(row[1:]) for row in differing[1])


def test_latent_drift_by_hand():
    from analyses.interventions import latent_drift

    reference = torch.tensor([[[[0.0, 2.0], [-2.0, 1.0]]]])  # one frame, range 4
    changed = reference + torch.tensor([[[[0.1, -0.1], [0.0, 0.0]]]])
    psnr, ssim = latent_drift(changed, reference)
    assert psnr.item() == pytest.approx(10 * np.log10(16 / (0.02 / 4)), rel=1e-6) and torch.isnan(ssim).all()
    assert latent_drift(reference, reference)[0].item() == float("inf")


@pytest.mark.slow
def test_probe_intervene_validates_a_plan_on_a_diffusers_model_on_held_out_latent_contexts(tmp_path, capsys):
    import pandas as pd

    from probe_cli import main
    from tests.wan_tiny import save_pipeline

    pipe = save_pipeline(tmp_path / "pipe", "wan", vae=False)
    model = f"diffusers:{pipe}"
    run, plan_file = tmp_path / "cal", tmp_path / "plan.json"
    assert main(["run", "--model", model, "--layers", "all", "--mode", "full", "--clip", "0-1", "--context", "2",
                 "--frames", "2", "--steps", "4", "--prompt", "a red car", "--guidance-scale", "3", "--quiet",
                 "--out", str(run)]) == 0
    assert main(["plan", str(run), "--budget", "0.3", "--out", str(plan_file)]) == 0
    capsys.readouterr()
    common = ["intervene", "--model", model, "--plan", str(plan_file), "--steps", "4", "--clips", "2", "--context", "2",
              "--frames", "2", "--quiet"]
    assert main([*common, "--first-clip", "1", "--out", str(tmp_path / "overlap")]) == 2
    assert "in the plan's calibration set" in capsys.readouterr().err and not (tmp_path / "overlap").exists()
    assert main(["intervene", "--model", model, "--out", str(tmp_path / "no")]) == 2
    assert "accepted: --plan FILE" in capsys.readouterr().err
    assert main([*common, "--first-clip", "2", "--budget", "0,0.3", "--out", str(tmp_path / "v")]) == 0
    table = pd.read_parquet(tmp_path / "v" / "interventions.parquet")
    assert set(table.intervention) >= {"none", "plan", "magcache", "teacache", "skip", "redraw"}
    assert set(table["clip"]) == {2, 3} and table.psnr.isna().all()  # latents: no truth
    zero = table[(table.intervention == "plan") & (table.layer == 0)]
    assert (zero.drift_max_abs == 0).all()  # a zero budget reproduces the unmodified latents bitwise
    assert (table[table.intervention == "redraw"].drift_psnr < table[table.intervention == "plan"].drift_psnr.min()).all()
    info = json.loads((tmp_path / "v" / "interventions.json").read_text())
    assert info["plan"]["budgets"] == [0.0, 0.3] and info["generation"]["prompt"] == "a red car"
    report = tmp_path / "report.html"
    assert main(["report", str(run), "--interventions", str(tmp_path / "v"), "-o", str(report)]) == 0
    html = report.read_text()  # the plan's points with their intervals; no claim of other interventions, no frames
    assert "speed-up [95% interval]" in html and "plan1" in html
    assert 'class="claims"' not in html.split('<h2 id="interventions-1">')[1].split("<h2")[0]


def test_a_plan_calibrated_on_a_context_video_is_refused_on_a_diffusers_model_before_loading(tmp_path, capsys):
    from probe_cli import main

    plan_file = tmp_path / "plan.json"
    plan = json.loads((Path(__file__).parents[2] / "reports" / "plan" / "plan.json").read_text())  # a sound plan...
    plan["calibration"]["generation"]["context"] = {"source": "video", "path": "clip.mp4"}  # ... calibrated on a video
    plan["calibration"]["config"]["latent_size"] = [8, 8]
    plan_file.write_text(json.dumps(plan))
    assert main(["intervene", "--model", f"diffusers:{tmp_path / 'absent'}", "--plan", str(plan_file), "--out",
                 str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibrated on video" in err[0] and "accepted:" in err[0] and not (tmp_path / "v").exists()


def test_the_ratios_a_plan_exports_from_a_wan_run_drive_diffusers_magcache_hook_to_our_decisions(tmp_path):
    """End to end on the tiny configuration: a probe run of the Wan transformer, `plan` exports its mag_ratios, and
    diffusers' own MagCache hook on that transformer skips exactly the steps `magcache_skips` says, at several
    thresholds (some skipping, some not)."""

    from analyses.plan import plan
    from probes import Probe, load_run
    from scd.sampling import generate
    from scd.wan.causal_wan import CausalWan
    from tests.wan_tiny import LATENT, tiny

    steps = 10
    model = CausalWan(tiny("wan"), LATENT, frames_per_block=1)
    with Probe(model, "all", mode="full") as probe:
        generate(model, torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(0)), 2, steps=steps)
    ratios = plan([load_run(probe.save(tmp_path / "run", clip=0, seed=0))], 0.0)["magcache"]["mag_ratios"]
    decisions = []
    for threshold in (0.01, 0.05, 0.2, 1.0):
        expected = magcache_skips(ratios, steps, threshold, 2, 0.1)
        assert hook_skips(ratios, steps, threshold, 2, 0.1) == expected, threshold
        decisions.append(sum(expected))
    assert max(decisions) > 0 and min(decisions) < max(decisions)  # the thresholds reach different decisions


def test_a_second_writer_of_the_same_plan_does_not_replace_the_first_without_force(tmp_path, monkeypatch):
    """Two `probe plan` writers of one output, both past the existence check before either wrote: the second to
    finish is refused in one line and the first's plan is kept (with force it replaces it)."""
    from scd.files import OutputError, atomic_file

    out = tmp_path / "plan.json"
    with pytest.raises(OutputError, match="was written by another process while this one worked") as caught:
        with atomic_file(out, new=True) as tmp:
            tmp.write_text("second")
            out.write_text("first")  # the other writer finishes meanwhile
    assert "\n" not in str(caught.value) and out.read_text() == "first" and sorted(tmp_path.iterdir()) == [out]
    with atomic_file(out, new=False) as tmp:
        tmp.write_text("forced")
    assert out.read_text() == "forced"


def _damaged(plan: dict, where: str, value) -> dict:
    """The plan with the field at dotted path `where` (list indices as numbers) set to `value` (DELETE: removed)."""
    import copy

    out = copy.deepcopy(plan)
    *parents, last = [int(p) if p.isdigit() else p for p in where.split(".")]
    node = out
    for p in parents:
        node = node[p]
    if value == "DELETE":
        del node[last]
    else:
        node[last] = value
    return out


DAMAGED_PLANS = [  # (field, value, the refusal's words): every class the plan's numbers and calibration can break in
    ("calibration", "DELETE", "'calibration' is missing"),
    ("checkpoint", "sha", "'checkpoint' is not an object"),
    ("calibration.items.0.clip", "0", "calibration items are not"),
    ("calibration.items.0.clip", True, "calibration items are not"),
    ("calibration.items.0.seed", -1, "calibration items are not"),
    ("calibration.steps", [], "calibration steps are not"),
    ("calibration.timesteps.3", math.nan, "calibration timesteps are not"),
    ("magcache.mag_ratios.2", math.nan, "magcache 'mag_ratios'"),
    ("magcache.max.0", math.inf, "magcache 'max'"),
    ("magcache.min", [1.0], "magcache 'min'"),
    ("teacache.coefficients.1", math.inf, "teacache coefficients"),
    ("teacache.degree", "4", "teacache coefficients"),
    ("teacache.rel_l1_input.0", -1.0, "teacache 'rel_l1_input'"),
    ("blocks.budget", math.nan, "blocks budget"),
    ("blocks.update_drift.0.3", math.nan, "blocks update_drift"),
    ("blocks.update_drift.4", [0.1], "blocks update_drift"),
    ("blocks.skip.0.0", 1, "blocks skip"),
    ("blocks.skip.2", "DELETE", "blocks skip"),
    ("blocks.per_chunk.positions.0", "1", "per_chunk positions"),
    ("blocks.per_chunk.update_drift.0.0.0", math.nan, "per_chunk update_drift and skip"),
]


@pytest.mark.parametrize("where, value, words", DAMAGED_PLANS, ids=[f"{w}={v!r}" for w, v, _ in DAMAGED_PLANS])
def test_a_damaged_plan_is_refused_where_it_is_read_in_one_line(where, value, words, tmp_path, capsys):
    from analyses.plan_file import plan_problem

    sound = json.loads((Path(__file__).parents[2] / "reports" / "plan" / "plan.json").read_text())
    assert plan_problem(sound) is None  # the committed plan passes: the check refuses damage, not plans
    (tmp_path / "plan.json").write_text(json.dumps(_damaged(sound, where, value)))  # NaN / Infinity as JSON writes them
    before = file_tree(tmp_path)
    assert main(["intervene", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "accepted: a file written by probe plan" in err, err
    assert file_tree(tmp_path) == before


def _computed_steps(config, steps: int) -> list[int]:
    """The steps at which the tiny Wan transformer, with `transformer.enable_cache(config)`, runs its first block's
    self-attention (its q projection is called) rather than skipping or predicting it."""
    from tests.wan_tiny import tiny

    transformer = tiny("wan")
    transformer.enable_cache(config)
    ran = []
    handle = transformer.blocks[0].attn1.to_q.register_forward_hook(lambda *args: ran.append(True))
    x = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    computed = []
    with torch.no_grad():
        for step in range(steps):
            before = len(ran)
            with transformer.cache_context("cond"):  # as diffusers' pipelines call it
                transformer(x, torch.tensor([1000.0 - 100 * step]), text)
            if len(ran) > before:
                computed.append(step)
    handle.remove()
    return computed


@pytest.mark.parametrize("budget", [0.05, 0.3, 2.0])
def test_exported_diffusers_configs_make_the_decisions_the_plan_computed(budget):
    """`probe plan --export diffusers`'s configs, built into diffusers' own objects and enabled on the tiny Wan
    transformer, skip (MagCache) or predict (TaylorSeer) exactly the steps the export says, at every budget."""
    from analyses.plan import cache_config, diffusers_cache_configs

    steps = 10
    ratios = [1.0, 1.02, 0.99, 1.01, 1.0, 0.97, 1.03, 0.98, 1.05, 0.9]
    drift = [[0.0, 0.05, 0.02, 0.08, 0.01, 0.03, 0.2, 0.02, 0.04, 0.1], [0.0, 0.3, 0.1, 0.02, 0.02, 0.05, 0.01, 0.1,
                                                                         0.02, 0.3]]
    exported = diffusers_cache_configs({"magcache": {"mag_ratios": ratios}, "blocks": {"update_drift": drift,
                                                                                       "budget": budget}})
    skipped = exported["decisions"]["MagCacheConfig"]["skipped_steps"]
    assert _computed_steps(cache_config(exported, "MagCacheConfig"), steps) == [s for s in range(steps)
                                                                                 if s not in skipped]
    computed = exported["decisions"]["TaylorSeerCacheConfig"]["computed_steps"]
    assert _computed_steps(cache_config(exported, "TaylorSeerCacheConfig"), steps) == computed
    assert 0 in computed and steps - 1 in computed
    with pytest.raises(PlanError, match="accepted"):
        cache_config(exported, "FirstBlockCacheConfig")


def test_the_gated_rule_weights_each_blocks_drift_by_the_whole_models_change():
    from analyses.plan import gated_schedule, skip_schedule

    drift = [[0.0, 0.05, 0.05, 0.05, 0.3, 0.01, 0.02]]
    flat = [0.0] + [1.0] * 6  # the model changes alike at every step: the per-block rule, the last step kept
    assert gated_schedule(drift, flat, 0.0) == [[False] * 7]
    assert gated_schedule(drift, flat, 0.12) == [skip_schedule(drift, 0.12)[0][:-1] + [False]]
    # the model does not move at steps 3-4: its blocks' drift counts 0 there. Weights: the change over its mean after
    # step 0 (4/6), so 1.5 where it moves; weighted drift 0, .075, .075, 0, 0, .015, .03 against a budget of .06
    still = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert gated_schedule(drift, still, 0.06) == [[False, False, False, True, True, True, False]]
    with pytest.raises(PlanError, match="budget"):
        gated_schedule(drift, flat, -1.0)


def _validation(frames: int = 3) -> pd.DataFrame:
    """A constructed plan validation: 4 clips x 2 draws; gated0 drifts 2 dB less than teacache0 on every clip, loses
    0.01 SSIM (clip-dependent by +-0.002), runs as fast; teacache0's SSIM loss 0.05 on every clip."""
    rows = []
    for clip in range(4):
        for draw in range(2):
            base = {"layer": 0, "span_end": -1, "keep_steps": -1, "tail_steps": -1, "clip": clip, "draw": draw}
            truth = 0.8 + 0.01 * clip
            rows.append({**base, "intervention": "none", "layer": -1, "drift_psnr": float("inf"), "ssim": truth,
                         "psnr": 20.0, "seconds_per_frame": 2.0, "drift_psnr_frames": [float("inf")] * frames,
                         "ssim_frames": [truth] * frames})
            gated = truth - 0.01 + (0.002 if clip % 2 else -0.002)
            rows.append({**base, "intervention": "gated", "drift_psnr": 40.0 + clip, "ssim": gated, "psnr": 19.9,
                         "seconds_per_frame": 1.0, "drift_psnr_frames": [42.0 + clip - p for p in range(frames)],
                         "ssim_frames": [gated] * frames})
            rows.append({**base, "intervention": "teacache", "drift_psnr": 38.0 + clip, "ssim": truth - 0.05,
                         "psnr": 19.0, "seconds_per_frame": 1.0, "drift_psnr_frames": [39.0 + clip] * frames,
                         "ssim_frames": [truth - 0.05] * frames})
    return pd.DataFrame(rows)


def test_rollout_statistics_by_hand_on_a_constructed_validation():
    """Non-inferiority, drift by position and the rule comparison, against hand computations: paired by clip, a
    clip's draws averaged, 95% t intervals over the 4 clips."""
    from scipy import stats

    from analyses.plan import non_inferiority, position_table, rule_comparison

    table = _validation()
    quality = non_inferiority(table, 0.02, 0.5).set_index("setting")
    losses = [0.01 - (0.002 if clip % 2 else -0.002) for clip in range(4)]  # unmodified - gated, per clip
    half = stats.t.ppf(0.975, 3) * np.std(losses, ddof=1) / 2
    assert quality.loc["gated0", "ssim_loss"] == pytest.approx(0.01)
    assert quality.loc["gated0", "ssim_loss_high"] == pytest.approx(0.01 + half)
    assert quality.loc["gated0", "verdict"] == "non-inferior" and quality.loc["gated0", "clips"] == 4
    assert quality.loc["teacache0", "verdict"] == "inferior"  # 0.05 on every clip: the interval is [0.05, 0.05]
    position = position_table(table).set_index(["setting", "position"])
    assert position.loc[("gated0", 2), "drift_psnr"] == pytest.approx(np.mean([40.0 + c for c in range(4)]))
    assert position.loc[("teacache0", 0), "ssim_loss"] == pytest.approx(0.05)
    comparison = rule_comparison(table, "gated", "teacache", 0.02, 0.05).iloc[0]
    assert comparison.drift_difference == pytest.approx(2.0) and comparison.drift_difference_low == pytest.approx(2.0)
    assert comparison.ssim_difference == pytest.approx(0.04) and comparison.speed_ratio == pytest.approx(1.0)
    assert comparison.verdict == "beats"
    slower = table.assign(seconds_per_frame=np.where(table.intervention == "gated", 1.2, table.seconds_per_frame))
    assert rule_comparison(slower, "gated", "teacache", 0.02, 0.05).iloc[0].verdict == "does not beat"  # 0.83x
    assert rule_comparison(table, "teacache", "gated", 0.02, 0.05).iloc[0].verdict == "drifts more"
