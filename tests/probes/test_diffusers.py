"""Diffusers Wan / SkyReels-V2 transformers, probed like the built-in models: tiny random configs saved with
`save_pretrained`, loaded with `load_model("diffusers:DIR")`, and checked against raw forward hooks, an
explicit softmax, diffusers' own attention processor, and the unprobed output."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import SkyReelsV2Transformer3DModel, WanTransformer3DModel

from probe_cli import main
from probes import Probe, load_run
from probes.adapters import layout_of, load_model
from scd import generate
from scd.zoo import CheckpointError

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
            freq_dim=32, ffn_dim=32, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
FAMILIES = {"wan": WanTransformer3DModel, "skyreels": SkyReelsV2Transformer3DModel}
LATENT = (8, 8)  # 4 x 4 = 16 tokens per latent frame


def tiny(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return FAMILIES[family](**{**TINY, **overrides}).eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request, tmp_path_factory):
    """(family, directory) of a tiny random transformer written with save_pretrained."""
    directory = tmp_path_factory.mktemp(request.param)
    tiny(request.param, seed=len(request.param)).save_pretrained(directory)
    return request.param, directory


def context_latents(frames: int = 2, seed: int = 0) -> torch.Tensor:
    """What `probe run` gives a diffusers model: seeded Gaussian latents (its --clip is the seed)."""
    return torch.randn((frames, TINY["in_channels"], *LATENT), generator=torch.Generator().manual_seed(seed))


def rotate_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as a complex product: pairs (x0, x1) times e^(i theta), another way to write Wan's."""
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * torch.complex(cos[..., 0::2].double(), sin[..., 1::2].double())).flatten(-2)


def test_probe_run_features_equal_a_raw_forward_hook_and_attention_an_explicit_softmax(saved, tmp_path):
    family, directory = saved
    out = tmp_path / "run"
    assert main(["run", "--model", f"diffusers:{directory}", "--layer", "1", "--context", "2", "--frames", "2",
                 "--steps", "3", "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    assert run.manifest["config"]["family"] == FAMILIES[family].__name__ and run.manifest["frames"] == [2, 3]
    assert run.depth == TINY["num_layers"] and run.manifest["backend"] == "nnsight"
    assert main(["report", str(out), "-o", str(tmp_path / "report.html")]) == 0  # the report reads it like any run

    # The same generation, read with plain torch hooks on the loaded module tree.
    model = load_model(f"diffusers:{directory}", latent_size=LATENT)
    block = model.transformer.blocks[1]
    outputs, inputs = [], []
    handles = [block.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone())),
               block.attn1.register_forward_pre_hook(lambda m, args: inputs.append((args[0].clone(), args[3])))]
    try:
        video = generate(model, context_latents(), 2, steps=3, seed=0)
    finally:
        for handle in handles:
            handle.remove()
    n = model.tokens_per_frame
    features = torch.stack([torch.stack([outputs[f * 3 + s][0, -n:] for s in range(3)]) for f in range(2)])
    torch.testing.assert_close(run.features(1).float(), features.half().float(), atol=1e-6, rtol=0)

    # Attention of the probed frame's queries, from the block's own input, in float64, with the mask written out.
    attn = block.attn1.double()
    for i, (hidden, (cos, sin)) in enumerate(inputs):
        frame, step = 2 + i // 3, i % 3
        h = hidden.double()
        q = attn.norm_q(attn.to_q(h)).unflatten(2, (2, -1))
        k = attn.norm_k(attn.to_k(h)).unflatten(2, (2, -1))
        q, k = rotate_complex(q, cos, sin), rotate_complex(k, cos, sin)
        scores = torch.einsum("bqhd,bkhd->bhqk", q[:, -n:], k) / math.sqrt(q.shape[-1])
        key_frame = torch.arange(k.shape[1]) // n
        scores = scores.masked_fill(key_frame > frame, float("-inf"))
        mass = torch.stack([scores.softmax(-1)[..., key_frame == t].sum(-1) for t in range(frame + 1)], -1)  # [1, H, n, T]
        expected = mass[0].mean(1)
        torch.testing.assert_close(run.attention(1)[frame - 2, step, :, : frame + 1].double(), expected, atol=1e-5, rtol=0)
        assert run.attention(1)[frame - 2, step, :, frame + 1:].abs().sum() == 0  # no later frame seen
    attn.float()
    assert video.shape == (4, TINY["in_channels"], *LATENT)


def test_an_earlier_frame_does_not_see_a_later_one(saved):
    family, directory = saved
    model = load_model(f"diffusers:{directory}", latent_size=LATENT)
    x = torch.randn(1, 4, TINY["in_channels"], *LATENT)
    t = torch.tensor([[0.0, 0.0, 500.0, 900.0]])
    changed = x.clone()
    changed[:, 2:] = torch.randn_like(changed[:, 2:])
    with torch.no_grad():
        a, b = model(x, t), model(changed, t)
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=1e-6, rtol=0)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3


def test_probing_does_not_change_the_output(saved):
    family, directory = saved
    model = load_model(f"diffusers:{directory}", latent_size=LATENT)
    plain = generate(model, context_latents(), 2, steps=3, seed=1)
    with Probe(model, "all", backend="nnsight") as probe:
        probed = generate(model, context_latents(), 2, steps=3, seed=1)
    assert torch.equal(plain, probed)
    assert probe.features(2).shape == (2, 3, model.tokens_per_frame, 24)
    assert all(type(b.attn1.processor).__name__ == "FrameCausalAttnProcessor" for b in model.transformer.blocks)
    assert not any(b._forward_hooks or b.attn1.hook_q._forward_hooks for b in model.transformer.blocks)  # all removed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_processor_computes_what_diffusers_own_computes(family, tmp_path):
    """On one latent frame no mask applies: our processor (q, k through HookPoints) equals diffusers' stock one."""
    stock = tiny(family)
    stock.save_pretrained(tmp_path)
    model = load_model(f"diffusers:{tmp_path}", latent_size=LATENT)
    x = torch.randn(1, TINY["in_channels"], 1, *LATENT)
    text = torch.zeros(1, 512, TINY["text_dim"])
    with torch.no_grad():
        if family == "skyreels":
            expected = stock(x, torch.tensor([[400.0]]), text, enable_diffusion_forcing=True, return_dict=False)[0]
        else:
            expected = stock(x, torch.full((1, model.tokens_per_frame), 400.0), text, return_dict=False)[0]
        got = model(x.transpose(1, 2), torch.tensor([[400.0]])).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_skyreels_own_block_causal_mask_is_used_when_its_block_size_is_above_one(tmp_path):
    stock = tiny("skyreels", num_frame_per_block=2)
    stock.save_pretrained(tmp_path)
    model = load_model(f"diffusers:{tmp_path}", latent_size=LATENT)
    x = torch.randn(1, TINY["in_channels"], 4, *LATENT)
    t = torch.tensor([[0.0, 0.0, 300.0, 300.0]])
    with torch.no_grad():
        expected = stock(x, t, torch.zeros(1, 512, TINY["text_dim"]), enable_diffusion_forcing=True, return_dict=False)[0]
        got = model(x.transpose(1, 2), t).transpose(1, 2)
        changed = x.clone()
        changed[:, :, 3] += 1  # frame 3 is in frame 2's block: frame 2 sees it; frames 0-1 do not
        after = model(changed.transpose(1, 2), t).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(after[:, :, :2], got[:, :, :2], atol=1e-6, rtol=0)
    assert (after[:, :, 2] - got[:, :, 2]).abs().max() > 1e-4


def test_layout_frame_major_tokens_from_the_patch_size(saved):
    family, directory = saved
    model = load_model(f"diffusers:{directory}", latent_size=(8, 12))
    layout = layout_of(model)
    assert layout.depth == TINY["num_layers"] and layout.tokens_per_frame == 4 * 6
    assert layout.path(1, "hook_resid_post") == "transformer.blocks.1"
    assert layout.path(1, "attn.hook_q") == "transformer.blocks.1.attn1.hook_q"


def test_bad_directories_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(f"diffusers:{tmp_path / 'missing'}")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="accepted: WanTransformer3DModel, SkyReelsV2Transformer3DModel"):
        load_model(f"diffusers:{tmp_path}")
    tiny("wan").save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    assert main(["run", "--model", f"diffusers:{tmp_path}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no .safetensors weights" in err
    assert not (tmp_path / "run").exists()
    assert main(["run", "--model", f"diffusers:{tmp_path}", "--latent-size", "8by8"]) == 2
    assert "--latent-size: '8by8' is not HxW" in capsys.readouterr().err


def test_a_pipeline_directory_brings_its_vae_flow_shift_and_a_supplied_prompt(tmp_path):
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    from scd.sampling import make_scheduler

    tiny("wan").save_pretrained(tmp_path / "pipe" / "transformer")
    torch.manual_seed(1)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 1.0, 2.0]).eval()
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0}))
    prompt = torch.randn(7, TINY["text_dim"], generator=torch.Generator().manual_seed(2))
    save_file({"text_embeddings": prompt}, tmp_path / "prompt.safetensors")
    out = tmp_path / "run"
    assert main(["run", "--model", f"diffusers:{tmp_path / 'pipe'}", "--layer", "1", "--context", "1", "--frames", "1",
                 "--steps", "4", "--text-embeddings", str(tmp_path / "prompt.safetensors"), "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    scheduler = make_scheduler(3.0)
    scheduler.set_timesteps(4)
    assert run.manifest["config"]["flow_shift"] == 3.0
    assert run.manifest["timesteps"] == pytest.approx(scheduler.timesteps.tolist())

    model = load_model(f"diffusers:{tmp_path / 'pipe'}", latent_size=LATENT, text_embeddings=prompt)
    latents = generate(model, context_latents(1), 1, steps=4, seed=0)
    with torch.no_grad():  # each latent frame decoded on its own, un-normalised as Wan's pipelines do
        z = latents[:, :, None] * torch.tensor([1.5, 0.5, 1.0, 2.0]).view(1, 4, 1, 1, 1) + \
            torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
        frames = vae.decode(z).sample[:, :, 0].clamp(-1, 1)
    expected = ((frames + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    generated, truth = run.video()
    assert generated.shape == (2, 16, 16, 3) and len(truth) == 0
    assert abs(generated.astype(int) - expected.astype(int)).max() <= 1
    unprompted = generate(load_model(f"diffusers:{tmp_path / 'pipe'}", latent_size=LATENT), context_latents(1), 1,
                          steps=4, seed=0)
    assert (unprompted - latents).abs().max() > 1e-3  # the prompt reaches the model


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["baseline", "scd", "diffusers"])
def test_probe_run_on_cuda_in_bfloat16(model, saved, tmp_path):
    """`--device cuda --dtype bfloat16` for every kind of model: the run is complete and its numbers are sane."""
    if model != "diffusers" and saved[0] != "wan":
        pytest.skip("a built-in model is checked once, not once per diffusers family")
    spec = f"diffusers:{saved[1]}" if model == "diffusers" else model
    out = tmp_path / "run"
    assert main(["run", "--model", spec, "--layers", "all", "--device", "cuda", "--dtype", "bfloat16", "--frames", "2",
                 "--steps", "4", "--out", str(out), "--quiet"]) == 0
    run = load_run(out)
    for layer in run.attention_layers:
        torch.testing.assert_close(run.attention(layer).sum(-1), torch.ones(run.attention(layer).shape[:-1]), atol=2e-2,
                                   rtol=0)
        assert torch.isfinite(run.features(layer).float()).all()
    assert run.manifest["dtype"] == "bfloat16" and run.manifest["device"].startswith("cuda")
