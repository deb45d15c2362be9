"""The project's own promises: the README quick start is what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_quick_start():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S)
    assert block, "README has no quick-start bash block"
    quick_start = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(quick_start) == 2, quick_start  # install + main job, then the tests
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = [line for line in script if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == quick_start


def test_the_reference_report_is_made_from_the_shipped_baseline():
    """reports/baseline.html: committed, small, made from the shipped checkpoint (its sha256 is in it), with the claims
    and the interventions."""
    import json

    report = ROOT / "reports" / "baseline.html"
    assert report.is_file() and report.stat().st_size < 5 * 2**20
    html = report.read_text()
    shipped = json.loads((ROOT / "scd" / "checkpoints" / "baseline.json").read_text())["sha256"]
    assert shipped in html and "layers 28, 29 barely attend to past frames (per key)" in html
    findings = (ROOT / "docs" / "findings.md").read_text()  # the README links there for the commands
    command = ("probe report reports/runs/baseline-layers-all reports/runs/baseline-permuted-layers-all \\\n"
               "    reports/runs/baseline-rescaled-layers-all reports/runs/scd-layers-all \\\n"
               "    --interventions reports/interventions-surgeries")
    assert command in findings
    assert "permuted and rescaled weights" in html  # the control that computes, beside the permuted one
    # the trained model beside its random-weight control, every claim with its thresholds' provenance
    assert "What was found" in html and "baseline (permuted weights, seed 0)" in html
    assert "post hoc: set 2026-11-25 in cf35735" in html and "pre-registered: set 2026-11-24" in html
    assert "not observed in this model" in html and "under the original criterion" in html
    # ... with the committed interventions, made from the same checkpoint
    interventions = json.loads((ROOT / "reports" / "interventions" / "interventions.json").read_text())
    assert interventions["checkpoint"]["sha256"] == shipped and interventions["clips"] >= 16
    assert "step-0 reuse at layer 15 costs little" in html and "knockout from layer 25 (no adaptation) costs little" in html
    # ... and the paper's two surgeries, measured on 32 clips, the fine-tuned frame-diagonal model beside them
    surgeries = json.loads((ROOT / "reports" / "interventions-surgeries" / "interventions.json").read_text())
    tuned = json.loads((ROOT / "scd" / "checkpoints" / "baseline-diagonal.json").read_text())["sha256"]
    control = json.loads((ROOT / "scd" / "checkpoints" / "baseline-finetuned.json").read_text())["sha256"]
    assert surgeries["checkpoint"]["sha256"] == shipped and surgeries["tuned"]["sha256"] == tuned
    assert surgeries["tuned_control"]["sha256"] == control and surgeries["clips"] >= 32
    reliance = json.loads((ROOT / "reports" / "interventions-reliance" / "interventions.json").read_text())
    assert reliance["checkpoint"]["sha256"] == shipped and "reliance on the past, causally" in html
    assert "skipping layers 8-22 after step 5 keeps quality" in html
    assert "frame-diagonal layers 25-29, fine-tuned, recover quality" in html


def test_the_shipped_checkpoints_are_the_known_set():
    """Nothing but the shipped models in scd/checkpoints (a test once exported a checkpoint 'x' into it)."""
    from scd.zoo import shipped_models

    assert shipped_models() == ["baseline", "baseline-diagonal", "baseline-finetuned", "scd"]
    names = sorted(p.name for p in (ROOT / "scd" / "checkpoints").iterdir())
    shipped = sorted(f"{m}{ext}" for m in shipped_models() for ext in (".json", ".md", ".safetensors"))
    validated = [f"{m}.validation.csv" for m in ("baseline", "scd")]  # the per-clip tables of the card tests
    assert names == sorted(shipped + validated)


def test_the_scd_report_and_bench_are_made_from_both_shipped_checkpoints():
    """reports/scd_vs_baseline.html and reports/bench/: committed, from the shipped baseline and SCD."""
    import json

    shipped = {name: json.loads((ROOT / "scd" / "checkpoints" / f"{name}.json").read_text())["sha256"]
               for name in ("baseline", "scd")}
    report = ROOT / "reports" / "scd_vs_baseline.html"
    assert report.is_file() and report.stat().st_size < 5 * 2**20
    html = report.read_text()
    assert all(sha in html for sha in shipped.values()) and "frames/s ratio (measured)" in html
    bench = json.loads((ROOT / "reports" / "bench" / "bench.json").read_text())
    assert {name: bench["checkpoints"][name]["sha256"] for name in shipped} == shipped
    assert bench["clips"] >= 32 and bench["samples"] == 4
    readme = (ROOT / "README.md").read_text()
    assert "probe bench" in readme and "reports/scd_vs_baseline.html" in readme


def test_the_committed_emergence_study_comes_from_its_committed_cards():
    """reports/emergence: the README's answer and the runs table are what its cards give; every card was probed over
    >= 16 sprites val clips at 50 steps with its card's markdown beside it; the report and the README show the study.
    (The table itself and one factor at a time: tests/analyses/test_emergence.py.)"""
    from analyses.emergence import answer, load_study, runs_table

    directory = ROOT / "reports" / "emergence"
    study = load_study(directory)
    cards = study["cards"]
    assert answer(cards) in (directory / "README.md").read_text()
    assert (directory / "runs.md").read_text() == runs_table(cards).to_markdown(index=False) + "\n"
    runs = runs_table(cards).astype({"PFLOP": float, "PFLOP spent": float})
    assert (runs["PFLOP spent"] >= runs["PFLOP"]).all()  # a sitting cut short adds redone steps, never fewer
    assert (runs.groupby("condition").PFLOP.nunique() == 1).all()  # one factor at a time: the same compute per run
    for card in cards:
        evaluation = card["evaluations"]["sprites"]
        assert len(evaluation["probe"]["clips"]) >= 16 and evaluation["probe"]["steps"] == 50, card["name"]
        assert (directory / f"card-{card['name']}.md").is_file() and card["name"] in study["maps"]
    html = (ROOT / "reports" / "baseline.html").read_text()
    assert "The emergence study" in html and "probe emergence" in (ROOT / "README.md").read_text()


def test_the_combination_trained_is_the_one_the_rule_names_from_the_committed_cards():
    """`scd.training.study.COMBINED` is set only once every candidate has its seeds, and then to exactly the factors
    `combination_choice` names from the committed cards' seed table (not one read off by hand)."""
    from analyses.emergence import combination_choice, competence, depth_of, load_study, seed_table
    from analyses.thresholds import threshold
    from scd.training.study import COMBINATION_CANDIDATES, COMBINED

    cards = [c for c in load_study(ROOT / "reports" / "emergence")["cards"] if competence(c)[0]]
    singles = [c for c in cards if c["condition"] != "combination"]
    ready = all(sum(c["condition"] == name for c in singles) >= threshold("STUDY_SEEDS_MIN")
                for name in (*COMBINATION_CANDIDATES, "reference"))
    if not ready:
        assert COMBINED == () and not any(c["condition"] == "combination" for c in cards)
        return
    depth = depth_of(singles[0])
    chosen = combination_choice(seed_table(singles, measures=[f"log_ratio_{depth - 1}"]), depth)
    assert len(chosen) == threshold("STUDY_COMBINED_FACTORS") and sorted(COMBINED) == sorted(chosen)
