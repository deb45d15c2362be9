"""Causal tests of the paper's findings, by intervening in the baseline while it generates (the surgeries themselves,
hooks that write, are `probes.surgery`; this module runs the model to measure them).

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
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from probes.surgery import InterventionError, intervention, normalised_setting
from scd.contract import is_video_diffuser
from scd.data import VideoBenchmark
from scd.evaluate import frame_quality, to_uint8
from scd.progress import progress as progress_bar
from scd.sampling import generate

DEFAULT_LAYERS = (0, 5, 10, 15, 20, 25, 29)


def _timed(model: nn.Module, context: torch.Tensor, frames: int, steps: int, seed: int, device,
           sampling: dict | None = None, bytes_held: list | None = None) -> tuple[torch.Tensor, float]:
    """The generation and its wall time per generated frame; `bytes_held` receives the KV cache's bytes at the end
    (`nbytes`: what the cache really holds, a head plan's pruning included; NaN for a model without a cache)."""
    sampling = dict(sampling or {})
    if sampling.get("timesteps") is not None:
        steps = None  # an explicit list sets the steps
    cache = model.new_cache(sampling.get("cache_policy"))  # made here to be read afterwards; as generate makes it
    if cache is not None:
        sampling.pop("cache_policy", None)  # the cache carries it
    start = time.perf_counter()
    video = generate(model, context, frames, steps=steps, seed=seed, device=device, cache=cache, **sampling)
    seconds = (time.perf_counter() - start) / frames
    if bytes_held is not None:
        bytes_held.append(float("nan") if cache is None else float(cache.nbytes()))  # the contract: caches count bytes
    return video, seconds


def latent_drift(changed: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame drift of generated latents [N, C, H, W] from the unmodified ones: PSNR (dB) with the peak the
    unmodified frame's range (max - min; latents have no fixed range), and SSIM, undefined for latents (NaN)."""
    changed, reference = changed.double().flatten(1), reference.double().flatten(1)
    peak = reference.amax(1) - reference.amin(1)
    mse = (changed - reference).pow(2).mean(1)
    psnr = (10 * torch.log10(peak.pow(2) / mse)).float()  # identical frames: inf, as the pixel PSNR of identical frames
    return psnr, torch.full_like(psnr, float("nan"))


def intervention_table(model: nn.Module, settings: Sequence[tuple], clips: int = 16, context: int = 4,
                       frames: int = 4, steps: int = 50, seed: int = 0, refresh: int | None = None,
                       device: str | torch.device = "cpu", progress: bool = True,
                       keep: dict[str, np.ndarray] | None = None, others: dict[str, nn.Module] | None = None,
                       redraw: bool = True, first_clip: int = 0,
                       schedules: dict[tuple[str, int], list | dict] | None = None, latent: bool = False,
                       sampling: dict | None = None, draws: int = 1) -> pd.DataFrame:
    """Tidy table, one row per (intervention, layer, span_end, keep_steps, tail_steps, clip): drift from the
    unmodified generation (PSNR, SSIM, max abs difference over the generated frames), PSNR / SSIM against the
    ground truth, seconds per generated frame, the clip's noise seed. Settings are (kind, layer) or ("skip",
    first, last, keep[, tail]). Clip c draws its noise with seed + c. The unmodified generation is the row
    ("none", -1); `cache_bytes` is what its KV cache held at the end. With `redraw`, the row ("redraw", -1) is
    the unmodified model from a second noise draw (seed + c
    + 2^31): the noise floor of quality claims. `others` are other models (e.g. "diagonal-tuned": the baseline
    fine-tuned with the frame-diagonal mask; "finetuned": its compute-matched control without the mask) measured
    the same way, with `layer` their first frame-local block (their depth when none). `keep`, if given, receives
    the first clip's videos (uint8 [T, H, W, 3]). The val clips are `first_clip`.. (held out from a plan's
    calibration); `schedules` give the block schedules of settings ("plan" | "chunked" | "gated" | "magcache" | "teacache",
    index). `latent`: a latent model without benchmark clips (the Wan families): clip c's context is seeded Gaussian
    latents (`probes.recorder.gaussian_context`, as `probe run` makes them), there is no truth (PSNR / SSIM against it
    are NaN) and drift is measured on the latents (`latent_drift`). `sampling`: `generate`'s sampling options (an
    explicit `timesteps` list, `shift`, `sampler`, `cache_policy`), as the plan was calibrated with. `draws`: noise draws
    per clip, each its own unmodified reference (draw j: noise draw 2j, its redraw 2j + 1; draw 0 is the single-draw
    table's); every row also keeps its per-frame numbers (`*_frames`: one value per generated frame, in order), for
    drift by rollout position."""
    from probes.recorder import gaussian_context
    from probes.sweep import noise_seed

    settings = [normalised_setting(s) for s in settings]
    for kind, layer, span_end, keep_steps, tail_steps in settings:
        with intervention(model, kind, layer, refresh, span_end, keep_steps, tail_steps, steps,
                          (schedules or {}).get((kind, layer))):  # refuse first
            pass
    for name, other in (others or {}).items():
        if not is_video_diffuser(other) or other.frame_shape != model.frame_shape:
            raise InterventionError(f"model {name!r} does not take the frames of the baseline measured beside it")
    if latent:
        def clip_video(clip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            # drawn as `probe run --clip c` draws them (context + frames, then the context's): the same latents
            return gaussian_context(model.frame_shape, clip, context + frames)[:context], None
        drift_of, keep = latent_drift, None  # latents are not shown as frames
    else:
        data = VideoBenchmark("val", frames=context + frames, size=model.config.frame_size)

        def clip_video(clip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            video = data.clip(clip)
            return video[:context], video
        drift_of = frame_quality

    def quality(frames_made: torch.Tensor, truth: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per generated frame: PSNR and SSIM against the truth (NaN where there is none)."""
        if truth is None:
            nan = torch.full((len(frames_made),), float("nan"))
            return nan, nan
        return frame_quality(frames_made, truth[context:])

    _timed(model, clip_video(first_clip)[0], 1, 2, 0, device, sampling)  # warm-up, untimed
    rows = []
    pairs = [(clip, draw) for clip in range(first_clip, first_clip + clips) for draw in range(draws)]
    for clip, draw in progress_bar(pairs, desc="interventions", unit="clip x draw", disable=not progress):
        start, video = clip_video(clip)
        clip_seed = noise_seed(seed, clip, 2 * draw)
        held: list[float] = []
        reference, seconds = _timed(model, start, frames, steps, clip_seed, device, sampling, held)
        first = keep is not None and clip == first_clip and draw == 0
        if first:
            keep["ground_truth"], keep["none-1"] = to_uint8(video), to_uint8(reference)
        psnr, ssim = quality(reference[context:], video)
        rows.append({"intervention": "none", "layer": -1, "span_end": -1, "keep_steps": -1, "tail_steps": -1,
                     "clip": clip, "draw": draw, "noise_seed": clip_seed, "drift_psnr": float("inf"),
                     "drift_ssim": float("nan") if latent else 1.0,
                     "drift_max_abs": 0.0, "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
                     "seconds_per_frame": seconds, "cache_bytes": held[-1],
                     "drift_psnr_frames": [float("inf")] * frames,
                     "drift_ssim_frames": [float("nan") if latent else 1.0] * frames,
                     "psnr_frames": psnr.tolist(), "ssim_frames": ssim.tolist()})
        runs = [(kind, layer, span_end, keep_steps, tail_steps, model, clip_seed)
                for kind, layer, span_end, keep_steps, tail_steps in settings]
        runs += [(name, other.config.depth - other.config.frame_local_blocks, -1, -1, -1, other, clip_seed)
                 for name, other in (others or {}).items()]
        if redraw:
            runs.append(("redraw", -1, -1, -1, -1, model, noise_seed(seed, clip, 2 * draw + 1)))
        for kind, layer, span_end, keep_steps, tail_steps, which, noise in runs:
            with intervention(model, kind, layer, refresh, span_end, keep_steps, tail_steps, steps,
                              (schedules or {}).get((kind, layer))) if which is model and kind != "redraw" else nullcontext():
                changed, seconds = _timed(which, start, frames, steps, noise, device, sampling, held)
            if first:
                keep[f"{kind}{layer}" + (f"-{span_end}k{keep_steps}" if kind == "skip" else "")
                     + (f"t{tail_steps}" if kind == "skip" and tail_steps > 0 else "")] = to_uint8(changed)
            drift_psnr, drift_ssim = drift_of(changed[context:], reference[context:])
            psnr, ssim = quality(changed[context:], video)
            rows.append({"intervention": kind, "layer": layer, "span_end": span_end, "keep_steps": keep_steps,
                         "tail_steps": tail_steps, "clip": clip, "draw": draw, "noise_seed": noise,
                         "drift_psnr": float(drift_psnr.mean()),
                         "drift_ssim": float(drift_ssim.mean()),
                         "drift_max_abs": float((changed[context:] - reference[context:]).abs().max()),
                         "psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "seconds_per_frame": seconds,
                         "cache_bytes": held[-1], "drift_psnr_frames": drift_psnr.tolist(),
                         "drift_ssim_frames": drift_ssim.tolist(),
                         "psnr_frames": psnr.tolist(), "ssim_frames": ssim.tolist()})
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
        "unmodified generation of the same clip and seed (inf dB: identical)." + (
            f" Plan {info['plan']['path']} on held-out clips from {info.get('first_clip')}: 'plan' i runs its block "
            "schedule at budget i (a skipped block adds its last computed update), 'magcache' i and 'teacache' i skip "
            "the whole model at the steps MagCache's and TeaCache's rules choose with the plan's calibration, their "
            "thresholds matched to plan i's share of skipped block calls; the span skip's k matched the same way: "
            + "; ".join(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in what.items())
                        for name, what in info["plan"]["settings"].items()) + "." if info.get("plan") else ""), "",
        summary[list(SUMMARY_COLUMNS)].rename(columns=SUMMARY_COLUMNS).to_markdown(index=False, floatfmt=".3f"), ""])


def write_interventions(out: str | Path, table: pd.DataFrame, videos: dict[str, np.ndarray], info: dict,
                        force: bool = False) -> Path:
    """interventions.parquet, frames.npz (clip 0), interventions.json and interventions.md, via a temporary sibling."""
    from scd.files import atomic_directory, signature

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
    table = table.assign(**({"draw": 0} if "draw" not in table else {}))  # tables of one noise draw per clip
    with np.load(path / "frames.npz") as frames:
        videos = {name: frames[name] for name in frames.files}
    info = json.loads((path / "interventions.json").read_text())
    table.attrs["refresh"] = info.get("refresh")  # the claims name reuse by its refresh
    return {"info": info, "table": table, "name": path.name,
            "summary": intervention_summary(table), "videos": videos}
