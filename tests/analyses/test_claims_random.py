"""A model with every weight drawn at random must never come out "reproduced", on any claim of the paper.

Several seeds, several clips (so the claims have intervals) with two noise draws each (the different-noise
control), the paper's 50 steps, 12 and 4 blocks, with the weights drawn at three scales, and the
permuted-weights control (`scd.zoo.permute_weights`) of tiny models and of the shipped architecture, and the control
that computes (`scd.zoo.rescaled_control`: permuted, then each block's update rescaled to the trained model's): the
tests probe the model through the same `Probe` and claims as a user.
"""

import pytest
import torch

from analyses.claims import CLAIMS, REPRODUCED, evaluate, paper_layers
from probes import Probe, load_run
from probes.recording import MergedRun
from probes.sweep import noise_seed
from scd.data import VideoBenchmark
from scd.models.baseline import BaselineConfig, CausalVideoDiffuser
from scd.sampling import generate
from scd.zoo import block_update_ratios, load_model, permute_weights, rescale_updates, rescaled_control
from tests.conftest import randomize

CLIPS, DRAWS, CONTEXT, FRAMES = 3, 2, 2, 2


def _sweep(model, tmp_path, layers="all") -> MergedRun:
    runs = []
    for clip in range(CLIPS):
        video = VideoBenchmark("val", frames=CONTEXT + FRAMES, size=model.config.frame_size).clip(clip)
        for draw in range(DRAWS):
            seed = noise_seed(0, clip, draw)
            with Probe(model, layers) as probe:
                generate(model, video[:CONTEXT], FRAMES, steps=50, seed=seed)
            runs.append(load_run(probe.save(tmp_path / f"clip{clip}-{draw}", clip=clip, seed=seed)))
    return MergedRun(tmp_path, runs[0].manifest, runs)


def _never_reproduced(claims) -> None:
    assert len(claims) == len(CLAIMS)
    assert not [(c.name, c.measured) for c in claims if c.verdict == REPRODUCED]
    assert all(c.verdict != "not measured" for c in claims), [c.measured for c in claims]  # each really measured


@pytest.mark.parametrize("depth, seed, std", [(12, 0, 0.2), (12, 1, 0.05), (12, 2, 0.5), (4, 3, 0.2)])
def test_random_weights_are_never_reproduced(tmp_path, depth, seed, std):
    model = randomize(CausalVideoDiffuser(BaselineConfig(frame_size=16, width=32, depth=depth, heads=2)), std, seed)
    _never_reproduced(evaluate(_sweep(model, tmp_path)))


def _structured(seed: int) -> CausalVideoDiffuser:
    model = randomize(CausalVideoDiffuser(BaselineConfig(frame_size=16, width=32, depth=12, heads=2)), 0.2, 10 + seed)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.mul_(0.5 + (i % 5) / 4)  # tensors of different scales: what a permutation keeps
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuted_weights_of_a_tiny_model_are_never_reproduced(tmp_path, seed):
    """The permuted control of a 12-block model whose weights have per-tensor structure (scales differ by tensor)."""
    model = _structured(seed)
    permute_weights(model, seed)
    _never_reproduced(evaluate(_sweep(model, tmp_path)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_control_that_computes_is_never_reproduced(tmp_path, seed):
    """The rescaled control: it moves the residual stream as much as the model it comes from, block by block.

    Observed (issue 45): with seed 1 its last 3 layers change more across steps than its middle layer, the
    last-layers clause's margins alone; the claim now also needs finding 1 at the middle layer, which this control
    fails, so it is not reproduced. The verdict under the margins alone is still reported beside it: asserted here,
    so that the test shows what the added condition changes."""
    model = _structured(seed)
    rescaled_control(model, seed, clips=2)
    claims = evaluate(_sweep(model, tmp_path))
    _never_reproduced(claims)
    last = next(c for c in claims if "less similar across steps" in c.name)
    assert "finding 1 at layer 6: not observed in this model" in last.measured
    if seed == 1:
        assert last.original.startswith("reproduced (before issue 45: the margins alone")


def test_the_rescaled_control_moves_its_input_as_much_as_the_trained_model():
    """Read independently, with the blocks' HookPoints (resid_pre, resid_post): after rescaling, every block's update
    ratio ||post - pre|| / ||pre|| on the batch is the trained model's; permuted alone, it is not."""
    import copy

    trained = _structured(0)
    control = copy.deepcopy(trained)
    permute_weights(control, 0)
    video = torch.randn(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([[900.0, 500.0, 100.0]] * 2)

    def ratios(model):
        _, cache = model.run_with_cache(video, timesteps)
        return [float((cache[f"blocks.{i}.hook_resid_post"] - cache[f"blocks.{i}.hook_resid_pre"]).norm()
                      / cache[f"blocks.{i}.hook_resid_pre"].norm()) for i in range(len(model.blocks))]

    target, permuted = ratios(trained), ratios(control)
    assert max(abs(a / b - 1) for a, b in zip(permuted, target, strict=True)) > 0.2  # permuted: not the same
    factors = rescale_updates(control, block_update_ratios(trained, video, timesteps), video, timesteps)
    assert ratios(control) == pytest.approx(target, rel=1e-4)
    assert block_update_ratios(control, video, timesteps) == pytest.approx(target, rel=1e-4)
    assert len(factors) == 12 and all(f > 0 for f in factors)


@pytest.mark.slow
def test_permuted_weights_of_the_shipped_architecture_are_never_reproduced(tmp_path):
    """The shipped 30-block baseline with every tensor permuted (seed 0), probed as the trained model is."""
    model = load_model("baseline")
    permute_weights(model, 0)
    layers = sorted({layer for group in ("early_span", "middle", "last3", "deep", "early") for layer in
                     paper_layers(30).get(group, [])})  # the layers the claims read (all 30 only add probe time)
    _never_reproduced(evaluate(_sweep(model, tmp_path, layers)))


def test_one_clip_is_never_more_than_inconclusive(tmp_path):
    model = randomize(CausalVideoDiffuser(BaselineConfig(frame_size=16, width=32, depth=4, heads=2)), 0.2, 0)
    video = VideoBenchmark("val", frames=CONTEXT + FRAMES, size=16).clip(0)
    with Probe(model, "all") as probe:
        generate(model, video[:CONTEXT], FRAMES, steps=50, seed=0)
    run = load_run(probe.save(tmp_path / "one"))
    assert {c.verdict for c in evaluate(run)} <= {"inconclusive", "not observed in this model", "not measured"}
    assert any("1 clip: no interval" in c.measured for c in evaluate(run))
    torch.testing.assert_close(run.attention(0).sum(-1), torch.ones_like(run.attention(0).sum(-1)))
