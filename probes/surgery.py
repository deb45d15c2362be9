"""Surgeries: hooks that write, patching a built-in model's blocks while it generates (the probes read; these change).

Feature reuse (finding 1), attention knockout (finding 2), the paper's middle-span skip and
frame-diagonal mask, each a context manager that always restores the blocks. What each does, and how
`analyses.interventions.intervention_table` measures them against the unmodified generation, is in
that module's docstring and docs/surgeries.md. A model takes surgeries where its contract says so
(`scd.contract.VideoDiffuser.takes_surgeries`: the built-in families).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from scd.contract import is_video_diffuser
from scd.sampling import observe_sampling

INTERVENTIONS = ("reuse", "knockout", "knockout-layer", "skip", "diagonal", "plan", "chunked", "gated", "magcache",
                 "teacache", "heads")
# Block schedules: a caching plan (one schedule for every chunk, or `chunked`: one per chunk position) and the
# model-level baselines.
SCHEDULED = ("plan", "chunked", "gated", "magcache", "teacache")


class InterventionError(ValueError):
    """An intervention that cannot be applied to this model; the message names the accepted values."""


class _StepTracker:
    """Knows, from `generate`, whether the pass under way is a denoising step, and which."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.frame, self.context = 0, 0

    def on_start(self, context: int, frames: int, steps: int, **_) -> None:
        self.context = context

    def on_step(self, frame: int, step: int | None, timestep: float) -> None:
        self.step, self.frame = step, frame

    def chunk(self, frames_per_block: int) -> int:
        """The position of the chunk being denoised among the generated ones (0: the first after the context)."""
        return max(0, (self.frame - self.context) // frames_per_block)

    def on_video(self, video: torch.Tensor) -> None:
        self.step = None


def _surgery_layout(model: nn.Module):
    """The model's layout, where its blocks take surgeries (the built-in families; `scd.contract`)."""
    if not is_video_diffuser(model) or not model.takes_surgeries:
        raise InterventionError(f"interventions need a model of the built-in families (blocks and a KV cache); got "
                                f"{type(model).__name__}")
    return model.layout


def _blocks(model: nn.Module, paths: list[str]) -> list[nn.Module]:
    return [model.get_submodule(path) for path in paths]


def _causal_blocks(model: nn.Module, layer: int) -> list[nn.Module]:
    layout = _surgery_layout(model)
    if "decoder" in layout.roles:
        raise InterventionError("knockout on SCD is moot: its decoder's only past is the encoder output of the frame "
                                "before; accepted: the causal baseline")
    if not 0 <= layer < layout.depth:
        raise InterventionError(f"layer {layer} is out of range; accepted: 0..{layout.depth - 1}")
    return _blocks(model, list(layout.blocks))


def _reusable_blocks(model: nn.Module, layer: int) -> tuple[list[nn.Module], int]:
    """The blocks run at every denoising step and `layer`'s index among them: the baseline's, or SCD's decoder."""
    layout = _surgery_layout(model)
    if "decoder" in layout.roles:
        decoder = [i for i in range(layout.depth) if layout.role(i) == "decoder"]
        first, last = decoder[0], decoder[-1]
        if not first <= layer <= last:
            raise InterventionError(f"layer {layer} is not an SCD decoder layer (its encoder runs once per frame: reuse "
                                    f"is built in); accepted: {first}..{last}")
        return _blocks(model, [layout.blocks[i] for i in decoder]), layer - first
    return _causal_blocks(model, layer), layer


@contextmanager
def feature_reuse(model: nn.Module, layer: int, refresh: int | None = None) -> Iterator[dict[str, int]]:
    """Run blocks 0..`layer` only at refresh steps (step 0, or steps divisible by `refresh`) and reuse block
    `layer`'s output at the other denoising steps (SCD: decoder blocks, `layer` in the probes' numbering).
    Yields counts: block calls run and skipped."""
    blocks, layer = _reusable_blocks(model, layer)
    if refresh is not None and refresh < 1:
        raise InterventionError(f"refresh must be >= 1 (every m-th step), got {refresh}")
    tracker, counts = _StepTracker(), {"run": 0, "skipped": 0}
    reused: dict[str, torch.Tensor] = {}

    def replace(i: int, original):
        def forward(x, cond, angles, mask=None, past=None, past_angles=None):
            step = tracker.step
            fresh = step is None or step == 0 or (refresh is not None and step % refresh == 0)
            if fresh:
                counts["run"] += 1
                out = original(x, cond, angles, mask, past, past_angles)
                if i == layer and step is not None:
                    reused["output"] = out[0]
                return out
            counts["skipped"] += 1
            return (reused["output"] if i == layer else x), (None, None)  # no cache is written at denoising steps
        return forward

    handle = observe_sampling(model, tracker)
    for i, block in enumerate(blocks[: layer + 1]):
        block.forward = replace(i, block.forward)
    try:
        yield counts
    finally:
        handle.remove()
        for block in blocks[: layer + 1]:
            del block.forward  # the class's forward again


@contextmanager
def attention_knockout(model: nn.Module, layer: int, only: bool = False) -> Iterator[None]:
    """In blocks `layer`.. (only block `layer` with `only`), the denoised frame's queries see only its own keys and
    values at every step."""
    blocks = _causal_blocks(model, layer)
    n = model.config.tokens_per_frame
    tracker = _StepTracker()

    def own_frame_only(module, inputs, output):
        return output[:, -n:] if tracker.step is not None else None  # [B, L, H, D]: the last n are the frame's own

    handles = [observe_sampling(model, tracker)]
    for block in blocks[layer:layer + 1] if only else blocks[layer:]:
        handles += [block.attn.hook_k.register_forward_hook(own_frame_only),
                    block.attn.hook_v.register_forward_hook(own_frame_only)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _stepwise_blocks(model: nn.Module, what: str) -> list[nn.Module]:
    """The blocks of a causal model of the contract (the built-in baseline, the Wan families), in layer order; the
    surgeries that only replace a block's call by a reused update (`span_skip`, `block_skip`) run on any of them."""
    if not is_video_diffuser(model):
        raise InterventionError(f"{what} runs on a model of the toolkit's contract; got {type(model).__name__}")
    layout = model.layout
    if any(layout.role(i) != "causal" for i in range(layout.depth)):
        raise InterventionError(f"{what} runs on causal blocks; accepted: the causal baseline or a Wan family")
    return _blocks(model, list(layout.blocks))


def _returns_tuple(out) -> bool:
    """The built-in blocks return (output, their own keys and values); Wan's the output alone."""
    return isinstance(out, tuple)


@contextmanager
def span_skip(model: nn.Module, first: int, last: int, keep: int, tail: int = 0,
              steps: int | None = None) -> Iterator[dict[str, int]]:
    """Run blocks `first`..`last` at the first `keep` denoising steps of each frame, and at the last `tail` of its
    `steps` (and in the pass that writes a finished frame into the cache); at the steps between skip them and add
    their residual update from the last step they ran (block `last`'s output minus block `first`'s input) to
    block `first`'s input. Any causal model of the contract (the built-in baseline, the Wan families; with guidance
    each pass keeps its own update). Yields counts: block calls run and skipped."""
    blocks = _stepwise_blocks(model, "the middle-span skip")
    if not 0 <= first <= last < len(blocks):
        raise InterventionError(f"span {first}..{last} is not accepted; accepted: 0 <= first <= last <= {len(blocks) - 1}")
    if keep < 1:
        raise InterventionError(f"keep = {keep}: the span must run at least at the first step; accepted: >= 1")
    if tail < 0 or (tail > 0 and (steps is None or tail > steps)):
        raise InterventionError(f"tail = {tail} with {steps} steps; accepted: 0..steps (the steps given)")
    recompute_from = steps - tail if tail else None
    tracker, counts = _StepTracker(), {"run": 0, "skipped": 0}
    inputs: dict[str | None, torch.Tensor] = {}   # guidance pass -> block `first`'s input at this step
    updates: dict[str | None, torch.Tensor] = {}  # guidance pass -> the span's update from the last step it ran
    returns_tuple: dict[int, bool] = {}

    def replace(i: int, original):
        def forward(x, *args, **kwargs):
            step, key = tracker.step, model.guidance_pass
            if step is None or step < keep or (recompute_from is not None and step >= recompute_from):
                counts["run"] += 1
                if i == first and step is not None:
                    inputs[key] = x
                out = original(x, *args, **kwargs)
                returns_tuple[i] = _returns_tuple(out)
                if i == last and step is not None:
                    updates[key] = (out[0] if returns_tuple[i] else out) - inputs.pop(key)
                return out
            counts["skipped"] += 1
            out = x + updates[key] if i == first else x
            return (out, (None, None)) if returns_tuple[i] else out  # no cache is written at denoising steps
        return forward

    handle = observe_sampling(model, tracker)
    for i in range(first, last + 1):
        blocks[i].forward = replace(i, blocks[i].forward)
    try:
        yield counts
    finally:
        handle.remove()
        for i in range(first, last + 1):
            del blocks[i].forward


Schedule = list[list[bool]]  # per block, per denoising step: skipped (True) or run


def _check_schedule(schedule: Schedule, depth: int) -> None:
    if not isinstance(schedule, list) or len(schedule) != depth or \
            not all(isinstance(row, list) and all(isinstance(v, bool) for v in row) for row in schedule):
        raise InterventionError(f"the schedule is not one list of booleans per block ({depth}); accepted: a "
                                "plan's blocks.skip for this model")
    if any(row and row[0] for row in schedule):
        raise InterventionError("the schedule skips a block at step 0, where no update has been computed; accepted: "
                                "step 0 computed")


@contextmanager
def head_pruning(model: nn.Module, keep: dict[int, tuple]) -> Iterator[None]:
    """Run a head plan (`analyses.head_plan`): every KV cache the model makes (`new_cache`, as `scd.generate` calls
    it) is a `scd.models.blocks.HeadPrunedCache` in which head h of block L keeps only the frames `keep[L][h]` (a
    `HeadKeep`) says; the others are never stored. The causal baseline only: its blocks attend group by group over
    what their heads kept (the Wan families' attention processors are not patched). Blocks not in `keep` are cached
    as usual; a plan that prunes nothing leaves the model's code path as it is."""
    from scd.contract import CachePolicy
    from scd.models.baseline import CausalVideoDiffuser
    from scd.models.blocks import HeadKeep, HeadPrunedCache

    layout = _surgery_layout(model)
    if not isinstance(model, CausalVideoDiffuser):
        raise InterventionError(f"head plans run on the causal baseline's KV cache; got {type(model).__name__}")
    heads = model.config.heads
    for layer, rules in keep.items():
        if not (isinstance(layer, int) and 0 <= layer < layout.depth):
            raise InterventionError(f"head plan block {layer!r}; accepted: 0..{layout.depth - 1}")
        if len(rules) != heads or not all(isinstance(r, HeadKeep) for r in rules):
            raise InterventionError(f"head plan block {layer}: {len(rules)} rules; accepted: one HeadKeep per head "
                                    f"({heads})")
    chunk = model.frames_per_block

    def new_cache(policy: CachePolicy | None = None) -> HeadPrunedCache:
        return HeadPrunedCache(policy=(policy or CachePolicy()).check(chunk), chunk=chunk, heads=dict(keep))

    new_cache(None)  # refuse a plan the cache cannot hold before anything runs
    model.new_cache = new_cache  # an instance attribute: shadows the method until removed
    try:
        yield
    finally:
        del model.new_cache


@contextmanager
def block_skip(model: nn.Module, schedule: Schedule | dict[int, Schedule]) -> Iterator[dict[str, int]]:
    """Run a caching plan's schedule (`analyses.plan`): block L is skipped at denoising step t where `schedule[L][t]`
    holds, its update from the last step it ran (its output minus its input) added to its current input; every block
    runs at the other steps and in the pass that writes a finished frame into the cache. Steps beyond the schedule
    run. `schedule` may also be per chunk, {position: schedule} with position 0 the first generated chunk (frame),
    a later chunk taking the schedule of the last position given (a plan's `blocks.per_chunk`). Any causal model of
    the contract: the built-in baseline and the Wan families (`diffusers:DIR`; with guidance, each pass keeps its
    own updates). Yields counts: block calls run and skipped."""
    blocks = _stepwise_blocks(model, "a block schedule")
    per_chunk = schedule if isinstance(schedule, dict) else {0: schedule}
    if not per_chunk or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in per_chunk):
        raise InterventionError("the per-chunk schedule is not keyed by chunk positions (integers >= 0); accepted: a "
                                "plan's blocks.per_chunk, or one schedule")
    for rows in per_chunk.values():
        _check_schedule(rows, len(blocks))
    positions = sorted(per_chunk)
    tracker, counts = _StepTracker(), {"run": 0, "skipped": 0}
    updates: dict[tuple[int, str | None], torch.Tensor] = {}  # (block, guidance pass) -> its last computed update
    returns_tuple: dict[int, bool] = {}

    def rows_now() -> Schedule:
        position = tracker.chunk(model.frames_per_block)
        return per_chunk[max((p for p in positions if p <= position), default=positions[0])]

    def replace(i: int, original):
        def forward(x, *args, **kwargs):
            step, key = tracker.step, (i, model.guidance_pass)
            row = rows_now()[i] if step is not None else ()
            if step is not None and step < len(row) and row[step]:
                counts["skipped"] += 1
                out = x + updates[key]
                return (out, (None, None)) if returns_tuple[i] else out  # no cache is written at denoising steps
            counts["run"] += 1
            out = original(x, *args, **kwargs)
            returns_tuple[i] = _returns_tuple(out)
            if step is not None:
                updates[key] = (out[0] if returns_tuple[i] else out) - x
            return out
        return forward

    handle = observe_sampling(model, tracker)
    for i, block in enumerate(blocks):
        block.forward = replace(i, block.forward)
    try:
        yield counts
    finally:
        handle.remove()
        for block in blocks:
            del block.forward


@contextmanager
def frame_diagonal(model: nn.Module, first: int) -> Iterator[None]:
    """Blocks `first`.. attend only within the frame (the paper's frame-diagonal mask), with the weights as they are."""
    blocks = _causal_blocks(model, first)
    config = model.config
    saved = config.frame_local_blocks
    config.frame_local_blocks = len(blocks) - first
    try:
        yield
    finally:
        config.frame_local_blocks = saved


def normalised_setting(setting: tuple) -> tuple[str, int, int, int, int]:
    """(kind, layer), (kind, first, last, keep) or (kind, first, last, keep, tail) -> (kind, layer, span_end,
    keep_steps, tail_steps), -1 where it does not apply (tail 0 for a skip without recompute)."""
    if len(setting) == 2:
        return setting[0], setting[1], -1, -1, -1
    if len(setting) in (4, 5) and setting[0] == "skip":
        return (*setting, 0) if len(setting) == 4 else tuple(setting)
    raise InterventionError(f"setting {setting!r} is not accepted; accepted: (kind, layer), or ('skip', first, last, "
                            "keep[, tail])")


@contextmanager
def intervention(model: nn.Module, kind: str, layer: int, refresh: int | None = None, span_end: int = -1,
                 keep_steps: int = -1, tail_steps: int = 0, steps: int | None = None,
                 schedule: Schedule | dict[int, Schedule] | None = None) -> Iterator[None]:
    """One intervention by name (`feature_reuse`, `attention_knockout` from a layer or of one layer, `span_skip`,
    `frame_diagonal`, or a block `schedule`: a caching plan and the model-level baselines, `block_skip`, where
    `layer` is the setting's index); layer -1 means none."""
    if kind not in INTERVENTIONS:
        raise InterventionError(f"unknown intervention {kind!r}; accepted: {', '.join(INTERVENTIONS)}")
    if kind == "heads":
        if not isinstance(schedule, dict):
            raise InterventionError("heads runs a head plan, and none is given; accepted: a head plan's rules")
        with head_pruning(model, schedule):
            yield
    elif kind in SCHEDULED:
        if schedule is None:
            raise InterventionError(f"{kind} runs a block schedule, and none is given; accepted: a plan's schedule")
        with block_skip(model, schedule):
            yield
    elif layer == -1:
        yield
    elif kind == "reuse":
        with feature_reuse(model, layer, refresh):
            yield
    elif kind == "skip":
        with span_skip(model, layer, span_end, keep_steps, max(tail_steps, 0), steps):
            yield
    elif kind == "knockout-layer":
        with attention_knockout(model, layer, only=True):
            yield
    elif kind == "diagonal":
        with frame_diagonal(model, layer):
            yield
    else:
        with attention_knockout(model, layer):
            yield
