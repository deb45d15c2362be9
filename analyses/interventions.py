"""Causal tests of the paper's findings, by intervening in the baseline while it generates.

Feature reuse (finding 1: early and middle layers compute the same features at every step): while
a frame is denoised, blocks 0..K run only at refresh steps (step 0, or every m-th step) and block
K's output from the last refresh step is reused at the steps between; blocks 0..K are really skipped
there, so the time saved is measured. Attention knockout (finding 2: deep layers do not need past
frames): in blocks K.., the queries of the frame being denoised attend only to that frame's keys (the
cached keys and values of the context and earlier frames are cut away). Both act on the denoising
steps only; the pass that writes a finished frame into the KV cache is left as it is.

The paper's own surgeries. Middle-span skip (finding 1): blocks a..b (default the paper's 8..22,
mapped) run at the first k denoising steps of each frame and are really skipped after; their
residual update from the last computed step (block b's output minus block a's input) is added to
block a's current input, so the frame being denoised still flows through the later blocks (step-0
reuse, above, instead replaces the residual stream and with it the current noisy frame).
Frame-diagonal mask (finding 2): the last blocks attend only within the frame
(`BaselineConfig.frame_local_blocks`), without adaptation ("diagonal") and after a fine-tune with
the mask ("diagonal-tuned": another checkpoint, measured beside the unmodified one).

`intervention_table` measures each setting against the unmodified generation of the same clip and
seed (drift: PSNR, SSIM, max abs difference of the generated frames), against the ground truth, and
in wall time per generated frame, all in one process, the settings interleaved per clip. Clip c's
noise is drawn with seed + c (clips never share their noise); the unmodified model is also run from
a second draw (seed + c + 2^31, the row "redraw"), whose difference from the first is the noise floor
of every quality claim. Knockout of one layer only ("knockout-layer") and the skip recomputing the
span at the last m steps ("skip" with `tail_steps` m) answer which layers, and which steps, matter.

SCD: its encoder already runs once per frame (reuse is built in), so reuse applies to its decoder
layers (numbered after the encoder's, as the probes number them: 25..34 for the shipped SCD); and
knocking out the decoder's only past, the encoder output of the frame before, would leave it no
context at all, so knockout is defined for the causal baseline only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from scd.contract import is_video_diffuser
from scd.data import VideoBenchmark
from scd.evaluate import frame_quality, to_uint8
from scd.progress import progress as progress_bar
from scd.sampling import generate, observe_sampling

INTERVENTIONS = ("reuse", "knockout", "knockout-layer", "skip", "diagonal")
DEFAULT_LAYERS = (0, 5, 10, 15, 20, 25, 29)


class InterventionError(ValueError):
    """An intervention that cannot be applied to this model; the message names the accepted values."""


class _StepTracker:
    """Knows, from `generate`, whether the pass under way is a denoising step, and which."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_step(self, frame: int, step: int | None, timestep: float) -> None:
        self.step = step

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
        def forward(x, cond, angles, mask=None, past=None):
            step = tracker.step
            fresh = step is None or step == 0 or (refresh is not None and step % refresh == 0)
            if fresh:
                counts["run"] += 1
                out = original(x, cond, angles, mask, past)
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


@contextmanager
def span_skip(model: nn.Module, first: int, last: int, keep: int, tail: int = 0,
              steps: int | None = None) -> Iterator[dict[str, int]]:
    """Run blocks `first`..`last` at the first `keep` denoising steps of each frame, and at the last `tail` of its
    `steps` (and in the pass that writes a finished frame into the cache); at the steps between skip them and add
    their residual update from the last step they ran (block `last`'s output minus block `first`'s input) to
    block `first`'s input. Yields counts: block calls run and skipped."""
    blocks = _causal_blocks(model, first)
    if not first <= last < len(blocks):
        raise InterventionError(f"span {first}..{last} is not accepted; accepted: first <= last <= {len(blocks) - 1}")
    if keep < 1:
        raise InterventionError(f"keep = {keep}: the span must run at least at the first step; accepted: >= 1")
    if tail < 0 or (tail > 0 and (steps is None or tail > steps)):
        raise InterventionError(f"tail = {tail} with {steps} steps; accepted: 0..steps (the steps given)")
    recompute_from = steps - tail if tail else None
    tracker, counts, state = _StepTracker(), {"run": 0, "skipped": 0}, {}

    def replace(i: int, original):
        def forward(x, cond, angles, mask=None, past=None):
            step = tracker.step
            if step is None or step < keep or (recompute_from is not None and step >= recompute_from):
                counts["run"] += 1
                if i == first and step is not None:
                    state["input"] = x
                out = original(x, cond, angles, mask, past)
                if i == last and step is not None:
                    state["update"] = out[0] - state.pop("input")
                return out
            counts["skipped"] += 1
            return (x + state["update"] if i == first else x), (None, None)  # no cache is written at denoising steps
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


def _setting(setting: tuple) -> tuple[str, int, int, int, int]:
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
                 keep_steps: int = -1, tail_steps: int = 0, steps: int | None = None) -> Iterator[None]:
    """One intervention by name (`feature_reuse`, `attention_knockout` from a layer or of one layer, `span_skip`,
    `frame_diagonal`); layer -1 means none."""
    if kind not in INTERVENTIONS:
        raise InterventionError(f"unknown intervention {kind!r}; accepted: {', '.join(INTERVENTIONS)}")
    if layer == -1:
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


def _timed(model: nn.Module, context: torch.Tensor, frames: int, steps: int, seed: int, device) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    video = generate(model, context, frames, steps=steps, seed=seed, device=device)
    return video, (time.perf_counter() - start) / frames


def intervention_table(model: nn.Module, settings: Sequence[tuple], clips: int = 16, context: int = 4,
                       frames: int = 4, steps: int = 50, seed: int = 0, refresh: int | None = None,
                       device: str | torch.device = "cpu", progress: bool = True,
                       keep: dict[str, np.ndarray] | None = None, others: dict[str, nn.Module] | None = None,
                       redraw: bool = True) -> pd.DataFrame:
    """Tidy table, one row per (intervention, layer, span_end, keep_steps, tail_steps, clip): drift from the
    unmodified generation (PSNR, SSIM, max abs difference over the generated frames), PSNR / SSIM against the
    ground truth, seconds per generated frame, the clip's noise seed. Settings are (kind, layer) or ("skip",
    first, last, keep[, tail]). Clip c draws its noise with seed + c. The unmodified generation is the row
    ("none", -1); with `redraw`, the row ("redraw", -1) is the unmodified model from a second noise draw (seed + c
    + 2^31): the noise floor of quality claims. `others` are other models (e.g. "diagonal-tuned": the baseline
    fine-tuned with the frame-diagonal mask; "finetuned": its compute-matched control without the mask) measured
    the same way, with `layer` their first frame-local block (their depth when none). `keep`, if given, receives
    clip 0's videos (uint8 [T, H, W, 3])."""
    from probes.sweep import noise_seed

    settings = [_setting(s) for s in settings]
    for kind, layer, span_end, keep_steps, tail_steps in settings:
        with intervention(model, kind, layer, refresh, span_end, keep_steps, tail_steps, steps):  # refuse first
            pass
    for name, other in (others or {}).items():
        if not is_video_diffuser(other) or other.frame_shape != model.frame_shape:
            raise InterventionError(f"model {name!r} does not take the frames of the baseline measured beside it")
    data = VideoBenchmark("val", frames=context + frames, size=model.config.frame_size)
    generate(model, data.clip(0)[:context], 1, steps=2, device=device)  # warm-up, untimed
    rows = []
    for clip in progress_bar(range(clips), desc="interventions", disable=not progress):
        video = data.clip(clip)
        truth = video[context:]
        clip_seed = noise_seed(seed, clip)
        reference, seconds = _timed(model, video[:context], frames, steps, clip_seed, device)
        if keep is not None and clip == 0:
            keep["ground_truth"], keep["none-1"] = to_uint8(video), to_uint8(reference)
        psnr, ssim = frame_quality(reference[context:], truth)
        rows.append({"intervention": "none", "layer": -1, "span_end": -1, "keep_steps": -1, "tail_steps": -1,
                     "clip": clip, "noise_seed": clip_seed, "drift_psnr": float("inf"), "drift_ssim": 1.0,
                     "drift_max_abs": 0.0, "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
                     "seconds_per_frame": seconds})
        runs = [(kind, layer, span_end, keep_steps, tail_steps, model, clip_seed)
                for kind, layer, span_end, keep_steps, tail_steps in settings]
        runs += [(name, other.config.depth - other.config.frame_local_blocks, -1, -1, -1, other, clip_seed)
                 for name, other in (others or {}).items()]
        if redraw:
            runs.append(("redraw", -1, -1, -1, -1, model, noise_seed(seed, clip, 1)))
        for kind, layer, span_end, keep_steps, tail_steps, which, noise in runs:
            with intervention(model, kind, layer, refresh, span_end, keep_steps, tail_steps, steps) \
                    if which is model and kind != "redraw" else nullcontext():
                changed, seconds = _timed(which, video[:context], frames, steps, noise, device)
            if keep is not None and clip == 0:
                keep[f"{kind}{layer}" + (f"-{span_end}k{keep_steps}" if kind == "skip" else "")
                     + (f"t{tail_steps}" if kind == "skip" and tail_steps > 0 else "")] = to_uint8(changed)
            drift_psnr, drift_ssim = frame_quality(changed[context:], reference[context:])
            psnr, ssim = frame_quality(changed[context:], truth)
            rows.append({"intervention": kind, "layer": layer, "span_end": span_end, "keep_steps": keep_steps,
                         "tail_steps": tail_steps, "clip": clip, "noise_seed": noise,
                         "drift_psnr": float(drift_psnr.mean()),
                         "drift_ssim": float(drift_ssim.mean()),
                         "drift_max_abs": float((changed[context:] - reference[context:]).abs().max()),
                         "psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "seconds_per_frame": seconds})
    return pd.DataFrame(rows)


def intervention_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (intervention, layer): means over clips, and the wall time relative to the unmodified generation
    (its `speedup`, measured in the same process)."""
    table = table.assign(**{c: table.get(c, -1) for c in ("span_end", "keep_steps", "tail_steps")})  # older tables
    summary = table.groupby(["intervention", "layer", "span_end", "keep_steps", "tail_steps"], sort=False).agg(
        clips=("clip", "nunique"), drift_psnr=("drift_psnr", "mean"), drift_ssim=("drift_ssim", "mean"),
        drift_max_abs=("drift_max_abs", "max"), psnr=("psnr", "mean"), ssim=("ssim", "mean"),
        seconds_per_frame=("seconds_per_frame", "median")).reset_index()
    baseline = float(summary.loc[summary.intervention == "none", "seconds_per_frame"].iloc[0])
    summary["speedup"] = baseline / summary.seconds_per_frame
    return summary


SUMMARY_COLUMNS = {"intervention": "intervention", "layer": "from layer", "span_end": "span to",
                   "keep_steps": "run at steps < k", "tail_steps": "and the last m", "clips": "clips",
                   "drift_psnr": "PSNR vs unmodified (dB)", "drift_ssim": "SSIM vs unmodified",
                   "drift_max_abs": "max abs difference", "psnr": "PSNR vs truth (dB)", "ssim": "SSIM vs truth",
                   "seconds_per_frame": "s / frame (median)", "speedup": "speed-up"}


def markdown(summary: pd.DataFrame, info: dict) -> str:
    """The sweeps as a markdown page."""
    refresh = f"every {info['refresh']} steps" if info.get("refresh") else "at step 0 only"
    return "\n".join([
        f"# Interventions on {info['model']}", "", f"`{info['command']}`", "",
        f"Machine: {info['machine']}. {info['clips']} val clips, {info['context']} context + {info['frames']} generated "
        f"frames, {info['steps']} steps, clip c's noise drawn with seed {info['seed']} + c (redraw: the unmodified "
        "model from a second draw, the noise floor). Reuse (step-0 reuse, not the paper's surgery): blocks 0..K "
        f"run {refresh}, block K's output reused in between. Knockout (no adaptation): blocks K.. attend only to the "
        "frame's own keys; knockout-layer: block K only. Skip (the paper's middle-span skip): blocks K..'span to' run "
        "at steps < k (and at the last m), their residual update from the last run step added between. Diagonal: "
        "blocks K.. attend only within the frame, the baseline's "
        "weights as they are; diagonal-tuned: the baseline fine-tuned with that mask; finetuned: its compute-matched "
        "control, the baseline fine-tuned the same steps without the mask. Drift: generated frames against the "
        "unmodified generation of the same clip and seed (inf dB: identical).", "",
        summary[list(SUMMARY_COLUMNS)].rename(columns=SUMMARY_COLUMNS).to_markdown(index=False, floatfmt=".3f"), ""])


def write_interventions(out: str | Path, table: pd.DataFrame, videos: dict[str, np.ndarray], info: dict,
                        force: bool = False) -> Path:
    """interventions.parquet, frames.npz (clip 0), interventions.json and interventions.md, via a temporary sibling."""
    from scd.outputs import atomic_directory, signature

    info = {**signature("interventions"), **info}
    with atomic_directory(out, "interventions", force) as tmp:
        table.to_parquet(tmp / "interventions.parquet", index=False)
        np.savez_compressed(tmp / "frames.npz", **videos)
        (tmp / "interventions.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        (tmp / "interventions.md").write_text(markdown(intervention_summary(table), info))
    return Path(out)


def load_interventions(path: str | Path) -> dict:
    """An interventions directory: info, the tidy table, its summary, clip 0's videos (ValueError if incomplete)."""
    path = Path(path)
    missing = [n for n in ("interventions.parquet", "frames.npz", "interventions.json") if not (path / n).is_file()]
    if missing:
        raise InterventionError(f"{path} is not a directory written by probe intervene (missing {', '.join(missing)})")
    table = pd.read_parquet(path / "interventions.parquet")
    table = table.assign(**{c: -1 for c in ("span_end", "keep_steps", "tail_steps") if c not in table})  # older tables
    with np.load(path / "frames.npz") as frames:
        videos = {name: frames[name] for name in frames.files}
    info = json.loads((path / "interventions.json").read_text())
    table.attrs["refresh"] = info.get("refresh")  # the claims name reuse by its refresh
    return {"info": info, "table": table,
            "summary": intervention_summary(table), "videos": videos}
