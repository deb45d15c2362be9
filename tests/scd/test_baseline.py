import math
import re
from pathlib import Path

import pytest
import torch

from scd.models.baseline import BASELINE_SIZES, BaselineConfig, CausalVideoDiffuser
from scd.models.blocks import rope_axes
from scd.sampling import generate

README = Path(__file__).resolve().parents[2] / "README.md"  # inside the repository: the tests read nothing outside it


def _video(model, frames=4, batch=2, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, cfg.channels, cfg.frame_size, cfg.frame_size, generator=g)


def test_output_shape_and_zero_init_predicts_zero_velocity():
    model = CausalVideoDiffuser(BASELINE_SIZES["tiny"])
    x = _video(model)
    assert torch.equal(model(x, torch.full((2, 4), 500.0)), torch.zeros_like(x))


def test_patchify_roundtrip_and_frame_major_order(tiny_model):
    x = _video(tiny_model, frames=3)
    tokens = tiny_model.patchify(x)
    n = tiny_model.config.tokens_per_frame
    assert tokens.shape[1] == 3 * n
    assert torch.equal(tiny_model.unpatchify(tokens, 3), x)
    # tokens of frame 1 depend only on frame 1's pixels
    y = x.clone()
    y[:, 1] += 1
    changed = (tiny_model.patchify(y) != tokens).any(-1).any(0)
    assert changed[n:2 * n].all() and not changed[:n].any() and not changed[2 * n:].any()


def test_a_frame_does_not_change_when_later_frames_change(tiny_model):
    x, t = _video(tiny_model, frames=4), torch.rand(2, 4) * 1000
    y = x.clone()
    y[:, 2:] = torch.randn_like(y[:, 2:])
    t2 = t.clone()
    t2[:, 3] = 10.0
    with torch.no_grad():
        a, b = tiny_model(x, t), tiny_model(y, t2)
    assert torch.equal(a[:, :2], b[:, :2])


def test_the_block_causal_mask_is_used_earlier_frames_change_later_outputs(tiny_model):
    x, t = _video(tiny_model, frames=4), torch.rand(2, 4) * 1000
    y = x.clone()
    y[:, 0] = torch.randn_like(y[:, 0])
    with torch.no_grad():
        a, b = tiny_model(x, t), tiny_model(y, t)
    for f in range(1, 4):
        assert (a[:, f] - b[:, f]).abs().max() > 1e-3, f"frame {f} ignores frame 0"


def test_each_frame_has_its_own_timestep(tiny_model):
    x, t = _video(tiny_model, frames=3), torch.full((2, 3), 300.0)
    t2 = t.clone()
    t2[:, 2] = 900.0
    with torch.no_grad():
        a, b = tiny_model(x, t), tiny_model(x, t2)
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.allclose(a[:, 2], b[:, 2])


def test_every_hookpoint_named_in_the_docs_exists():
    """The HookPoints docs/development.md lists (the README links there) exist on every block."""
    model = CausalVideoDiffuser(BASELINE_SIZES["tiny"])
    names = set(re.findall(r"`(blocks\.\{i\}\.[a-z_.]+)`", (README.parent / "docs" / "development.md").read_text()))
    assert len(names) == 7, names
    for i in range(model.config.depth):
        for name in names:
            assert name.format(i=i) in model.hook_dict, name.format(i=i)


def test_hooked_q_k_v_are_what_the_softmax_sees(tiny_model):
    """Recompute attention with an explicit softmax from the hooked q, k, v (a raw forward hook reads the
    real attention output) under the block-causal mask: they must agree."""
    x, t = _video(tiny_model, frames=3), torch.rand(2, 3) * 1000
    seen, attn_out = {}, {}
    layer = 2
    block = tiny_model.blocks[layer]
    handle = block.attn.out.register_forward_hook(lambda m, inp, out: attn_out.setdefault("o", inp[0]))

    def keep(tensor, hook):
        seen[hook.name.split(".")[-1]] = tensor

    with torch.no_grad():
        tiny_model.run_with_hooks(x, t, fwd_hooks=[(f"blocks.{layer}.attn.hook_{n}", keep) for n in "qkv"])
    handle.remove()
    q, k, v = (seen[f"hook_{n}"] for n in "qkv")  # [B, L, H, D]
    n = tiny_model.config.tokens_per_frame
    frame = torch.arange(3).repeat_interleave(n)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(frame[None, :] > frame[:, None], float("-inf"))
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)
    assert torch.allclose(attn_out["o"], expected, atol=1e-5)


def test_q_and_k_are_hooked_after_qk_norm_and_rope():
    tiny = CausalVideoDiffuser(BASELINE_SIZES["tiny"]).eval()  # RMS-norm weights are 1 at init
    x, t = _video(tiny, frames=2), torch.rand(2, 2) * 1000
    _, cache = tiny.run_with_cache(x, t, names_filter=lambda name: name.endswith(("hook_q", "hook_k")))
    for name in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k"):  # normed, and a rotation keeps the norm
        assert torch.allclose(cache[name].pow(2).mean(-1), torch.ones_like(cache[name][..., 0]), atol=1e-4)
    # RoPE was applied: the same content at frame 0 and at frame 1 gives different q
    same = x[:, :1].expand(-1, 2, -1, -1, -1).contiguous()
    _, cache = tiny.run_with_cache(same, torch.zeros(2, 2), names_filter=lambda name: name.endswith("hook_q"))
    q, n = cache["blocks.0.attn.hook_q"], tiny.config.tokens_per_frame
    assert not torch.allclose(q[:, :n], q[:, n:], atol=1e-3)


def test_kv_cached_generation_equals_full_recomputation(tiny_model):
    from scd.data import VideoBenchmark
    clip = VideoBenchmark("val", size=16).batch(range(2))
    cached = generate(tiny_model, clip[:, :3], 3, steps=8, seed=3)
    full = generate(tiny_model, clip[:, :3], 3, steps=8, seed=3, use_cache=False)
    assert cached.shape == (2, 6, 3, 16, 16)
    assert torch.equal(cached[:, :3], clip[:, :3])
    assert (cached - full).abs().max() <= 1e-4


def test_generation_is_seeded_and_calls_back_every_step(tiny_model):
    from scd.data import VideoBenchmark
    clip = VideoBenchmark("val", size=16).clip(0)
    calls = []
    a = generate(tiny_model, clip[:2], 2, steps=5, seed=1, callback=lambda f, s, t: calls.append((f, s, t)))
    b = generate(tiny_model, clip[:2], 2, steps=5, seed=1)
    c = generate(tiny_model, clip[:2], 2, steps=5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    denoising = [(f, s) for f, s, _ in calls if s is not None]
    assert denoising == [(f, s) for f in (2, 3) for s in range(5)]
    assert [t for f, s, t in calls if f == 2 and s is not None][0] == 1000.0
    assert [(f, t) for f, s, t in calls if s is None] == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.0)]


def test_rope_split_and_config_validation():
    assert rope_axes(32) == (12, 10, 10) and sum(rope_axes(24)) == 24
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CausalVideoDiffuser(BaselineConfig(frame_size=30, patch_size=4, width=32, depth=1, heads=2))
    with pytest.raises(ValueError, match="timesteps"):
        CausalVideoDiffuser(BASELINE_SIZES["tiny"])(torch.zeros(1, 2, 3, 16, 16), torch.zeros(2))


@pytest.mark.gpu
def test_cuda_generation_matches_cpu(tiny_model):
    from scd.data import VideoBenchmark
    clip = VideoBenchmark("val", size=16).clip(0)
    cpu = generate(tiny_model, clip[:2], 2, steps=4, seed=0)
    cuda = generate(tiny_model, clip[:2], 2, steps=4, seed=0, device="cuda")
    assert (cpu - cuda).abs().max() < 1e-3


def test_rectangular_latent_frames_patchify_row_major_and_rope_by_row_and_column():
    """A Wan-like 16-channel 4x6 latent in 2x2 patches: 2 x 3 tokens per frame, row-major; RoPE angles follow the
    grid's rows and columns (Wan's three axes), checked against a hand-made table."""
    from scd.models.blocks import rope_angles

    config = BaselineConfig(frame_size=4, frame_width=6, patch_size=2, channels=16, width=24, depth=2, heads=2)
    model = CausalVideoDiffuser(config)
    assert config.frame_shape == (16, 4, 6) and config.grid == (2, 3) and config.tokens_per_frame == 6
    x = torch.randn(1, 2, 16, 4, 6)
    tokens = model.patchify(x)
    assert tokens.shape == (1, 12, 64) and torch.equal(model.unpatchify(tokens, 2), x)
    # token 4 of frame 1 is the patch at row 1, column 1 (rows of 3 patches)
    assert torch.equal(tokens[0, 6 + 4].view(16, 2, 2), x[0, 1, :, 2:4, 2:4])
    angles = rope_angles(torch.tensor([0, 1]), 2, 3, 12)
    frame_dims, row_dims, _ = (d // 2 for d in rope_axes(12))
    rows = angles[:, frame_dims:frame_dims + row_dims]
    cols = angles[:, frame_dims + row_dims:]
    assert torch.equal(rows[6 + 4], rows[1 * 3 + 0]) and torch.equal(cols[6 + 4], cols[1])  # (row 1, col 1)
    video = generate(randomized(model), x[0], 1, steps=2)
    assert video.shape == (3, 16, 4, 6) and torch.isfinite(video).all()


def randomized(model):
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_the_wan_1_3b_sizes_have_wan_s_shapes_and_random_models_are_seeded():
    """The named sizes against Wan-2.1-1.3B's transformer shapes (width 1536, 12 heads, MLP 8960, 30 blocks, 1,560
    tokens per 480p frame), built without weights; random_model at a small latent is seeded and has no zero gate."""
    from scd.models.scd_model import SCD_SIZES
    from scd.zoo import build_model, random_model

    wan = BASELINE_SIZES["wan1.3b"]
    assert (wan.width, wan.heads, wan.depth, wan.channels, wan.patch_size) == (1536, 12, 30, 16, 2)
    assert wan.frame_shape == (16, 60, 104) and wan.tokens_per_frame == 1560
    model = build_model({"family": "baseline", **BASELINE_SIZES["wan1.3b"].__dict__}, device="meta")
    assert model.blocks[0].mlp[0].out_features == 8960
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1.54e9, rel=0.01)
    scd = SCD_SIZES["wan1.3b"]
    assert (scd.encoder_depth, scd.decoder_depth, scd.width, scd.tokens_per_frame) == (25, 10, 1536, 1560)
    small = dict(frame_size=4, frame_width=6, width=48, heads=2)  # a narrow stand-in: the same code path, little memory
    a = random_model("baseline", "wan1.3b", seed=3, **small)
    b = random_model("baseline", "wan1.3b", seed=3, **small)
    c = random_model("baseline", "wan1.3b", seed=4, **small)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, a.blocks[1].attn.qkv.weight)
    assert a.blocks[5].modulation.weight.abs().sum() > 0 and torch.equal(a.blocks[0].attn.q_norm.weight, torch.ones(24))
    assert a.config.tokens_per_frame == 6 and a.checkpoint["sha256"] is None
    with pytest.raises(ValueError, match="unknown baseline size 'wan7b'; accepted: tiny, baseline, study, study-p2, wan1.3b"):
        random_model("baseline", "wan7b")


def test_every_noise_draw_of_a_sweep_draws_its_own_noise():
    """torch's CPU generator keeps only a seed's low 32 bits, so draw 2 of a sweep (seed + c + 2 x 2^31) once drew draw
    0's noise. `noise_generator` keeps seeds below 2^32 as they were and mixes larger ones: the first 8 draws of a
    clip all differ, draws 0 and 1 are what torch draws from those seeds directly, and generate uses it."""
    import torch

    from probes.sweep_plan import noise_seed
    from scd.sampling import noise_generator

    first = [tuple(torch.randn(4, generator=noise_generator(noise_seed(5, 3, draw))).tolist()) for draw in range(8)]
    assert len(set(first)) == 8
    for draw in (0, 1):
        direct = torch.randn(4, generator=torch.Generator().manual_seed(noise_seed(5, 3, draw))).tolist()
        assert list(first[draw]) == direct
    model = CausalVideoDiffuser(BASELINE_SIZES["tiny"]).eval()
    context = torch.zeros(1, 2, 3, 16, 16)
    videos = [generate(model, context, 1, steps=2, seed=noise_seed(0, 0, draw)) for draw in (0, 2)]
    assert not torch.equal(videos[0], videos[1])


def test_generate_records_no_autograd_graph():
    """Sampling never builds an autograd graph (it would hold every step's activations: a 50-step, 8-frame rollout of
    the baseline grew past 19 GB when `generate` lost its no_grad once): the video does not require grad, though the
    model's weights do."""
    model = CausalVideoDiffuser(BASELINE_SIZES["tiny"])
    assert all(p.requires_grad for p in model.parameters())
    video = generate(model, torch.zeros(1, 2, 3, 16, 16), 1, steps=2, seed=0)
    assert not video.requires_grad and video.grad_fn is None
