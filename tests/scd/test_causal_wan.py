"""Causal Wan / SkyReels-V2 (scd.wan.causal_wan, scd.wan.pipeline, scd.wan.convert) on diffusers' tiny test sizes:
against diffusers' own forward, an explicit block mask, full recomputation, guidance by hand, a VAE by hand, and
the same weights built directly in diffusers."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from scd import generate
from scd.sampling import SamplingError
from scd.wan.causal_wan import CausalWan, chunk_causal_mask
from scd.wan.convert import ConversionError, convert, read_weights
from scd.wan.pipeline import ContextVideoError, context_from_video, encode_prompt, load_causal_wan, read_video
from scd.wan.vae import decode_latents, encode_video
from scd.zoo import CheckpointError
from tests.wan_tiny import FAMILIES, LATENT, TINY, latents, save_pipeline, tiny

TEXT = torch.zeros(1, 512, TINY["text_dim"])


def stock_forward(family: str, stock, x: torch.Tensor, t: torch.Tensor, fps: int | None = None) -> torch.Tensor:
    """diffusers' own forward: latents [B, F, C, h, w], per-frame timesteps [B, F] -> [B, F, C, h, w]."""
    n = (LATENT[0] // 2) * (LATENT[1] // 2)
    with torch.no_grad():
        if family == "skyreels":
            out = stock(x.transpose(1, 2), t, TEXT, enable_diffusion_forcing=True, fps=None if fps is None else [fps],
                        return_dict=False)[0]
        else:  # Wan: one timestep per token
            out = stock(x.transpose(1, 2), t.repeat_interleave(n, dim=1), TEXT, return_dict=False)[0]
    return out.transpose(1, 2)


@pytest.mark.parametrize("family,extra", [("wan", {}), ("skyreels", {}), ("skyreels", {"inject_sample_info": True})],
                         ids=["wan", "skyreels", "skyreels-fps"])
def test_one_chunk_is_diffusers_own_forward(family, extra):
    """A whole clip in one chunk attends fully, as the stock forward does: the written-out forward equals it."""
    stock = tiny(family, **extra)
    model = CausalWan(copy.deepcopy(stock), LATENT, frames_per_block=3)
    x, t = torch.randn(1, 3, 4, *LATENT), torch.tensor([[0.0, 420.0, 910.0]])
    with torch.no_grad():
        got = model(x, t)
    fps = 1 if extra else None  # 24 fps by default: row 1 of SkyReels-V2's fps table, as its pipelines pass it
    torch.testing.assert_close(got, stock_forward(family, stock, x, t, fps), atol=1e-6, rtol=0)
    if extra:  # the fps embedding reaches the model: 16 fps is the other row of its table
        model.fps = 16
        with torch.no_grad():
            other = model(x, t)
        torch.testing.assert_close(other, stock_forward(family, stock, x, t, 0), atol=1e-6, rtol=0)
        assert (other - got).abs().max() > 1e-4


@pytest.mark.parametrize("start,frames,k,cached", [(0, 6, 3, False), (0, 5, 2, False), (3, 3, 3, True), (0, 4, 1, False),
                                                   (2, 4, 2, True), (4, 1, 1, True), (0, 3, 3, False)])
def test_the_chunked_mask_is_an_explicit_block_mask(start, frames, k, cached):
    n = 3
    mask = chunk_causal_mask(start, frames, n, k, cached=cached)
    keys = list(range(start)) if cached else []
    keys += list(range(start, start + frames))
    expected = torch.zeros(frames * n, len(keys) * n, dtype=torch.bool)
    for qi in range(frames * n):
        for ki in range(len(keys) * n):
            query_frame, key_frame = start + qi // n, keys[ki // n]
            expected[qi, ki] = key_frame // k <= query_frame // k  # same or an earlier chunk
    if mask is None:
        assert expected.all()  # None only where every key is visible
    else:
        assert torch.equal(mask[0, 0], expected)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("k", [1, 3])
def test_cached_generation_equals_recomputation(family, k):
    model = CausalWan(tiny(family, num_frame_per_block=k) if family == "skyreels" else tiny(family), LATENT,
                      frames_per_block=k)
    context = latents(3)
    cached = generate(model, context, 6, steps=3, seed=4, use_cache=True)
    recomputed = generate(model, context, 6, steps=3, seed=4, use_cache=False)
    torch.testing.assert_close(cached, recomputed, atol=1e-4, rtol=0)
    assert torch.equal(cached[:3], context)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_chunk_sees_its_own_frames_and_earlier_chunks_only(family):
    model = CausalWan(tiny(family), LATENT, frames_per_block=2)
    x, t = torch.randn(1, 6, 4, *LATENT), torch.tensor([[0.0, 0.0, 300.0, 300.0, 700.0, 700.0]])
    changed = x.clone()
    changed[:, 3] += 1.0  # frame 3: in chunk 1 (frames 2-3)
    with torch.no_grad():
        a, b = model(x, t), model(changed, t)
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=1e-6, rtol=0)  # chunk 0 does not see it
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-4  # frame 2 does: same chunk
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4  # a later chunk does


def test_frame_counts_that_do_not_fit_are_refused_before_any_work():
    model = CausalWan(tiny("skyreels", num_frame_per_block=3), LATENT)
    assert model.frames_per_block == 3  # the model's own chunk size by default
    calls = []
    handle = model.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for context, frames, message in ((2, 3, "context_frames: 2 is not a multiple of the model's chunk of 3 frames"),
                                         (3, 4, "frames: 4 is not a multiple"),
                                         (3, 30, "exceed the model's 32 frame positions")):
            with pytest.raises(SamplingError, match=message):
                generate(model, latents(context), frames, steps=2)
    finally:
        handle.remove()
    assert calls == []
    with pytest.raises(CheckpointError, match="frames_per_block = 0; accepted: an integer in 1..64"):
        CausalWan(tiny("wan"), LATENT, frames_per_block=0)
    with pytest.raises(CheckpointError, match="fps = 24; accepted: none"):
        CausalWan(tiny("wan"), LATENT, fps=24)
    with pytest.raises(CheckpointError, match="fps = 0; accepted: frames per second, an integer in 1..240"):
        CausalWan(tiny("skyreels", inject_sample_info=True), LATENT, fps=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_guidance_is_uncond_plus_s_times_the_difference(family):
    model = CausalWan(tiny(family), LATENT)
    cond, negative = torch.randn(7, TINY["text_dim"]), torch.randn(5, TINY["text_dim"])
    x, t = torch.randn(1, 2, 4, *LATENT), torch.tensor([[0.0, 600.0]])
    with torch.no_grad():
        model.set_prompt(cond)
        c = model(x, t)
        model.set_prompt(negative)
        u = model(x, t)
        model.set_prompt(cond, negative, guidance_scale=4.5)
        guided = model(x, t)
    torch.testing.assert_close(guided, u + 4.5 * (c - u), atol=1e-5, rtol=0)
    # Generation with guidance keeps two caches, and equals recomputation.
    cached = generate(model, latents(2), 2, steps=3, use_cache=True)
    torch.testing.assert_close(cached, generate(model, latents(2), 2, steps=3, use_cache=False), atol=1e-4, rtol=0)
    cache = model.new_cache()
    assert cache.cond is not cache.uncond


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_prompt_changes_the_output_and_the_same_prompt_gives_the_same_bytes(family, tmp_path):
    root = save_pipeline(tmp_path / "pipe", family, vae=False)
    model = load_causal_wan(root, LATENT)
    runs = {}
    car = "a red car drives along the coast road"
    for prompt in (car, "a blue boat sails at night", car):
        model.set_prompt(encode_prompt(model, prompt))
        runs.setdefault(prompt, []).append(generate(model, latents(1), 1, steps=3, seed=0))
    first, again = runs[car]
    assert torch.equal(first, again)
    assert (first - runs["a blue boat sails at night"][0]).abs().max() > 1e-4
    embedding = encode_prompt(model, "a red car")
    assert embedding.shape == (512, TINY["text_dim"]) and embedding[4:].abs().sum() == 0  # 3 words + </s>, then zeros
    bare = load_causal_wan(tmp_path / "pipe" / "transformer", LATENT)
    with pytest.raises(CheckpointError, match="a prompt needs the pipeline directory's text_encoder/ and tokenizer/"):
        encode_prompt(bare, "a red car")


def test_the_vae_decodes_one_causal_sequence_and_a_context_video_survives_a_round_trip(tmp_path):
    from PIL import Image

    root = save_pipeline(tmp_path / "pipe", "wan", text=False)
    model = load_causal_wan(root, LATENT)
    vae = model.vae
    z = latents(3)
    video = decode_latents(vae, z)
    assert video.shape == (5, 3, 16, 16)  # 1 + 2 (3 - 1) frames: the tiny VAE compresses time by 2, causally
    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1), torch.tensor([1.5, 0.5, 1.0, 2.0]).view(1, 4, 1, 1, 1)
    with torch.no_grad():
        by_hand = vae.decode(z.permute(1, 0, 2, 3)[None] * std + mean).sample[0].transpose(0, 1).clamp(-1, 1)
    torch.testing.assert_close(video, by_hand, atol=1e-6, rtol=0)

    # A folder of frames: read exactly, resized to the model's pixel size, encoded as the pipeline encodes.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(pixels):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{i:04d}.png")
    read = read_video(tmp_path / "frames", 5, (16, 16))
    torch.testing.assert_close(read, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1)
    context = context_from_video(model, tmp_path / "frames", 3)
    with torch.no_grad():
        posterior = vae.encode(read.transpose(0, 1)[None]).latent_dist.mode()
    torch.testing.assert_close(context, ((posterior - mean) / std)[0].transpose(0, 1), atol=1e-6, rtol=0)
    # ... and back: the decoded context is the VAE's own reconstruction of the video (the round trip).
    with torch.no_grad():
        reconstruction = vae.decode(posterior).sample[0].transpose(0, 1).clamp(-1, 1)
    torch.testing.assert_close(decode_latents(vae, context), reconstruction, atol=1e-5, rtol=0)
    torch.testing.assert_close(encode_video(vae, decode_latents(vae, context)), encode_video(vae, reconstruction),
                               atol=1e-5, rtol=0)

    # An mp4 through PyAV: resized, as many frames as asked.
    import av

    with av.open(str(tmp_path / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for frame in np.repeat(pixels, 2, axis=1)[:, :24, :, :].repeat(2, axis=2)[:, :, :32]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert read_video(tmp_path / "clip.mp4", 4, (16, 16)).shape == (4, 3, 16, 16)
    with pytest.raises(ContextVideoError, match="has 5 frames; the context needs 9"):
        read_video(tmp_path / "frames", 9, (16, 16))


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Wan / SkyReels-V2 state dict written back in the original layout, module by module (Wan's
    WanModel: self_attn / cross_attn with q, k, v, o; norm3 before the cross-attention; ffn.0 / ffn.2; head.head)."""
    block = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
             "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
             "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
             "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
             "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2", "scale_shift_table": "modulation"}
    top = {"condition_embedder.time_embedder.linear_1": "time_embedding.0",
           "condition_embedder.time_embedder.linear_2": "time_embedding.2",
           "condition_embedder.text_embedder.linear_1": "text_embedding.0",
           "condition_embedder.text_embedder.linear_2": "text_embedding.2",
           "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head", "scale_shift_table": "head.modulation",
           "patch_embedding": "patch_embedding", "fps_embedding": "fps_embedding",
           "fps_projection.net.0.proj": "fps_projection.0", "fps_projection.net.2": "fps_projection.2"}
    out = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1) if key.count(".") and not key.endswith("scale_shift_table") else (key, None)
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            module, leaf = (rest.rsplit(".", 1) + [None])[:2] if rest != "scale_shift_table" else (rest, None)
            name = f"blocks.{i}.{block[module]}"
        else:
            name = top[module]
        out["model." + name + (f".{leaf}" if leaf else "")] = value.clone()
    return out


@pytest.mark.parametrize("family,extra,suffix", [("wan", {}, ".safetensors"), ("wan", {}, ".pt"),
                                                 ("skyreels", {"inject_sample_info": True}, ".pth")])
def test_convert_an_original_layout_checkpoint_gives_the_same_outputs(family, extra, suffix, tmp_path):
    stock = tiny(family, num_layers=2, **extra)
    original = original_layout(stock.state_dict())
    assert any(".self_attn.q.weight" in k for k in original) and "model.head.head.weight" in original
    source = tmp_path / f"checkpoint{suffix}"
    if suffix == ".safetensors":
        save_file(original, source)
    else:  # a Self-Forcing-style training checkpoint: the weights under generator_ema
        torch.save({"generator_ema": original, "step": 7}, source)
    notes: list[str] = []
    convert(source, tmp_path / "out", heads=TINY["num_attention_heads"],
            frames_per_block=1 if family == "skyreels" else None, notes=notes)
    assert any("weights_only=True" in note for note in notes) == (suffix != ".safetensors")
    model = load_causal_wan(tmp_path / "out", LATENT)
    assert type(model.transformer) is type(stock)
    x, t = torch.randn(1, 2, 4, *LATENT), torch.tensor([[0.0, 500.0]])
    direct = CausalWan(copy.deepcopy(stock), LATENT)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), direct(x, t), atol=1e-6, rtol=0)


def test_convert_names_each_unknown_and_missing_key_and_never_unpickles_code(tmp_path):
    original = original_layout(tiny("wan").state_dict())
    original["model.blocks.0.extra.weight"] = torch.zeros(2)
    del original["model.blocks.1.self_attn.q.bias"]
    save_file(original, tmp_path / "bad.safetensors")
    with pytest.raises(ConversionError) as error:
        convert(tmp_path / "bad.safetensors", tmp_path / "out", heads=2)
    assert str(error.value) == ("2 keys of bad.safetensors do not fit a WanTransformer3DModel: unknown "
                                "model.blocks.0.extra.weight, missing blocks.1.self_attn.q.bias (the file's names); "
                                "nothing was written")
    assert not (tmp_path / "out").exists()

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"generator": Payload()}, tmp_path / "code.pt")
    with pytest.raises(ConversionError, match="cannot be read with weights_only=True"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_weights(tmp_path / "code.pt")
    with pytest.raises(ConversionError, match="accepted: a .safetensors, .pt or .pth file"):
        read_weights(tmp_path / "weights.bin")


def test_probe_convert_writes_a_loadable_directory_and_names_bad_keys_one_per_line(tmp_path, capsys):
    from probe_cli import main

    original = original_layout(tiny("wan").state_dict())
    save_file(original, tmp_path / "good.safetensors")
    assert main(["convert", str(tmp_path / "good.safetensors"), str(tmp_path / "out"), "--heads", "2"]) == 0
    assert load_causal_wan(tmp_path / "out", LATENT).family == "WanTransformer3DModel"
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "good.safetensors"), str(tmp_path / "out"), "--heads", "2"]) == 2
    assert "pass --force" in capsys.readouterr().err  # an existing output is kept without --force
    original["model.blocks.0.mystery.weight"] = torch.zeros(1)
    del original["model.head.head.bias"]
    save_file(original, tmp_path / "bad.safetensors")
    assert main(["convert", str(tmp_path / "bad.safetensors"), str(tmp_path / "bad-out"), "--heads", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "probe convert: error: 2 keys of bad.safetensors do not fit a WanTransformer3DModel: unknown "
        "model.blocks.0.mystery.weight, missing head.head.bias (the file's names); nothing was written"]
    assert not (tmp_path / "bad-out").exists()
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x")]) == 2
    assert "accepted: an existing .safetensors, .pt or .pth file" in capsys.readouterr().err


def test_a_transformer_directory_alone_shows_latent_channels_and_no_ground_truth(tmp_path):
    from probe_cli import main
    from probes import load_run

    tiny("wan").save_pretrained(tmp_path / "transformer-only")
    out = tmp_path / "run"
    assert main(["run", "--model", f"diffusers:{tmp_path / 'transformer-only'}", "--layer", "1", "--context", "2",
                 "--frames", "2", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    generated, truth = run.video()
    assert run.manifest["video_shows"] == "latent channels 0-2" and len(generated) == 4 and len(truth) == 0
    assert run.manifest["split"] == "latent noise" and run.manifest["checkpoint"]["sha256"]
