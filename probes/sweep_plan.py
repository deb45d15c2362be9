"""Which items a sweep holds and which rank probes each: the noise seed of every (clip, draw), the names of items and
shards, and the rank from torchrun's environment. No torch: the command checks a sweep's seeds before importing it."""

from __future__ import annotations

import os

DRAW_STRIDE = 2**31  # above every clip index: the seeds of two draws never meet


def noise_seed(seed: int, clip: int, draw: int = 0) -> int:
    """The noise seed of draw `draw` of clip `clip` from a sweep's base `seed`: seed + clip + draw * 2^31, so every
    clip of a sweep has its own noise (clips never share frame k's noise) and each draw of a clip its own too."""
    return seed + clip + draw * DRAW_STRIDE


def item_name(clip: int, seed: int) -> str:
    """The run directory of one sweep item inside its shard."""
    return f"clip{clip}-seed{seed}"


def shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:02d}-of-{world_size:02d}"


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
