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
from probes.spec import RECORD_NAMES, ModelFacts, ProbeSpec, RecordSpec
from scd.sampling_spec import SamplingSpec


def _has_benchmark(model) -> bool:
    """Does the val benchmark have clips at this model's frames (RGB, square)?"""
    channels, height, width = model.frame_shape
    return channels == 3 and height == width


def benchmark_clip(model, clip: int, frames: int, scene: str = "sprites") -> torch.Tensor:
    """Clip `clip` of the val benchmark at the model's frame size: [frames, 3, H, W] in [-1, 1] (RGB models only)."""
    from scd.data import SCENES

    if not _has_benchmark(model):
        raise ProbeError(f"a {type(model).__name__} of frames {list(model.frame_shape)} has no benchmark clips; accepted: "
                         "a context tensor [T, C, H, W] of its frame shape")
    if scene not in SCENES:
        raise ProbeError(f"scene {scene!r}; accepted: {', '.join(SCENES)}")
    return _benchmark_video(model, clip, frames, scene)


def _benchmark_video(model, clip: int, frames: int, scene: str) -> torch.Tensor:
    from scd.data import VideoBenchmark

    return VideoBenchmark("val", frames=frames, size=model.frame_shape[1], scene=scene).clip(clip)


def gaussian_context(frame_shape: Sequence[int], clip: int, frames: int) -> torch.Tensor:
    """The latents `probe run --clip c` draws for a latent model (the Wan families, a random baseline at --size):
    `frames` frames of standard Gaussian latents [frames, *frame_shape] drawn on the CPU with seed `clip`, of which the
    first --context are the context. (A shorter draw is not always a prefix of a longer one: draw the same count.)"""
    generator = torch.Generator().manual_seed(clip)
    return torch.randn((frames, *frame_shape), generator=generator)


# Probe's keyword arguments that `record` passes on (the others are record's own: layers, capture, frames, steps).
PROBE_OPTIONS = ("hook", "mode", "backend", "pca_tokens", "sample_seed", "bands", "guidance_pass")
# record's own values, which `RecordSpec.check` validates (the sampling's among them).
RECORD_OPTIONS = ("frames", "steps", "seed", "context_frames", "clip_frames", "scene", "context_source", "noise",
                  "timesteps", "warp", "shift", "sampler", "cache_policy")
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


# How record's refusals name its values: the Python arguments.
PYTHON_RECORD_NAMES = {**RECORD_NAMES, "clips": "context (a clip index)", "draws": "draws"}


def _record_spec(model, clips: tuple[int, ...] | list | None, context_frames: int | None, own: dict,
                 names: dict[str, str]) -> RecordSpec:
    """`RecordSpec.check` of record's own values `own`, against this model's facts (context_frames None: 4)."""
    return RecordSpec.check(clips=clips, context_frames=4 if context_frames is None else context_frames,
                            has_benchmark=_has_benchmark(model), frames_per_block=int(model.frames_per_block),
                            max_frames=model.max_frames, from_nothing=bool(model.generates_from_nothing),
                            names=names, **own)


def _checked(model, clips: tuple[int, ...] | None, context_frames: int | None, options: dict, *,
             layers=(15,), capture=CAPTURES, record_frames=None, record_steps=None, guidance_pass: str = "cond",
             device="cpu", dtype=None, info=None, provenance=None, spec: RecordSpec | None = None,
             progress: bool = False) -> dict:
    """Every value of a `record_passes` / `record_sweep` call validated once (or, given as specs, trusted): the
    Probe's (`ProbeSpec`), record's (`RecordSpec`, the sampling in it), the device and dtype (`Placement`), the caller's
    manifest entries. Returns them by name for the recorder."""
    from scd.devices import placed

    unknown = sorted(set(options) - set(RECORD_OPTIONS) - set(PROBE_OPTIONS))
    if unknown:
        raise ProbeError(f"record has no option {', '.join(unknown)}; accepted: the arguments of record and Probe's "
                         f"{', '.join(PROBE_OPTIONS)}")
    if info is not None and not isinstance(info, dict):
        raise ProbeError(f"info is a {type(info).__name__}; accepted: a dict of further manifest entries, or None")
    if provenance is not None and (not isinstance(provenance, dict) or set(provenance) - set(PROVENANCE_KEYS)):
        raise ProbeError(f"provenance {provenance!r}; accepted: None or a dict of {', '.join(PROVENANCE_KEYS)}")
    if isinstance(layers, ProbeSpec):  # checked by the caller (probe run): its options are the spec's
        probe = layers
    else:  # "both": checked as the stricter pass (nnsight records only the conditional one)
        probe_options = {k: v for k, v in options.items() if k in PROBE_OPTIONS}
        probe = ProbeSpec.check(ModelFacts.of(model), layers, capture=capture, frames=record_frames,
                                steps=record_steps, guidance_pass="uncond" if guidance_pass == "both" else guidance_pass,
                                **probe_options)
    own = {k: v for k, v in options.items() if k in RECORD_OPTIONS}
    if spec is None:
        spec = _record_spec(model, clips, context_frames, own, PYTHON_RECORD_NAMES)
    elif own:
        raise ProbeError(f"spec is given: it holds {', '.join(sorted(own))}; accepted: spec alone, or those without it")
    written = {"seed", "split", "dtype", "device", "generation", *(("clip",) if spec.clips else ())}
    taken = sorted(set(info or {}) & written)  # a tensor context's run may name the clip it stands for
    if taken:
        raise ProbeError(f"info names {taken}, which record writes itself; accepted: other names (e.g. command)")
    check_manifest_entries({**(info or {}), "provenance": provenance or {}})  # before the model runs
    return {"probe": probe, "spec": spec, "placement": placed(device, dtype), "info": info or {},
            "provenance": provenance or {}, "passes": ("cond", "uncond") if guidance_pass == "both" else
            (probe.guidance_pass,), "progress": progress}


def record_passes(model, context: torch.Tensor | int = 0, **options) -> list[Probe]:
    """The one path from settings to recordings (`record`, `record_sweep` and `probe run` all take it): one generation,
    heard by one Probe per guidance pass (`guidance_pass`: cond, uncond, or "both": [cond, uncond]), each annotated with
    the same manifest entries (clip, seed, split, dtype, device, generation, and the caller's `info`).

    Options, each checked once before the model runs (or given as checked specs and trusted):
    - what is generated (`RecordSpec`): `frames` (4), `context_frames` (4), `steps` (None: 50), `seed` (0: the noise
      is `noise_seed(seed, clip)`), `noise` (the generation seed itself, a sweep's draw), `clip_frames` (frames drawn
      for an integer clip; default context + generated), `scene`, `context_source` (auto, benchmark, latent noise),
      `timesteps`, `warp`, `shift`, `sampler`, `cache_policy` (how `scd.sampling.generate` samples); or `spec`, a
      checked `RecordSpec` for this model (probe run's);
    - what is recorded (`ProbeSpec`): `layers` (block indices or "all", or a checked ProbeSpec, which then gives every
      Probe option), `capture`, `record_frames` / `record_steps` (the video frame numbers and step indices to record,
      default all), `guidance_pass`, and Probe's hook, mode, backend, bands, pca_tokens, sample_seed;
    - `device`, `dtype` (None: float32), or a checked `scd.devices.Placement` as `device`;
    - `info`: further manifest entries (e.g. the command); `provenance`: what only the caller knows of the generation
      (PROVENANCE_KEYS: a tensor context's source, the prompt); `progress`: a bar over the denoising steps."""
    if isinstance(context, torch.Tensor):
        if context.dim() not in (4, 5):
            raise ProbeError(f"context has shape {list(context.shape)}; accepted: a float tensor [T, C, H, W] (or "
                             "[B, T, C, H, W]) of context frames")
        clips, counted = None, int(context.shape[-4])
        if "context_frames" in options:
            raise ProbeError("context_frames counts an integer clip's context; a tensor context gives its own frames; "
                             "accepted: context_frames with a clip index, or none")
    elif isinstance(context, int):  # a bool is refused by RecordSpec, as every clip that is not an index
        clips, counted = (context,), options.pop("context_frames", None)
    else:
        raise ProbeError(f"context is a {type(context).__name__}; accepted: a float tensor [T, C, H, W] of context frames, "
                         "or a clip index (an integer >= 0)")
    named = {k: options.pop(k) for k in list(options) if k in _CALL_ARGUMENTS}
    checked = _checked(model, clips, counted, options, **named)
    spec = checked["spec"]
    if clips is not None and spec.clips != clips:
        raise ProbeError(f"spec holds clips {list(spec.clips)}; this call records clip {context}; accepted: its own clip "
                         "(RecordSpec.item)")
    return _record(model, context, checked)


# record_passes' arguments that are not record's or Probe's own values (`_checked`'s keywords).
_CALL_ARGUMENTS = ("layers", "capture", "record_frames", "record_steps", "guidance_pass", "device", "dtype", "info",
                   "provenance", "spec", "progress")


def _record(model, context: torch.Tensor | int, checked: dict) -> list[Probe]:
    """One generation of checked values (`_checked`), heard by a Probe per guidance pass, each annotated."""
    from scd.progress import progress as progress_bar
    from scd.sampling import generate

    spec, placement, provenance = checked["spec"], checked["placement"], checked["provenance"]
    sampling = spec.sampling
    probes = [Probe(model, replace(checked["probe"], guidance_pass=p)) for p in checked["passes"]]
    if spec.clips:
        clip, drawn, frames = spec.clips[0], spec.clip_frames, sampling.context_frames + sampling.frames
        if spec.context_source == "benchmark":
            video = _benchmark_video(model, clip, drawn, spec.scene)
            context, truth = video[:sampling.context_frames], video[:frames]
            given = {"source": "benchmark", "split": "val", "scene": spec.scene, "clip": clip,
                     "frames": sampling.context_frames}
            split = "val" if spec.scene == "sprites" else f"val, {spec.scene} scene"
        else:
            context, truth = gaussian_context(model.frame_shape, clip, drawn)[:sampling.context_frames], None
            given = {"source": "latent noise", "seed": clip, "latent_frames": sampling.context_frames} \
                if sampling.context_frames else {"source": "none", "latent_frames": 0}  # text-to-video: no context
            split = "latent noise" if sampling.context_frames else "no context"
        source = {"clip": clip, "seed": sampling.seed, "split": split}
    else:
        truth = None
        given = provenance.get("context") or {"source": "tensor" if context.shape[-4] else "none",
                                              "frames": int(context.shape[-4])}
        split = "no context" if not context.shape[-4] else "context video" if given.get("source") == "video" else \
            "given tensor"
        source = {"seed": sampling.seed, "split": split}
    chunks = -(-sampling.frames // sampling.frames_per_block)
    bar = progress_bar(total=chunks * sampling.steps, desc=f"record {model.name}", unit="step",
                       disable=not checked["progress"])

    def advance(frame: int, step: int | None, timestep: float) -> None:
        if step is not None:
            bar.set_postfix(frame=frame, refresh=False)
            bar.update()

    with ExitStack() as stack:
        for probe in probes:  # one generation, heard by a probe per guidance pass
            stack.enter_context(probe)
        generate(model, context, sampling.frames, device=placement, sampling=sampling, callback=advance)
    bar.close()
    # How the video was made, from the values generate has just accepted.
    named = {"dtype": str(placement.dtype).removeprefix("torch."), "device": str(placement.device)}
    source |= {**named, "generation": generation_entry(model, given, sampling, **named, provenance=provenance)}
    for probe in probes:  # the clip's truth and where it came from, as a run holds them
        probe.annotate(truth, **{**source, **checked["info"]})
    return probes


def record_sweep(model, out: str | Path, clips: Iterable[int] = range(8), *, draws: int = 1, seed: int = 0,
                 force: bool = False, quiet: bool = True, **record_options):
    """`record` over val clips x noise draws, each item with its own noise (`probes.sweep.noise_seed(seed, clip,
    draw)`: the seeds `probe run --clip ... --seeds DRAWS` uses), written as a sweep directory `out` (one shard per
    torchrun rank; `force` replaces an earlier sweep of the toolkit's) and returned merged (`MergedRun`); None on
    ranks other than 0. `out` may be a `scd.files.CheckedOutput` for a sweep (probe run's), trusted.
    `record_options`: those of `record` (frames, steps, layers, capture, scene, ...), checked once for all items;
    or `spec`, a checked RecordSpec of the sweep's clips and draws."""
    from probes.recording import load_run
    from probes.sweep import write_sweep
    from scd.files import CheckedOutput, checked_output
    from scd.progress import progress

    target = out if isinstance(out, CheckedOutput) else checked_output(out, "sweep", force, flag="out",
                                                                       error=ProbeError)
    named = {k: record_options.pop(k) for k in list(record_options) if k in _CALL_ARGUMENTS}
    if named.get("spec") is None:
        listed = list(clips) if isinstance(clips, Iterable) and not isinstance(clips, str | bytes) else clips
        record_options |= {"draws": draws, "seed": seed}
        checked = _checked_sweep(model, listed, record_options, named)
    else:
        checked = _checked(model, None, None, record_options, **named)
    spec = checked["spec"]
    bar = progress(total=len(spec.items), desc="record_sweep", unit="run", disable=quiet)

    def record_item(clip: int, noise: int, path: Path, quiet_item: bool) -> None:
        item = {**checked, "spec": spec.item(clip, noise), "progress": checked["progress"] and not quiet_item}
        _record(model, clip, item)[0].save(CheckedOutput(path, "run", False))  # a fresh path inside the new sweep
        bar.update()

    first = write_sweep(target.path, spec.items, record_item, quiet)
    bar.close()
    return load_run(target.path) if first else None


def _checked_sweep(model, clips, options: dict, named: dict) -> dict:
    """`_checked` for a sweep's clips and draws (RecordSpec's clips: the sweep's, named as record_sweep's)."""
    names = {**PYTHON_RECORD_NAMES, "clips": "clips"}
    own = {k: v for k, v in options.items() if k in (*RECORD_OPTIONS, "draws")}
    rest = {k: v for k, v in options.items() if k not in own}
    if named.get("guidance_pass") == "both":
        raise ProbeError("record_sweep writes one run per item; accepted: guidance_pass cond or uncond")
    spec = _record_spec(model, clips, own.pop("context_frames", None), own, names)
    return _checked(model, None, None, rest, **{**named, "spec": spec})
