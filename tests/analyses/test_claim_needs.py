"""Measures carried into a setting they were not defined for (issue 42, the same class elsewhere): a claim says what
it needs and a run that cannot support it names every requirement it misses; a measure that never moves off its
ceiling gives no verdict; the functional test's floor predicts the same target as the layer it is compared with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import probes
from analyses.claims import NOT_MEASURED, NOT_OBSERVED, evaluate, requirements, sparse_deep_attention
from analyses.redundancy import functional_table
from probe_cli import main


def test_a_small_run_names_every_requirement_it_misses_in_the_report_and_in_probe_show(tiny_model, tmp_path, capsys):
    rec = probes.record(tiny_model, 0, frames=1, steps=20, layers="all", context_frames=2)
    claims = {c.name.split(" at ")[0]: c for c in evaluate(rec)}
    first = next(c for c in evaluate(rec) if c.name.startswith("cross-step similarity"))
    assert first.verdict == NOT_MEASURED
    assert "the run has 20 steps, the claim is about 50" in first.measured and "1 frame(s) probed" in first.measured
    assert "50 denoising steps" in first.needs and "2+ probed frames" in first.needs
    assert all(c.needs for c in claims.values())  # every claim on a recording states what it needs
    rows = {r["claim"]: r for r in requirements(rec)}
    assert rows["finding 2, per-key ratio"]["blocking"] == [] and rows["finding 2, per-key ratio"]["weak"]
    rec.save(tmp_path / "run")
    assert main(["show", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "finding 1, cross-step similarity (layers" in out and "the run has 20 steps, the claim is about 50" in out
    assert "1 clip(s): an interval needs 2" in out


def test_a_lit_share_at_its_ceiling_in_every_layer_says_so(tiny_model, tmp_path):
    """Uniform attention (q = 0) keeps every context cell at uniform: the lit share is 1 in every layer, which is an
    observation (deep layers are not dark: not observed) but separates no layers; the claim says how far the darkest
    cell came toward the cut (0 nats here), so a reader sees the measure at its ceiling."""
    hooks = [tiny_model.hook_dict[n].register_forward_hook(lambda m, a, out: torch.zeros_like(out))
             for n in tiny_model.hook_dict if n.endswith("hook_q")]
    try:
        run = probes.record_sweep(tiny_model, tmp_path / "sweep", clips=[0, 1, 2], frames=2, steps=3, layers="all",
                                  capture=["attention"], context_frames=2)
    finally:
        for h in hooks:
            h.remove()
    claim = sparse_deep_attention(run)
    assert claim.verdict == NOT_OBSERVED, claim.measured
    assert "separates no layers in this run" in claim.measured and "layer 3 0.00 nats below" in claim.measured


class _Item:
    """A stand-in recording for the functional fit: features [F, S, N, D] of the layer and of the blocks' input."""

    def __init__(self, clip: int, layer: np.ndarray, inputs: np.ndarray) -> None:
        self.manifest = {"steps": list(range(layer.shape[1])), "clip": clip}
        self.path, self._layer, self._input = f"clip{clip}", torch.from_numpy(layer), torch.from_numpy(inputs)

    def features(self, layer: int) -> torch.Tensor:
        return self._layer

    def input_features(self) -> torch.Tensor:
        return self._input


def test_the_functional_floor_predicts_the_layers_own_target():
    """A layer whose last step is a linear map of the step-0 input: predicted perfectly from its own step 0, and just as
    well from the step-0 input, so the layer adds nothing step-invariant (difference 0). The old floor predicted the
    input's own last step (independent noise here): R^2 near 0, a difference near 1 that the layer did not earn."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(6, 6))
    items = []
    for clip in range(4):
        inputs = rng.normal(size=(2, 3, 24, 6))  # every step's input independent noise
        layer = np.repeat((inputs[:, :1] @ weights), 3, axis=1)  # the same at every step: a map of the step-0 input
        items.append(_Item(clip, layer, inputs))
    table = functional_table(items, 0, points=2).set_index(["step", "clip"])
    at0 = table.loc[0]
    assert (at0.layer_r2 > 0.99).all() and (at0.input_r2 > 0.99).all()
    assert at0.difference.abs().max() < 0.02
    assert (at0.input_own_r2 < 0.2).all() and (at0.difference_own > 0.8).all()
    assert isinstance(table, pd.DataFrame)


def test_requirements_of_every_claim_are_listed(tiny_model):
    rec = probes.record(tiny_model, 0, frames=2, steps=50, layers="all", context_frames=2, capture=["attention"])
    rows = requirements(rec)
    assert [r["claim"] for r in rows] == ["finding 1, cross-step similarity", "finding 1, early layers",
                                          "finding 1, functional (linear fit)", "finding 1, last layers less similar",
                                          "finding 2, per-key ratio", "finding 2, lit share"]
    assert all("were not probed (features)" in r["blocking"][0] for r in rows[:4])
    assert rows[2]["needs"].endswith("3+ clips (the fit leaves one out), the blocks' input features (full mode)")
