"""Backend on nnsight: modules addressed by path, read inside one nnsight trace per forward pass.

This is how third-party models (diffusers transformers) are probed. `generate` calls the model
itself many times per frame, so while attached the model's `forward` is replaced by one that runs
the original inside `NNsight(model).trace(...)`, saves the outputs of the target modules in the
order the pass reaches them (nnsight requires it), and returns the traced output unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from nnsight import NNsight
from torch import nn

from probes.backends import Active, Receive
from probes.errors import ProbeError
from scd.contract import Layout

PATCHED = ("forward", "__nnsight__")  # instance attributes NNsight sets on every module it wraps


def _envoy(root, path: str):
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


@contextmanager
def attach(model: nn.Module, layout: Layout, targets: Sequence[tuple[int, str]], receive: Receive,
           active: Active) -> Iterator[None]:
    """Trace every active forward pass with nnsight; restore the model's own `forward` on exit."""
    ordered = sorted(targets, key=lambda target: layout.order(*target))
    paths = [layout.path(layer, hook) for layer, hook in ordered]
    modules = dict(model.named_modules())
    for path in paths:
        if path not in modules:
            raise ProbeError(f"{type(model).__name__} has no module {path!r}")
    # NNsight wraps every submodule with instance attributes; note what was there to put it back.
    missing = object()
    before = [(module, {name: module.__dict__.get(name, missing) for name in PATCHED}) for module in model.modules()]
    traced = NNsight(model)
    envoys = [_envoy(traced, path) for path in paths]
    original = model.forward
    inside = False

    @functools.wraps(original)
    def forward(*args, **kwargs):
        nonlocal inside
        # Only modules this pass runs may be asked for: nnsight waits for every module it is asked about.
        wanted = [i for i, (layer, _) in enumerate(ordered) if active(layer)] if not inside else []
        if not wanted:  # nnsight's own call of the model lands here too: run it plainly
            return original(*args, **kwargs)
        inside = True
        saved = {}  # filled inside the trace: nnsight runs the block apart, a container carries results out
        try:
            with traced.trace(*args, **kwargs):
                for i in wanted:
                    saved[i] = envoys[i].output.save()
                saved["output"] = traced.output.save()
        finally:
            inside = False
        for i in wanted:
            receive(*ordered[i], saved[i])
        return saved["output"]

    model.forward = forward
    try:
        yield
    finally:
        for module, attributes in before:
            for name, value in attributes.items():
                if value is missing:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value
