"""Head plans: which cached frames each attention head may drop, from the attention a probe run recorded.

Forcing-KV (training-free, for few-step causal video models) prunes the KV cache head by head, keeping less for
heads whose attention pattern is local and stable across samples and steps. A probe run with attention captured
holds, per block, head, probed frame and denoising step, the exact share of the queries' softmax mass on every
frame of the clip (`Recording.attention`: [F, S, H, T]). From it, for each head and each candidate rule "keep the
first s frames of the video (sinks) and the r most recent finished frames" (`scd.models.blocks.HeadKeep`):

- the lost mass of one (clip, frame, step): the share of the head's attention on the finished frames it could see
  (under the run's cache policy) that the rule drops; after pruning, the softmax is renormalised over what is kept,
  so the output of that head moves by at most twice the lost mass times the largest value norm;
- its worst case over every clip, probed frame and step of the calibration set: a head is pruned with a rule only
  where the rule's worst lost mass is within the budget (stable: it holds for every sample and step seen).

`head_plan(...)` picks, per head and budget, the rule that keeps fewest frames (sinks + recent) among those within
the budget, and keeps every frame where none is, or where the cheapest one drops nothing the calibration saw (so a
plan never claims a cut it has no evidence for). A zero budget keeps everything. Rules are calibrated on the
calibration's frame positions: applied to longer rollouts, a head keeps its r most recent frames at every position,
an extrapolation that `probe intervene --plan` measures (cache bytes, speed, drift per position).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from analyses.errors import AnalysisError
from analyses.plan_file import HEAD_PLAN_FORMAT
from probes.recording import Recording


class HeadPlanError(AnalysisError):
    """A calibration set a head plan cannot be made from; the message names what is accepted."""


def _visible(item: Recording, frame: int) -> tuple[list[int], int]:
    """The finished frames a probed `frame` saw under the run's cache policy, and its chunk's first frame."""
    k, first = item.frames_per_block, min(item.frames)
    start = first + ((frame - first) // k) * k
    return item.cache_policy.visible(start, k), start


def lost_mass(item: Recording, layer: int, sinks: list[int], recent: list[int]) -> torch.Tensor:
    """float64 [S_candidates, R_candidates, F, steps, H]: per rule (s sinks, r recent), the attention mass of each
    probed frame, step and head on the visible finished frames the rule drops (`HeadKeep.keeps`)."""
    mass = item.attention(layer).double()  # [F, S, H, T]
    out = torch.zeros(len(sinks), len(recent), *mass.shape[:3], dtype=torch.float64)
    for f, frame in enumerate(item.frames):
        visible, start = _visible(item, frame)
        if not visible:
            continue
        seen = torch.tensor(visible)
        on = mass[f][:, :, seen]  # [S, H, V]
        for a, s in enumerate(sinks):
            for b, r in enumerate(recent):
                dropped = ~((seen < s) | (seen >= start - r))
                out[a, b, f] = on[:, :, dropped].sum(-1)
    return out


def _dropped_any(item: Recording, s: int, r: int) -> bool:
    """Whether the rule (s, r) drops any frame a probed frame of `item` could see."""
    from scd.models.blocks import HeadKeep

    rule = HeadKeep(s, r)
    for frame in item.frames:
        visible, start = _visible(item, frame)
        if any(not rule.keeps(f, start) for f in visible):
            return True
    return False


def head_statistics(runs: list[Recording], max_sinks: int = 2) -> dict:
    """Per block and head, over every item, probed frame and step of the calibration runs: the worst and the mean
    lost mass of every rule (sinks 0..max_sinks, recent 0..the most finished frames any probed frame saw - 1), the
    mean attention by temporal distance and its spread across samples, and which rules drop anything seen."""
    items = [item for run in runs for item in run.items]
    if not items:
        raise HeadPlanError("a head plan needs at least one calibration run")
    layers = items[0].attention_layers
    if not layers:
        raise HeadPlanError("the calibration runs recorded no attention; accepted: runs of probe run --capture "
                            "attention (or all) with --layers all")
    if any(item.attention_layers != layers for item in items):
        raise HeadPlanError("the calibration runs recorded attention at different layers; accepted: runs of one setting")
    if items[0].cache_policy.rope != "absolute":
        raise HeadPlanError("a head plan prunes keys stored rotated at their frame (rope 'absolute'); the calibration "
                            f"ran with rope {items[0].cache_policy.rope!r}")
    seen = max(len(_visible(item, frame)[0]) for item in items for frame in item.frames)
    if seen == 0:
        raise HeadPlanError("no probed frame of the calibration saw a finished frame; accepted: runs with context or "
                            "more than one generated chunk")
    sinks, recent = list(range(max_sinks + 1)), list(range(seen))
    worst, mean, by_distance = [], [], []
    for layer in layers:
        lost = torch.cat([lost_mass(item, layer, sinks, recent).flatten(2, 3) for item in items], dim=2)  # [S, R, n, H]
        worst.append(lost.amax(2))  # [S, R, H]
        mean.append(lost.mean(2))
        distance = torch.cat([item.attention_by_distance(layer).double().flatten(0, 1) for item in items])  # [n, H, T]
        by_distance.append((distance.mean(0), distance.std(0)))
    drops = [[any(_dropped_any(item, s, r) for item in items) for r in recent] for s in sinks]
    return {"layers": layers, "heads": int(worst[0].shape[-1]), "sinks": sinks, "recent": recent,
            "worst": torch.stack(worst).permute(0, 3, 1, 2).tolist(),  # [L][H][S][R]
            "mean": torch.stack(mean).permute(0, 3, 1, 2).tolist(),
            "drops": drops,
            "distance_mean": torch.stack([m for m, _ in by_distance]).tolist(),  # [L][H][T]
            "distance_sd": torch.stack([s for _, s in by_distance]).tolist(),
            "samples": sum(len(item.frames) * len(item.steps) for item in items)}


def head_keep(stats: dict, budget: float) -> list[list[list[int | None]]]:
    """Per block and head, the rule [sinks, recent] of the plan at `budget` ([0, None]: keep every frame): the rule
    keeping fewest frames among those whose worst lost mass is within the budget and that drop something the
    calibration saw (ties: fewer sinks). A zero budget keeps every frame of every head, even where some head put
    exactly no mass on a frame."""
    plan = []
    for worst_layer in stats["worst"]:
        heads = []
        for worst in worst_layer:
            best = None
            for a, s in enumerate(stats["sinks"]):
                for b, r in enumerate(stats["recent"]):
                    if not stats["drops"][a][b] or worst[a][b] > budget or budget <= 0:  # zero: keep everything
                        continue
                    if best is None or (s + r, s) < (best[0] + best[1], best[0]):
                        best = (s, r)
            heads.append([0, None] if best is None else [best[0], best[1]])
        plan.append(heads)
    return plan


def head_plan(runs: list[Recording], budgets: list[float], max_sinks: int = 2) -> dict:
    """The head plan file's content: calibration set, per-head statistics and the rule of each head at each budget."""
    if not budgets or any(not (isinstance(b, int | float) and math.isfinite(b) and b >= 0) for b in budgets):
        raise HeadPlanError(f"budgets {budgets!r}; accepted: finite numbers >= 0")
    models = {run.manifest.get("checkpoint", {}).get("sha256") or run.manifest.get("model") for run in runs}
    if len(models) > 1:
        raise HeadPlanError("the calibration runs are of different models; calibrate on runs of one model")
    stats = head_statistics(runs, max_sinks)
    items = [item for run in runs for item in run.items]
    m = items[0].manifest
    return {"format": HEAD_PLAN_FORMAT, "model": m.get("model"), "checkpoint": m.get("checkpoint"),
            "calibration": {"runs": [str(run.path) for run in runs],
                            "items": [{"clip": i.manifest.get("clip"), "seed": i.manifest.get("seed")} for i in items],
                            "frames": m.get("frames"), "steps": m.get("steps"), "timesteps": m.get("timesteps"),
                            "sampling": m.get("sampling") or {}, "context": m.get("context")},
            "heads": {**stats, "rule": "keep the first `sinks` frames of the video and the `recent` most recent "
                                       "finished frames (null: every frame)",
                      "lost": "attention mass on the visible finished frames the rule drops; worst: the maximum over "
                              "every calibration item, probed frame and step"},
            "plans": [{"budget": float(b), "keep": head_keep(stats, float(b))} for b in budgets]}


def keep_rules(content: dict, index: int) -> dict[int, tuple]:
    """The plan's rules at budget index `index` as `scd.models.blocks.HeadKeep`s per block (for
    `probes.surgery.head_pruning`)."""
    from scd.models.blocks import HeadKeep

    layers = content["heads"]["layers"]
    return {layer: tuple(HeadKeep(s, r) for s, r in heads)
            for layer, heads in zip(layers, content["plans"][index]["keep"], strict=True)}


def calibration_policy(content: dict):
    """The cache policy the plan's calibration sampled with (`scd.contract.CachePolicy`)."""
    from scd.contract import CachePolicy

    sampling = content["calibration"].get("sampling") or {}
    if sampling.get("window") is None:
        return CachePolicy()
    return CachePolicy(sampling["window"], sampling.get("sink_frames") or 0, sampling.get("rope") or "absolute")


def kept_share(content: dict, index: int, written: int, policy=None) -> float:
    """The share of the unpruned cache's (block, head, frame) entries the plan at `index` keeps once `written`
    frames are finished, under `policy` (a `scd.contract.CachePolicy`; None: the calibration's)."""
    held = (policy or calibration_policy(content)).kept(written)
    rules = [rule for heads in keep_rules(content, index).values() for rule in heads]
    total = len(rules) * len(held)
    kept = sum(rule.keeps(f, written) for rule in rules for f in held)
    return kept / total if total else 1.0


def head_plan_summary(content: dict) -> list[str]:
    """What a head plan holds, in a few lines (`probe plan --heads` prints them)."""
    heads = content["heads"]
    lines = [f"head plan of {content['model']}, calibrated on {len(content['calibration']['items'])} generations "
             f"({heads['samples']} frame x step samples per head), {len(heads['layers'])} blocks x {heads['heads']} heads"]
    frames = (content["calibration"].get("context") or 0) + len(content["calibration"].get("frames") or [])
    for i, entry in enumerate(content["plans"]):
        pruned = sum(1 for layer in entry["keep"] for _, r in layer if r is not None)
        total = sum(len(layer) for layer in entry["keep"])
        lines.append(f"budget {entry['budget']:g}: {pruned} of {total} heads pruned; at {frames} frames the cache "
                     f"keeps {100 * kept_share(content, i, frames):.1f}% of its (head, frame) entries")
    lines.append("memory, speed and drift: measured on held-out clips by probe intervene --plan (docs/plans.md)")
    return lines


def write_head_plan(run_paths: list[str], out: str, budgets: list[float], force: bool = False) -> str:
    """Calibrate on the runs at `run_paths` and write the head plan file `out` (JSON); replaced only with `force`."""
    import json

    from probes.recording import load_run
    from scd.files import OutputError, atomic_file, check_output, signature

    try:
        check_output(out, "plan", force, flag="out")
    except OutputError as e:
        raise HeadPlanError(str(e)) from None
    content = {**signature("plan"), **head_plan([load_run(path) for path in run_paths], budgets)}
    try:
        with atomic_file(out, new=not force) as tmp:
            tmp.write_text(json.dumps(content, indent=2) + "\n")
    except OutputError as e:
        raise HeadPlanError(str(e)) from None
    return out


def head_table(content: dict) -> pd.DataFrame:
    """One row per (block, head): its attention at distance 0 (own chunk) and 1, the spread across samples, and its
    rule and worst lost mass at each budget."""
    heads = content["heads"]
    rows = []
    for li, layer in enumerate(heads["layers"]):
        for h in range(heads["heads"]):
            row = {"layer": layer, "head": h, "own": heads["distance_mean"][li][h][0],
                   "previous": heads["distance_mean"][li][h][1] if len(heads["distance_mean"][li][h]) > 1 else np.nan,
                   "own_sd": heads["distance_sd"][li][h][0]}
            for entry in content["plans"]:
                s, r = entry["keep"][li][h]
                worst = 0.0 if r is None else heads["worst"][li][h][heads["sinks"].index(s)][heads["recent"].index(r)]
                row[f"keep@{entry['budget']:g}"] = "all" if r is None else f"{s} sinks + {r} recent"
                row[f"lost@{entry['budget']:g}"] = worst
            rows.append(row)
    return pd.DataFrame(rows)


def head_validation_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per head-plan budget of a validation (`probe intervene --plan HEADS.json`): the KV cache's bytes at the end
    of the rollout relative to the unmodified model's, the speed-up (the unmodified model's seconds per frame over
    the setting's, in the same process), the drift PSNR from the unmodified generation, each frame's capped at
    `analyses.plan.DRIFT_CAP` (an identical frame reads inf), averaged over the rollout's frames, and at its first and
    last generated frame, and the SSIM loss
    against the truth (unmodified minus setting); each a mean with its 95% t-interval over clips, a clip's noise
    draws averaged first. The redraw row is the noise floor of the drift."""
    from analyses.intervals import interval
    from analyses.plan import DRIFT_CAP

    table = table.assign(**({"draw": 0} if "draw" not in table else {}))
    base = table[table.intervention == "none"].set_index(["clip", "draw"])
    rows = []
    for (kind, index), group in table[table.intervention.isin(["heads", "redraw"])].groupby(
            ["intervention", "layer"], sort=False):
        keys = list(zip(group["clip"], group["draw"], strict=True))
        per = pd.DataFrame({
            "clip": group["clip"].to_numpy(),
            "bytes": group["cache_bytes"].to_numpy() / base.loc[keys, "cache_bytes"].to_numpy(),
            "speed": base.loc[keys, "seconds_per_frame"].to_numpy() / group["seconds_per_frame"].to_numpy(),
            "drift": [float(np.minimum(f, DRIFT_CAP).mean()) for f in group["drift_psnr_frames"]],
            "first": [min(f[0], DRIFT_CAP) for f in group["drift_psnr_frames"]],
            "last": [min(f[-1], DRIFT_CAP) for f in group["drift_psnr_frames"]],
            "ssim_loss": base.loc[keys, "ssim"].to_numpy() - group["ssim"].to_numpy(),
        }).groupby("clip").mean()
        row = {"setting": f"{kind}{index}" if kind == "heads" else "redraw"}
        for column in ("bytes", "speed", "drift", "first", "last", "ssim_loss"):
            mean, low, high, n = interval(per[column].dropna().tolist()) if per[column].notna().any() else \
                (float("nan"),) * 3 + (0,)
            row.update({column: mean, f"{column}_low": low, f"{column}_high": high})
        row["clips"] = len(per)
        rows.append(row)
    return pd.DataFrame(rows)
