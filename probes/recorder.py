"""`record`: generate and record in one call; the live `Recording` it returns is what `probe run` would save.

    import probes, scd
    rec = probes.record(scd.load_model("baseline"), 0, layers=[15])   # clip 0 of the val benchmark, 4 + 4 frames
    rec.token_cosine(15, frame=4)                                      # [S, S]

`record_sweep` does the same over clips and noise draws into a sweep directory (sharded over torchrun's ranks,
`probes.sweep`) and returns it merged. They are the one path from settings to a run: `probe run` is `record_passes`
(one generation) or `record_sweep` plus printing, so both write the same manifest (tests/cli/test_run.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch

from probes.choices import CAPTURES
from probes.errors import ProbeError
from probes.probe import Probe, check_manifest_entries
from probes.spec import ModelFacts, ProbeSpec
from scd.sampling_spec import SamplingSpec


def _count(value: object, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProbeError(f"{name} = {value!r}; accepted: an integer in {low}..{high}")
    return value


def _has_benchmark(model) -> bool:
    """Does the val benchmark have clips at this model's frames (RGB, square)?"""
    channels, height, width = model.frame_shape
    return channels == 3 and height == width


def benchmark_clip(model, clip: int, frames: int, scene: str = "sprites") -> torch.Tensor:
    """Clip `clip` of the val benchmark at the model's frame size: [frames, 3, H, W] in [-1, 1] (RGB models only)."""
    from scd.data import SCENES, VideoBenchmark

    if not _has_benchmark(model):
        raise ProbeError(f"a {type(model).__name__} of frames {list(model.frame_shape)} has no benchmark clips; accepted: "
                         "a context tensor [T, C, H, W] of its frame shape")
    if scene not in SCENES:
        raise ProbeError(f"scene {scene!r}; accepted: {', '.join(SCENES)}")
    return VideoBenchmark("val", frames=frames, size=model.frame_shape[1], scene=scene).clip(clip)


def gaussian_context(frame_shape: Sequence[int], clip: int, frames: int) -> torch.Tensor:
    """The latents `probe run --clip c` draws for a latent model (the Wan families, a random baseline at --size):
    `frames` frames of standard Gaussian latents [frames, *frame_shape] drawn on the CPU with seed `clip`, of which the
    first --context are the context. (A shorter draw is not always a prefix of a longer one: draw the same count.)"""
    generator = torch.Generator().manual_seed(clip)
    return torch.randn((frames, *frame_shape), generator=generator)


# Probe's keyword arguments that `record` passes on (the others are record's own: layers, capture, frames, steps).
PROBE_OPTIONS = ("hook", "mode", "backend", "pca_tokens", "sample_seed", "bands", "guidance_pass")
# Where an integer `context` takes its frames from: the val benchmark's clip, or seeded Gaussian latents (the
# latent models, and a random baseline built by `probe run --size`, which have no benchmark truth to compare with).
CONTEXT_SOURCES = ("auto", "benchmark", "latent noise")
# What a caller may say of how the video was made that record cannot know: where a tensor context came from
# (a video file), and the prompt of a text-conditioned model.
PROVENANCE_KEYS = ("context", "prompt", "text_embeddings", "negative_prompt")


def generation_entry(model, context: dict, sampling: SamplingSpec, *, dtype: str, device: str,
                     provenance: dict) -> dict:
    """The manifest's `generation`: how the video was made, as a researcher must report it (the report shows it)."""
    if sampling.timesteps is not None:  # no scheduler is stepped: the sampler runs the list itself
        scheduler = {"class": None, "shift": sampling.shift,
                     "source": f"none: the explicit timestep list, {sampling.sampler} sampler"}
    else:
        scheduler = model.scheduler_info or {"class": "FlowMatchEulerDiscreteScheduler",
                                             "shift": float(model.flow_shift),
                                             "source": "scd.sampling's flow-matching Euler scheduler"}
    return {"context": context, "prompt": provenance.get("prompt"), "text_embeddings": provenance.get("text_embeddings"),
            "negative_prompt": provenance.get("negative_prompt"), "guidance_scale": float(model.guidance_scale),
            "scheduler": scheduler, "steps": sampling.steps, "noise_seed": sampling.seed, "sampler": sampling.sampler,
            "timesteps": None if sampling.timesteps is None else list(sampling.timesteps), "warp": sampling.warp,
            "shift": sampling.shift, **sampling.cache_policy.describe(), "frames_per_block": int(model.frames_per_block),
            "fps": model.fps, "dtype": dtype, "device": device}


def record(model, context: torch.Tensor | int = 0, **options) -> Probe:
    """Generate `frames` frames after `context` with `steps` denoising steps and return the live recording.

    `context`: a float tensor [T, C, H, W] of context frames (no ground truth is recorded), or an integer: that clip,
    as `probe run --clip` takes it: of the val benchmark (`scene`), whose first `context_frames` frames are the context
    and whose later frames the ground truth, or, for a model without benchmark clips (latents) or with
    `context_source="latent noise"`, seeded Gaussian latents (`gaussian_context`). Its noise is drawn with seed
    `probes.sweep.noise_seed(seed, clip)`, as `probe run --clip` does, so the two write the same run.
    The options are `record_passes`'s; `guidance_pass` (cond or uncond) is the one pass recorded."""
    if options.get("guidance_pass") == "both":
        raise ProbeError("record returns one recording; accepted: guidance_pass cond or uncond (record_passes records "
                         "both passes of one generation)")
    return record_passes(model, context, **options)[0]


def record_passes(
    model, context: torch.Tensor | int = 0, *, frames: int = 4, steps: int | None = None, seed: int = 0,
    layers: Sequence[int] | str | ProbeSpec = (15,), capture: Iterable[str] = CAPTURES, context_frames: int = 4,
    clip_frames: int | None = None, scene: str = "sprites", context_source: str = "auto",
    record_frames: Iterable[int] | None = None, record_steps: Iterable[int] | None = None,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, noise: int | None = None,
    info: dict | None = None, provenance: dict | None = None, timesteps: Sequence[float] | None = None,
    warp: bool = False, shift: float | None = None, sampler: str = "ode", cache_policy=None,
    sampling: SamplingSpec | None = None, progress: bool = False, guidance_pass: str = "cond", **probe_options,
) -> list[Probe]:
    """The one path from settings to recordings (`record`, `record_sweep` and `probe run` all take it): one generation,
    heard by one Probe per guidance pass (`guidance_pass`: cond, uncond, or "both": [cond, uncond]), each annotated with
    the same manifest entries (clip, seed, split, dtype, device, generation, and the caller's `info`).

    `layers`: block indices or "all", or a `ProbeSpec` checked for this model (then it gives every Probe option);
    `clip_frames`: frames drawn for an integer clip (default context + generated; `probe run --clip-frames`);
    `record_frames` / `record_steps`: the video frame numbers and step indices to record (default all);
    `probe_options`: the rest of `Probe`'s arguments (hook, mode, backend, bands, pca_tokens, sample_seed); `noise`:
    the generation seed itself, in place of `noise_seed(seed, clip)` (a sweep's draw); `info`: further manifest
    entries (e.g. the command); `provenance`: what only the caller knows of the generation (PROVENANCE_KEYS: a tensor
    context's source, the prompt); `timesteps`, `warp`, `shift`, `sampler`, `cache_policy`: how
    `scd.sampling.generate` samples; `progress`: a bar over the denoising steps. Everything is checked before the
    model runs."""
    from probes.sweep_plan import noise_seed
    from scd.progress import progress as progress_bar
    from scd.sampling import generate

    unknown = sorted(set(probe_options) - set(PROBE_OPTIONS))
    if unknown:
        raise ProbeError(f"record has no option {', '.join(unknown)}; accepted: the arguments of record and Probe's "
                         f"{', '.join(PROBE_OPTIONS)}")
    if info is not None and not isinstance(info, dict):
        raise ProbeError(f"info is a {type(info).__name__}; accepted: a dict of further manifest entries, or None")
    if provenance is not None and (not isinstance(provenance, dict) or set(provenance) - set(PROVENANCE_KEYS)):
        raise ProbeError(f"provenance {provenance!r}; accepted: None or a dict of {', '.join(PROVENANCE_KEYS)}")
    if context_source not in CONTEXT_SOURCES:
        raise ProbeError(f"context_source {context_source!r}; accepted: {', '.join(CONTEXT_SOURCES)}")
    if isinstance(layers, ProbeSpec):  # checked by the caller (probe run): its options are the spec's
        spec = layers
    else:  # "both": checked as the stricter pass (nnsight records only the conditional one)
        spec = ProbeSpec.check(ModelFacts.of(model), layers, capture=capture, frames=record_frames, steps=record_steps,
                               guidance_pass="uncond" if guidance_pass == "both" else guidance_pass, **probe_options)
    passes = ("cond", "uncond") if guidance_pass == "both" else (spec.guidance_pass,)
    probes = [Probe(model, replace(spec, guidance_pass=p)) for p in passes]
    provenance = provenance or {}
    if isinstance(context, int) and not isinstance(context, bool):
        clip = _count(context, "clip", 0, 2**31 - 1)
        _count(context_frames, "context_frames", 0, 1024)
        _count(frames, "frames", 1, 1024)
        drawn = context_frames + frames if clip_frames is None else _count(clip_frames, "clip_frames", 1, 2048)
        if drawn < context_frames + frames:
            raise ProbeError(f"clip_frames = {drawn} is fewer than context_frames + frames = {context_frames + frames}; "
                             f"accepted: at least {context_frames + frames}")
        seed = noise_seed(_count(seed, "seed", 0, 2**62), clip) if noise is None else _count(noise, "noise", 0, 2**63 - 1)
        benchmark = context_source == "benchmark" or (context_source == "auto" and _has_benchmark(model))
        if benchmark:
            if context_frames == 0:
                raise ProbeError("context_frames = 0 takes no benchmark frame; accepted: 1..1024 for a benchmark clip")
            video = benchmark_clip(model, clip, drawn, scene)
            context, truth = video[:context_frames], video[: context_frames + frames]
            given = {"source": "benchmark", "split": "val", "scene": scene, "clip": clip, "frames": context_frames}
            split = "val" if scene == "sprites" else f"val, {scene} scene"
        else:
            if scene != "sprites":
                raise ProbeError(f"scene {scene!r} picks benchmark clips; a {context_source} context takes none; "
                                 "accepted: scene='sprites' (the default)")
            context, truth = gaussian_context(model.frame_shape, clip, drawn)[:context_frames], None
            given = {"source": "latent noise", "seed": clip, "latent_frames": context_frames} if context_frames else \
                {"source": "none", "latent_frames": 0}  # text-to-video: the first chunk from the prompt alone
            split = "latent noise" if context_frames else "no context"
        source = {"clip": clip, "seed": seed, "split": split}
    elif isinstance(context, torch.Tensor):
        if context.dim() not in (4, 5):
            raise ProbeError(f"context has shape {list(context.shape)}; accepted: a float tensor [T, C, H, W] (or "
                             "[B, T, C, H, W]) of context frames")
        seed = seed if noise is None else noise
        truth = None
        given = provenance.get("context") or {"source": "tensor" if context.shape[-4] else "none",
                                              "frames": int(context.shape[-4])}
        split = "no context" if not context.shape[-4] else "context video" if given.get("source") == "video" else \
            "given tensor"
        source = {"seed": seed, "split": split}
    else:
        raise ProbeError(f"context is a {type(context).__name__}; accepted: a float tensor [T, C, H, W] of context frames, "
                         "or a clip index (an integer >= 0)")
    if sampling is None:  # every sampling value, checked once; generate trusts the spec
        sampling = SamplingSpec.check(steps=steps, timesteps=timesteps, warp=warp, shift=shift, sampler=sampler,
                                      cache_policy=cache_policy, seed=seed, frames_per_block=model.frames_per_block)
    elif sampling.seed != seed:  # checked by the caller (probe run); the noise seed is this item's
        sampling = replace(sampling, seed=_count(seed, "seed", 0, 2**63 - 1))
    count = sampling.steps
    taken = sorted(set(info or {}) & {*source, "dtype", "device", "generation"})
    if taken:
        raise ProbeError(f"info names {taken}, which record writes itself; accepted: other names (e.g. command)")
    check_manifest_entries({**(info or {}), "provenance": provenance})  # the caller's entries, before the model runs
    chunks = -(-frames // int(model.frames_per_block))
    bar = progress_bar(total=chunks * count, desc=f"record {model.name}", unit="step", disable=not progress)

    def advance(frame: int, step: int | None, timestep: float) -> None:
        if step is not None:
            bar.set_postfix(frame=frame, refresh=False)
            bar.update()

    with ExitStack() as stack:
        for probe in probes:  # one generation, heard by a probe per guidance pass
            stack.enter_context(probe)
        generate(model, context, frames, device=device, dtype=dtype, sampling=sampling, callback=advance)
    bar.close()
    # How the video was made, from the values generate has just accepted.
    named = {"dtype": str(dtype).removeprefix("torch."), "device": str(torch.device(device))}
    source |= {**named, "generation": generation_entry(model, given, sampling, **named, provenance=provenance)}
    for probe in probes:  # the clip's truth and where it came from, as a run holds them
        probe.annotate(truth, **{**source, **(info or {})})
    return probes


def record_sweep(model, out: str | Path, clips: Iterable[int] = range(8), *, draws: int = 1, seed: int = 0,
                 force: bool = False, quiet: bool = True, **record_options):
    """`record` over val clips x noise draws, each item with its own noise (`probes.sweep.noise_seed(seed, clip,
    draw)`: the seeds `probe run --clip ... --seeds DRAWS` uses), written as a sweep directory `out` (one shard per
    torchrun rank; `force` replaces an earlier sweep of the toolkit's) and returned merged (`MergedRun`); None on
    ranks other than 0. `record_options`: those of `record` (frames, steps, layers, capture, scene, ...)."""
    from probes.recording import load_run
    from probes.sweep import noise_seed, write_sweep
    from scd.files import OutputError, check_output, input_path
    from scd.progress import progress

    clips = list(clips) if isinstance(clips, Iterable) and not isinstance(clips, str | bytes) else clips
    if not isinstance(clips, list) or not clips or len(set(clips)) != len(clips) or \
            not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**31 for c in clips):
        raise ProbeError(f"clips {clips!r}; accepted: a non-empty collection of distinct val clip indices (integers in "
                         "0..2147483647)")
    _count(draws, "draws", 1, 1000)
    _count(seed, "seed", 0, 2**62)
    out = input_path(out, "out", "a path ending in a new name", ProbeError)
    try:
        check_output(out, "sweep", force, flag="out")
    except OutputError as e:
        raise ProbeError(str(e)) from None
    items = [(clip, noise_seed(seed, clip, draw)) for clip in clips for draw in range(draws)]
    bar = progress(total=len(items), desc="record_sweep", unit="run", disable=quiet)

    def record_item(clip: int, noise: int, path: Path, quiet_item: bool) -> None:
        options = {**record_options, "progress": record_options.get("progress", False) and not quiet_item}
        record(model, clip, noise=noise, **options).save(path)
        bar.update()

    first = write_sweep(out, items, record_item, quiet)
    bar.close()
    return load_run(out) if first else None
