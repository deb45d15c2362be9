"""`probe bench` and SCD through `probe run` / `probe report`: files on disk, FLOPs against torch's counter,
timings against the wall clock, bad input."""

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from analyses.bench import load_bench, time_generation
from probe_cli import main
from probes import load_run
from scd.flops import generation_flops
from scd.models.baseline import BaselineConfig, CausalVideoDiffuser
from scd.models.scd_model import SCDConfig, SeparableCausalDiffuser
from scd.sampling import generate
from tests.analyses.test_report_layout import layout_problems
from tests.conftest import randomize


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("model", [
    CausalVideoDiffuser(BaselineConfig(width=64, depth=3, heads=2)),
    SeparableCausalDiffuser(SCDConfig(width=64, encoder_depth=3, decoder_depth=2, heads=2)),
], ids=["baseline", "scd"])
def test_analytic_flops_match_torch_flop_counter_frame_by_frame(model):
    """Each generated frame's segment (the previous frame's cache pass and this frame's steps) against
    torch's FlopCounterMode on a real `generate`; the analytic count leaves out embeddings, modulation and
    the output head, a few percent at width 64."""
    context, frames, steps = 3, 3, 4
    randomize(model)
    counter, marks = FlopCounterMode(display=False), []

    def on_step(frame, step, timestep):
        if step is None and frame >= context:
            marks.append(counter.get_total_flops())

    with counter, sdpa_kernel(SDPBackend.MATH):  # the math path is plain matmuls, which the counter counts
        generate(model, torch.zeros(context, 3, 32, 32), frames, steps=steps, callback=on_step)
    measured = [marks[0], *(b - a for a, b in zip(marks, marks[1:], strict=False))]
    analytic = generation_flops(model.get_config(), context, frames, steps)
    for k in range(1, frames):  # single-frame passes: no masked-out scores to tell apart
        assert analytic[k] == pytest.approx(measured[k], rel=0.05), (k, analytic, measured)
        assert analytic[k] <= measured[k]


def test_timings_add_up_to_the_wall_clock(tiny_checkpoints):
    import time

    from scd.zoo import load_model

    model = load_model(tiny_checkpoints[0])
    context = torch.zeros(2, 3, 16, 16)
    start = time.perf_counter()
    timing = time_generation(model, context, 4, 3)
    wall = time.perf_counter() - start
    assert len(timing["latencies_s"]) == 3 and min(timing["latencies_s"]) > 0
    assert timing["first_frame_s"] + sum(timing["latencies_s"]) <= wall


def test_bench_writes_tables_and_the_report_shows_them_next_to_both_runs(tiny_checkpoints, tmp_path, capsys):
    base, scd = tiny_checkpoints
    out = tmp_path / "bench"
    assert main(["bench", "--baseline", str(base), "--scd", str(scd), "--steps", "3", "--context", "2,3",
                 "--frames", "3", "--repeats", "2", "--clips", "2", "--samples", "2", "--quality-steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    speed = pd.read_parquet(out / "speed.parquet")
    assert set(speed.model) == {"base", "scd"} and set(speed.context) == {2, 3} and set(speed.steps) == {3}
    assert len(speed) == 2 * 2 * 2 * 2  # models x contexts x repeats x latencies (3 frames)
    quality = pd.read_parquet(out / "quality.parquet")
    assert set(quality.model) == {"base", "scd", "copy last frame"}
    assert len(quality[quality.model == "scd"]) == 2 * 2 * 4  # samples x clips x generated frames
    tables = load_bench(out)
    ratios = tables["ratios"].set_index("context")
    summary = tables["speed"].set_index(["model", "context"])
    for context in (2, 3):  # the ratio table is computed from the speed table, both ways round
        assert ratios.loc[context, "frames_per_s_ratio"] == pytest.approx(
            summary.loc[("scd", context), "frames_per_s"] / summary.loc[("base", context), "frames_per_s"])
    best = tables["quality"].set_index("model")
    assert (best.psnr_best >= best.psnr - 1e-9).all()
    assert "FLOP ratio (analytic)" in (out / "bench.md").read_text()
    assert json.loads((out / "bench.json").read_text())["checkpoints"]["scd"]["sha256"]

    runs = []
    for model, layer in ((base, "1"), (scd, "4")):
        runs.append(tmp_path / f"run-{model.name}")
        assert main(["run", "--model", str(model), "--layer", layer, "--context", "2", "--frames", "2", "--steps", "3",
                     "--out", str(runs[-1]), "--quiet"]) == 0
    assert load_run(runs[1]).manifest["layer_roles"] == ["decoder"]
    report = tmp_path / "report.html"
    assert main(["report", str(runs[0]), str(runs[1]), "--bench", str(out), "-o", str(report)]) == 0
    html = report.read_text()
    assert "run-base" in html and "run-scd" in html and "probe bench" in html and "frames/s ratio (measured)" in html
    assert layout_problems(html) == []


def test_scd_layer_out_of_range_names_encoder_and_decoder(tiny_checkpoints, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_checkpoints[1]), "--layer", "5", "--out", str(tmp_path / "x")]) == 2
    assert "encoder 0..2, decoder 3..4" in _error(capsys)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, message", [
    (["--frames", "1"], "value 1 is out of range; accepted: an integer in 2..1024"),
    (["--steps", "0"], "accepted: distinct comma-separated integers, each in 1..1000"),
    (["--context", "a"], "integers"),
    (["--baseline", "nope"], "unknown model"),
    (["--same"], "same model"),
])
def test_bench_bad_input_is_one_line_and_writes_nothing(tiny_checkpoints, tmp_path, capsys, flags, message):
    base, scd = tiny_checkpoints
    args = ["bench", "--baseline", str(base), "--scd", str(scd), "--out", str(tmp_path / "b"), *flags]
    if "--same" in flags:
        args = ["bench", "--baseline", str(base), "--scd", str(base), "--out", str(tmp_path / "b")]
    assert main(args) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "b").exists()


def test_report_refuses_a_directory_that_is_not_a_bench(tiny_checkpoints, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--model", str(tiny_checkpoints[0]), "--layer", "1", "--context", "2", "--frames", "1", "--steps", "2",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--bench", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "not a bench directory" in _error(capsys)
    assert not (tmp_path / "r.html").exists()


def test_the_wan_1_3b_size_is_wan_2_1_1_3b_and_wan_tiny_its_layout():
    """The `wan1.3b` size is Wan-2.1-1.3B's width, depth, heads and MLP in both families (the GPU tests build it: at
    that width the CPU test took 7 GiB resident); `wan-tiny` is the same layout at width 48, which the CPU tests run."""
    from scd.models.baseline import BASELINE_SIZES
    from scd.models.scd_model import SCD_SIZES

    base, scd = BASELINE_SIZES["wan1.3b"], SCD_SIZES["wan1.3b"]
    assert (base.width, base.depth, base.heads, round(base.width * base.mlp_ratio)) == (1536, 30, 12, 8960)
    assert (scd.width, scd.encoder_depth, scd.decoder_depth, scd.channels) == (1536, 25, 10, 16)
    for sizes in (BASELINE_SIZES, SCD_SIZES):
        tiny, full = sizes["wan-tiny"], sizes["wan1.3b"]
        assert (tiny.width, tiny.heads, tiny.mlp_ratio) == (48, 2, 4.0)
        assert replace(tiny, width=full.width, heads=full.heads, mlp_ratio=full.mlp_ratio) == full


def test_bench_at_the_wan_layout_runs_on_the_cpu_at_a_reduced_latent(tmp_path):
    """Both families at Wan-1.3B's layout (wan-tiny: its depth, latents and patches at width 48; random weights,
    bfloat16), a 4x8 latent, one step: the tables, the paper's figures beside them, and no quality (random weights
    have none)."""
    out = tmp_path / "wan"
    assert main(["bench", "--size", "wan-tiny", "--latent-size", "4x8", "--dtype", "bfloat16", "--steps", "1",
                 "--context", "1,2", "--frames", "2", "--repeats", "1", "--out", str(out), "--quiet"]) == 0
    bench = load_bench(out)
    info, speed = bench["info"], bench["speed"]
    base, scd = info["configs"]["baseline-wan-tiny"], info["configs"]["scd-wan-tiny"]
    assert (base["width"], base["depth"], base["heads"]) == (48, 30, 2)
    assert (scd["encoder_depth"], scd["decoder_depth"], scd["channels"]) == (25, 10, 16)
    assert (base["frame_size"], base["frame_width"], info["dtype"], info["size"]) == (4, 8, "bfloat16", "wan-tiny")
    assert len(speed) == 4 and set(speed.context) == {1, 2} and (speed.frames_per_s > 0).all()
    assert (speed.first_frame_s > 0).all() and bench["quality"].empty and len(bench["ratios"]) == 2
    assert "Not measured: random weights" in (out / "bench.md").read_text()


@pytest.mark.gpu
def test_bench_at_the_wan_1_3b_size_on_cuda_in_bfloat16(tmp_path):
    """The paper's setting, shortened: 480p latents (1,560 tokens per frame), 4 steps, contexts of 1 and 21 frames."""
    out = tmp_path / "wan"
    assert main(["bench", "--size", "wan1.3b", "--device", "cuda", "--steps", "4", "--context", "1,21", "--frames", "3",
                 "--repeats", "1", "--out", str(out), "--quiet"]) == 0
    bench = load_bench(out)
    assert bench["info"]["dtype"] == "bfloat16" and (bench["speed"].frames_per_s > 0).all()
    assert (bench["speed"].peak_mib > 0).all()


def test_probe_run_at_the_wan_layout_records_every_layer_on_latent_frames(tmp_path):
    """`probe run --size wan-tiny` on the CPU at a small latent: all 30 layers, features and attention, with the
    latent frames shown as three channels and no ground truth."""
    out = tmp_path / "run"
    assert main(["run", "--size", "wan-tiny", "--latent-size", "4x8", "--layers", "all", "--context", "1", "--frames",
                 "1", "--steps", "2", "--dtype", "bfloat16", "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    assert run.manifest["config"]["width"] == 48 and run.manifest["tokens_per_frame"] == 8
    assert run.attention_layers == list(range(30)) and run.features(29).shape == (1, 2, 8, 48)
    assert run.manifest["video_shows"] == "latent channels 0-2" and not run.manifest["ground_truth"]
    assert torch.allclose(run.attention(0).sum(-1), torch.ones(()), atol=1e-4)


@pytest.mark.gpu
def test_probe_run_at_the_wan_1_3b_size_on_cuda_with_a_21_frame_context(tmp_path):
    """The paper's scale: 480p latents (1,560 tokens per frame), 21 context frames, every layer, bfloat16 on CUDA."""
    out = tmp_path / "run"
    assert main(["run", "--size", "wan1.3b", "--device", "cuda", "--dtype", "bfloat16", "--layers", "all", "--context",
                 "21", "--frames", "1", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    assert run.manifest["tokens_per_frame"] == 1560 and run.attention(29).shape[-1] == 22
    assert torch.allclose(run.attention(29).sum(-1), torch.ones(()), atol=1e-3)
