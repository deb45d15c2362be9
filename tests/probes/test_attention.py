import math

import pytest
import torch

from probes.attention import attention_mass_by_frame, mean_over_query_frames, pooled_attention, token_bands
from scd.data import VideoBenchmark
from scd.sampling import generate


def explicit_mass(q, k, query_frames, key_frames, num_frames, causal=True):
    """The full attention matrix with an explicit softmax, summed per key frame."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(key_frames[None, :] > query_frames[:, None], float("-inf"))
    probs = scores.softmax(-1)
    onehot = torch.nn.functional.one_hot(key_frames, num_frames).double()  # [Lk, T]
    return probs @ onehot


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_matches_an_explicit_softmax_for_any_chunk_size(chunk_size):
    g = torch.Generator().manual_seed(0)
    n, frames = 6, 5
    q, k = torch.randn(2, 3 * n, 4, 8, generator=g) * 3, torch.randn(2, frames * n, 4, 8, generator=g) * 3
    query_frames = torch.arange(2, 5).repeat_interleave(n)
    key_frames = torch.arange(frames).repeat_interleave(n)
    mass = attention_mass_by_frame(q, k, query_frames, key_frames, frames, chunk_size=chunk_size)
    expected = explicit_mass(q, k, query_frames, key_frames, frames)
    assert mass.shape == (2, 4, 3 * n, frames)
    assert (mass.double() - expected).abs().max() <= 1e-5
    assert torch.allclose(mass.sum(-1), torch.ones(2, 4, 3 * n))
    assert (mass[:, :, :n, 3:] == 0).all()  # frame 2's queries never see frames 3 and 4


def test_without_the_causal_mask_later_frames_get_attention():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 2, 8, generator=g), torch.randn(1, 8, 2, 8, generator=g)
    qf, kf = torch.zeros(4, dtype=torch.long), torch.arange(2).repeat_interleave(4)
    mass = attention_mass_by_frame(q, k, qf, kf, 2, causal=False)
    assert (mass.double() - explicit_mass(q, k, qf, kf, 2, causal=False)).abs().max() <= 1e-5
    assert (mass[..., 1] > 0).all()


@pytest.mark.parametrize(("bands", "chunk_size"), [(3, None), (3, 5), (12, None), (12, 7)])
def test_pooled_attention_equals_an_explicit_softmax_per_band_and_cell(bands, chunk_size):
    """Several layers in one batch; 12 bands x 5 frames = 60 cells, more than the head dim (8): several calls."""
    g = torch.Generator().manual_seed(2)
    n, frames, layers = 12, 5, 3
    q, k = torch.randn(layers, n, 4, 8, generator=g) * 3, torch.randn(layers, frames * n, 4, 8, generator=g) * 3
    band = token_bands(n, bands)
    key_cells = torch.arange(frames).repeat_interleave(n) * bands + band.repeat(frames)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(8)
    per_cell = scores.softmax(-1) @ torch.nn.functional.one_hot(key_cells, frames * bands).double()  # [B, H, n, cells]
    expected = torch.stack([per_cell[:, :, band == b].mean(2) for b in range(bands)], dim=2)
    pooled = pooled_attention(q, k, key_cells, frames * bands, band, bands, chunk_size=chunk_size)
    assert pooled.shape == (layers, 4, bands, frames * bands)
    assert (pooled.double() - expected).abs().max() <= 1e-6
    assert torch.allclose(pooled.sum(-1), torch.ones(()))


def test_mean_over_query_frames():
    mass = torch.rand(1, 2, 6, 3)
    means, frames = mean_over_query_frames(mass, torch.tensor([4, 4, 4, 5, 5, 5]))
    assert frames.tolist() == [4, 5] and means.shape == (1, 2, 2, 3)
    assert torch.allclose(means[0, 1, 0], mass[0, 0, 3:].mean(0))


def test_on_the_baseline_with_its_kv_cache(tiny_model):
    """q of the frame being denoised and k including the cached past frames, from the HookPoints."""
    clip = VideoBenchmark("val", size=16).clip(0)
    seen = {}
    layer = f"blocks.{tiny_model.config.depth - 1}.attn"

    def keep(tensor, hook):
        seen[hook.name] = tensor

    tiny_model.add_hook(f"{layer}.hook_q", keep)
    tiny_model.add_hook(f"{layer}.hook_k", keep)
    try:
        generate(tiny_model, clip[:3], 1, steps=2)  # the last forward is the cache write of frame 3
    finally:
        tiny_model.reset_hooks()
    q, k = seen[f"{layer}.hook_q"], seen[f"{layer}.hook_k"]
    n = tiny_model.config.tokens_per_frame
    assert k.shape[1] == 4 * n  # 3 cached context frames + the current frame
    qf, kf = torch.full((n,), 3), torch.arange(4).repeat_interleave(n)
    mass = attention_mass_by_frame(q, k, qf, kf, 4)
    assert (mass.double() - explicit_mass(q, k, qf, kf, 4)).abs().max() <= 1e-5


def test_bad_shapes_are_refused():
    q = torch.zeros(1, 4, 2, 8)
    with pytest.raises(ValueError, match="one frame index"):
        attention_mass_by_frame(q, q, torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        attention_mass_by_frame(q, q, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long), 1)
