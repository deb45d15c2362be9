"""The Probe on SCD: decoder layers at every step, encoder layers once per frame, against raw hooks and an
explicit softmax; both backends; the run directory names each layer's role."""

import math

import pytest
import torch

from probes import Probe, load_run
from probes.probe import ProbeError
from scd.data import VideoBenchmark
from scd.sampling import generate

CONTEXT, FRAMES, STEPS = 3, 2, 3
ENCODER, DECODER = 1, 4  # tiny SCD: encoder blocks 0..2, decoder blocks 3..4 (decoder.blocks.1)


@pytest.fixture(scope="module")
def clip():
    return VideoBenchmark("val", frames=CONTEXT + FRAMES, size=16).clip(0)


def _raw(model, clip):
    """Per (frame, step) of every pass: block outputs, q and k of one encoder and one decoder block, read
    with plain register_forward_hook (step None: the pass writing a finished frame into the cache)."""
    state, seen, handles = {}, {}, []

    def on_step(frame, step, timestep):
        state["key"] = (frame, step)

    def keep(name):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            seen.setdefault(name, {})[state["key"]] = tensor.detach().clone()
        return hook

    for name, block in (("encoder", model.encoder.blocks[ENCODER]), ("decoder", model.decoder.blocks[DECODER - 3])):
        handles += [block.register_forward_hook(keep((name, "block"))),
                    block.attn.hook_q.register_forward_hook(keep((name, "q"))),
                    block.attn.hook_k.register_forward_hook(keep((name, "k")))]
    try:
        video = generate(model, clip[:CONTEXT], FRAMES, steps=STEPS, seed=0, callback=on_step)
    finally:
        for h in handles:
            h.remove()
    return video, seen


def _explicit_mass(q, k, key_frames, frames):
    """softmax(q k^T / sqrt(d)) per head over all keys (no mask needed: every key is visible), summed per
    key frame, averaged over the queries."""
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return (scores.softmax(-1) @ torch.nn.functional.one_hot(key_frames, frames).double()).mean(1)


@pytest.mark.parametrize("backend", ["hookpoints", "nnsight"])
def test_decoder_per_step_and_encoder_once_per_frame_match_raw_hooks(tiny_scd, clip, backend):
    reference, seen = _raw(tiny_scd, clip)
    n, T = tiny_scd.config.tokens_per_frame, CONTEXT + FRAMES
    with Probe(tiny_scd, [ENCODER, DECODER], backend=backend) as probe:
        video = generate(tiny_scd, clip[:CONTEXT], FRAMES, steps=STEPS, seed=0)
    assert torch.equal(video, reference)
    frames = list(range(CONTEXT, T))
    assert probe.frames == frames
    assert probe.features(DECODER).shape == (FRAMES, STEPS, n, tiny_scd.config.width)
    assert probe.features(ENCODER).shape == (FRAMES, 1, n, tiny_scd.config.width)
    assert probe.attention(ENCODER).shape == (FRAMES, 1, tiny_scd.config.heads, T)
    for i, frame in enumerate(frames):
        for step in range(STEPS):
            out = seen[("decoder", "block")][(frame, step)]
            assert out.shape[:2] == (1, 2 * n)  # [encoder output of frame - 1 | noisy frame]
            assert torch.equal(probe.features(DECODER)[i, step], out[0, n:].half())  # float16, as a run stores them
            q, k = seen[("decoder", "q")][(frame, step)][0, n:], seen[("decoder", "k")][(frame, step)][0]
            key_frames = torch.tensor([frame - 1, frame]).repeat_interleave(n)
            expected = _explicit_mass(q, k, key_frames, T)
            torch.testing.assert_close(probe.attention(DECODER)[i, step].double(), expected, rtol=0, atol=1e-5)
            assert probe.attention(DECODER)[i, step, :, : frame - 1].abs().max() == 0  # nothing older is seen
        # the encoder reads the finished frame once, in the pass that writes it into the cache
        out = seen[("encoder", "block")][(frame, None)]
        assert torch.equal(probe.features(ENCODER)[i, 0], out[0, -n:].half())
        q, k = seen[("encoder", "q")][(frame, None)][0], seen[("encoder", "k")][(frame, None)][0]
        assert k.shape[0] == (frame + 1) * n
        expected = _explicit_mass(q, k, torch.arange(frame + 1).repeat_interleave(n), T)
        torch.testing.assert_close(probe.attention(ENCODER)[i, 0].double(), expected, rtol=0, atol=1e-5)


def test_backends_agree_and_the_run_directory_names_encoder_and_decoder_layers(tiny_scd, clip, tmp_path):
    results = {}
    for backend in ("hookpoints", "nnsight"):
        with Probe(tiny_scd, "all", backend=backend) as probe:
            generate(tiny_scd, clip[:CONTEXT], FRAMES, steps=STEPS, seed=0)
        results[backend] = probe
    for layer in range(5):
        torch.testing.assert_close(results["nnsight"].features(layer), results["hookpoints"].features(layer),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(results["nnsight"].attention(layer), results["hookpoints"].attention(layer),
                                   rtol=0, atol=1e-6)
    run = load_run(results["nnsight"].save(tmp_path / "run", ground_truth=clip))
    assert run.manifest["layer_roles"] == ["encoder"] * 3 + ["decoder"] * 2
    assert run.manifest["layer_paths"] == [f"encoder.blocks.{i}" for i in range(3)] + ["decoder.blocks.0", "decoder.blocks.1"]
    assert run.stepwise_layers == [3, 4] and run.depth == 5
    metrics = run.metrics
    assert set(metrics[metrics.metric == "token_cosine_mean"].layer) == {3, 4}  # no steps to compare in the encoder
    assert set(metrics[metrics.metric == "attention_earlier"].layer) == {0, 1, 2, 3, 4}


def test_probing_scd_without_the_kv_cache_is_refused_clearly(tiny_scd, clip):
    with pytest.raises(ProbeError, match="KV cache"), Probe(tiny_scd, [DECODER]):
        generate(tiny_scd, clip[:CONTEXT], 1, steps=2, use_cache=False)
