"""Backend on TransformerLens HookPoints: the built-in models' named identity modules."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn
from transformer_lens.hook_points import HookPoint

from probes.backends import Active, Receive
from probes.errors import ProbeError
from scd.contract import Layout


@contextmanager
def attach(model: nn.Module, layout: Layout, targets: Sequence[tuple[int, str]], receive: Receive,
           active: Active) -> Iterator[None]:
    """Add one forward hook per target HookPoint; remove exactly those (not the user's own) on exit. The hook is
    torch's own on the HookPoint (an identity module: its output is the activation), not `HookPoint.add_hook`,
    whose return value and bookkeeping changed across the transformer-lens versions the requirement admits (it
    returns its handle only from 4.3; 4.0-4.2, and the 2.x-3.x before them, return None)."""
    added = []

    def make_hook(layer: int, name: str):
        def read(module, inputs, tensor):  # returns None: the activation passes through unchanged
            if active(layer):
                receive(layer, name, tensor)
        return read

    modules = dict(model.named_modules())
    try:
        for layer, hook in targets:
            path = layout.path(layer, hook)
            hook_point = modules.get(path)
            if not isinstance(hook_point, HookPoint):
                raise ProbeError(f"{type(model).__name__} has no HookPoint {path!r} (the nnsight backend reads any module)")
            added.append(hook_point.register_forward_hook(make_hook(layer, hook)))
        yield
    finally:
        for handle in added:
            handle.remove()
