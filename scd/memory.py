"""What a job will need in memory, estimated before anything is allocated, against what the machine has.

Estimates are upper bounds of the big buffers (KV cache, attention scores, recorded features), not
exact peaks: their purpose is to refuse at once a size that cannot fit, with the estimate, instead
of crashing (or swapping for an hour) after the work has started.
"""

from __future__ import annotations

import os

GIB = 2**30


class NotEnoughMemory(ValueError):
    """A job whose estimated memory exceeds what the machine has; the message gives both."""


def available_bytes() -> int:
    """Memory available to a new allocation now (Linux MemAvailable), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def generation_bytes(width: int, depth: int, heads: int, tokens_per_frame: int, frames: int, batch: int = 1,
                     itemsize: int = 4) -> int:
    """A streaming generation of `frames` frames in all: the KV cache of every block, one pass's activations
    (about 16 widths per token) and its attention scores over the cached sequence."""
    sequence = frames * tokens_per_frame
    cache = 2 * depth * batch * sequence * width * itemsize
    activations = 16 * batch * tokens_per_frame * width * itemsize
    scores = batch * heads * tokens_per_frame * sequence * 4
    return cache + activations + scores


def training_bytes(width: int, depth: int, heads: int, tokens_per_frame: int, frames: int, batch: int,
                   parameters: int) -> int:
    """One training step: the activations kept for the backward pass of every block (about 16 widths per token
    and the attention scores over the clip) and weights, gradients, EMA and AdamW's two moments."""
    sequence = frames * tokens_per_frame
    per_block = 16 * batch * sequence * width * 4 + 2 * batch * heads * sequence * sequence * 4
    return depth * per_block + 5 * parameters * 4


def check_fits(estimate: int, what: str, available: int | None = None) -> None:
    """Refuse `what` if `estimate` bytes exceed 90% of the available memory."""
    available = available_bytes() if available is None else available
    if estimate > 0.9 * available:
        raise NotEnoughMemory(f"{what} needs about {estimate / GIB:.1f} GiB, but {available / GIB:.1f} GiB is available; "
                              "accepted: fewer frames, steps, layers or tokens, or a machine with more memory")
