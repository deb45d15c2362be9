import numpy as np
import pytest
import torch

from scd.data import VideoBenchmark, clip_seed


def test_same_index_gives_identical_bytes():
    a = VideoBenchmark("val").clip(7)
    b = VideoBenchmark("val").clip(7)
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert VideoBenchmark("train").clip(123456789).numpy().tobytes() == VideoBenchmark("train").clip(123456789).numpy().tobytes()


def test_longer_clip_continues_the_shorter_one_exactly():
    short, long = VideoBenchmark("val", frames=8).clip(3), VideoBenchmark("val", frames=20).clip(3)
    assert torch.equal(long[:8], short)


def test_train_and_val_seeds_are_disjoint():
    n = 100_000
    train = {clip_seed("train", i) for i in range(n)}
    val = {clip_seed("val", i) for i in range(n)}
    assert len(train) == len(val) == n
    assert train.isdisjoint(val)
    assert not torch.equal(VideoBenchmark("train").clip(0), VideoBenchmark("val").clip(0))


def test_clip_shape_range_and_size_parameter():
    clip = VideoBenchmark("train", frames=9, size=24).clip(0)
    assert clip.shape == (9, 3, 24, 24) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1


def test_sprites_cover_all_kinds_counts_and_stay_inside_the_frame():
    bench = VideoBenchmark("train", frames=40)
    kinds, counts = set(), set()
    for i in range(60):
        _, sprites = bench.sprites(i)
        counts.add(len(sprites))
        kinds |= {s.kind for s in sprites}
        for _ in range(40):  # elastic bounces keep every sprite fully inside the frame
            for s in sprites:
                s.step(bench.size, bench.size)
                assert -1e-9 <= s.x <= bench.size - s.size + 1e-9 and -1e-9 <= s.y <= bench.size - s.size + 1e-9
    assert kinds == {"ball", "square", "digit"} and counts == {1, 2, 3}


def test_objects_move_at_constant_velocity_between_bounces():
    bench = VideoBenchmark("val")
    checked = 0
    for i in range(20):
        for s in bench.sprites(i)[1]:
            x0, y0, vx, vy = s.x, s.y, s.vx, s.vy
            if 0 < x0 + vx < bench.size - s.size and 0 < y0 + vy < bench.size - s.size:  # no wall this frame
                s.step(bench.size, bench.size)
                assert (s.x, s.y, s.vx, s.vy) == pytest.approx((x0 + vx, y0 + vy, vx, vy))
                checked += 1
    assert checked > 10


def test_later_sprites_occlude_earlier_ones():
    bench = VideoBenchmark("val", size=32)
    background, sprites = bench.sprites(0)
    for s in sprites:  # stack every sprite on the same spot; the last one drawn must show there
        s.x, s.y, s.vx, s.vy, s.kind = 8.0, 8.0, 0.0, 0.0, "square"
    py, px = np.mgrid[0:32, 0:32] + 0.5
    canvas = np.broadcast_to(background, (32, 32, 3)).copy()
    for s in sprites:
        a = s.alpha(px, py)[..., None]
        canvas = canvas * (1 - a) + s.color * a
    assert np.allclose(canvas[12, 12], sprites[-1].color)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown split"):
        VideoBenchmark("test")
    with pytest.raises(ValueError, match=r"accepted: an integer in 0\.\."):
        VideoBenchmark("val").clip(-1)
