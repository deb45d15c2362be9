"""Calibrated caching plans from a probe run: the statistics the known caching methods calibrate on, per step, and
finer ones per block and step, from the features a run recorded at every denoising step.

A run (or a sweep of clips / prompts: the calibration set) recorded with `--layers all --mode full` holds each
block's output (`hook_resid_post`) and the first block's input (`input.features`) at every step of every probed
frame. From them:

- MagCache (Ma et al.; diffusers' `MagCacheConfig(mag_ratios=...)`): the residual of the block stack, r_t = output of
  the last block - input of the first, and per step t the ratio mean over tokens of ||r_t|| / ||r_{t-1}|| (step 0:
  1.0), exactly as diffusers' MagCache calibration computes it; here averaged over the probed frames and the runs.
- TeaCache (Liu et al.): per step, the relative L1 change of the model's input, sum |in_t - in_{t-1}| / sum
  |in_{t-1}|, and of its output (the last block's), and the degree-4 polynomial that maps the first to the second
  (`numpy.polyfit`, highest power first, as TeaCache's `rescale_func = np.poly1d(coefficients)` reads it). TeaCache
  takes the timestep-modulated input of the first block; this toolkit's hooks see the block's input before its
  modulation, and the plan says so.
- Per block and step: the relative change of each block's update u_L = x_L - x_{L-1} (what the block adds to the
  residual stream) since the previous step, ||u_L,t - u_L,t-1|| / ||u_L,t||: the first-order error of reusing the
  block's update from one step to the next.

`plan(...)` turns the per-block drifts into a plan under a drift budget: a block is skipped at step t (its last
computed update added to its current input) while the drift it has accumulated since it was last computed stays
within the budget, as MagCache accumulates its error; step 0 is always computed. A zero budget computes everything.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from analyses.errors import AnalysisError
from analyses.plan_file import PLAN_FORMAT  # the plan file's format, checked where a plan is read (plan_file)
from probes.recording import Recording

POLY_DEGREE = 4  # TeaCache's fit


class PlanError(AnalysisError):
    """A run that cannot calibrate a plan (or a plan that cannot be made); one line, what is needed."""


def _stack(item: Recording) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(first block's input [F, S, N, D], each block's output in layer order), float32, from one run in full mode."""
    if item.manifest.get("mode") != "full" or item.manifest.get("hook") != "hook_resid_post":
        raise PlanError("a plan needs every token of every block's output: a run recorded with --mode full and the "
                        "default --hook hook_resid_post")
    stepwise = [layer for layer in range(item.depth) if item.role(layer) != "encoder"]
    if item.feature_layers != stepwise or any(item.role(layer) != "causal" for layer in stepwise):
        raise PlanError(f"a plan needs every block of a causal model recorded (--layers all); this run has layers "
                        f"{item.feature_layers} of {item.depth}")
    first = item.input_features()
    if first is None:
        raise PlanError("a plan needs the first block's input (input.features, recorded with the features in full mode)")
    return first.float(), [item.features(layer).float() for layer in stepwise]


def mag_ratios(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """float64 [S]: MagCache's per-step ratio, mean over tokens of ||r_t|| / ||r_{t-1}|| with r = last - first (the
    block stack's residual), averaged over the frames; 1.0 at step 0. `first`, `last`: [F, S, N, D]."""
    norms = (last.double() - first.double()).norm(dim=-1)  # [F, S, N]
    ratios = torch.ones(norms.shape[1], dtype=torch.float64)
    ratios[1:] = (norms[:, 1:] / (norms[:, :-1] + 1e-8)).mean((0, 2))
    return ratios


def relative_l1(x: torch.Tensor) -> torch.Tensor:
    """float64 [F, S]: TeaCache's relative L1 change of x [F, S, N, D] from the step before (0 at step 0)."""
    x = x.double()
    change = torch.zeros(x.shape[:2], dtype=torch.float64)
    change[:, 1:] = (x[:, 1:] - x[:, :-1]).abs().sum((2, 3)) / x[:, :-1].abs().sum((2, 3)).clamp_min(1e-12)
    return change


def update_drift(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """float64 [F, S]: relative change of a block's update u = after - before from the step before,
    ||u_t - u_{t-1}|| / ||u_t|| over the frame's tokens (0 at step 0)."""
    u = after.double() - before.double()
    drift = torch.zeros(u.shape[:2], dtype=torch.float64)
    drift[:, 1:] = (u[:, 1:] - u[:, :-1]).flatten(2).norm(dim=-1) / u[:, 1:].flatten(2).norm(dim=-1).clamp_min(1e-12)
    return drift


def chunk_positions(item: Recording) -> list[int]:
    """Each probed frame's chunk among the generated ones (0: the first chunk after the context)."""
    m = item.manifest
    k = int(m.get("frames_per_block") or 1)
    return [(frame - int(m["context"])) // k for frame in m["frames"]]


def statistics(run: Recording) -> dict:
    """The calibration statistics of a run or sweep (every item's frames pooled; see the module docstring), and the
    per-block drift per chunk position (`update_drift_per_chunk`: position -> [L][S], over the items' frames there)."""
    ratios, inputs, outputs, drifts, by_chunk = [], [], [], [], {}
    for item in run.items:
        first, blocks = _stack(item)
        ratios.append(mag_ratios(first, blocks[-1]))
        inputs.append(relative_l1(first))
        outputs.append(relative_l1(blocks[-1]))
        before = [first, *blocks[:-1]]
        drift = torch.stack([update_drift(b, a) for b, a in zip(before, blocks, strict=True)])  # [L, F, S]
        drifts.append(drift)
        for f, position in enumerate(chunk_positions(item)):
            by_chunk.setdefault(position, []).append(drift[:, f])
    steps = {tuple(r.shape) for r in ratios}
    if len(steps) != 1:
        raise PlanError("the calibration runs recorded different steps; calibrate on runs of one sampling")
    x = torch.cat([i[:, 1:].flatten() for i in inputs]).numpy()
    y = torch.cat([o[:, 1:].flatten() for o in outputs]).numpy()
    if len(x) < POLY_DEGREE + 1:
        raise PlanError(f"a degree-{POLY_DEGREE} fit needs at least {POLY_DEGREE + 1} (step, frame) pairs; got {len(x)}")
    coefficients = np.polyfit(x, y, POLY_DEGREE)
    drift = torch.cat(drifts, dim=1)  # [L, frames of all items, S]
    return {"mag_ratios": torch.stack(ratios).mean(0).tolist(),
            "mag_ratios_min": torch.stack(ratios).amin(0).tolist(), "mag_ratios_max": torch.stack(ratios).amax(0).tolist(),
            "rel_l1_input": torch.cat(inputs).mean(0).tolist(), "rel_l1_output": torch.cat(outputs).mean(0).tolist(),
            "coefficients": [float(c) for c in coefficients],
            "update_drift": drift.mean(1).tolist(), "update_drift_max": drift.amax(1).tolist(),
            "update_drift_per_chunk": {p: torch.stack(by_chunk[p]).mean(0).tolist() for p in sorted(by_chunk)}}


def _accumulated_skips(drift: list[list[float]], weight: list[float], budget: float,
                       last_runs: bool) -> list[list[bool]]:
    """Per block and step, skip (True) or compute: a block is skipped while its drift times the step's weight,
    accumulated since it was last computed, stays within `budget` (MagCache's rule, per block); step 0 always runs,
    and the last step too with `last_runs`."""
    if not isinstance(budget, int | float) or isinstance(budget, bool) or not 0 <= budget <= 1e6 or math.isnan(budget):
        raise PlanError(f"budget = {budget!r}; accepted: a number >= 0 (0: compute every block at every step)")
    schedule = []
    for per_step in drift:
        skips, accumulated = [], 0.0
        for step, value in enumerate(per_step):
            accumulated += value * weight[step]
            skip = 0 < step and (not last_runs or step < len(per_step) - 1) and accumulated <= budget and budget > 0
            if not skip:
                accumulated = 0.0
            skips.append(skip)
        schedule.append(skips)
    return schedule


def skip_schedule(drift: list[list[float]], budget: float) -> list[list[bool]]:
    """Per block and step, skip (True) or compute: a block is skipped while the drift it has accumulated since it was
    last computed stays within `budget` (MagCache's rule, per block); step 0 is always computed."""
    steps = max((len(row) for row in drift), default=0)
    return _accumulated_skips(drift, [1.0] * steps, budget, last_runs=False)


def gated_schedule(drift: list[list[float]], model_change: list[float], budget: float) -> list[list[bool]]:
    """The model-gated rule (issue 47): per block and step, skip (True) or compute, from what the probes see per block
    and what the whole model does per step. A block's drift at step t is weighted by how much the whole model's output
    changes at t (TeaCache's rescaled input change, `model_change`, over its mean), so a block is skipped where it
    drifts little and the model changes little, and kept where the model moves; it is skipped while its weighted drift
    accumulated since it last ran stays within `budget`. The first and the last step always run (TeaCache's rule: the
    last, low-noise step is where skipping costs structure, docs/surgeries.md)."""
    change = np.clip(np.asarray(model_change, dtype=float), 0.0, None)
    scale = float(change[1:].mean()) if len(change) > 1 and change[1:].mean() > 0 else 1.0
    return _accumulated_skips(drift, (change / scale).tolist(), budget, last_runs=True)


def model_change(teacache: dict) -> list[float]:
    """Per step, the whole model's output change TeaCache predicts from its input's (the fitted polynomial of the
    relative L1 input change; 0 at step 0): the gate of `gated_schedule`."""
    rescale = np.poly1d(teacache["coefficients"])
    return [0.0] + [float(rescale(c)) for c in teacache["rel_l1_input"][1:]]


def magcache_skips(mag_ratios: list[float], steps: int, threshold: float = 0.06, max_skip_steps: int = 3,
                   retention_ratio: float = 0.2) -> list[bool]:
    """Which of `steps` denoising steps MagCache skips with these ratios (its published rule, as diffusers'
    `MagCacheConfig` runs it): none of the first retention_ratio x steps (rounded); after them the ratios multiply
    into an accumulated ratio, |1 - accumulated| adds up into an error, and the model is skipped while that error
    stays within `threshold` for at most `max_skip_steps` steps in a row (and a residual has been computed), the
    accumulators reset at every computed step; in float32, as diffusers holds the ratios (a threshold met to the
    last bit decides alike). Ratios of another length are resampled to `steps` (nearest)."""
    ratios = list(mag_ratios)
    if len(ratios) != steps:  # nearest-neighbour resampling, as diffusers' nearest_interp
        ratios = [ratios[-1]] if steps == 1 else \
            [ratios[int(torch.round(torch.tensor(i * (len(ratios) - 1) / (steps - 1))).item())] for i in range(steps)]
    ratios = torch.tensor(ratios, dtype=torch.float32)  # diffusers holds them as a float32 tensor: its arithmetic
    retention = int(retention_ratio * steps + 0.5)
    accumulated, count, error, computed, skips = 1.0, 0, 0.0, False, []
    for step in range(steps):
        skip = False
        if step >= retention:
            accumulated = accumulated * ratios[step]
            count += 1
            error = error + abs(1.0 - accumulated)
            if computed and bool(error <= threshold) and count <= max_skip_steps:
                skip = True
            else:
                accumulated, count, error = 1.0, 0, 0.0
        computed = computed or not skip
        skips.append(skip)
    return skips


def split(run: Recording, similarity_min: float) -> dict:
    """The encoder / decoder split the redundancy suggests for an SCD built from this model: the longest run of
    consecutive blocks whose features are redundant across steps (mean off-diagonal token cosine at least
    `similarity_min`), the encoder every block up to its end (the first blocks, which carry the noisy input, go
    with it: SCD's encoder reads clean frames), and, of the blocks after, the first that attends to earlier frames at
    least as much as uniform attention over the keys it sees would (it needs the past); with each block's numbers."""
    from analyses.similarity import depth_curve
    from analyses.sparsity import earlier_seen, earlier_share, frames_visible

    cosine = depth_curve(run).set_index("layer")["mean_off_diagonal"]
    best, current = (0, -1), None  # (start, end) of the longest run of redundant blocks
    for layer in sorted(cosine.index):
        if cosine[layer] >= similarity_min:
            current = (current[0] if current else layer, layer)
            if current[1] - current[0] > best[1] - best[0]:
                best = current
        else:
            current = None
    frames, k, policy = run.manifest["frames"], run.frames_per_block, run.cache_policy
    uniform = float(np.mean([len(e) / v for e, v in zip(earlier_seen(frames, "causal", k, policy),
                                                        frames_visible(frames, "causal", k, policy), strict=True)]))
    earlier = {layer: float(earlier_share(run.attention(layer), frames, run.role(layer), k, policy).mean())
               for layer in run.attention_layers}  # uniform above: earlier keys' share of the keys a frame sees
    needs_past = next((layer for layer in sorted(earlier) if layer > best[1] and earlier[layer] >= uniform), None)
    return {"redundant_span": [best[0], best[1]] if best[1] >= 0 else None, "encoder_blocks": list(range(best[1] + 1)),
            "decoder_from": best[1] + 1, "similarity_min": similarity_min,
            "cross_step_cosine": {int(k): float(v) for k, v in cosine.items()},
            "first_block_after_split_needing_the_past": needs_past, "earlier_share": earlier,
            "earlier_share_uniform": uniform}


def plan(runs: list[Recording], budget: float, similarity_min: float | None = None) -> dict:
    """The plan file's content (docs/plans.md): calibration set, MagCache and TeaCache statistics, per-block drift
    and the skip schedule under `budget`, the split."""
    from analyses.claims import SIMILARITY_MIN

    if not runs:
        raise PlanError("a plan needs at least one calibration run")
    models = {run.manifest.get("checkpoint", {}).get("sha256") or run.manifest.get("model") for run in runs}
    if len(models) != 1:
        raise PlanError("the calibration runs are of different models; calibrate on runs of one model")
    merged = runs[0] if len(runs) == 1 else _Pooled(runs)
    stats = statistics(merged)
    schedule = skip_schedule(stats["update_drift"], budget)
    total = sum(len(s) for s in schedule)
    positions = list(stats["update_drift_per_chunk"])
    per_chunk = [skip_schedule(stats["update_drift_per_chunk"][p], budget) for p in positions]
    items = [item for run in runs for item in run.items]
    m = runs[0].items[0].manifest
    return {"format": PLAN_FORMAT, "model": m.get("model"), "checkpoint": m.get("checkpoint"),
            "calibration": {"runs": [str(run.path) for run in runs],
                            "items": [{"clip": i.manifest.get("clip"), "seed": i.manifest.get("seed")} for i in items],
                            "frames": m.get("frames"), "steps": m.get("steps"), "timesteps": m.get("timesteps"),
                            "sampling": m.get("sampling") or {}, "generation": m.get("generation"),
                            "config": {k: (m.get("config") or {}).get(k) for k in ("latent_size", "frames_per_block", "fps")},
                            "context": m.get("context")},
            "magcache": {"mag_ratios": stats["mag_ratios"], "min": stats["mag_ratios_min"],
                         "max": stats["mag_ratios_max"], "residual": "output of the last block - input of the first",
                         "skips_at_defaults": magcache_skips(stats["mag_ratios"], len(stats["mag_ratios"]))},
            "teacache": {"rel_l1_input": stats["rel_l1_input"], "rel_l1_output": stats["rel_l1_output"],
                         "coefficients": stats["coefficients"], "degree": POLY_DEGREE,
                         "input": "the first block's input (hook_resid_pre), before its timestep modulation",
                         "output": "the last block's output (hook_resid_post)"},
            "blocks": {"update_drift": stats["update_drift"], "update_drift_max": stats["update_drift_max"],
                       "budget": budget, "skip": schedule,
                       "skipped_share": sum(map(sum, schedule)) / total if total else 0.0,
                       "per_chunk": {"positions": positions,
                                     "update_drift": [stats["update_drift_per_chunk"][p] for p in positions],
                                     "skip": per_chunk, "differs": any(rows != schedule for rows in per_chunk)}},
            "split": split(runs[0], SIMILARITY_MIN if similarity_min is None else similarity_min)}


class _Pooled:
    """Several calibration runs read as one set of items."""

    def __init__(self, runs: list[Recording]) -> None:
        self.items = [item for run in runs for item in run.items]


def plan_summary(content: dict) -> list[str]:
    """What a plan holds, in a few lines (`probe plan` prints them): what it was calibrated on, what each rule would
    skip, and the encoder / decoder split. Speed-ups and drift are not in a plan: `probe intervene --plan` measures
    them on held-out clips."""
    calibration, blocks, split = content["calibration"], content["blocks"], content["split"]
    steps, skips = len(calibration["steps"]), content["magcache"]["skips_at_defaults"]
    depth = len(blocks["skip"])
    encoder = split["encoder_blocks"]
    span = split.get("redundant_span")
    return [
        f"plan of {content['model']}, calibrated on {len(calibration['items'])} generation"
        f"{'s' if len(calibration['items']) != 1 else ''} x {steps} steps "
        f"({len(calibration['runs'])} run{'s' if len(calibration['runs']) != 1 else ''})",
        f"per-block plan at budget {blocks['budget']:g}: skips {100 * blocks['skipped_share']:.1f}% of the block calls "
        f"({depth} blocks x {steps} steps)",
        f"MagCache-style at its defaults: skips {sum(map(bool, skips))} of {len(skips)} steps; TeaCache-style: a degree-"
        f"{content['teacache']['degree']} fit of the output change from the input change",
        "split: " + (f"cross-step redundant blocks {span[0]}-{span[1]}; " if span else "no redundant span; ")
        + (f"encoder blocks {encoder[0]}-{encoder[-1]}, decoder from {split['decoder_from']}" if encoder else
           "no encoder"),
        "speed-ups and drift: measured on held-out clips by probe intervene --plan (docs/plans.md)",
    ]


def write_plan(run_paths: list[str], out: str, budget: float, force: bool = False,
               similarity_min: float | None = None) -> str:
    """Calibrate on the runs (or sweeps) at `run_paths` and write the plan file `out` (JSON, docs/plans.md); an
    existing plan is replaced only with `force`. Returns the path."""
    import json

    from probes.recording import load_run
    from scd.files import OutputError, atomic_file, check_output, signature

    try:
        check_output(out, "plan", force, flag="out")
    except OutputError as e:
        raise PlanError(str(e)) from None
    content = {**signature("plan"), **plan([load_run(path) for path in run_paths], budget, similarity_min)}
    try:
        with atomic_file(out, new=not force) as tmp:  # a second writer of the same plan, racing, does not replace it
            tmp.write_text(json.dumps(content, indent=2) + "\n")
    except OutputError as e:
        raise PlanError(str(e)) from None
    return out


def teacache_skips(rel_l1_input: list[float], coefficients: list[float], threshold: float) -> list[bool]:
    """Which steps TeaCache skips (its published rule): the first and the last step always run; at the others the
    input's relative L1 change, rescaled by the fitted polynomial, accumulates, and the model is skipped while the
    accumulated distance stays below `threshold`, the accumulator reset at every computed step."""
    rescale = np.poly1d(coefficients)
    accumulated, skips = 0.0, []
    for step, change in enumerate(rel_l1_input):
        if step == 0 or step == len(rel_l1_input) - 1:
            skip = False
        else:
            accumulated += float(rescale(change))
            skip = accumulated < threshold
        if not skip:
            accumulated = 0.0
        skips.append(skip)
    return skips


def _matching(share: float, skips_at, thresholds) -> tuple[float, list[bool]]:
    """The threshold (of a grid) whose skip pattern's share of steps is nearest `share`, and that pattern."""
    best = None
    for threshold in thresholds:
        skips = skips_at(threshold)
        gap = abs(sum(skips) / len(skips) - share)
        if best is None or gap < best[0] - 1e-12:
            best = (gap, float(threshold), skips)
    return best[1], best[2]


THRESHOLD_GRID = np.geomspace(1e-4, 1e3, 400)  # searched for the model-level baselines' thresholds
BUDGET_GRID = np.geomspace(1e-4, 1e3, 400)  # searched for the gated rule's budget at the plan's share


def chunk_schedules(content: dict, budget: float) -> dict[int, list[list[bool]]] | None:
    """The plan's per-chunk schedules at `budget` ({chunk position: schedule}, for `probes.surgery.block_skip`), or
    None where they are all the plan's one schedule (or the plan has none: an older plan file)."""
    chunks = content["blocks"].get("per_chunk")
    if not chunks:
        return None
    shared = skip_schedule(content["blocks"]["update_drift"], budget)
    schedules = {int(p): skip_schedule(d, budget) for p, d in zip(chunks["positions"], chunks["update_drift"], strict=True)}
    return None if all(rows == shared for rows in schedules.values()) else schedules


def _share(schedule) -> float:
    rows = [row for rows in (schedule.values() if isinstance(schedule, dict) else [schedule]) for row in rows]
    return sum(map(sum, rows)) / sum(len(row) for row in rows)


def validation_settings(content: dict, budgets: list[float], depth: int) -> tuple[list[tuple], dict, dict]:
    """For each budget: the plan's block schedule, its per-chunk schedules where chunks differ (`chunked`; the share
    of skipped calls an average over the chunk positions calibrated), and the model-level baselines at the same share
    of skipped block calls (MagCache's and TeaCache's rules with their threshold chosen on `THRESHOLD_GRID` to match
    it), and the model-gated rule (`gated_schedule`, its budget chosen on `BUDGET_GRID` to match it): settings (kind,
    index), their schedules by (kind, index), and what each is (budget, threshold, skipped share)."""
    drift = content["blocks"]["update_drift"]
    if len(drift) != depth:
        raise PlanError(f"the plan has {len(drift)} blocks; the model has {depth}: accepted: a plan of this model")
    ratios, teacache = content["magcache"]["mag_ratios"], content["teacache"]
    settings, schedules, described = [], {}, {}
    for i, budget in enumerate(budgets):
        schedule = skip_schedule(drift, budget)
        share = _share(schedule)
        threshold_mag, mag = _matching(share, lambda t: magcache_skips(ratios, len(ratios), float(t)), THRESHOLD_GRID)
        threshold_tea, tea = _matching(
            share, lambda t: teacache_skips(teacache["rel_l1_input"], teacache["coefficients"], float(t)), THRESHOLD_GRID)
        chunked = chunk_schedules(content, budget)
        gate = model_change(teacache)
        gated_budget, gated = min(((float(b), gated_schedule(drift, gate, float(b))) for b in BUDGET_GRID),
                                  key=lambda pair: abs(_share(pair[1]) - share))
        for kind, rows, info in (("plan", schedule, {"budget": budget}),
                                 ("chunked", chunked, {"budget": budget}),
                                 ("gated", gated, {"budget": gated_budget}),
                                 ("magcache", [list(mag) for _ in range(depth)], {"threshold": threshold_mag}),
                                 ("teacache", [list(tea) for _ in range(depth)], {"threshold": threshold_tea})):
            if rows is None:
                continue  # every chunk's schedule is the plan's: nothing more to measure
            settings.append((kind, i))
            schedules[(kind, i)] = rows
            described[f"{kind}{i}"] = {**info, "skipped_share": _share(rows)}
    return settings, schedules, described


DRIFT_CAP = 60.0  # dB: an identical video (inf) is drawn at this drift PSNR


def speed_quality_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting of a plan validation (an interventions table): the speed-up (per clip, the unmodified model's
    seconds per frame over the setting's, measured in the same process) and the drift PSNR against the unmodified
    generation (identical: DRIFT_CAP dB), each a mean with its 95% t-interval over clips (a clip's noise draws averaged
    first), and whether the setting is on the Pareto front (no other is at least as fast and at least as close, and
    better in one)."""
    from analyses.intervals import interval

    table = table.assign(**({"draw": 0} if "draw" not in table else {}))
    base = table[table.intervention == "none"].set_index(["clip", "draw"])["seconds_per_frame"]
    rows = []
    for key, group in table[~table.intervention.isin(["none", "redraw"])].groupby(
            ["intervention", "layer", "span_end", "keep_steps"], sort=False):
        group = group.assign(speed=[float(base[(c, d)] / s) for c, d, s in
                                    zip(group["clip"], group["draw"], group["seconds_per_frame"], strict=True)],
                             capped=group["drift_psnr"].clip(upper=DRIFT_CAP))
        per_clip = group.groupby("clip")[["speed", "capped"]].mean()  # a clip's draws averaged: clips are the unit
        sm, sl, sh, n = interval(per_clip["speed"].tolist())
        dm, dl, dh, _ = interval(per_clip["capped"].tolist())
        name = _setting_name(*key)
        rows.append({"setting": name, "kind": key[0], "speedup": sm, "speedup_low": sl, "speedup_high": sh,
                     "drift_psnr": dm, "drift_psnr_low": dl, "drift_psnr_high": dh, "clips": n})
    out = pd.DataFrame(rows)
    out["pareto"] = [not any((o.speedup >= r.speedup and o.drift_psnr >= r.drift_psnr) and
                             (o.speedup > r.speedup or o.drift_psnr > r.drift_psnr) for o in out.itertuples())
                     for r in out.itertuples()]
    return out


def _setting_name(kind: str, layer: int, span_end: int, keep_steps: int) -> str:
    return f"{kind}{layer}" if kind != "skip" else f"skip{layer}-{span_end}k{keep_steps}"


def _number(value) -> float:
    """A table value as a float: NaN where nothing was measured (a latent model's SSIM, read back from parquet as None)."""
    return float("nan") if value is None else float(value)


def _paired(table: pd.DataFrame, column: str, frames: bool = False) -> pd.DataFrame:
    """Per setting and clip (its draws averaged): the setting's `column` and the unmodified model's of the same clip
    and draw, side by side (`frames`: the per-frame lists, one row per frame position)."""
    table = table.assign(**({"draw": 0} if "draw" not in table else {}))
    source = f"{column}_frames" if frames else column
    rows = []
    base = {(r.clip, r.draw): getattr(r, source) for r in table[table.intervention == "none"].itertuples()}
    for r in table[~table.intervention.isin(["none"])].itertuples():
        name = _setting_name(r.intervention, r.layer, r.span_end, r.keep_steps)
        values, reference = getattr(r, source), base[(r.clip, r.draw)]
        pairs = enumerate(zip(values, reference, strict=True)) if frames else [(-1, (values, reference))]
        rows += [{"setting": name, "kind": r.intervention, "clip": r.clip, "draw": r.draw, "position": p,
                  "value": _number(v), "unmodified": _number(u)} for p, (v, u) in pairs]
    out = pd.DataFrame(rows)
    return out.groupby(["setting", "kind", "position", "clip"], sort=False)[["value", "unmodified"]].mean().reset_index()


def non_inferiority(table: pd.DataFrame, ssim_margin: float, psnr_margin: float) -> pd.DataFrame:
    """Per setting of a plan validation: the loss of quality against the truth over the whole rollout, paired by clip
    (unmodified minus setting, each clip's draws averaged), SSIM and PSNR, with 95% intervals over clips, and the
    verdict: "non-inferior" when both upper bounds are below their margins, "inferior" when a lower bound is at or
    above its margin, else "inconclusive"."""
    from analyses.intervals import interval

    ssim, psnr = _paired(table, "ssim"), _paired(table, "psnr")
    rows = []
    for (setting, kind), group in ssim.groupby(["setting", "kind"], sort=False):
        s = interval((group.unmodified - group.value).tolist())
        other = psnr[psnr.setting == setting]
        p = interval((other.unmodified - other.value).tolist())
        verdict = ("non-inferior" if s[2] < ssim_margin and p[2] < psnr_margin else
                   "inferior" if s[1] >= ssim_margin or p[1] >= psnr_margin else "inconclusive")
        rows.append({"setting": setting, "kind": kind, "ssim_loss": s[0], "ssim_loss_low": s[1], "ssim_loss_high": s[2],
                     "psnr_loss": p[0], "psnr_loss_low": p[1], "psnr_loss_high": p[2], "clips": s[3],
                     "verdict": verdict})
    return pd.DataFrame(rows)


def position_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting and generated-frame position (0: the first generated frame): drift PSNR from the unmodified
    generation (capped at DRIFT_CAP) and the SSIM loss against the truth (unmodified minus setting), each a mean with
    its 95% interval over clips (draws averaged): how drift compounds through the KV cache along the rollout."""
    from analyses.intervals import interval

    drift = _paired(table, "drift_psnr", frames=True)
    ssim = _paired(table, "ssim", frames=True)
    rows = []
    for (setting, kind, position), group in drift.groupby(["setting", "kind", "position"], sort=False):
        d = interval(group.value.clip(upper=DRIFT_CAP).tolist())
        other = ssim[(ssim.setting == setting) & (ssim.position == position)]
        s = interval((other.unmodified - other.value).tolist())
        rows.append({"setting": setting, "kind": kind, "position": int(position), "drift_psnr": d[0],
                     "drift_psnr_low": d[1], "drift_psnr_high": d[2], "ssim_loss": s[0], "ssim_loss_low": s[1],
                     "ssim_loss_high": s[2], "clips": d[3]})
    return pd.DataFrame(rows)


def rule_comparison(table: pd.DataFrame, rule: str, other: str, ssim_margin: float,
                    speed_tolerance: float) -> pd.DataFrame:
    """`rule` i against `other` i (the same share of skipped block calls) on the same clips and draws, paired by clip:
    the drift PSNR difference (capped at DRIFT_CAP), the SSIM difference against the truth and the speed-up ratio, each
    with its 95% interval over clips, and whether `rule` beats `other` (PLAN_SPEED_TOLERANCE's definition: higher
    drift PSNR, SSIM not lower by more than the margin, speed-up at least 1 - tolerance of the other's, each by its
    bound)."""
    from analyses.intervals import interval

    table = table.assign(**({"draw": 0} if "draw" not in table else {}))
    base = table[table.intervention == "none"].set_index(["clip", "draw"])["seconds_per_frame"]
    rows = []
    for index in sorted(set(table.layer[table.intervention == rule]) & set(table.layer[table.intervention == other])):
        a = table[(table.intervention == rule) & (table.layer == index)].set_index(["clip", "draw"])
        b = table[(table.intervention == other) & (table.layer == index)].set_index(["clip", "draw"])
        both = a.index.intersection(b.index)
        per = pd.DataFrame({
            "drift": a.loc[both, "drift_psnr"].clip(upper=DRIFT_CAP) - b.loc[both, "drift_psnr"].clip(upper=DRIFT_CAP),
            "ssim": a.loc[both, "ssim"] - b.loc[both, "ssim"],
            "speed": (base[both] / a.loc[both, "seconds_per_frame"]) / (base[both] / b.loc[both, "seconds_per_frame"]),
        }).groupby(level="clip").mean()
        drift, ssim, speed = (interval(per[c].tolist()) for c in ("drift", "ssim", "speed"))
        beats = drift[1] > 0 and ssim[1] > -ssim_margin and speed[1] >= 1 - speed_tolerance
        worse = drift[2] < 0
        rows.append({"index": int(index), "rule": rule, "other": other, "drift_difference": drift[0],
                     "drift_difference_low": drift[1], "drift_difference_high": drift[2], "ssim_difference": ssim[0],
                     "ssim_difference_low": ssim[1], "ssim_difference_high": ssim[2], "speed_ratio": speed[0],
                     "speed_ratio_low": speed[1], "speed_ratio_high": speed[2], "clips": drift[3],
                     "verdict": "beats" if beats else ("drifts more" if worse else "does not beat")})
    return pd.DataFrame(rows)


def taylorseer_computes(steps: int, cache_interval: int, disable_before: int, disable_after: int | None) -> list[bool]:
    """Which of `steps` denoising steps TaylorSeer computes fully (the others are predicted from its Taylor factors),
    as diffusers' `TaylorSeerCacheConfig` decides it: every step before `disable_before`, every `cache_interval`-th
    after it (from disable_before + 1), and every step from `disable_after` on."""
    return [s < disable_before or (s - disable_before - 1) % cache_interval == 0 or
            (disable_after is not None and s >= disable_after) for s in range(steps)]


def diffusers_cache_configs(content: dict, budget: float | None = None) -> dict:
    """Configs for diffusers' cache hooks from a plan (`probe plan --export diffusers`), matched to the share of block
    calls the plan skips at `budget` (None: the plan's own), each as the keyword arguments its class takes, with the
    decisions it makes:

    - `MagCacheConfig`: the plan's ratios, its steps, and the threshold (on `THRESHOLD_GRID`, MagCache's defaults
      otherwise) whose skipped steps match the share; decisions: the steps skipped (`magcache_skips`), which diffusers'
      hook reproduces from the ratios alone.
    - `TaylorSeerCacheConfig`: full computation for MagCache's retained first steps and for the last step (where
      skipping costs structure), and a cache interval whose predicted steps match the share, on every transformer
      block (`blocks.N`, as the Wan families name them); decisions: the steps computed fully (`taylorseer_computes`),
      fixed by the schedule. Its step counter advances at every call, so under classifier-free guidance (two passes a
      step) the interval counts passes.

    FirstBlockCacheConfig is not exported: it decides at run time from the first block's residual on the live input,
    a statistic the plan can estimate but whose decisions it cannot fix."""
    steps = len(content["magcache"]["mag_ratios"])
    budget = float(content["blocks"]["budget"]) if budget is None else float(budget)
    share = _share(skip_schedule(content["blocks"]["update_drift"], budget))
    ratios = content["magcache"]["mag_ratios"]
    threshold, skips = _matching(share, lambda t: magcache_skips(ratios, steps, float(t)), THRESHOLD_GRID)
    before = int(round(0.2 * steps))  # MagCache's retention ratio: the first steps lay down the trajectory
    after = steps - 1
    best = min(range(1, steps + 1), key=lambda k: abs(
        (1 - sum(taylorseer_computes(steps, k, before, after)) / steps) - share))
    return {
        "budget": budget, "matched_share": share,
        "MagCacheConfig": {"threshold": float(threshold), "max_skip_steps": 3, "retention_ratio": 0.2,
                           "num_inference_steps": steps, "mag_ratios": [float(r) for r in ratios]},
        "TaylorSeerCacheConfig": {"cache_interval": int(best), "disable_cache_before_step": before,
                                  "disable_cache_after_step": after, "max_order": 1,
                                  # the Wan transformers' blocks, whole (diffusers' default patterns name none of them)
                                  "cache_identifiers": [r"blocks\.\d+"]},
        "decisions": {"MagCacheConfig": {"skipped_steps": [s for s, skip in enumerate(skips) if skip]},
                      "TaylorSeerCacheConfig": {"computed_steps": [
                          s for s, c in enumerate(taylorseer_computes(steps, best, before, after)) if c]}},
    }


def cache_config(exported: dict, name: str):
    """The diffusers config object `name` ("MagCacheConfig" or "TaylorSeerCacheConfig") of an exported file's content
    (`diffusers_cache_configs`), for `transformer.enable_cache(...)`."""
    import diffusers.hooks

    if name not in ("MagCacheConfig", "TaylorSeerCacheConfig") or name not in exported:
        raise PlanError(f"config {name!r}; accepted: MagCacheConfig, TaylorSeerCacheConfig (an export of probe plan "
                        "--export diffusers)")
    return getattr(diffusers.hooks, name)(**exported[name])
