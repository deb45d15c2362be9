"""SCD's wiring: the encoder once per frame, the decoder once per step, what each can see."""

import csv

import pytest
import torch

from scd.models.scd_model import SCD_SIZES, SeparableCausalDiffuser
from scd.sampling import generate
from scd.training.train import default_config, train
from scd.zoo import load_model, save_model


def _clip(frames, seed=0, size=16):
    return torch.randn(1, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _count_calls(model, prefix):
    calls = []
    handles = [block.register_forward_hook(lambda *_: calls.append(1))
               for name, block in model.named_modules() if name.startswith(prefix) and name.count(".") == 2]
    return calls, handles


@pytest.mark.parametrize("steps", [1, 4])
def test_encoder_runs_once_per_generated_frame_and_decoder_once_per_step(tiny_scd, steps):
    context, frames = 3, 2
    encoder, h1 = _count_calls(tiny_scd, "encoder.blocks.")
    decoder, h2 = _count_calls(tiny_scd, "decoder.blocks.")
    generate(tiny_scd, _clip(context)[0], frames, steps=steps)
    for h in h1 + h2:
        h.remove()
    encoder_blocks, decoder_blocks = len(tiny_scd.encoder.blocks), len(tiny_scd.decoder.blocks)
    # one encoder pass over the context, then one per generated frame; decoder: one pass per step
    assert len(encoder) == encoder_blocks * (1 + frames)
    assert len(decoder) == decoder_blocks * frames * steps


def test_decoder_of_frame_i_sees_only_the_encoder_output_of_frame_i_minus_1(tiny_scd):
    n, w = tiny_scd.config.tokens_per_frame, tiny_scd.config.width
    noisy, t = _clip(3), torch.tensor([[700.0, 300.0, 500.0]])
    context = torch.randn(1, 3, n, w)
    out = tiny_scd.decode(context, noisy, t)
    # changing every other frame (noisy input and context) leaves frame 1's velocity unchanged
    other_noisy, other_context = _clip(3, seed=1), torch.randn(1, 3, n, w)
    other_noisy[:, 1], other_context[:, 1] = noisy[:, 1], context[:, 1]
    changed = tiny_scd.decode(other_context, other_noisy, t)
    torch.testing.assert_close(changed[:, 1], out[:, 1], rtol=0, atol=1e-6)
    assert (changed[:, 0] - out[:, 0]).abs().max() > 1e-2  # ... and does change the others
    # through the model: frames before i-1 reach frame i's decoder only through that encoder output
    video = _clip(5)
    full = tiny_scd(video, torch.full((1, 5), 400.0))
    earlier = video.clone()
    earlier[:, :3] = _clip(3, seed=2)
    enc = tiny_scd.encode(earlier[:, :4]).view(1, 4, n, w)
    frame4 = tiny_scd.decode(enc[:, 3:4], video[:, 4:5], torch.full((1, 1), 400.0))
    with_real_context = tiny_scd.decode(tiny_scd.encode(video[:, :4]).view(1, 4, n, w)[:, 3:4], video[:, 4:5],
                                        torch.full((1, 1), 400.0))
    torch.testing.assert_close(with_real_context, full[:, 4:5], rtol=0, atol=1e-5)
    assert (frame4 - with_real_context).abs().max() > 1e-3  # the encoder carries the history


def test_encoder_is_causal(tiny_scd):
    video = _clip(4)
    out = tiny_scd.encode(video)
    later = video.clone()
    later[:, 2:] = _clip(2, seed=3)
    changed = tiny_scd.encode(later)
    n = tiny_scd.config.tokens_per_frame
    torch.testing.assert_close(changed[:, : 2 * n], out[:, : 2 * n], rtol=0, atol=1e-6)
    assert (changed[:, 2 * n:] - out[:, 2 * n:]).abs().max() > 1e-2


def test_encoder_cache_gives_the_uncached_encoder_output(tiny_scd):
    video = _clip(4)
    cache = tiny_scd.new_cache()
    tiny_scd(video[:, :3], torch.zeros(1, 3), cache=cache, update_cache=True)
    tiny_scd(video[:, 3:], torch.zeros(1, 1), cache=cache, update_cache=True)
    n = tiny_scd.config.tokens_per_frame
    torch.testing.assert_close(cache.context, tiny_scd.encode(video)[:, -n:], rtol=0, atol=1e-5)
    assert cache.frames == 4


def test_cached_generation_equals_full_recomputation(tiny_scd):
    context = _clip(3)[0]
    cached = generate(tiny_scd, context, 2, steps=3, seed=1)
    recomputed = generate(tiny_scd, context, 2, steps=3, seed=1, use_cache=False)
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=1e-4)
    assert torch.equal(cached[:3], context)


def test_training_noise_on_the_encoder_output_only_in_training(tiny_scd):
    video = _clip(2)
    assert torch.equal(tiny_scd.encode(video), tiny_scd.encode(video))
    tiny_scd.train()
    noise = tiny_scd.encode(video) - tiny_scd.eval().encode(video)
    assert abs(noise.std().item() - tiny_scd.config.encoder_noise) < 0.01


def test_bad_input_is_refused_with_a_clear_error(tiny_scd):
    with pytest.raises(ValueError, match="one frame at a time"):
        tiny_scd(_clip(2), torch.zeros(1, 2), cache=tiny_scd.new_cache())
    with pytest.raises(ValueError, match="timesteps must be"):
        tiny_scd(_clip(2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="clean must have the shape"):
        tiny_scd(_clip(2), torch.zeros(1, 2), clean=_clip(3))


def test_tiny_scd_trains_with_the_decoder_at_twice_the_lr_and_round_trips(tmp_path):
    cfg = default_config("scd", size="tiny", steps=100, batch_size=4, frames=4, warmup=5, lr=3e-3,
                         checkpoint_every=50, threads=1)
    assert cfg.decoder_lr_scale == 2.0 and cfg.clean_context_ratio == 0.0
    train(cfg, tmp_path / "run", progress=False)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "loss.csv"))]
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20, (losses[:20], losses[-20:])
    model = load_model(tmp_path / "run")
    assert isinstance(model, SeparableCausalDiffuser) and model.config == SCD_SIZES["tiny"]
    save_model(model, tmp_path / "copy.safetensors")
    again = load_model(tmp_path / "copy.safetensors")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    context = _clip(2)[0]
    torch.testing.assert_close(generate(model, context, 1, steps=2), generate(again, context, 1, steps=2), rtol=0, atol=0)


def test_decoder_parameters_get_the_scaled_learning_rate(tiny_scd):
    from scd.training.train import parameter_groups

    groups = parameter_groups(tiny_scd, default_config("scd", size="tiny"))
    decoder = {id(p) for p in tiny_scd.decoder.parameters()}
    encoder = {id(p) for p in tiny_scd.encoder.parameters()}
    scaled = {id(p) for p in groups[1]["params"]}
    assert groups[1]["lr_scale"] == 2.0 and decoder <= scaled and not encoder & scaled
    assert sum(len(g["params"]) for g in groups) == len(list(tiny_scd.parameters()))
