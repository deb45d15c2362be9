"""A caching plan file (`probe plan`, docs/plans.md) checked once where it is read: its format, its calibration set
and every number the validation reads (finite, of the right type and range, the arrays' shapes consistent with
each other and with the calibration's steps). Torch-free, so that `probe intervene --plan` refuses a damaged plan
before anything heavy is imported; the code behind it trusts what passes."""

from __future__ import annotations

import math

PLAN_FORMAT = "scd-probes-plan/1"
HEAD_PLAN_FORMAT = "scd-probes-head-plan/1"  # analyses.head_plan: which cached frames each attention head keeps


def _integer(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _finite(value: object, low: float = -math.inf) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= low


def _array(value: object, depth: int, leaf) -> list[int] | None:
    """The shape of a nested list of `depth` levels whose leaves all pass `leaf` (rectangular), else None."""
    if depth == 0:
        return [] if leaf(value) else None
    if not isinstance(value, list):
        return None
    shapes = [_array(v, depth - 1, leaf) for v in value]
    if any(s is None for s in shapes) or any(s != shapes[0] for s in shapes[1:]):
        return None
    return [len(value), *(shapes[0] if shapes else [0] * (depth - 1))]


def plan_problem(content: object) -> str | None:
    """What makes `content` (a plan file's JSON) unusable, in a few words naming the field and what is accepted;
    None for a sound plan."""
    if not isinstance(content, dict) or content.get("format") != PLAN_FORMAT:
        return f"it is not a plan of this toolkit (format {PLAN_FORMAT})"
    for name in ("calibration", "magcache", "teacache", "blocks", "split"):
        if not isinstance(content.get(name), dict):
            return f"its {name!r} is missing or not an object"
    if content.get("checkpoint") is not None and not isinstance(content["checkpoint"], dict):
        return "its 'checkpoint' is not an object (name, path, sha256) or null"
    calibration = content["calibration"]
    items = calibration.get("items")
    if not isinstance(items, list) or not items or not all(
            isinstance(i, dict) and _integer(i.get("clip")) and _integer(i.get("seed")) for i in items):
        return "its calibration items are not a list of {clip, seed} with integers >= 0"
    steps = calibration.get("steps")
    if not isinstance(steps, list) or not steps or not all(_integer(s) for s in steps):
        return "its calibration steps are not a list of step indices (integers >= 0)"
    if not isinstance(calibration.get("frames"), list) or not all(_integer(f) for f in calibration["frames"]):
        return "its calibration frames are not a list of frame indices"
    if not _integer(calibration.get("context")):
        return "its calibration context is not an integer >= 0"
    if _array(calibration.get("timesteps"), 1, _finite) != [len(steps)]:
        return f"its calibration timesteps are not {len(steps)} finite numbers"
    magcache = content["magcache"]
    for key in ("mag_ratios", "min", "max"):
        if _array(magcache.get(key), 1, lambda v: _finite(v, 0)) != [len(steps)]:
            return f"its magcache {key!r} is not {len(steps)} finite numbers >= 0"
    teacache = content["teacache"]
    if not _integer(teacache.get("degree")) or _array(teacache.get("coefficients"), 1, _finite) != \
            [teacache["degree"] + 1]:
        return "its teacache coefficients are not degree + 1 finite numbers"
    for key in ("rel_l1_input", "rel_l1_output"):
        if _array(teacache.get(key), 1, lambda v: _finite(v, 0)) is None:
            return f"its teacache {key!r} is not a list of finite numbers >= 0"
    blocks = content["blocks"]
    if not _finite(blocks.get("budget"), 0):
        return "its blocks budget is not a finite number >= 0"
    drift = _array(blocks.get("update_drift"), 2, lambda v: _finite(v, 0))
    if drift is None or drift[1:] != [len(steps)]:
        return f"its blocks update_drift is not [blocks][{len(steps)} steps] of finite numbers >= 0"
    if _array(blocks.get("skip"), 2, lambda v: isinstance(v, bool)) != drift:
        return f"its blocks skip is not [{drift[0]}][{drift[1]}] booleans, the update_drift's shape"
    chunks = blocks.get("per_chunk")
    if not isinstance(chunks, dict) or not isinstance(chunks.get("positions"), list) or \
            not all(_integer(p) for p in chunks["positions"]):
        return "its blocks per_chunk positions are not a list of integers >= 0"
    shape = [len(chunks["positions"]), *drift]
    if _array(chunks.get("update_drift"), 3, lambda v: _finite(v, 0)) not in (shape, [0, 0, 0]) or \
            _array(chunks.get("skip"), 3, lambda v: isinstance(v, bool)) not in (shape, [0, 0, 0]):
        return f"its blocks per_chunk update_drift and skip are not {shape} finite numbers and booleans"
    return None


def head_plan_problem(content: object) -> str | None:
    """As `plan_problem`, for a head plan (`analyses.head_plan`): its calibration, layers and heads, and every rule a
    sound [sinks, recent] pair of the plan's candidates, one per (block, head)."""
    if not isinstance(content, dict) or content.get("format") != HEAD_PLAN_FORMAT:
        return f"it is not a head plan of this toolkit (format {HEAD_PLAN_FORMAT})"
    calibration, heads, plans = content.get("calibration"), content.get("heads"), content.get("plans")
    if not isinstance(calibration, dict) or not isinstance(heads, dict) or not isinstance(plans, list) or not plans:
        return "its 'calibration', 'heads' or 'plans' is missing or malformed"
    items = calibration.get("items")
    if not isinstance(items, list) or not items or not all(
            isinstance(i, dict) and _integer(i.get("clip")) and _integer(i.get("seed")) for i in items):
        return "its calibration items are not a list of {clip, seed} with integers >= 0"
    layers, count = heads.get("layers"), heads.get("heads")
    if not isinstance(layers, list) or not layers or not all(_integer(v) for v in layers) or \
            len(set(layers)) != len(layers) or not _integer(count, 1):
        return "its heads 'layers' (distinct block indices) or 'heads' (an integer >= 1) is malformed"
    for entry in plans:
        if not isinstance(entry, dict) or not _finite(entry.get("budget"), 0):
            return "a plan's budget is not a finite number >= 0"
        keep = entry.get("keep")
        if _array(keep, 2, lambda v: isinstance(v, list)) != [len(layers), count] or not all(
                len(rule) == 2 and _integer(rule[0]) and (rule[1] is None or _integer(rule[1]))
                for layer in keep for rule in layer):
            return f"a plan's keep is not [{len(layers)} blocks][{count} heads] of [sinks, recent or null]"
    return None
