"""How a `Probe` reads a model while it runs. Every backend is a context manager with the same signature:

    attach(model, layout, targets, receive, active)

`targets` are (layer, hook) pairs; during every forward pass the backend calls
`receive(layer, hook, tensor)` for the targets whose layer is `active(layer)` (recorded, and run,
in this pass: SCD's encoder and decoder never run in the same pass of `generate`), in the order the
pass reaches them, and on exit, normal or not, it leaves the model exactly as it found it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from probes.choices import BACKENDS
from probes.errors import ProbeError

if TYPE_CHECKING:
    import torch

Receive = Callable[[int, str, "torch.Tensor"], None]
Active = Callable[[int], bool]
__all__ = ["BACKENDS", "Active", "Receive", "get_backend"]


def get_backend(name: str):
    """The `attach` context manager of a backend by name."""
    if name == "hookpoints":
        from probes.backends.hookpoints import attach
    elif name == "nnsight":
        from probes.backends.nnsight import attach
    else:
        raise ProbeError(f"unknown probe backend {name!r}; accepted: {', '.join(BACKENDS)}")
    return attach
