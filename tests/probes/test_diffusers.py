"""Causal Wan / SkyReels-V2 models probed like the built-in ones: tiny random pipelines saved with `save_pretrained`,
loaded with `load_model("diffusers:DIR")`, and checked against raw forward hooks, an explicit float64 softmax with
the chunk mask written out, the unprobed output, and the command's refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from probe_cli import main
from probes import Probe, load_run
from scd import generate, load_model
from scd.wan.causal_wan import rotate
from scd.zoo import CheckpointError
from tests.wan_tiny import FAMILIES, LATENT, TINY, latents, save_pipeline, tiny


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request, tmp_path_factory):
    """(family, pipeline directory) of a tiny random pipeline (transformer, VAE, umT5, tokenizer)."""
    root = tmp_path_factory.mktemp(request.param) / "pipe"
    extra = {"inject_sample_info": True, "num_frame_per_block": 2} if request.param == "skyreels" else {}
    return request.param, save_pipeline(root, request.param, **extra)


def record_passes(model, layer: int):
    """Raw torch hooks on a block: its output per pass, and its attention's input (hidden states, rotary), each
    labelled with the sampler's (frame, step) of the pass."""
    block, label, passes = model.transformer.blocks[layer], [None], []
    handles = [block.attn1.register_forward_pre_hook(lambda m, args: passes.append({"label": label[0],
                                                                                     "hidden": args[0].clone(),
                                                                                     "rotary": args[3]})),
               block.register_forward_hook(lambda m, args, out: passes[-1].update(output=out.detach().clone()))]

    def callback(frame, step, timestep):
        label[0] = (frame, step)
    return passes, handles, callback


def keys_and_queries(attn, passes: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(q, k) [L, H, D] of each pass in float64, from the block's own input: projections, RMS norms, rotary."""
    attn = copy_double(attn)
    out = []
    for p in passes:
        h = p["hidden"].double()
        q = attn.norm_q(attn.to_q(h)).unflatten(2, (TINY["num_attention_heads"], -1))
        k = attn.norm_k(attn.to_k(h)).unflatten(2, (TINY["num_attention_heads"], -1))
        cos, sin = (r.double() for r in p["rotary"])
        out.append((rotate(q, cos, sin)[0], rotate(k, cos, sin)[0]))
    return out


def copy_double(module):
    import copy

    return copy.deepcopy(module).double()


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "recompute"])
def test_features_equal_a_raw_forward_hook_and_attention_an_explicit_softmax(saved, use_cache):
    family, root = saved
    model = load_model(f"diffusers:{root}", latent_size=LATENT)
    k, n, T, layer = model.frames_per_block, model.tokens_per_frame, 2, 1
    passes, handles, callback = record_passes(model, layer)
    try:
        with Probe(model, [layer]) as probe:
            generate(model, latents(T), 4, steps=3, seed=0, callback=callback, use_cache=use_cache)
    finally:
        for handle in handles:
            handle.remove()
    qk = keys_and_queries(model.transformer.blocks[layer].attn1, passes)
    cached = []  # keys of the passes that wrote the cache (the context prefill, each finished chunk)
    for p, (q, key) in zip(passes, qk, strict=True):
        last, step = p["label"]
        if step is None:
            cached.append(key)
            continue
        keys = torch.cat([*cached, key]) if use_cache else key
        key_frame = torch.arange(keys.shape[0]) // n
        for frame in range(last - k + 1, last + 1):
            rows = slice(q.shape[0] - (last - frame + 1) * n, q.shape[0] - (last - frame) * n)
            assert torch.equal(probe.features(layer)[frame - T, step], p["output"][0, rows].half())  # float16, as stored
            scores = torch.einsum("qhd,khd->hqk", q[rows], keys) / math.sqrt(q.shape[-1])
            visible = key_frame // k <= frame // k  # the chunk mask, written out: same or earlier chunk
            scores = scores.masked_fill(~visible, float("-inf"))
            probs = scores.softmax(-1)
            mass = torch.stack([probs[..., key_frame == f].sum(-1) for f in range(last + 1)], -1).mean(1)  # [H, last+1]
            got = probe.attention(layer)[frame - T, step]
            torch.testing.assert_close(got[:, : last + 1].double(), mass, atol=1e-5, rtol=0)
            assert got[:, last + 1:].abs().sum() == 0  # nothing on later chunks
    assert probe.frames == [2, 3, 4, 5]


def test_the_probed_video_is_the_unprobed_one_bitwise_and_the_backends_agree(saved):
    family, root = saved
    model = load_model(f"diffusers:{root}", latent_size=LATENT)
    plain = generate(model, latents(2), 2, steps=3, seed=1)
    with Probe(model, "all", backend="hookpoints") as hooked:
        probed = generate(model, latents(2), 2, steps=3, seed=1)
    with Probe(model, "all", backend="nnsight") as traced:
        generate(model, latents(2), 2, steps=3, seed=1)
    assert torch.equal(plain, probed)
    for layer in range(TINY["num_layers"]):
        torch.testing.assert_close(hooked.features(layer), traced.features(layer), atol=0, rtol=0)
        torch.testing.assert_close(hooked.attention(layer), traced.attention(layer), atol=1e-6, rtol=0)
    assert all(type(b.attn1.processor).__name__ == "CausalWanAttnProcessor" for b in model.transformer.blocks)
    assert not any(b._forward_hooks or b.attn1.hook_q._forward_hooks or b.hook_resid_post._forward_hooks
                   for b in model.transformer.blocks)  # all removed


def test_the_probe_records_the_chosen_pass_of_guidance(saved):
    family, root = saved
    model = load_model(f"diffusers:{root}", latent_size=LATENT)
    cond, negative = torch.randn(5, TINY["text_dim"]), torch.randn(5, TINY["text_dim"])
    model.set_prompt(cond, negative, guidance_scale=3.0)
    with Probe(model, [0]) as first, Probe(model, [0], guidance_pass="uncond") as second:
        guided = generate(model, latents(2), 2, steps=2, seed=0)
    model.set_prompt(cond)
    with Probe(model, [0]) as conditional:
        generate(model, latents(2), 2, steps=2, seed=0)
    model.set_prompt(negative)
    with Probe(model, [0]) as unconditional:
        generate(model, latents(2), 2, steps=2, seed=0)
    # Step 0 of the first generated chunk sees the same inputs in both generations: the recorded pass is the one asked.
    torch.testing.assert_close(first.features(0)[0, 0], conditional.features(0)[0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(second.features(0)[0, 0], unconditional.features(0)[0, 0], atol=1e-6, rtol=0)
    assert (first.features(0)[0, 0] - second.features(0)[0, 0]).abs().max() > 1e-4
    assert guided.shape == (4, 4, *LATENT)


def test_skyreels_df_with_sample_info_and_3_frame_chunks_is_probed_end_to_end(tmp_path, capsys):
    root = save_pipeline(tmp_path / "pipe", "skyreels", inject_sample_info=True, num_frame_per_block=3,
                         scheduler={"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "use_flow_sigmas": True,
                                    "prediction_type": "flow_prediction"})
    from PIL import Image

    (tmp_path / "frames").mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "frames" / f"{i}.png")
    out = tmp_path / "run"
    assert main(["run", "--model", f"diffusers:{root}", "--layers", "all", "--context", "3", "--frames", "3", "--steps",
                 "3", "--prompt", "a red car", "--guidance-scale", "5", "--fps", "16", "--context-video",
                 str(tmp_path / "frames"), "--guidance-pass", "both", "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    m = run.manifest
    assert m["config"]["frames_per_block"] == 3 and m["config"]["fps"] == 16 and m["config"]["inject_sample_info"]
    assert m["frames"] == [3, 4, 5] and m["guidance"] == {"scale": 5.0, "recorded_pass": "cond"}
    assert m["video_frames"] == 1 + 2 * 5 and m["video_context_frames"] == 5  # the VAE's causal decode
    assert m["checkpoint"]["sha256"] == next(iter(m["checkpoint"]["weight_files"].values()))
    assert m["config"]["flow_shift"] == 3.0
    other = load_run(tmp_path / "run.uncond")  # the same generation's unconditional pass
    assert other.manifest["guidance"] == {"scale": 5.0, "recorded_pass": "uncond"}
    assert (other.features(1) - run.features(1)).abs().max() > 1e-3 and np.array_equal(other.video()[0], run.video()[0])
    attention = run.attention(1)
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]), atol=1e-5, rtol=0)
    assert attention[0, :, :, 4:6].sum() > 0  # frame 3 sees its chunk-mates 4 and 5
    report = tmp_path / "report.html"
    assert main(["report", str(out), "-o", str(report)]) == 0
    html = report.read_text()
    assert "data:image/gif;base64," in html and "ground truth" not in html.replace("ground_truth", "")
    assert "decoded by the VAE as one causal sequence" in html and "layer 1 (the paper&#39;s" in html
    assert m["checkpoint"]["sha256"] in html


def test_layout_frame_major_tokens_from_the_patch_size(saved):
    family, root = saved
    model = load_model(f"diffusers:{root}", latent_size=(8, 12))
    layout = model.layout
    assert layout.depth == TINY["num_layers"] and layout.tokens_per_frame == 4 * 6
    assert layout.frames_per_block == model.frames_per_block
    assert layout.path(1, "hook_resid_post") == "transformer.blocks.1.hook_resid_post"
    assert layout.path(1, "attn.hook_q") == "transformer.blocks.1.attn1.hook_q"


def test_bad_directories_and_flags_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(f"diffusers:{tmp_path / 'missing'}")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="accepted: WanTransformer3DModel, SkyReelsV2Transformer3DModel"):
        load_model(f"diffusers:{tmp_path}")
    tiny("wan").save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    cases = [
        (["--model", f"diffusers:{tmp_path}"], "no .safetensors weights"),
        (["--model", f"diffusers:{tmp_path}", "--latent-size", "8by8"], "--latent-size: '8by8' is not HxW"),
        (["--prompt", "a car"], "--prompt applies only to diffusers models"),
        (["--frames-per-block", "3"], "--frames-per-block applies only to diffusers models"),
        (["--model", f"diffusers:{tmp_path}", "--negative-prompt", "x"], "--negative-prompt is read by classifier-free"),
        (["--model", f"diffusers:{tmp_path}", "--guidance-pass", "uncond"], "--guidance-pass uncond needs classifier-free"),
        (["--model", f"diffusers:{tmp_path}", "--guidance-scale", "nan"], "is not a finite number"),
        (["--model", f"diffusers:{tmp_path}", "--context-video", str(tmp_path / "none.mp4")], "does not exist"),
        (["--model", f"diffusers:{tmp_path}", "--prompt", "a", "--text-embeddings", "x.safetensors"],
         "--prompt and --text-embeddings both give the prompt"),
    ]
    for flags, message in cases:
        assert main(["run", *flags, "--out", str(tmp_path / "run")]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (flags, err)
        assert not (tmp_path / "run").exists()


def test_frame_counts_beyond_the_chunks_or_rope_table_are_refused_by_the_command(tmp_path, capsys):
    root = save_pipeline(tmp_path / "pipe", "skyreels", vae=False, text=False, num_frame_per_block=3)
    for flags, message in ((["--context", "2", "--frames", "3"], "--context: 2 is not a multiple of the model's chunk"),
                           (["--context", "3", "--frames", "30"], "exceed the model's 32 frame positions (its RoPE table"),
                           (["--context", "3", "--frames", "3", "--layer", "1", "--hook", "hook_mlp_out"],
                            "has no feature hook 'hook_mlp_out'; accepted: hook_resid_pre, hook_resid_mid, hook_cross_out, "
                            "hook_resid_post")):
        assert main(["run", "--model", f"diffusers:{root}", *flags, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "run").exists()


def test_rope_cache_runs_past_the_rope_table_through_the_command_and_absolute_positions_are_refused_first(
        tmp_path, capsys, monkeypatch):
    """Under --rope cache positions stay below the window, so a rollout longer than rope_max_seq_len (32 here) runs, from
    no context, as the Python generate does; under absolute positions it is refused before anything is loaded."""
    import scd.wan.pipeline

    root = save_pipeline(tmp_path / "pipe", "wan", vae=False, text=False)
    common = ["run", "--model", f"diffusers:{root}", "--layer", "1", "--context", "0", "--frames", "36",
              "--timesteps", "1000,500", "--sampler", "renoise", "--window", "6", "--sink-frames", "2",
              "--capture", "attention", "--quiet"]
    assert main([*common, "--rope", "cache", "--out", str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    assert run.frames == list(range(36)) and run.manifest["generation"]["context"]["source"] == "none"
    assert run.manifest["sampling"]["rope"] == "cache"

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")
    monkeypatch.setattr(scd.wan.pipeline, "load_causal_wan", loaded)
    assert main([*common, "--out", str(tmp_path / "absolute")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exceed the model's 32 frame positions (its RoPE table" in err, err
    assert not (tmp_path / "absolute").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["baseline", "scd", "diffusers"])
def test_probe_run_on_cuda_in_bfloat16(model, saved, tmp_path):
    """`--device cuda --dtype bfloat16` for every kind of model: the run is complete and its numbers are sane."""
    if model != "diffusers" and saved[0] != "wan":
        pytest.skip("a built-in model is checked once, not once per diffusers family")
    spec = f"diffusers:{saved[1]}" if model == "diffusers" else model
    out = tmp_path / "run"
    flags = ["--context", "2", "--frames", "2"] if model == "diffusers" else ["--frames", "2"]
    assert main(["run", "--model", spec, "--layers", "all", "--device", "cuda", "--dtype", "bfloat16", *flags,
                 "--steps", "4", "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    for layer in run.attention_layers:
        torch.testing.assert_close(run.attention(layer).sum(-1), torch.ones(run.attention(layer).shape[:-1]), atol=2e-2,
                                   rtol=0)
        assert torch.isfinite(run.features(layer).float()).all()
    assert run.manifest["dtype"] == "bfloat16" and run.manifest["device"].startswith("cuda")
