"""The shipped checkpoints: they load, their cards tell the truth, and they beat copying the last frame."""

import json
import re

import pandas as pd
import pytest

from scd.evaluate import summarize, validate
from scd.files import sha256
from scd.zoo import CHECKPOINT_DIR, load_model

SHIPPED = {"baseline": 30, "scd": 35, "baseline-diagonal": 30}  # name -> blocks
FAMILY = {"baseline": "baseline", "scd": "scd", "baseline-diagonal": "baseline"}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_checkpoint_loads_and_is_small(name):
    weights = CHECKPOINT_DIR / f"{name}.safetensors"
    assert weights.stat().st_size < 25 * 2**20
    assert json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())["sha256"] == sha256(weights)
    model = load_model(name)
    assert model.config.depth == SHIPPED[name] and not model.training
    assert model.get_config()["family"] == FAMILY[name]


def _card_psnr(name: str, method: str) -> float:
    card = (CHECKPOINT_DIR / f"{name}.md").read_text()
    row = re.search(rf"^\| {re.escape(method)}\s*\|\s*([0-9.]+)", card, flags=re.M)
    assert row, f"no {method!r} row in the model card of {name}"
    return float(row.group(1))


@pytest.mark.parametrize("name", ["baseline", "scd"])  # the frame-diagonal fine-tune is measured by probe intervene
def test_a_shipped_checkpoint_beats_copy_last_frame_as_its_card_says(name):
    """The card's table is the mean of the shipped per-clip table (32 clips x 4 frames), in which the model beats
    copying the last frame; and that table is what the shipped weights make: the first batch of its validation (clips
    0-15, whose noise is drawn together) regenerated to its first frame, clip by clip. Regenerating all 128 entries
    took 176 s for the baseline; the first frame of a batch is drawn first, so its noise is the full run's."""
    table = pd.read_csv(CHECKPOINT_DIR / f"{name}.validation.csv")
    assert len(table) == 3 * 32 * 4 and sorted(table["clip"].unique()) == list(range(32))
    summary = summarize(table)
    assert summary.loc["model", "psnr"] > summary.loc["copy last frame", "psnr"]
    for method in ("model", "copy last frame", "extrapolate linearly"):  # the card reports what the table holds
        assert _card_psnr(name, method) == pytest.approx(summary.loc[method, "psnr"], abs=0.0006)
    again = validate(load_model(name), clips=16, frames=1, steps=50, progress=False)
    shipped = table[(table["clip"] < 16) & (table.frame == 4)]
    key = ["method", "clip", "frame"]
    merged = shipped.merge(again, on=key, suffixes=("", "_again"), validate="one_to_one")
    assert len(merged) == 3 * 16
    assert merged.psnr_again.to_numpy() == pytest.approx(merged.psnr.to_numpy(), abs=1e-4)
    assert merged.ssim_again.to_numpy() == pytest.approx(merged.ssim.to_numpy(), abs=1e-5)


def test_the_scd_card_states_both_training_computes():
    card = (CHECKPOINT_DIR / "scd.md").read_text()
    assert re.search(r"Compute: \d+ steps x \d+ GFLOP = [0-9.]+ PFLOP .*the shipped baseline: 4500 steps", card)
    assert "decoder lr x2.0" in card and "25 causal encoder + 10 decoder" in card


def test_the_frame_diagonal_fine_tune_is_the_baseline_with_its_last_5_blocks_masked():
    tuned, baseline = load_model("baseline-diagonal"), load_model("baseline")
    assert tuned.config.frame_local_blocks == 5 and baseline.config.frame_local_blocks == 0
    assert tuned.get_config() | {"frame_local_blocks": 0} == baseline.get_config()
    card = (CHECKPOINT_DIR / "baseline-diagonal.md").read_text()
    assert "--init baseline" in card and "--frame-local-blocks 5" in card
