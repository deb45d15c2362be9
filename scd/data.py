"""The procedural video benchmark: moving sprites with an exact ground-truth continuation.

Every clip is drawn from one integer seed, so `clip(i)` is the same bytes on every call and
machine, and any continuation of it (more frames) is exact. Train clips use even seeds and val
clips odd seeds, so the two splits can never share a clip.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import map_coordinates
from sklearn.datasets import load_digits

from scd.errors import BenchmarkError
from scd.training.config import SCENES  # sprites: flat sprites on a flat colour; textured: patterned, over a panning texture

SPLITS = ("train", "val")
CLIP_MAX = 2**31 - 1  # the clip's numpy seed 2 * index + 1 stays below 2**32
SPRITE_KINDS = ("ball", "square", "digit")


def clip_seed(split: str, index: int) -> int:
    """The seed that draws clip `index` of `split`: even for train, odd for val (disjoint by construction)."""
    if split not in SPLITS:
        raise BenchmarkError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    if not isinstance(index, int | np.integer) or isinstance(index, bool) or not 0 <= index <= CLIP_MAX:
        raise BenchmarkError(f"clip index {index!r} is not accepted; accepted: an integer in 0..{CLIP_MAX}")
    return 2 * index + SPLITS.index(split)


@lru_cache(maxsize=1)
def _digit_images() -> np.ndarray:
    """sklearn's bundled 8x8 digits (1797 images, shipped with scikit-learn: no download), in [0, 1]."""
    return load_digits().images.astype(np.float64) / 16.0


@dataclass
class Sprite:
    kind: str           # "ball" | "square" | "digit"
    size: float         # side (or diameter) in pixels
    x: float            # top-left corner, pixels (continuous, sub-pixel motion)
    y: float
    vx: float           # velocity, pixels per frame
    vy: float
    color: np.ndarray   # RGB in [0, 1]
    digit: int = -1     # index into the digits images when kind == "digit"

    def step(self, width: int, height: int) -> None:
        """Move by one frame; an elastic bounce reflects the part of the move that left the frame."""
        self.x, self.vx = _bounce(self.x + self.vx, self.vx, width - self.size)
        self.y, self.vy = _bounce(self.y + self.vy, self.vy, height - self.size)

    def alpha(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Coverage in [0, 1] of each pixel centre (px, py), anti-aliased over one pixel."""
        u = (px - self.x) / self.size  # sprite-local coordinates in [0, 1]
        v = (py - self.y) / self.size
        if self.kind == "ball":
            r = self.size / 2
            dist = np.hypot(px - self.x - r, py - self.y - r)
            return np.clip(r - dist + 0.5, 0.0, 1.0)
        if self.kind == "square":
            cover_x = np.clip(np.minimum(px + 0.5 - self.x, self.x + self.size - px + 0.5), 0, 1)
            cover_y = np.clip(np.minimum(py + 0.5 - self.y, self.y + self.size - py + 0.5), 0, 1)
            return cover_x * cover_y
        image = _digit_images()[self.digit]
        coords = np.stack([v * 8 - 0.5, u * 8 - 0.5])  # pixel centres of the 8x8 image
        return np.clip(map_coordinates(image, coords, order=1, mode="constant", cval=0.0), 0, 1)


def _bounce(pos: float, vel: float, limit: float) -> tuple[float, float]:
    if pos < 0:
        return -pos, -vel
    if pos > limit:
        return 2 * limit - pos, -vel
    return pos, vel


def _random_color(rng: np.random.Generator, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), saturation, value))


@dataclass
class Texture:
    """A periodic colour texture: a sum of sinusoidal gratings with whole-number frequencies (so it tiles the
    frame), blending two colours; evaluated analytically at any sub-pixel offset, so panning needs no resampling."""
    frequencies: np.ndarray  # [K, 2] cycles per `period` along x and y
    phases: np.ndarray       # [K]
    weights: np.ndarray      # [K], summing to 1
    colors: np.ndarray       # [2, 3] RGB in [0, 1]: the texture runs between them
    period: float            # pixels (the frame side for a background, the sprite side for a sprite)

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """RGB [..., 3] at positions (u, v) in pixels."""
        waves = np.sin(2 * np.pi * (self.frequencies[:, 0, None, None] * u + self.frequencies[:, 1, None, None] * v)
                       / self.period + self.phases[:, None, None])
        t = 0.5 + 0.5 * np.tensordot(self.weights, waves, axes=1)  # in [0, 1]
        return self.colors[0] * (1 - t[..., None]) + self.colors[1] * t[..., None]


def _random_texture(rng: np.random.Generator, period: float, max_frequency: int, colors: np.ndarray | None = None) -> Texture:
    """Three gratings; between two random dark colours of one background, or between the given `colors`."""
    k = 3
    frequencies = rng.integers(-max_frequency, max_frequency + 1, size=(k, 2))
    frequencies[np.all(frequencies == 0, axis=1), 0] = 1  # no flat component: every grating carries a pattern
    weights = rng.uniform(0.5, 1.0, k)
    if colors is None:
        colors = np.stack([_random_color(rng, 0.6, 0.12), _random_color(rng, 0.6, 0.5)])
    return Texture(frequencies.astype(np.float64), rng.uniform(0, 2 * np.pi, k), weights / weights.sum(), colors, period)


_SHADE = np.array([[0.45] * 3, [1.0] * 3])  # a sprite's pattern shades its colour (its hue stays)


class VideoBenchmark:
    """Moving sprites (balls, squares, sklearn's 8x8 digits) on a background.

    1-3 objects per clip, constant velocity, elastic wall bounces, occlusion by drawing order.
    `scene="sprites"`: flat-coloured sprites on a flat colour. `scene="textured"`: the same sprites and
    motion (the same draws), but each sprite carries a pattern that moves with it and the background
    is a tiling texture that pans at its own constant velocity, so every pixel of every frame changes
    and must be rendered, not copied from the frame before.
    `clip(i)` is float32 [frames, 3, size, size] in [-1, 1], deterministic for every index i >= 0;
    a longer clip of the same index starts with the shorter one.
    """

    def __init__(
        self,
        split: str = "train",
        frames: int = 8,
        size: int = 32,
        max_objects: int = 3,
        speed: tuple[float, float] = (0.04, 0.09),  # pixels per frame as a fraction of `size`
        scene: str = "sprites",
    ) -> None:
        clip_seed(split, 0)  # validates the split name
        if scene not in SCENES:
            raise BenchmarkError(f"unknown scene {scene!r}; accepted: {', '.join(SCENES)}")
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (frames, size, max_objects))
        if not ints or not 1 <= frames <= 4096 or not 8 <= size <= 1024 or not 1 <= max_objects <= 16:
            raise BenchmarkError(f"got frames={frames!r}, size={size!r}, max_objects={max_objects!r}; accepted: integers, "
                                 "frames in 1..4096, size in 8..1024, max_objects in 1..16")
        self.split, self.frames, self.size = split, frames, size
        self.max_objects, self.speed, self.scene = max_objects, speed, scene

    def sprites(self, index: int) -> tuple[np.ndarray, list[Sprite]]:
        """The background colour and the sprites of clip `index` at frame 0 (all randomness is drawn here)."""
        rng = np.random.default_rng(clip_seed(self.split, index))
        background = _random_color(rng, saturation=0.5, value=0.25)
        sprites = []
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            kind = SPRITE_KINDS[int(rng.integers(len(SPRITE_KINDS)))]
            size = float(rng.uniform(0.22, 0.38) * self.size)
            speed = rng.uniform(*self.speed) * self.size
            angle = rng.uniform(0, 2 * np.pi)
            sprites.append(Sprite(
                kind=kind, size=size,
                x=float(rng.uniform(0, self.size - size)), y=float(rng.uniform(0, self.size - size)),
                vx=float(speed * np.cos(angle)), vy=float(speed * np.sin(angle)),
                color=_random_color(rng, saturation=0.8, value=1.0),
                digit=int(rng.integers(len(_digit_images()))) if kind == "digit" else -1,
            ))
        return background, sprites

    def textures(self, index: int, sprites: int) -> tuple[Texture, np.ndarray, list[Texture]]:
        """The textured scene's background texture, its pan velocity (pixels per frame) and one texture per sprite,
        drawn from a second stream of the clip's seed (the sprites and their motion stay those of `sprites`)."""
        rng = np.random.default_rng([clip_seed(self.split, index), 1])
        background = _random_texture(rng, float(self.size), 3)
        speed, angle = rng.uniform(0.02, 0.06) * self.size, rng.uniform(0, 2 * np.pi)
        pan = np.array([speed * np.cos(angle), speed * np.sin(angle)])
        return background, pan, [_random_texture(rng, 1.0, 2, _SHADE) for _ in range(sprites)]

    def clip(self, index: int) -> torch.Tensor:
        """Clip `index`: float32 [frames, 3, size, size] in [-1, 1]."""
        background, sprites = self.sprites(index)
        textured = self.scene == "textured"
        if textured:
            ground, pan, patterns = self.textures(index, len(sprites))
        py, px = np.mgrid[0:self.size, 0:self.size] + 0.5  # pixel centres
        video = np.empty((self.frames, self.size, self.size, 3))
        for f in range(self.frames):
            if textured:
                canvas = ground(px + pan[0] * f, py + pan[1] * f)
            else:
                canvas = np.broadcast_to(background, (self.size, self.size, 3)).copy()
            for i, sprite in enumerate(sprites):  # later sprites occlude earlier ones
                a = sprite.alpha(px, py)[..., None]
                color = sprite.color * patterns[i]((px - sprite.x) / sprite.size, (py - sprite.y) / sprite.size) \
                    if textured else sprite.color
                canvas = canvas * (1 - a) + color * a
                sprite.step(self.size, self.size)
            video[f] = canvas
        return torch.from_numpy(video * 2 - 1).float().permute(0, 3, 1, 2).contiguous()

    def batch(self, indices: list[int] | range) -> torch.Tensor:
        """Clips stacked: float32 [len(indices), frames, 3, size, size]."""
        return torch.stack([self.clip(i) for i in indices])
