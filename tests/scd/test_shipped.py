"""The shipped baseline checkpoint: it loads, its card tells the truth, and it beats copying the last frame."""

import json
import re

import pytest

from scd.evaluate import summarize, validate
from scd.zoo import CHECKPOINT_DIR, load_model, sha256


def test_the_shipped_baseline_loads_and_is_small():
    weights = CHECKPOINT_DIR / "baseline.safetensors"
    assert weights.stat().st_size < 25 * 2**20
    assert json.loads((CHECKPOINT_DIR / "baseline.json").read_text())["sha256"] == sha256(weights)
    model = load_model("baseline")
    assert model.config.depth == 30 and not model.training


def _card_psnr(method: str) -> float:
    card = (CHECKPOINT_DIR / "baseline.md").read_text()
    row = re.search(rf"^\| {re.escape(method)}\s*\|\s*([0-9.]+)", card, flags=re.M)
    assert row, f"no {method!r} row in the model card"
    return float(row.group(1))


@pytest.mark.slow
def test_the_shipped_baseline_beats_copy_last_frame_as_its_card_says():
    summary = summarize(validate(load_model("baseline"), clips=32, steps=50, progress=False))
    model, copy = summary.loc["model", "psnr"], summary.loc["copy last frame", "psnr"]
    assert model > copy, (model, copy)
    for method in ("model", "copy last frame", "extrapolate linearly"):  # the card reports what this measures
        assert _card_psnr(method) == pytest.approx(summary.loc[method, "psnr"], abs=0.01)
