"""`record`: generate and record in one call; the live `Recording` it returns is what `probe run` would save.

    import probes, scd
    rec = probes.record(scd.load_model("baseline"), 0, layers=[15])   # clip 0 of the val benchmark, 4 + 4 frames
    rec.token_cosine(15, frame=4)                                      # [S, S]

`probe run` and `probe emergence` record their sweeps through `probes.sweep.record_sweep`, which calls
this once per (clip, draw).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from probes.choices import CAPTURES
from probes.errors import ProbeError
from probes.probe import Probe


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


def record(
    model, context: torch.Tensor | int = 0, *, frames: int = 4, steps: int = 50, seed: int = 0,
    layers: Sequence[int] | str = (15,), capture: Iterable[str] = CAPTURES, context_frames: int = 4,
    scene: str = "sprites", record_frames: Iterable[int] | None = None, record_steps: Iterable[int] | None = None,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **probe_options,
) -> Probe:
    """Generate `frames` frames after `context` with `steps` denoising steps and return the live recording.

    `context`: a float tensor [T, C, H, W] of context frames in [-1, 1] (no ground truth is recorded), or an
    integer: that clip of the val benchmark (`scene`), whose first `context_frames` frames are the context and
    whose later frames the ground truth; its noise is drawn with seed `seed + clip`, as `probe run --clip` does
    (`probes.sweep.noise_seed`), so the two give the same recording. `record_frames` / `record_steps`: the video
    frame numbers and step indices to record (default all); `probe_options`: the rest of `Probe`'s arguments
    (hook, mode, backend, bands, guidance_pass, pca_tokens). Everything is checked before the model runs."""
    from probes.sweep import noise_seed
    from scd.sampling import generate

    probe = Probe(model, layers, capture=capture, frames=record_frames, steps=record_steps, **probe_options)
    if isinstance(context, int) and not isinstance(context, bool):
        clip = _count(context, "clip", 0, 2**31 - 1)
        _count(context_frames, "context_frames", 1, 1024)
        _count(frames, "frames", 1, 1024)
        video = benchmark_clip(model, clip, context_frames + frames, scene)
        context, truth, seed = video[:context_frames], video, noise_seed(_count(seed, "seed", 0, 2**62), clip)
        info = {"clip": clip, "seed": seed, "split": "val" if scene == "sprites" else f"val, {scene} scene",
                "generation": {"context": {"source": "benchmark", "split": "val", "scene": scene, "clip": clip,
                                           "frames": context_frames}, "steps": steps, "noise_seed": seed}}
    elif isinstance(context, torch.Tensor):
        truth, info = None, {"seed": seed, "generation": {"context": {"source": "tensor", "frames": int(context.shape[-4])},
                                                          "steps": steps, "noise_seed": seed}}
    else:
        raise ProbeError(f"context is a {type(context).__name__}; accepted: a float tensor [T, C, H, W] of context frames, "
                         "or a val clip index (an integer >= 0)")
    with probe:
        generate(model, context, frames, steps=steps, seed=seed, device=device, dtype=dtype)
    probe._info = (truth, info)  # the clip's truth and where it came from, as a saved run's manifest holds them
    return probe
