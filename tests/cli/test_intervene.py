"""`probe intervene` and its place in `probe report`: files on disk, the causal claims, bad input."""

import pandas as pd

from analyses.claims import (
    NOT_MEASURED,
    NOT_OBSERVED,
    REPRODUCED,
    diagonal_tune_recovers,
    knockout_costs_little,
    reuse_costs_little,
    span_skip_keeps_quality,
)
from analyses.interventions import load_interventions
from probe_cli import main
from tests.analyses.test_report_layout import layout_problems

SMALL = ["--clips", "2", "--context", "2", "--frames", "2", "--steps", "3", "--quiet"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_probe_intervene_writes_the_sweeps_and_the_report_shows_them(tiny_checkpoints, tmp_path):
    base, _ = tiny_checkpoints
    out = tmp_path / "iv"
    assert main(["intervene", "--model", str(base), "--reuse", "1,2", "--knockout", "default", "--skip", "none",
                 "--diagonal", "none", *SMALL, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frames.npz", "interventions.json", "interventions.md",
                                                   "interventions.parquet"]
    loaded = load_interventions(out)
    summary = loaded["summary"]
    assert [tuple(r) for r in summary[["intervention", "layer"]].values] == \
        [("none", -1), ("reuse", 1), ("reuse", 2), ("knockout", 0), ("knockout", 1), ("knockout", 2), ("knockout", 3),
         ("redraw", -1)]  # redraw: the unmodified model from a second noise draw, the noise floor
    assert (loaded["table"].groupby(["intervention", "layer"]).clip.nunique() == 2).all()
    assert loaded["videos"]["reuse2"].shape == (4, 16, 16, 3) and "ground_truth" in loaded["videos"]
    assert "PSNR vs unmodified (dB)" in (out / "interventions.md").read_text()

    run = tmp_path / "run"
    assert main(["run", "--model", str(base), "--layers", "all", "--context", "2", "--frames", "1", "--steps", "3",
                 "--out", str(run), "--quiet"]) == 0
    html = tmp_path / "report.html"
    assert main(["report", str(run), "--interventions", str(out), "-o", str(html)]) == 0
    text = html.read_text()
    # the tiny model has 4 blocks: the paper's layer 15 is its block 2, layer 25 its block 3
    assert "step-0 reuse at layer 2 costs little" in text and "knockout from layer 3 (no adaptation) costs little" in text
    assert "Interventions on" in text


def test_the_paper_surgeries_from_the_command(tiny_checkpoints, tmp_path, capsys):
    """--skip and --diagonal by default (mapped onto 4 blocks: skip 1-2, diagonal from 0), a fine-tuned model beside."""
    from scd.zoo import build_model, load_model, save_model

    base, _ = tiny_checkpoints
    model = load_model(base)
    tuned = build_model({**model.get_config(), "frame_local_blocks": 4})
    tuned.load_state_dict(model.state_dict())
    save_model(tuned, tmp_path / "tuned" / "model.safetensors")
    out = tmp_path / "iv"
    assert main(["intervene", "--model", str(base), "--reuse", "none", "--knockout", "none", "--keep-steps", "1,2",
                 "--tuned", str(tmp_path / "tuned"), *SMALL, "--out", str(out)]) == 0
    summary = load_interventions(out)["summary"]
    rows = [tuple(r) for r in summary[["intervention", "layer", "span_end", "keep_steps"]].values]
    assert rows == [("none", -1, -1, -1), ("skip", 1, 2, 1), ("skip", 1, 2, 2), ("diagonal", 0, -1, -1),
                    ("diagonal-tuned", 0, -1, -1), ("redraw", -1, -1, -1)]
    same = summary.set_index("intervention")
    assert same.loc["diagonal", "psnr"] == same.loc["diagonal-tuned", "psnr"]  # the same weights under the same mask
    html = tmp_path / "report.html"
    run = tmp_path / "run"
    assert main(["run", "--model", str(base), "--layers", "all", "--context", "2", "--frames", "2", "--steps", "3",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--interventions", str(out), "--interventions", str(out), "-o", str(html)]) == 0
    progress = capsys.readouterr().err  # a bar over the report's parts, with the overall count: 1 + 1 run + 2 tables
    assert "report" in progress and "4/4" in progress, progress
    text = html.read_text()
    assert "fine-tuned, recover quality" in text and "The paper&#39;s surgeries" in text
    assert layout_problems(text) == []
    assert text.count('<h2 id="interventions-') == 2 and f"{out.name} #1" in text and f"{out.name} #2" in text


def test_the_causal_claims_read_the_table_with_intervals():
    rows = []
    for clip in range(4):
        wobble = 0.1 * clip
        base = {"clip": clip, "span_end": -1, "keep_steps": -1, "drift_ssim": 1.0, "seconds_per_frame": 1.0,
                "ssim": 0.7 + 0.01 * clip}
        rows += [{**base, "intervention": "none", "layer": -1, "drift_psnr": float("inf"), "psnr": 18 + wobble},
                 {**base, "intervention": "reuse", "layer": 15, "drift_psnr": 34 + wobble, "psnr": 17.9 + wobble},
                 {**base, "intervention": "knockout", "layer": 25, "drift_psnr": 22 + wobble, "psnr": 17 + wobble},
                 {**base, "intervention": "skip", "layer": 8, "span_end": 22, "keep_steps": 5, "drift_psnr": 31 + wobble,
                  "psnr": 17.95 + wobble, "seconds_per_frame": 0.5},
                 {**base, "intervention": "diagonal-tuned", "layer": 25, "drift_psnr": 20 + wobble, "psnr": 16 + wobble},
                 {**base, "intervention": "redraw", "layer": -1, "drift_psnr": 25.0, "psnr": 18 + wobble + 0.01 * (-1) ** clip,
                  "ssim": 0.7 + 0.01 * clip + 0.001 * (-1) ** clip}]  # a second noise draw: a narrow floor
    table = pd.DataFrame(rows)
    assert reuse_costs_little(table, 30).verdict == REPRODUCED
    assert knockout_costs_little(table, 30).verdict == NOT_OBSERVED  # a model unlike the paper's
    skip = span_skip_keeps_quality(table, 30)
    assert skip.verdict == REPRODUCED and "speed-up 2.00x" in skip.measured and "PSNR loss 0.05" in skip.measured
    blurred = table.assign(ssim=table.ssim.where(table.intervention != "skip", 0.4))  # PSNR kept, structure lost
    assert span_skip_keeps_quality(blurred, 30).verdict == NOT_OBSERVED
    assert diagonal_tune_recovers(table, 30).verdict == NOT_OBSERVED  # 2 dB below the unmodified model
    floorless = span_skip_keeps_quality(table[table.intervention != "redraw"], 30)
    assert floorless.verdict == "inconclusive" and "noise floor not measured" in floorless.measured
    assert reuse_costs_little(table[table.intervention != "reuse"], 30).verdict == NOT_MEASURED
    assert span_skip_keeps_quality(table[table["clip"] == 0], 30).verdict == "inconclusive"  # one clip: no interval


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_checkpoints, tmp_path, capsys):
    base, scd = tiny_checkpoints
    out = tmp_path / "iv"
    cases = [(["--model", str(scd)], "knocking out its decoder's only past"),
             (["--model", str(scd), "--knockout", "none", "--reuse", "1"], "layer 1 is not an SCD decoder layer"),
             (["--model", str(base), "--refresh", "0"], "--refresh: value 0 is out of range; accepted: an integer in 1..1000"),
             (["--model", str(base), "--reuse", "9"], "--reuse: layer 9 is out of range"),
             (["--model", str(base), "--reuse", "none", "--knockout", "none", "--skip", "none", "--diagonal", "none"],
              "nothing to measure")]
    for flags, problem in cases:
        assert main(["intervene", *flags, *SMALL, "--out", str(out)]) == 2
        assert problem in _error(capsys)
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["intervene", "--model", str(base), "--reuse", "1", "--knockout", "none", *SMALL, "--out", str(out)]) == 2
    assert "already exists" in _error(capsys) and (out / "keep.txt").read_text() == "mine"
    run = tmp_path / "run"
    assert main(["run", "--model", str(base), "--layer", "1", "--context", "2", "--frames", "1", "--steps", "2",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["report", str(run), "--interventions", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "is not a directory written by probe intervene" in _error(capsys)
    assert not (tmp_path / "r.html").exists()


def test_on_scd_reuse_applies_to_its_decoder(tiny_checkpoints, tmp_path):
    _, scd = tiny_checkpoints
    out = tmp_path / "iv"
    assert main(["intervene", "--model", str(scd), "--knockout", "none", *SMALL, "--out", str(out)]) == 0
    summary = load_interventions(out)["summary"]
    assert summary.layer.tolist() == [-1, 3, 4, -1]  # tiny SCD: encoder 0..2, decoder 3..4; then the redraw
    assert (summary[summary.layer == 4].drift_max_abs > 0).all()
