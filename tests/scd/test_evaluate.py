import math

import torch

from scd.data import VideoBenchmark
from scd.evaluate import copy_last, extrapolate_linearly, frame_quality, summarize, validate


def test_psnr_matches_the_formula_and_ssim_is_one_for_identical_frames():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    pred = (target + 0.1 * torch.randn(3, 3, 16, 16, generator=g)).clamp(-1, 1)
    psnr, ssim = frame_quality(pred, target)
    for i in range(3):
        mse = (pred[i] - target[i]).pow(2).mean().item()
        assert math.isclose(psnr[i].item(), 10 * math.log10(4 / mse), rel_tol=1e-4)
    assert torch.allclose(frame_quality(target, target)[1], torch.ones(3))
    assert (ssim < 1).all()


def test_reference_predictors():
    clip = VideoBenchmark("val").batch(range(2))
    ctx = clip[:, :4]
    assert torch.equal(copy_last(ctx, 3), ctx[:, 3:4].expand(-1, 3, -1, -1, -1))
    lin = extrapolate_linearly(ctx, 2)
    assert torch.allclose(lin[:, 1], (ctx[:, 3] + 2 * (ctx[:, 3] - ctx[:, 2])).clamp(-1, 1))


def test_validate_returns_a_tidy_table(tiny_model):
    table = validate(tiny_model, clips=3, steps=2, batch_size=2, progress=False)
    assert set(table.method) == {"model", "copy last frame", "extrapolate linearly"}
    assert len(table) == 3 * 3 * 4 and sorted(table.frame.unique()) == [4, 5, 6, 7]
    summary = summarize(table)
    assert list(summary.columns[:2]) == ["psnr", "ssim"]
