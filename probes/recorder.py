"""`record`: generate and record in one call; the live `Recording` it returns is what `probe run` would save.

    import probes, scd
    rec = probes.record(scd.load_model("baseline"), 0, layers=[15])   # clip 0 of the val benchmark, 4 + 4 frames
    rec.token_cosine(15, frame=4)                                      # [S, S]

`record_sweep` does the same over clips and noise draws into a sweep directory (sharded over torchrun's ranks,
`probes.sweep`) and returns it merged; `probe emergence` measures the study's runs with it, `probe run` shares its
sharded loop (`probes.sweep.write_sweep`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from probes.choices import CAPTURES
from probes.errors import ProbeError
from probes.probe import Probe, check_manifest_entries


def _count(value: object, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProbeError(f"{name} = {value!r}; accepted: an integer in {low}..{high}")
    return value


def benchmark_clip(model, clip: int, frames: int, scene: str = "sprites") -> torch.Tensor:
    """Clip `clip` of the val benchmark at the model's frame size: [frames, 3, H, W] in [-1, 1] (RGB models only)."""
    from scd.data import SCENES, VideoBenchmark

    channels, height, width = model.frame_shape
    if channels != 3 or height != width:
        raise ProbeError(f"a {type(model).__name__} of frames {list(model.frame_shape)} has no benchmark clips; accepted: "
                         "a context tensor [T, C, H, W] of its frame shape")
    if scene not in SCENES:
        raise ProbeError(f"scene {scene!r}; accepted: {', '.join(SCENES)}")
    return VideoBenchmark("val", frames=frames, size=height, scene=scene).clip(clip)


def gaussian_context(frame_shape: Sequence[int], clip: int, frames: int) -> torch.Tensor:
    """The latents `probe run --clip c` draws for a latent model (the Wan families, a random baseline at --size):
    `frames` frames of standard Gaussian latents [frames, *frame_shape] drawn on the CPU with seed `clip`, of which the
    first --context are the context. (A shorter draw is not always a prefix of a longer one: draw the same count.)"""
    generator = torch.Generator().manual_seed(clip)
    return torch.randn((frames, *frame_shape), generator=generator)


# Probe's keyword arguments that `record` passes on (the others are record's own: layers, capture, frames, steps).
PROBE_OPTIONS = ("hook", "mode", "backend", "pca_tokens", "sample_seed", "bands", "guidance_pass")


def record(
    model, context: torch.Tensor | int = 0, *, frames: int = 4, steps: int = 50, seed: int = 0,
    layers: Sequence[int] | str = (15,), capture: Iterable[str] = CAPTURES, context_frames: int = 4,
    scene: str = "sprites", record_frames: Iterable[int] | None = None, record_steps: Iterable[int] | None = None,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, noise: int | None = None,
    info: dict | None = None, timesteps: Sequence[float] | None = None, warp: bool = False, shift: float | None = None,
    sampler: str = "ode", cache_policy=None, **probe_options,
) -> Probe:
    """Generate `frames` frames after `context` with `steps` denoising steps and return the live recording.

    `context`: a float tensor [T, C, H, W] of context frames in [-1, 1] (no ground truth is recorded), or an
    integer: that clip of the val benchmark (`scene`), whose first `context_frames` frames are the context and
    whose later frames the ground truth; its noise is drawn with seed `seed + clip`, as `probe run --clip` does
    (`probes.sweep.noise_seed`), so the two give the same recording. `record_frames` / `record_steps`: the video
    frame numbers and step indices to record (default all); `probe_options`: the rest of `Probe`'s arguments
    (hook, mode, backend, bands, guidance_pass, pca_tokens); `noise`: the generation seed itself, in place of
    `seed + clip` (a sweep's draw, `probes.sweep.noise_seed`); `info`: further manifest entries (e.g. the command);
    `timesteps`, `warp`, `shift`, `sampler`, `cache_policy`: how `scd.sampling.generate` samples (an explicit
    few-step list, the re-noising sampler, a rolling KV window with sinks), recorded in the manifest's `sampling`.
    Everything is checked before the model runs."""
    from probes.sweep import noise_seed
    from scd.sampling import generate

    unknown = sorted(set(probe_options) - set(PROBE_OPTIONS))
    if unknown:
        raise ProbeError(f"record has no option {', '.join(unknown)}; accepted: the arguments of record and Probe's "
                         f"{', '.join(PROBE_OPTIONS)}")
    if info is not None and not isinstance(info, dict):
        raise ProbeError(f"info is a {type(info).__name__}; accepted: a dict of further manifest entries, or None")
    probe = Probe(model, layers, capture=capture, frames=record_frames, steps=record_steps, **probe_options)
    count = len(timesteps) if isinstance(timesteps, list | tuple) else steps  # what the manifest says was run
    if isinstance(context, int) and not isinstance(context, bool):
        clip = _count(context, "clip", 0, 2**31 - 1)
        _count(context_frames, "context_frames", 1, 1024)
        _count(frames, "frames", 1, 1024)
        video = benchmark_clip(model, clip, context_frames + frames, scene)
        seed = noise_seed(_count(seed, "seed", 0, 2**62), clip) if noise is None else _count(noise, "noise", 0, 2**63 - 1)
        context, truth = video[:context_frames], video
        source = {"clip": clip, "seed": seed, "split": "val" if scene == "sprites" else f"val, {scene} scene",
                  "generation": {"context": {"source": "benchmark", "split": "val", "scene": scene, "clip": clip,
                                             "frames": context_frames}, "steps": count, "noise_seed": seed}}
    elif isinstance(context, torch.Tensor):
        if context.dim() not in (4, 5):
            raise ProbeError(f"context has shape {list(context.shape)}; accepted: a float tensor [T, C, H, W] (or "
                             "[B, T, C, H, W]) of context frames")
        seed = seed if noise is None else noise
        given = {"source": "tensor" if context.shape[-4] else "none", "frames": int(context.shape[-4])}
        truth, source = None, {"seed": seed, "generation": {"context": given,
                                                            "steps": count, "noise_seed": seed}}
    else:
        raise ProbeError(f"context is a {type(context).__name__}; accepted: a float tensor [T, C, H, W] of context frames, "
                         "or a val clip index (an integer >= 0)")
    taken = sorted(set(info or {}) & set(source))
    if taken:
        raise ProbeError(f"info names {taken}, which record writes itself; accepted: other names (e.g. command)")
    check_manifest_entries(info or {})  # before the model runs; annotate checks them again, cheaply
    with probe:
        generate(model, context, frames, steps=None if timesteps is not None else steps, seed=seed, device=device,
                 dtype=dtype, timesteps=timesteps, warp=warp, shift=shift, sampler=sampler, cache_policy=cache_policy)
    probe.annotate(truth, **{**source, **(info or {})})  # the clip's truth and where it came from, as a run holds them
    return probe


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

    def record_item(clip: int, noise: int, path: Path, _quiet: bool) -> None:
        record(model, clip, noise=noise, **record_options).save(path)
        bar.update()

    first = write_sweep(out, items, record_item, quiet)
    bar.close()
    return load_run(out) if first else None
