"""The shipped checkpoints: they load, their cards tell the truth, and they beat copying the last frame."""

import json
import re

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


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baseline", "scd"])  # the frame-diagonal fine-tune is measured by probe intervene
def test_a_shipped_checkpoint_beats_copy_last_frame_as_its_card_says(name):
    summary = summarize(validate(load_model(name), clips=32, steps=50, progress=False))
    model, copy = summary.loc["model", "psnr"], summary.loc["copy last frame", "psnr"]
    assert model > copy, (model, copy)
    for method in ("model", "copy last frame", "extrapolate linearly"):  # the card reports what this measures
        assert _card_psnr(name, method) == pytest.approx(summary.loc[method, "psnr"], abs=0.01)


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
